"""DPO with TRL's ``DPOTrainer`` (full fine-tuning or LoRA), and held-out log-prob margins.

The reference model (DPO's π_ref) is always the model as it is when training starts:

* full fine-tuning: an explicit frozen deep copy is passed as ``ref_model``. With
  ``ref_model=None`` TRL would reload the reference from ``model.config._name_or_path``, which fails
  for an unsaved model and silently gives the *on-disk* weights for a model changed in memory
  (``shared/STACK.md``, "the reference-model trap"). :func:`train_dpo` makes the copy itself when
  the caller passes none.
* LoRA: ``ref_model=None``; TRL computes the reference with the adapter switched off.

Rows are reduced to ``prompt`` / ``chosen`` / ``rejected`` before ``Dataset.from_list`` (the
``meta`` dicts of different sources have different keys, which Arrow cannot put in one column),
and stay in TRL's conversational format, so TRL renders them with the tokenizer's chat template
(which ends assistant turns with EOS).

One concept: one DPO run through TRL and what it is measured by (its schedule checked, its
tokenizations and held-out margins reused within the process).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import math
import random
import shutil
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from hhh_bench.core.schema import PreferenceRow
from hhh_bench.train.common import LossCurve, cpu_defaults, quiet_console, report_to

DPO_COLUMNS: tuple[str, ...] = ("prompt", "chosen", "rejected")


def to_dpo_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Keep only the columns TRL needs, as plain lists of ``{"role", "content"}`` messages."""
    out = []
    for i, r in enumerate(rows):
        missing = [c for c in DPO_COLUMNS if c not in r]
        if missing:
            raise ValueError(f"DPO row {i} (id={r.get('id')!r}) lacks {missing}")
        out.append(
            {c: [{"role": m["role"], "content": m["content"]} for m in r[c]] for c in DPO_COLUMNS}
        )
    return out


def curriculum_order(
    rows: Sequence[PreferenceRow], order: Sequence[str], epochs: float, seed: int
) -> tuple[list[PreferenceRow], list[dict[str, Any]]]:
    """Lay out a curriculum as one fixed sequence: all passes over the first dimension's rows,
    then all passes over the second's, and so on (each pass freshly shuffled with ``seed``).

    ``epochs`` may be fractional: ``int(epochs)`` full passes, then the first
    ``round(frac * n)`` rows of one more shuffled pass. Trained with a sequential sampler and one
    epoch, this trains the dimensions one after another against one reference model, with one
    learning-rate schedule over the whole curriculum; at most one batch per phase boundary holds
    pairs of two phases.

    Returns:
        The ordered rows and one record per phase: ``{"dimension", "pairs", "rows"}`` where
        ``pairs`` counts distinct pairs of that dimension and ``rows`` the pairs after repetition.
    """
    if epochs <= 0:
        raise ValueError(f"epochs must be > 0, got {epochs}")
    rng = random.Random(f"hhh-bench-curriculum-{seed}")
    by_dim: dict[str, list[PreferenceRow]] = {d: [] for d in order}
    for r in rows:
        if r["dimension"] not in by_dim:
            raise ValueError(
                f"row {r.get('id')!r} has dimension {r['dimension']!r}, not in order {list(order)}"
            )
        by_dim[r["dimension"]].append(r)
    full, frac = int(epochs), epochs - int(epochs)
    out: list[PreferenceRow] = []
    phases = []
    for d in order:
        pool = by_dim[d]
        seq: list[PreferenceRow] = []
        for _ in range(full):
            p = list(pool)
            rng.shuffle(p)
            seq += p
        if frac > 0:
            p = list(pool)
            rng.shuffle(p)
            seq += p[: int(math.floor(frac * len(p) + 0.5))]
        out += seq
        phases.append({"dimension": d, "pairs": len(pool), "rows": len(seq)})
    empty = [ph for ph in phases if ph["pairs"] and not ph["rows"]]
    if empty:  # battery 21, A-F3/F4/F5: a phase skipped without a word (0 steps, weights never
        # saved, LoRA dropped when it was the first, a StopIteration from TRL under one schedule)
        raise ValueError(
            f"train.epochs={epochs:g} lays out no row of the curriculum's "
            + ", ".join(f"{ph['dimension']} phase ({ph['pairs']} pairs)" for ph in empty)
            + f" (round({epochs:g} × pairs) = 0): every phase must train; raise train.epochs to "
            f"at least {0.5 / min(ph['pairs'] for ph in empty):.2g}"
        )
    return out, phases


def frozen_copy(model: Any) -> Any:
    """A deep copy of ``model`` in eval mode with gradients off: the DPO reference."""
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def train_dpo(
    model: Any,
    tokenizer: Any,
    rows: Sequence[PreferenceRow],
    out_dir: str | Path,
    *,
    ref_model: Any | None = None,
    lora: Any | None = None,
    beta: float = 0.1,
    loss_type: str | Sequence[str] = "sigmoid",
    loss_weights: Sequence[float] | None = None,
    learning_rate: float = 2e-4,
    epochs: float = 3.0,
    max_steps: int = -1,
    batch_size: int = 16,
    grad_accum: int = 1,
    max_length: int | None = 64,
    lr_scheduler_type: str = "cosine",
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str = "cpu",
    bf16: bool = False,
    gradient_checkpointing: bool = False,
    logger: str | None = None,
    logging_steps: int = 5,
    run_name: str | None = None,
    curriculum: Sequence[str] | None = None,
    phase_schedule: str = "per_phase",
    phase_reference: str = "base",
    precompute_ref_log_probs: bool = False,
    save_to: str | Path | None = None,
    extra_args: Mapping[str, Any] | None = None,
) -> tuple[Any, LossCurve]:
    """DPO-train ``model`` on preference ``rows``; return the trained model and its loss curve.

    Args:
        model: the policy (a ``PreTrainedModel``; wrapped by peft here when ``lora`` is given).
        tokenizer: its tokenizer, with a chat template.
        rows: schema rows (:mod:`hhh_bench.core.schema`); only prompt/chosen/rejected are used.
        out_dir: the trainer's scratch folder (nothing is checkpointed there).
        ref_model: the frozen reference for full fine-tuning; None → a frozen deep copy of
            ``model`` as it is now. Must stay None with LoRA (the adapter is switched off instead).
        lora: a peft ``LoraConfig`` (or a ``train.lora`` mapping) for LoRA; None: full fine-tuning.
        beta: DPO's β (deviation from the reference; higher = closer).
        loss_type: TRL loss type(s): ``sigmoid`` (DPO), ``ipo``, ``hinge``, ...; a
            list combines them, e.g. ``["sigmoid", "sft"]`` adds the NLL of the chosen answer
            (RPO-style), weighted by ``loss_weights``.
        loss_weights: one weight per entry of ``loss_type`` (None: all 1).
        learning_rate: peak learning rate.
        epochs: passes over ``rows`` (ignored when ``max_steps > 0``).
        max_steps: optimizer steps; -1: use ``epochs``.
        batch_size: pairs per device per forward pass.
        grad_accum: forward passes per optimizer step.
        max_length: truncation of prompt + response, in tokens.
        lr_scheduler_type: ``cosine`` | ``linear`` | ``constant`` | ...
        warmup_ratio: share of the steps spent warming up.
        weight_decay: AdamW weight decay.
        seed: seed of the trainer (data order, dropout, adapter init).
        device: ``cpu`` or ``cuda``.
        bf16: bf16 mixed precision (GPU).
        gradient_checkpointing: trade compute for memory (GPU, large models).
        logger: ``wandb`` (offline unless logged in / WANDB_MODE set) or None / ``none``.
        logging_steps: log loss and rewards every this many steps.
        run_name: the run's name in W&B.
        curriculum: train dimensions in this order, one after another (``sequential`` mixing;
            see :func:`curriculum_order`); None: shuffled.
        phase_schedule: with a curriculum, ``per_phase`` (one trainer per phase, each with its
            own warmup and decay, so every phase reaches ``learning_rate``; ``max_steps`` > 0
            is shared out over the phases by their rows) or ``one`` (one schedule over the
            whole curriculum: the last phases train at the tail of the decay).
        phase_reference: with ``per_phase``, the DPO reference of each phase: ``base`` (the
            model before the first phase, for every phase) or ``phase`` (the model as the
            phase starts; full fine-tuning only: with LoRA the reference is the base with the
            adapter off).
        precompute_ref_log_probs: compute the reference log-probs once up front (saves memory).
        save_to: save the trained weights and tokenizer there (:func:`save_trained`; the adapter
            only, for LoRA).
        extra_args: any further ``DPOConfig`` fields (they win over the ones set here).

    Returns:
        ``(model, curve)``: the trained model (a ``PeftModel`` with LoRA) and its log records.
    """
    from hhh_bench.train.lora import lora_config_from

    if not rows:
        raise ValueError("no preference pairs to train on")
    peft_config = lora
    if isinstance(lora, Mapping):
        peft_config = lora_config_from(lora)
    if peft_config is None and ref_model is None:
        ref_model = frozen_copy(model)
    if peft_config is not None and ref_model is not None:
        raise ValueError(
            "with LoRA pass ref_model=None: the reference is the model with the adapter off"
        )
    settings = {
        "beta": beta, "loss_type": loss_type, "loss_weights": loss_weights,
        "learning_rate": learning_rate, "batch_size": batch_size, "grad_accum": grad_accum,
        "max_length": max_length, "lr_scheduler_type": lr_scheduler_type,
        "warmup_ratio": warmup_ratio, "weight_decay": weight_decay, "seed": seed,
        "logging_steps": logging_steps, "logger": logger, "run_name": run_name, "bf16": bf16,
        "precompute_ref_log_probs": precompute_ref_log_probs, "device": device,
        "gradient_checkpointing": gradient_checkpointing, "extra_args": extra_args,
        "save_to": save_to,
    }  # fmt: skip
    if phase_schedule not in ("per_phase", "one"):
        raise ValueError(f"phase_schedule must be 'per_phase' or 'one', got {phase_schedule!r}")
    if phase_reference not in ("base", "phase"):
        raise ValueError(f"phase_reference must be 'base' or 'phase', got {phase_reference!r}")
    if curriculum is not None and phase_reference == "phase":
        if phase_schedule != "per_phase":
            raise ValueError("phase_reference='phase' needs phase_schedule='per_phase'")
        if peft_config is not None:
            raise ValueError(
                "phase_reference='phase' needs full fine-tuning: with LoRA the DPO reference is "
                "the base model with the adapter off (use phase_reference='base')"
            )
    curve = LossCurve()
    if curriculum is not None and phase_schedule == "per_phase":
        ordered, phases = curriculum_order(rows, curriculum, epochs, seed)
        total, start = len(ordered), 0
        # max_steps > 0 shared out over the phases by their rows, one step each at least
        steps_of = [max(1, round(max_steps * ph["rows"] / total)) if max_steps > 0 else -1
                    for ph in phases]  # fmt: skip
        shared = [n for n, ph in zip(steps_of, phases, strict=True) if ph["rows"]]
        if max_steps > 0 and sum(shared) != max_steps:  # battery 16, A17: said, and recorded
            import logging

            logging.getLogger("hhh_bench").warning(
                "train.max_steps=%d shared out over the curriculum's %d phases by their rows "
                "(one step each at least): %s, %d steps in all",
                max_steps, len(shared), shared, sum(shared),
            )  # fmt: skip
        curve.phase_steps = shared if max_steps > 0 else None
        for i, ph in enumerate(phases):
            part = ordered[start : start + ph["rows"]]
            start += ph["rows"]
            if not part:
                continue
            if phase_reference == "phase" and i > 0:
                ref_model = frozen_copy(model)
            curve.phase, curve.offset = ph["dimension"], curve.last_step
            last = i == len(phases) - 1
            model = _fit(
                model, tokenizer, part, out_dir, ref_model=ref_model,
                peft_config=peft_config if start == ph["rows"] else None,  # the first phase
                curve=curve, sampling="sequential",
                epochs=1.0, max_steps=steps_of[i],
                settings=settings if last else {**settings, "save_to": None},
            )  # fmt: skip
    else:
        ordered, sampling, n_epochs = rows, "random", epochs
        if curriculum is not None:
            ordered, _ = curriculum_order(rows, curriculum, epochs, seed)
            sampling, n_epochs = "sequential", 1.0
        model = _fit(
            model, tokenizer, ordered, out_dir, ref_model=ref_model, peft_config=peft_config,
            curve=curve, sampling=sampling, epochs=n_epochs, max_steps=max_steps,
            settings=settings,
        )  # fmt: skip
    return model, curve


def _fit(
    model: Any,
    tokenizer: Any,
    rows: Sequence[PreferenceRow],
    out_dir: str | Path,
    *,
    ref_model: Any,
    peft_config: Any,
    curve: LossCurve,
    sampling: str,
    epochs: float,
    max_steps: int,
    settings: Mapping[str, Any],
) -> Any:
    """One DPO trainer over ``rows`` (its own schedule); returns the trained model, saved to
    ``settings["save_to"]`` when set."""
    from datasets import Dataset
    from trl import DPOConfig

    s = settings
    ds = Dataset.from_list(to_dpo_rows(rows))
    args = DPOConfig(
        output_dir=str(out_dir),
        beta=s["beta"],
        loss_type=[s["loss_type"]] if isinstance(s["loss_type"], str) else list(s["loss_type"]),
        loss_weights=list(s["loss_weights"]) if s["loss_weights"] is not None else None,
        learning_rate=s["learning_rate"],
        num_train_epochs=epochs,
        max_steps=max_steps,
        per_device_train_batch_size=s["batch_size"],
        gradient_accumulation_steps=s["grad_accum"],
        max_length=s["max_length"],
        lr_scheduler_type=s["lr_scheduler_type"],
        warmup_steps=s["warmup_ratio"],
        weight_decay=s["weight_decay"],
        seed=s["seed"],
        data_seed=s["seed"],
        logging_steps=s["logging_steps"],
        report_to=report_to(s["logger"]),
        run_name=s["run_name"],
        bf16=s["bf16"],
        fp16=False,
        precompute_ref_log_probs=s["precompute_ref_log_probs"],
        train_sampling_strategy=sampling,
        **{
            **cpu_defaults(s["device"]),
            "gradient_checkpointing": s["gradient_checkpointing"],
            **dict(s["extra_args"] or {}),
        },
    )
    shared = None
    if s["precompute_ref_log_probs"] and args.world_size > 1:
        ds, shared = _on_disk_for_every_rank(ds, Path(out_dir) / "dpo_dataset")
    try:
        trainer = _trainer_class()(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=ds,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[curve],
        )
    except (ValueError, RuntimeError) as e:
        if "Target modules" in str(e) and peft_config is not None:  # battery 12, F19
            raise ValueError(
                f"train.lora.target_modules={sorted(peft_config.target_modules or [])}: "
                f"{_unmatched_modules(model, peft_config)} (peft: {e})"
            ) from None
        if "non-empty list of Tensors" not in str(e):
            raise
        raise ValueError(
            f"train.max_length={s['max_length']} leaves some pairs no response token (TRL "
            "truncates each prompt + response to max_length tokens): raise train.max_length "
            "above the longest prompt's length in tokens"
        ) from e
    kept = len(trainer.train_dataset) if trainer.train_dataset is not None else len(ds)
    if kept < len(ds):  # TRL drops a pair whose prompt alone fills max_length
        curve.dropped_pairs += len(ds) - kept
        logging.getLogger("hhh_bench").warning(
            "train.max_length=%s: TRL left out %d of %d pairs whose prompt has max_length "
            "tokens or more; %d train (recorded as pairs_dropped_by_max_length in "
            "train_info.json); raise train.max_length to train on every pair",
            s["max_length"], len(ds) - kept, len(ds), kept,
        )  # fmt: skip
    peft_configs = getattr(trainer.model, "peft_config", None) or {}
    if "ref" in peft_configs and ref_model is None and peft_config is None:
        # A later phase of a LoRA curriculum: TRL took the model's adapter as it stands for a
        # frozen "ref" copy, the reference. The curriculum's reference is θ0 (the base with the
        # adapter off, as in the first phase): without a "ref" adapter TRL computes the
        # reference log-probs with the adapters disabled.
        trainer.model.delete_adapter("ref")
    quiet_console(trainer)
    trainer.train()
    _check_learned(trainer, s)
    if shared is not None:
        trainer.accelerator.wait_for_everyone()
        if trainer.accelerator.is_main_process:
            shutil.rmtree(shared, ignore_errors=True)
    if s["save_to"] is not None:
        save_trained(trainer, tokenizer, s["save_to"])
    return trainer.model


def _unmatched_modules(model: Any, peft_config: Any) -> str:
    """What a LoRA ``target_modules`` list matches none of: the model's linear layers' names."""
    import torch

    names = sorted({n.rsplit(".", 1)[-1] for n, mod in model.named_modules()
                    if isinstance(mod, torch.nn.Linear)})  # fmt: skip
    return (
        f"no module of the model has such a name; its linear layers are {names} (or give "
        "all-linear)"
    )


def _check_learned(trainer: Any, s: Mapping[str, Any]) -> None:
    """Refuse a run whose learning-rate schedule gave every optimizer step a rate of 0 (battery
    12, F7: one step with warmup, which transformers' warmup starts at 0, wrote θ0 itself as
    the specialist): nothing was learned, so nothing is saved as trained."""
    steps = int(trainer.state.global_step)
    lambdas = getattr(trainer.lr_scheduler, "lr_lambdas", None)
    if not steps or not lambdas:  # not a LambdaLR: no schedule to read
        return
    if all(lam(k) == 0 for lam in lambdas for k in range(steps)):
        raise ValueError(
            f"train: the learning-rate schedule gave each of its {steps} optimizer step(s) a "
            f"learning rate of 0 (train.warmup_ratio={s['warmup_ratio']} warms up from 0 over "
            "the first step(s)): nothing was learned and the model would be its start itself; "
            "train for more steps (train.max_steps, train.epochs, more pairs or a smaller "
            "train.batch_size) or set train.warmup_ratio=0"
        )


# (tokenization key, row as JSON) -> TRL's (prompt_ids, chosen_ids, rejected_ids) of the row, or
# None where TRL dropped it (its prompt fills max_length): a toy seed trains 13 DPO runs on ~1,300
# distinct pairs (the specialists' 1,200 again in every mixture), and TRL tokenizing every row
# of every run was 5% of a seed's time
_TOKENIZED: OrderedDict[tuple[str, str], tuple[list[int], list[int], list[int]] | None] = (
    OrderedDict()
)
_TOKENIZED_MAX = 200_000


def tokenization_key(
    tokenizer: Any, max_length: int | None = None, truncation_mode: str = ""
) -> str | None:
    """A hash of what decides how TRL's DPO tokenizes a conversational pair: the tokenizer's
    class, its fast tokenizer's full serialisation (vocabulary, merges, normaliser,
    pre-tokeniser, post-processor, added tokens), chat template and special tokens, and the
    length TRL drops pairs at. Two loads of one tokenizer folder share it (the path is left
    out). None for a tokenizer without a fast backend (its rows are not remembered)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    h = hashlib.sha256()
    for part in (
        type(tokenizer).__qualname__,
        backend.to_str(),
        repr(getattr(tokenizer, "chat_template", None)),
        repr(sorted(tokenizer.special_tokens_map.items())),
        repr(getattr(tokenizer, "split_special_tokens", None)),
        repr((max_length, truncation_mode)),
    ):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _trainer_class() -> type:
    """TRL's ``DPOTrainer`` whose dataset preparation tokenizes each distinct pair once per
    process (:func:`_prepare_once`); training itself is TRL's, unchanged."""
    from trl import DPOTrainer

    class SharedTokenizationDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # type: ignore[no-untyped-def]
            return _prepare_once(
                super()._prepare_dataset, dataset, processing_class, args, dataset_name
            )

    return SharedTokenizationDPOTrainer


def _prepare_once(prepare: Any, dataset: Any, tokenizer: Any, args: Any, name: str) -> Any:
    """What TRL's ``_prepare_dataset`` (``prepare``) returns for ``dataset``, with TRL itself
    tokenizing only the rows this process has not tokenized before with the same
    :func:`tokenization_key`: the same columns, the same rows in the same order, the same
    token ids (TRL tokenizes a row on its own), the rows TRL drops left out. A dataset that is
    not our ``prompt``/``chosen``/``rejected`` rows goes to ``prepare`` as it is."""
    from datasets import Dataset

    if not isinstance(dataset, Dataset) or list(dataset.column_names) != list(DPO_COLUMNS):
        return prepare(dataset, tokenizer, args, name)
    if getattr(args, "world_size", 1) > 1:  # several ranks: TRL's reference log-probs are
        # cached beside the dataset's files, which every rank must share (_on_disk_for_every_rank);
        # a dataset rebuilt here would live in each process's own temporary folder
        return prepare(dataset, tokenizer, args, name)
    key = tokenization_key(tokenizer, args.max_length, args.truncation_mode)
    if key is None:
        return prepare(dataset, tokenizer, args, name)
    rows = dataset.to_list()
    keys = [(key, json.dumps(r, sort_keys=True)) for r in rows]
    first: dict[tuple[str, str], int] = {}
    for i, k in enumerate(keys):
        if k not in _TOKENIZED:
            first.setdefault(k, i)
    if first:
        todo = list(first.values())
        part = Dataset.from_list([rows[i] for i in todo]).add_column("_row", list(range(len(todo))))
        done = prepare(part, tokenizer, args, name)
        ids = {
            j: (p, c, r)
            for j, p, c, r in zip(
                done["_row"], done["prompt_ids"], done["chosen_ids"], done["rejected_ids"],
                strict=True,
            )
        }  # fmt: skip
        for j, i in enumerate(todo):
            _TOKENIZED[keys[i]] = ids.get(j)
    got = [(r, _TOKENIZED[k]) for r, k in zip(rows, keys, strict=True)]
    for k in keys:
        _TOKENIZED.move_to_end(k)
    while len(_TOKENIZED) > _TOKENIZED_MAX:
        _TOKENIZED.popitem(last=False)
    kept = [(r, v) for r, v in got if v is not None]
    if not kept:  # TRL's own answer (and message) for a dataset it leaves empty
        return prepare(dataset, tokenizer, args, name)
    columns: dict[str, list[Any]] = {c: [r[c] for r, _ in kept] for c in DPO_COLUMNS}
    for n, c in enumerate(("prompt_ids", "chosen_ids", "rejected_ids")):
        columns[c] = [list(v[n]) for _, v in kept]
    return Dataset.from_dict(columns)


def _on_disk_for_every_rank(ds: Any, path: Path) -> tuple[Any, str]:
    """The dataset saved by rank 0 (in its output folder) and loaded on every rank.

    With ``precompute_ref_log_probs`` TRL caches the reference log-probs in a file beside the
    dataset's own cache files, written by rank 0 and read by every rank; an in-memory dataset's
    cache folder is a temporary folder of each process, which the other ranks cannot open
    (``Failed to open local file '/tmp/hf_datasets-...'`` under ``accelerate launch``).
    """
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list
    from datasets import load_from_disk

    state = PartialState()
    where = [str(path)]
    broadcast_object_list(where, from_process=0)
    if state.is_main_process:
        ds.save_to_disk(where[0])
    state.wait_for_everyone()
    return load_from_disk(where[0]), where[0]


def save_trained(trainer: Any, tokenizer: Any, out_dir: str | Path) -> None:
    """Save the trained weights (the adapter only, for a peft model) and the tokenizer.

    In one process: ``save_pretrained`` (safetensors). Under ``accelerate launch`` (FSDP, ZeRO-3,
    DDP): ``trainer.save_model``, which gathers sharded weights and writes on the main process.
    """
    out = Path(out_dir)
    if trainer.accelerator.num_processes > 1:
        trainer.save_model(str(out))
        if trainer.accelerator.is_main_process:
            # a pickle; provenance.json holds the config
            (out / "training_args.bin").unlink(missing_ok=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


# ---------------------------------------------------------------------------------------------
# Held-out log-prob margins
# ---------------------------------------------------------------------------------------------


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _sequences(tokenizer: Any, row: Mapping[str, Any]) -> list[tuple[list[int], int]]:
    """(token ids of prompt+response, index where the response starts) for chosen and rejected,
    rendered with the chat template exactly as TRL renders them for training."""

    def ids(msgs: list[Mapping[str, str]], gen: bool) -> list[int]:
        text = tokenizer.apply_chat_template(list(msgs), tokenize=False, add_generation_prompt=gen)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prompt = ids(row["prompt"], True)
    out = []
    for side in ("chosen", "rejected"):
        full = ids(list(row["prompt"]) + list(row[side]), False)
        out.append((full, max(1, min(_common_prefix(prompt, full), len(full) - 1))))
    return out


# (tokenization key, pair as JSON) -> _sequences of the pair: the held-out margins of every trained
# model of a seed are measured on the same validation pairs
_SEQUENCES: OrderedDict[tuple[str, str], list[tuple[list[int], int]]] = OrderedDict()


def _sequences_once(
    tokenizer: Any, row: Mapping[str, Any], key: str | None
) -> list[tuple[list[int], int]]:
    """:func:`_sequences`, remembered per :func:`tokenization_key` and pair (None: not
    remembered); the lists handed out are copies."""
    if key is None:
        return _sequences(tokenizer, row)
    k = (key, json.dumps([row[c] for c in DPO_COLUMNS], sort_keys=True))
    hit = _SEQUENCES.get(k)
    if hit is None:
        hit = _sequences(tokenizer, row)
        _SEQUENCES[k] = hit
        if len(_SEQUENCES) > _TOKENIZED_MAX:
            _SEQUENCES.popitem(last=False)
    return [(list(ids), start) for ids, start in hit]


@torch.no_grad()
def logprob_margins(
    model: Any, tokenizer: Any, rows: Sequence[Mapping[str, Any]], batch_size: int = 64
) -> list[float]:
    """``log π(chosen | prompt) − log π(rejected | prompt)`` per pair (summed token log-probs,
    EOS included), for a model in memory. Positive: the model prefers the chosen response."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seqs = [s for r in rows for s in _sequences_once(tokenizer, r, tokenization_key(tokenizer))]
    logps: list[float] = []
    step = max(2, 2 * (batch_size // 2))
    for start in range(0, len(seqs), step):
        batch = seqs[start : start + step]
        width = max(len(s) for s, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (s, _) in enumerate(batch):  # right padding keeps positions aligned
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
        for i, (s, start_at) in enumerate(batch):
            lp = torch.log_softmax(logits[i, start_at - 1 : len(s) - 1].float(), dim=-1)
            tgt = torch.tensor(s[start_at:], device=lp.device)
            logps.append(float(lp.gather(-1, tgt[:, None]).sum()))
    if was_training:
        model.train()
    return [logps[2 * i] - logps[2 * i + 1] for i in range(len(rows))]


def margin_summary(margins: Sequence[float]) -> dict[str, float | None]:
    """Mean margin, share of pairs with a positive margin (accuracy) and count; over no pair,
    ``mean`` and ``acc`` are None (null in train_info.json, never a bare NaN: battery 12, F8)."""
    if not margins:
        return {"mean": None, "acc": None, "n": 0.0}
    return {
        "mean": float(sum(margins) / len(margins)),
        "acc": float(sum(m > 0 for m in margins) / len(margins)),
        "n": float(len(margins)),
    }
