"""Data-aware statistics of one specialist, for Fisher merging and RegMean: computed from a causal
LM folder and that specialist's own training rows, written to one safetensors file
(:mod:`hhh_bench.merging.statsfile` gives the layout).

The samples: N rows drawn without replacement from the specialist's training rows (all of them
when there are N or fewer), seeded, in the order of the rows; each rendered as the DPO trainer
renders it, the prompt with the chat template and its generation prompt, then the **chosen**
response (the behaviour the specialist was trained towards), cut to its first ``max_length``
tokens.

- **Diagonal Fisher** (kind ``fisher``): per sample n, the loss ℓ_n = −Σ_{i ∈ response}
  log p_θ(x_i | x_<i), the negative log-likelihood of the chosen response given the prompt
  (summed over its tokens: the sequence's log-likelihood, Matena & Raffel's per-example
  log-likelihood for a sequence model); F = (1/N)·Σ_n (∂ℓ_n/∂θ)², the empirical Fisher, one
  sample per backward pass (squaring a batch's summed gradient would add cross terms between
  samples). Memory: the model, one float32 accumulator per parameter, one sample's
  activations; each gradient is squared into its accumulator as soon as autograd has produced
  it and then freed (``register_post_accumulate_grad_hook``), so the gradients of the whole model
  never exist at once.
- **Gram matrices** (kind ``gram``): for every ``nn.Linear`` with input x (one row per token),
  G = (1/n)·Σ xᵀx over the n tokens of the N samples, accumulated in ``gram_dtype`` (float64 by
  default) under ``torch.no_grad``, one sample at a time (no padding rows). Memory is bounded by
  ``gram_budget_gb``: the layers are taken in groups whose accumulators fit it, one pass over
  the samples per group, each pass stopped as soon as the group's layers have seen the sample
  (later layers are not computed). The toy and stand-in models fit one pass.

The number of samples N: the Fisher and the Grams are Monte-Carlo means over the data, so their
noise falls as 1/√N; a Gram needs at least ``in`` token rows to be of full rank (RegMean then
relies on its off-diagonal reduction α < 1 and the other models' Grams to be invertible), and a
Fisher from few samples is dominated by the few parameters those samples move. FusionBench
uses 256 examples for both (``num_fisher_examples``, ``num_regmean_examples``); so does
``merge_engine.statistics.num_samples``. The merges follow N only through these means
(measured on the toy world: ``experiments/all_merges/README.md``).

LoRA specialists: the adapter is merged into its base first (``peft``'s ``merge_and_unload``),
so the statistics are of the full weights θ0 + s·B·A, under the full model's parameter names:
what Fisher merging and RegMean weigh.

Deterministic: the same model, rows, seed, options, torch build and thread count give the same
bytes (a sample's loss and a Gram are sums in a fixed order).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hhh_bench.core.paths import is_adapter_folder
from hhh_bench.merging.engine import ShardWriter
from hhh_bench.merging.statsfile import (
    FISHER,
    FISHER_SQ_SUM,
    FORMAT,
    GRAM,
    GRAM_ROWS,
    KINDS,
)

GRAM_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class Sample:
    """One rendered sample: its token ids and the index of the first response token."""

    ids: tuple[int, ...]
    start: int


@dataclass(frozen=True)
class StatsOptions:
    """How the statistics are computed (as the pipeline's ``merge_engine.statistics``, which
    ``conf/merge_engine/default.yaml`` documents field by field).

    Attributes:
        kinds: what to compute: ``fisher`` and/or ``gram``.
        num_samples: N, rows drawn from the specialist's training rows (all when fewer).
        seed: seed of the draw.
        max_length: samples are cut to this many tokens (the response keeps at least one).
        dtype: the model's dtype during the passes (``float32`` | ``bfloat16`` | ``float16`` |
            ``auto``: bfloat16 on a GPU that has it, else float32).
        device: torch device of the passes.
        gram_dtype: dtype of the Gram accumulators (``float64`` | ``float32``).
        gram_budget_gb: memory of the Gram accumulators per pass (GiB).
    """

    kinds: tuple[str, ...] = ("fisher", "gram")
    num_samples: int = 256
    seed: int = 0
    max_length: int = 512
    dtype: str = "float32"
    device: str = "cpu"
    gram_dtype: str = "float64"
    gram_budget_gb: float = 4.0

    def __post_init__(self) -> None:
        kinds = tuple(self.kinds)
        object.__setattr__(self, "kinds", kinds)
        bad = [k for k in kinds if k not in KINDS]
        if not kinds or bad or len(set(kinds)) != len(kinds):
            raise ValueError(
                f"stats.kinds must be distinct values of {list(KINDS)}, got {list(kinds)}"
            )
        if self.num_samples < 1:
            raise ValueError(f"stats.num_samples must be >= 1, got {self.num_samples}")
        if self.max_length < 2:
            raise ValueError(f"stats.max_length must be >= 2, got {self.max_length}")
        if self.gram_dtype not in GRAM_DTYPES:
            raise ValueError(
                f"stats.gram_dtype must be one of {list(GRAM_DTYPES)}, got {self.gram_dtype!r}"
            )
        if not 0 < self.gram_budget_gb < float("inf"):
            raise ValueError(f"stats.gram_budget_gb must be > 0, got {self.gram_budget_gb}")


# ---------------------------------------------------------------------------------------------
# Samples


def select_rows(rows: Sequence[Any], num: int, seed: int) -> list[Any]:
    """``num`` rows drawn without replacement with ``random.Random(seed)``, kept in their order
    (all rows when there are ``num`` or fewer)."""
    if num >= len(rows):
        return list(rows)
    picked = sorted(random.Random(seed).sample(range(len(rows)), num))
    return [rows[i] for i in picked]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def render_samples(
    tokenizer: Any, rows: Sequence[Mapping[str, Any]], max_length: int
) -> list[Sample]:
    """Each row's prompt (chat template, generation prompt) followed by its chosen response, as
    token ids, and where the response starts; cut to the first ``max_length`` tokens (a prompt
    that fills them leaves its last token as the only scored one)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the statistics need the specialist's tokenizer to have a chat template (its rows "
            "are conversations, rendered as the DPO trainer renders them)"
        )
    out = []
    for i, row in enumerate(rows):
        if not row.get("prompt") or not row.get("chosen"):
            raise ValueError(
                f"row {i} (id={row.get('id')!r}) has no prompt or chosen response; the "
                "statistics are computed on preference rows (prompt, chosen)"
            )

        def ids(msgs: list[Any], gen: bool) -> list[int]:
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])

        prompt = ids(list(row["prompt"]), True)
        full = ids(list(row["prompt"]) + list(row["chosen"]), False)
        full = full[:max_length]
        start = max(1, min(_common_prefix(prompt, full), len(full) - 1))
        out.append(Sample(tuple(full), start))
    return out


# ---------------------------------------------------------------------------------------------
# The passes


class _Stop(Exception):
    """Raised by a hook once the layers of a Gram pass have seen the sample."""


def linear_modules(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every ``nn.Linear`` of ``model``, by module name, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _forward_ids(model: nn.Module, sample: Sample, device: torch.device) -> Tensor:
    return torch.tensor([sample.ids], dtype=torch.long, device=device)


def fisher_pass(
    model: nn.Module,
    samples: Sequence[Sample],
    progress: Callable[[Iterator[Any], str, int], Iterator[Any]] | None = None,
) -> dict[str, Tensor]:
    """``{parameter name: F}``, F = (1/N)·Σ_n (∂ℓ_n/∂θ)² in float32 (see the module docstring),
    for every parameter of ``model`` (``named_parameters``: a tied weight once)."""
    device = next(model.parameters()).device
    params = dict(model.named_parameters())
    acc = {n: torch.zeros(p.shape, dtype=torch.float32, device=device) for n, p in params.items()}
    was_training = model.training
    flags = {n: p.requires_grad for n, p in params.items()}
    model.eval()  # no dropout: the Fisher of the model as it predicts
    handles = []
    for n, p in params.items():
        p.requires_grad_(True)
        p.grad = None

        def square_into(param: Tensor, name: str = n) -> None:
            acc[name].add_(param.grad.detach().float().square())
            param.grad = None  # freed at once: no model-sized set of gradients

        handles.append(p.register_post_accumulate_grad_hook(square_into))
    it: Iterator[Any] = iter(samples)
    if progress is not None:
        it = progress(it, "Fisher (forward + backward per sample)", len(samples))
    try:
        for s in it:
            ids = _forward_ids(model, s, device)
            logits = model(input_ids=ids).logits[0, :-1].float()
            logp = torch.log_softmax(logits, dim=-1)
            pos = torch.arange(s.start - 1, len(s.ids) - 1, device=device)
            loss = -logp[pos, ids[0, pos + 1]].sum()
            loss.backward()
    finally:
        for h in handles:
            h.remove()
        for n, p in params.items():
            p.requires_grad_(flags[n])
            p.grad = None
        model.train(was_training)
    return {n: a.div_(len(samples)) for n, a in acc.items()}


def gram_groups(
    modules: Sequence[tuple[str, nn.Linear]], budget_bytes: int, itemsize: int
) -> list[list[tuple[str, nn.Linear]]]:
    """The linear layers in consecutive groups whose in × in accumulators fit ``budget_bytes``
    (a layer larger than the budget alone in its group)."""
    groups: list[list[tuple[str, nn.Linear]]] = [[]]
    size = 0
    for name, m in modules:
        nbytes = m.in_features * m.in_features * itemsize
        if groups[-1] and size + nbytes > budget_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, m))
        size += nbytes
    return [g for g in groups if g]


@torch.no_grad()
def gram_pass(
    model: nn.Module,
    samples: Sequence[Sample],
    modules: Sequence[tuple[str, nn.Linear]],
    dtype: torch.dtype = torch.float64,
    progress: Callable[[Iterator[Any], str, int], Iterator[Any]] | None = None,
) -> dict[str, tuple[Tensor, int]]:
    """``{module name: (Σ xᵀx, n rows)}`` over the inputs x of ``modules`` on ``samples`` (one
    sample per forward, stopped once every module of the group has seen it)."""
    device = next(model.parameters()).device
    acc = {n: torch.zeros(m.in_features, m.in_features, dtype=dtype, device=device)
           for n, m in modules}  # fmt: skip
    rows = dict.fromkeys(acc, 0)
    seen: set[str] = set()
    handles = []
    for name, m in modules:

        def hook(mod: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(dtype)
            acc[name].addmm_(x.T, x)
            rows[name] += x.shape[0]
            seen.add(name)
            if len(seen) == len(acc):
                raise _Stop

        handles.append(m.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    it: Iterator[Any] = iter(samples)
    if progress is not None:
        it = progress(it, f"Gram matrices ({len(modules)} layers)", len(samples))
    try:
        for s in it:
            seen.clear()
            with contextlib.suppress(_Stop):
                model(input_ids=_forward_ids(model, s, device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: (acc[n], rows[n]) for n in acc}


# ---------------------------------------------------------------------------------------------
# One specialist's file


def layout_of(
    model: nn.Module, kinds: Sequence[str]
) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """(tensor name, dtype, shape) of every tensor of the statistics file of ``model``."""
    out: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
    if "fisher" in kinds:
        for n, p in model.named_parameters():
            out.append((FISHER + n, torch.float32, tuple(p.shape)))
        out.append((FISHER_SQ_SUM, torch.float64, ()))
    if "gram" in kinds:
        for n, m in linear_modules(model):
            out.append((f"{GRAM}{n}.weight", torch.float32, (m.in_features, m.in_features)))
            out.append((f"{GRAM_ROWS}{n}.weight", torch.int64, ()))
    return out


def compute_statistics(
    model: nn.Module,
    samples: Sequence[Sample],
    out_file: str | Path,
    options: StatsOptions,
    *,
    metadata: Mapping[str, Any] | None = None,
    progress: Callable[[Iterator[Any], str, int], Iterator[Any]] | None = None,
) -> dict[str, Any]:
    """Compute ``options.kinds`` of ``model`` on ``samples`` and write them to ``out_file``
    (written tensor by tensor into a temporary file renamed into place when complete). Returns
    the file's metadata (what it holds and how it was made)."""
    if not samples:
        raise ValueError("no samples: the statistics need at least one training row")
    out_file = Path(out_file)
    kinds = options.kinds
    tokens = sum(len(s.ids) for s in samples)
    meta = {
        "format": FORMAT,
        "kinds": list(kinds),
        "num_samples": len(samples),
        "tokens": tokens,
        "response_tokens": sum(len(s.ids) - s.start for s in samples),
        "options": asdict(options),
        "fisher_loss": "sum over the chosen response's tokens of -log p(token | prefix), "
        "one sample per backward pass",
        **dict(metadata or {}),
    }
    layout = layout_of(model, kinds)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_file.name}.", dir=out_file.parent))
    try:
        writer = ShardWriter(
            tmp_dir, layout, 0, file_name=out_file.name,
            metadata={k: json.dumps(v) if not isinstance(v, str) else v for k, v in meta.items()},
        )  # fmt: skip
        try:
            if "fisher" in kinds:
                total = 0.0
                for n, f in fisher_pass(model, samples, progress).items():
                    total += float(f.to(torch.float64).square().sum())
                    writer.write(FISHER + n, f)
                writer.write(FISHER_SQ_SUM, torch.tensor(total, dtype=torch.float64))
            if "gram" in kinds:
                gdt = GRAM_DTYPES[options.gram_dtype]
                budget = int(options.gram_budget_gb * (1 << 30))
                itemsize = torch.empty((), dtype=gdt).element_size()
                for group in gram_groups(linear_modules(model), budget, itemsize):
                    for n, (g, rows) in gram_pass(model, samples, group, gdt, progress).items():
                        mean = g / rows if rows else g
                        writer.write(f"{GRAM}{n}.weight", mean.float())
                        writer.write(f"{GRAM_ROWS}{n}.weight", torch.tensor(rows))
        except BaseException:
            writer.abort()
            raise
        writer.close()
        os.replace(tmp_dir / out_file.name, out_file)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return meta


def load_specialist(
    path: str | Path,
    *,
    base: str | Path | None = None,
    tokenizer_from: str | Path | None = None,
    dtype: str = "float32",
    device: str = "cpu",
) -> tuple[Any, Any]:
    """(model, tokenizer) of a specialist folder; a LoRA adapter is merged into its base
    (``base``, else the one its ``adapter_config.json`` names) so the model holds full weights.
    The tokenizer is the folder's (an adapter's: its base's when it has none), or
    ``tokenizer_from``'s."""
    from hhh_bench.models.loading import adapter_base, load_causal_lm, load_tokenizer

    folder = Path(path)
    tok = load_tokenizer(tokenizer_from or folder)
    if is_adapter_folder(folder):
        from peft import PeftModel

        model = load_causal_lm(base or adapter_base(folder), dtype=dtype, device=device)
        model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    else:
        model = load_causal_lm(folder, dtype=dtype, device=device)
    return model, tok


def specialist_statistics(
    model_path: str | Path,
    rows: Sequence[Mapping[str, Any]],
    out_file: str | Path,
    options: StatsOptions,
    *,
    base: str | Path | None = None,
    tokenizer_from: str | Path | None = None,
    progress: Callable[[Iterator[Any], str, int], Iterator[Any]] | None = None,
) -> dict[str, Any]:
    """The statistics file of one specialist: ``options.num_samples`` of its training ``rows``
    (seeded), rendered and passed through the model loaded from ``model_path`` (a LoRA adapter
    merged into ``base`` first; see :func:`load_specialist`). Returns the file's metadata."""
    if not rows:
        raise ValueError(f"no training rows for the statistics of {model_path}")
    model, tok = load_specialist(
        model_path, base=base, tokenizer_from=tokenizer_from, dtype=options.dtype,
        device=options.device,
    )  # fmt: skip
    picked = select_rows(rows, options.num_samples, options.seed)
    samples = render_samples(tok, picked, options.max_length)
    ids = [str(r.get("id", i)) for i, r in enumerate(picked)]
    return compute_statistics(
        model, samples, out_file, options, metadata={"row_ids": ids}, progress=progress
    )
