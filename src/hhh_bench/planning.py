"""``hhh-bench plan [OVERRIDES...]``: every job a run would do, in order, which of them the
stage cache already holds, and what the others cost on a GPU profile, before anything runs.

One concept: a dry run of ``stage=all`` and its cost (docs/reproduce.md, "Planned cost").

The jobs are those of :func:`hhh_bench.pipeline.run_seed` for every seed: the data, the base,
one specialist per dimension, the oracle, every mixture configuration, every merge
configuration (grid points, then the emphases around the chosen one), every evaluation (the
selection split for each configuration, the report split for each choice), the report. A job is
*cached* when the stage cache holds its output and that output verifies: the planner computes
each stage's real key (the same function the run calls, with the cache in dry-run mode, so
nothing is computed or written); a job whose inputs are not cached yet cannot have its key
computed, and is *to run*. Costs follow the formulas of docs/reproduce.md: FLOPs from
parameters, tokens and passes, GPU-hours at a GPU profile's dense bf16 peak times a model FLOP
utilisation, memory per GPU for weights, gradients and optimizer states, disk for what is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

GPU_PROFILES: dict[str, tuple[float, float]] = {
    "A100": (312e12, 80.0),  # A100 SXM 80 GB: dense bf16 peak (FLOP/s), memory (GB)
    "H100": (989e12, 80.0),  # H100 SXM 80 GB
    "H200": (989e12, 141.0),  # H200 141 GB: the H100's compute, more memory
}
"""Dense (no sparsity) bf16 tensor-core peak and memory of each GPU profile, from the vendors'
data sheets."""

BUILTIN_ITEMS = {"truthfulqa_mc2": 817, "ifeval": 541, "mmlu": 14042, "arc_challenge": 1172,
                 "toxigen": 940}  # fmt: skip
"""Items of lm-eval's built-in tasks the suites use (their evaluated split's size)."""
ADAPTER_SHARE = 0.01
"""A LoRA adapter's size as a share of the model's (Llama-3-8B at r = 16 on its seven
projections: 42M parameters, 0.5%; saved in float32: about 1% of the bf16 model)."""
PUBLIC_ITEMS = {"helpful_prompts": 805, "truthfulqa_gen": 817, "xstest": 250, "halueval_qa": 10000}
"""The documented sizes of the public sets behind ``eval.data_files`` (conf/eval/harness_3h.yaml's
comments: AlpacaEval 805, TruthfulQA 817, XSTest's 250 safe prompts, HaluEval QA 10000), used
while a file is not on this machine; the others' sizes are unknown here."""
EVAL_TOKENS = {"toy3h": 64, "default": 512}
"""Tokens one evaluated item costs (prompt and answer, or the context of a choice), per suite
kind: a rough figure (docs/reproduce.md)."""


@dataclasses.dataclass
class Job:
    """One job of the plan and its cost (FLOPs on GPUs; memory per GPU and disk in bytes)."""

    seed: int
    stage: str
    name: str
    status: str = "to run"
    flops: float = 0.0
    gpus: int = 1
    mem: float = 0.0
    disk: float = 0.0
    note: str = ""


class NotPlanned(Exception):
    """A job's key cannot be computed: its inputs are not cached (or cannot be read here)."""


# ---------------------------------------------------------------------------------------------
# The cost model (docs/reproduce.md, "Planned cost")


def limited(n: int, limit: float | int | None) -> int:
    """The items lm-eval scores of a task of ``n`` items under ``eval.limit``: all (None), the
    first ``limit`` (an integer), or ``ceil(n · limit)`` (a fraction below 1), as lm-eval
    reads it."""
    if not limit:
        return n
    if isinstance(limit, float) and limit < 1.0:
        return int(math.ceil(n * limit))
    return min(n, int(limit))


def dtype_bytes(dtype: str | None) -> int:
    return 4 if str(dtype or "").replace("torch.", "") in ("float32", "fp32") else 2


def train_flops(n: float, pairs: int, tokens: int, *, kind: str, lora: bool, passes: float,
                checkpointing: bool, precompute_ref: bool) -> float:  # fmt: skip
    """FLOPs of one training run: per sequence of ``tokens`` tokens a forward pass is 2·N·T, a
    backward 4·N·T (activation and weight gradients) or, with LoRA, 2·N·T (the activation
    gradients through the frozen weights; the adapter's own are negligible), gradient
    checkpointing one more forward. DPO: the policy on chosen and rejected (2 sequences per
    pair) every pass, and the reference's forward on both, every pass, or once when its
    log-probs are precomputed. SFT: one sequence per example, no reference."""
    fwd = 2.0 * n * tokens
    step = fwd + (2.0 if lora else 4.0) * n * tokens + (fwd if checkpointing else 0.0)
    if kind == "sft":
        return pairs * passes * step
    reference = 2 * fwd * pairs * (1.0 if precompute_ref else passes)
    return 2 * pairs * passes * step + reference


def train_memory(n: float, *, lora: bool, dtype: str | None, gpus: int, sharded: bool,
                 precompute_ref: bool) -> float:  # fmt: skip
    """Bytes per GPU of weights, gradients and optimizer states (activations not counted).
    Full: weights and gradients in the model dtype (b bytes each), AdamW's two moments in
    fp32 (8 bytes) and an fp32 master copy when b < 4, plus the frozen reference's weights
    (none when its log-probs are precomputed); sharded over the GPUs under FSDP / ZeRO-3.
    LoRA: the frozen weights once (the reference is the same weights, adapter off)."""
    b = dtype_bytes(dtype)
    if lora:
        return b * n
    per = (2 * b + 8 + (4 if b < 4 else 0)) * n + (0 if precompute_ref else b * n)
    return per / gpus if sharded else per


def gpu_hours(flops: float, profile: str, mfu: float) -> float:
    peak, _ = GPU_PROFILES[profile]
    return flops / (peak * mfu) / 3600.0


def count_parameters(config: Mapping[str, Any]) -> int:
    """Parameters of the model a ``config.json`` describes: built on the meta device (no
    memory, no weights) by transformers and counted."""
    return _count(json.dumps(dict(config), sort_keys=True, default=str))


@functools.lru_cache(maxsize=8)
def _count(config_json: str) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = json.loads(config_json)
    d = {k: v for k, v in config.items() if not k.startswith("_") and k != "architectures"}
    cfg = AutoConfig.for_model(**d)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return int(sum(p.numel() for p in model.parameters()))


def model_config(cfg: Mapping[str, Any], base: Mapping[str, Any] | None,
                 data: Mapping[str, Any] | None) -> tuple[dict[str, Any], str]:  # fmt: skip
    """The base model's ``config.json`` and where it was read: the cached base output, the
    model's local folder or HF cache entry, the public config shipped for a stand-in
    (``models/standin_assets``), or a tiny model's spec (its vocabulary from the data)."""
    model = cfg.get("model") or {}
    for folder in ((base or {}).get("model_path"), (base or {}).get("path"), model.get("path")):
        if folder and (Path(str(folder)) / "config.json").is_file():
            return json.loads((Path(str(folder)) / "config.json").read_text()), str(folder)
    if model.get("kind") == "hub" and model.get("path"):
        from hhh_bench.core.hubref import cached_config, split_ref

        ident, pinned = split_ref(str(model["path"]))
        hit = cached_config(ident, model.get("revision") or pinned)
        if hit is not None:
            return json.loads(hit.read_text()), f"the HF cache ({ident})"
    asset = Path(__file__).parent / "models" / "standin_assets" / f"{model.get('name')}.json"
    if asset.is_file():
        return json.loads(asset.read_text()), f"the public config.json ({asset.name})"
    if model.get("kind") == "tiny":
        counts = ((data or {}).get("manifest") or {}).get("counts") or {}
        words = counts.get("vocab_size")
        if words is None and (cfg.get("data") or {}).get("kind") == "toy3h":
            # the data stage not run yet: the world's vocabulary, built in memory as that stage
            # would (battery 13, F13: 4 special tokens alone undercounted the model by ~24%)
            from hhh_bench.data.toy3h import Toy3HConfig, build_world

            world = (cfg.get("data") or {}).get("world") or {}
            words = len(
                build_world(Toy3HConfig.from_mapping(dict(world), complete=True)).vocabulary()
            )
        vocab = int(words or 0) + 4  # the word tokenizer's special tokens
        # the spec the base stage builds: a key left out takes TinyModelSpec's default there,
        # never LlamaConfig's (a 4096-wide model: battery 16, A4)
        from dataclasses import asdict

        from hhh_bench.models.spec import TinyModelSpec

        built = asdict(TinyModelSpec(**(model.get("spec") or {})))
        spec = {k: v for k, v in built.items() if k != "initializer_range"}
        return {"model_type": "llama", "vocab_size": vocab, **spec}, "model.spec"
    raise NotPlanned(f"no config.json for model {model.get('path')!r}")


# ---------------------------------------------------------------------------------------------
# The dry run


@contextlib.contextmanager
def dry_run() -> Iterator[None]:
    """The stage cache in dry-run mode (a missing output raises instead of being computed) and
    the console silent."""
    from hhh_bench.core import console
    from hhh_bench.core.stagecache import CACHE

    with console.silenced():
        CACHE.dry_run = True
        try:
            yield
        finally:
            CACHE.dry_run = False


def attempt(fn: Callable[[], Any]) -> tuple[Any, str]:
    """``fn()`` under the dry run: ``(its result, "cached")``, or ``(None, why not)``."""
    from hhh_bench.core.content import ContentMismatch
    from hhh_bench.core.stagecache import NotCached

    try:
        return fn(), "cached"
    except NotCached:
        return None, "to run"
    except ContentMismatch as e:
        return None, f"to run: its cached output is damaged ({str(e).splitlines()[0]})"
    except (NotPlanned, ValueError, OSError) as e:
        return None, f"to run: its key cannot be computed here ({str(e).splitlines()[0]})"


class Planner:
    """Walks one run config's jobs (:func:`plan`)."""

    def __init__(self, cfg: Any, profile: str, mfu: float, gpus: int) -> None:
        from hhh_bench.stages.common import to_dict

        self.cfg, self.plain = cfg, to_dict(cfg)
        self.profile, self.mfu, self.gpus = profile, mfu, gpus
        self.jobs: list[Job] = []
        self.why: list[str] = []
        self.n = 0.0
        self.source = ""

    # -- the parts of the cost that depend on the run's settings

    def params(self, base: Mapping[str, Any] | None, data: Mapping[str, Any] | None) -> None:
        conf, self.source = model_config(self.plain, base, data)
        self.n = float(count_parameters(conf))

    def pairs(self, data: Mapping[str, Any] | None, dims: Sequence[str]) -> int:
        """Training pairs of ``dims``: the data stage's counts when cached, else the config's
        (the toy world's ``pairs_per_dimension``; for public sets an upper bound: the cap per
        source times the sources, less the validation share)."""
        d = self.plain["data"]
        counts = ((data or {}).get("manifest") or {}).get("counts") or {}
        if counts.get("prefs"):
            return sum(int(counts["prefs"][x]["train"]) for x in dims)
        dims_counts = ((data or {}).get("manifest") or {}).get("dimensions") or {}
        if dims_counts:
            return sum(int(dims_counts[x]) if not isinstance(dims_counts[x], Mapping)
                       else int(dims_counts[x].get("train", 0)) for x in dims)  # fmt: skip
        if d.get("kind") == "toy3h":
            return int((d.get("world") or {}).get("pairs_per_dimension", 400)) * len(dims)
        cap = int(d.get("max_rows_per_source") or 0)
        frac = 1.0 - float(d.get("eval_fraction") or 0.0)
        return int(sum(cap * len((d.get("sources") or {}).get(x) or []) * frac for x in dims))

    def train_cost(self, job: Job, pairs: int, train: Mapping[str, Any], *, kind: str = "dpo",
                   examples_tokens: int | None = None, epochs: float | None = None) -> Job:  # fmt: skip
        lora = str(train.get("method", "full")) == "lora"
        gpus = max(1, int(train.get("num_processes") or 1), self.gpus if kind != "sft" else 1)
        steps = int(train.get("max_steps") or -1)
        per_step = int(train.get("batch_size", 1)) * int(train.get("grad_accum", 1)) * gpus
        passes = float(epochs if epochs is not None else train.get("epochs", 1))
        if steps > 0 and pairs:
            passes = steps * per_step / pairs
        tokens = int(examples_tokens or train.get("max_length") or 512)
        job.flops = train_flops(
            self.n, pairs, tokens, kind=kind, lora=lora, passes=passes,
            checkpointing=bool(train.get("gradient_checkpointing")),
            precompute_ref=bool(train.get("precompute_ref_log_probs")),
        )  # fmt: skip
        accel = str(train.get("accelerate_config") or "")
        job.gpus = gpus
        job.mem = train_memory(
            self.n, lora=lora, dtype=self.plain["model"].get("dtype"), gpus=gpus,
            sharded=("fsdp" in accel or "zero3" in accel),
            precompute_ref=bool(train.get("precompute_ref_log_probs")),
        )  # fmt: skip
        b = dtype_bytes(self.plain["model"].get("dtype"))
        full = not lora or bool(train.get("merge_adapter"))  # merged weights written too
        job.disk = b * self.n * (1.0 if full else 0.0) + (
            ADAPTER_SHARE * b * self.n if lora else 0.0
        )
        job.note = f"{pairs} pairs x {passes:g} passes x {tokens} tokens" if kind != "sft" else (
            f"{pairs} examples x {passes:g} passes x {tokens} tokens")  # fmt: skip
        return job

    def toy_suite(self) -> bool:
        """The evaluation suite is the toy world's (its items come from the data stage)."""
        return self.plain["eval"].get("name") == "toy3h"

    def eval_items(self, data: Mapping[str, Any] | None, split: str) -> tuple[int, list[str]]:
        """Items one evaluation scores on ``split``, and the tasks of unknown size left out:
        the toy world's counts (or its config's); else each data file's lines (the public
        set's documented size, :data:`PUBLIC_ITEMS`, while the file is not here) and the
        built-in tasks' sizes, capped by ``eval.limit``, times the split's share of
        ``eval.holdout`` (the selection split: ``fraction``; the report split: the rest)."""
        e = self.plain["eval"]
        limit = e.get("limit")
        counts = ((data or {}).get("manifest") or {}).get("counts") or {}
        if self.toy_suite():  # capped by eval.limit as every task is (battery 20, B-F6)
            if counts.get("eval"):
                return sum(limited(int(v.get(split, 0)), limit)
                           for v in counts["eval"].values()), []  # fmt: skip
            world = self.plain["data"].get("world") or {}
            return 6 * limited(int(world.get("eval_items_per_kind", 60)), limit), []
        sizes: dict[str, int | None] = {}
        for name, path in (e.get("data_files") or {}).items():
            p = Path(str(path))
            if p.is_file():
                sizes[name] = sum(1 for line in p.read_text().splitlines() if line.strip())
            else:
                sizes[name] = PUBLIC_ITEMS.get(name)
        if e.get("include_defaults", True):
            sizes.update(BUILTIN_ITEMS)
        unknown = sorted(n for n, v in sizes.items() if v is None)
        total = sum(limited(v, limit) for v in sizes.values() if v is not None)
        fraction = float((e.get("holdout") or {}).get("fraction") or 0.0)
        if fraction:
            total = round(total * (fraction if split == e.get("select_split") else 1 - fraction))
        return total, unknown

    def eval_cost(self, job: Job, data: Mapping[str, Any] | None, split: str) -> Job:
        """Each scored item one pass of :data:`EVAL_TOKENS` tokens through the model (2·N·T);
        the weights in the model's dtype on the GPU."""
        items, unknown = self.eval_items(data, split)
        tokens = EVAL_TOKENS["toy3h" if self.toy_suite() else "default"]
        job.flops = 2.0 * self.n * tokens * items
        job.mem = dtype_bytes(self.plain["model"].get("dtype")) * self.n
        job.note = f"{items} items x {tokens} tokens" + (
            f"; left out, size unknown: {', '.join(unknown)}" if unknown else ""
        )
        return job

    def add(self, job: Job) -> Job:
        """The job, its status's reason (``to run: why``) moved under the table."""
        status, sep, why = job.status.partition(": ")
        if sep:
            job.status = status
            self.why.append(f"job {len(self.jobs) + 1} ({job.stage} {job.name}): {why}")
        self.jobs.append(job)
        return job

    def mix_pairs(self, data: Mapping[str, Any] | None, dims: Sequence[str],
                  budget: Any) -> int:  # fmt: skip
        """A mixture's training pairs: its ``budget`` (``all_specialists``: the specialists'
        pairs together; ``per_specialist``: their mean; an int: that many)."""
        total = self.pairs(data, dims)
        if budget in (None, "all_specialists"):
            return total
        if budget == "per_specialist":
            return total // max(len(dims), 1)
        return int(budget)


def plan(
    cfg: Any, *, profile: str = "H100", mfu: float = 0.4, gpus: int = 1
) -> tuple[list[Job], Planner]:
    """Every job of ``stage=all`` for ``cfg`` (a composed config made ready by
    :func:`hhh_bench.pipeline.prepare`), cached or to run, with its cost on ``profile`` at
    ``mfu`` (``gpus``: GPUs per training job when ``train.num_processes`` is 1)."""
    from hhh_bench import pipeline as P

    if cfg.eval.get("judges"):  # the judges' settings, as the run checks them before any work
        from hhh_bench.evaluation.judged_eval import check_judges_early
        from hhh_bench.stages.common import to_dict

        check_judges_early(to_dict(cfg.eval), cfg.root)  # battery 13, F11
    pl = Planner(cfg, profile, mfu, gpus)
    seeds = P._seed_cfgs(cfg)
    P._check_base_seed(cfg, seeds)  # the run-level checks stage=all makes (battery 12, F15)
    with dry_run():
        for scfg, _same in seeds:
            SeedPlan(pl, scfg).walk()
    pl.add(Job(int(cfg.seed), "report", "report", "runs always", note="CPU"))
    return pl.jobs, pl


class SeedPlan:
    """The jobs of one seed, in :func:`hhh_bench.pipeline.run_seed`'s order."""

    def __init__(self, pl: Planner, scfg: Any) -> None:
        from hhh_bench.stages.common import to_dict

        self.pl, self.cfg = pl, scfg
        self.seed = int(scfg.seed)
        self.pcfg = to_dict(scfg.pipeline)
        self.dims = list(to_dict(scfg.data.dimensions))
        self.train = to_dict(scfg.train)
        self.report, self.select = scfg.eval.report_split, scfg.eval.select_split
        self.data: dict[str, Any] | None = None
        self.base: dict[str, Any] | None = None
        self.specialists: dict[str, Any] = {}

    def job(self, stage: str, name: str, status: str = "to run", **kw: Any) -> Job:
        return Job(self.seed, stage, name, status, **kw)

    def walk(self) -> None:
        from hhh_bench import pipeline as P
        from hhh_bench.stages.data import run_data
        from hhh_bench.validation import emphases

        pl, cfg = self.pl, self.cfg
        self.data, st = attempt(lambda: run_data(cfg))
        pl.add(self.job("data", "data", st, note="CPU"))
        if cfg.merge.get("models"):  # given specialists (experiment=released_specialists)
            self.walk_given()
        else:
            self.walk_base()
            self.walk_trained()
        emph = emphases(self.pcfg, self.dims)
        tuned = set((self.pcfg.get("tuning") or {}).get("mixtures") or [])
        for entry in [] if cfg.merge.get("models") else self.pcfg.get("mixtures") or []:
            name = entry["name"] if isinstance(entry, Mapping) else entry
            mix = dict(entry) if isinstance(entry, Mapping) else P.load_mix(cfg, name)
            shares = [{"shares": P.mix_shares(w, self.dims)} for w in emph] if name in tuned else []
            self.select_round(
                f"mix {name}", [{}], MixBuild(self, name, mix), lambda _best, s=shares: s
            )
        for method, spec in (self.pcfg.get("merge_grid") or {}).items():
            if spec is None:
                continue
            weights = [] if "weights" in spec else [P.merge_weights(w) for w in emph]
            self.select_round(
                method, P.grid(spec), MergeBuild(self, method),
                lambda best, ws=weights: [{**best, "weights": w} for w in ws],
            )  # fmt: skip

    def walk_base(self) -> None:
        from hhh_bench import pipeline as P

        pl, cfg, data = self.pl, self.cfg, self.data
        st = "to run"
        if data is not None:
            base_seed = self.pcfg.get("base_seed")
            bcfg = cfg if base_seed is None else P.with_values(cfg, {"seed": int(base_seed)})
            self.base, st = attempt(lambda: P._base(bcfg, data))
        job = pl.add(self.job("base", "base", st))
        if not pl.n:
            pl.params(self.base, data)
        sft = pl.plain["model"].get("base_sft") or {}
        enabled = sft.get("enabled")  # auto: a tiny model only (core.config.ModelConfig)
        if enabled is True or (enabled == "auto" and pl.plain["model"].get("kind") == "tiny"):
            counts = ((data or {}).get("manifest") or {}).get("counts") or {}
            n_sft = int((counts.get("sft") or {}).get("train", 0))
            pl.train_cost(job, n_sft, {**sft, "method": "full"}, kind="sft",
                          examples_tokens=int(sft.get("max_length") or 64),
                          epochs=float(sft.get("epochs", 1)))  # fmt: skip
            if not n_sft:
                job.note = "SFT examples known once the data stage ran"
        else:
            job.note = "theta0 as it is (no SFT)"
        model = P._model(self.base, "base", "base", self.seed) if self.base else None
        self.evaluate(model, "base", self.report)
        if self.select and self.select != self.report:
            self.evaluate(model, "base", self.select)

    def walk_given(self) -> None:
        """``merge.models`` given: nothing trained, the base and each given model evaluated
        (:func:`hhh_bench.pipeline.run_seed`'s first branch)."""
        from hhh_bench import pipeline as P

        pl = self.pl
        base, specialists, names = P._given(self.cfg)
        self.base, self.dims = base, list(names)
        if not pl.n:
            pl.params(None, self.data)
        pl.add(self.job("base", "base", "given", note="merge.base, as it is"))
        self.evaluate(P._model(base, "base", "base", self.seed), "base", self.report)
        if self.select and self.select != self.report:
            self.evaluate(P._model(base, "base", "base", self.seed), "base", self.select)
        for name, sp in specialists.items():
            self.specialists[name] = sp
            pl.add(self.job("train", f"{name} specialist", "given", note="merge.models, as it is"))
            self.evaluate(P._model(sp, "specialist", name, self.seed), f"{name} specialist",
                          self.report)  # fmt: skip

    def walk_trained(self) -> None:
        from hhh_bench import pipeline as P
        from hhh_bench.stages.common import to_dict
        from hhh_bench.stages.train import run_train

        pl, cfg, base, data = self.pl, self.cfg, self.base, self.data
        for d in self.dims:
            sp, st = (attempt(lambda d=d: run_train(cfg, base, data, dimensions=[d]))
                      if base is not None and data is not None else (None, "to run"))  # fmt: skip
            self.specialists[d] = sp
            job = self.job("train", f"{d} specialist", st)
            pl.add(pl.train_cost(job, pl.pairs(data, [d]), self.train))
            model = P._model(sp, "specialist", d, self.seed) if sp else None
            self.evaluate(model, f"{d} specialist", self.report)
        oracle = self.pcfg.get("oracle") or {}
        if not oracle.get("enabled", False):
            return
        values = {f"train.{k}": v for k, v in (oracle.get("train") or {}).items()}
        ocfg = P.with_values(cfg, values)
        mix = {**P.load_mix(cfg, oracle.get("mix", "uniform")), "budget": oracle.get("budget")}
        o, st = (attempt(lambda: run_train(ocfg, base, data, dimensions=self.dims, mix=mix,
                                           name="oracle"))
                 if base is not None else (None, "to run"))  # fmt: skip
        pairs = pl.mix_pairs(data, self.dims, mix.get("budget"))
        pl.add(pl.train_cost(self.job("train", "oracle", st), pairs, to_dict(ocfg.train)))
        self.evaluate(P._model(o, "oracle", "oracle", self.seed) if o else None, "oracle",
                      self.report)  # fmt: skip

    def evaluate(self, model: Mapping[str, Any] | None, name: str, split: str) -> dict | None:
        """An evaluation job: cached when its model is and the eval stage holds its output."""
        from hhh_bench.stages.eval import run_eval

        job = self.job("eval", f"{name} ({split})")
        res = None
        if model is not None and self.data is not None:
            cfg, data = self.cfg, self.data
            noise = float(cfg.data.noise.flip_rate)
            res, job.status = attempt(
                lambda: run_eval(
                    cfg, {"noise_rate": noise, **model}, data, split=split, append=False
                )  # fmt: skip
            )
        self.pl.eval_cost(job, self.data, split)
        self.pl.add(job)
        return res

    def select_round(self, label: str, points: list[dict], build: Any, more: Any) -> None:
        """:func:`hhh_bench.pipeline._select`'s jobs: every point built and scored on the
        selection split, the configurations tried around the choice (known once every score
        of the first round is cached), the chosen one on the report split."""
        from hhh_bench import pipeline as P
        from hhh_bench.core import console

        split = self.select or self.report
        scored: list[tuple[float, dict]] = []
        complete = True

        def score(params: dict) -> None:
            nonlocal complete
            model = build(params)
            name = " ".join(x for x in (label, console.params_text(params)) if x)
            res = self.evaluate(model, name, split)
            if res is None:
                complete = False
            elif self.select:
                value = float(res["scores"][self.cfg.eval.select_by])
                scored.append((value, {**model, "grid_params": params}))

        for params in points:
            score(params)
        if complete and scored:
            for params in more(P.choose(scored)[1]["grid_params"]):
                score(params)
        else:
            for i in range(len(more(points[0]))):
                build.pending(f"{label} emphasis {i + 1} (after the choice)")
                self.evaluate(None, f"{label} emphasis {i + 1}", split)
        if self.select:
            chosen = P.choose(scored)[1] if complete and scored else None
            self.evaluate(chosen, f"{label}: chosen", self.report)


class MixBuild:
    """Trains (dry) one configuration of a mixing strategy: its train job, its model."""

    def __init__(self, sp: SeedPlan, name: str, mix: dict[str, Any]) -> None:
        self.sp, self.name, self.mix = sp, name, mix

    def pairs(self) -> int:
        return self.sp.pl.mix_pairs(self.sp.data, self.sp.dims, self.mix.get("budget"))

    def pending(self, label: str) -> None:
        sp = self.sp
        sp.pl.add(sp.pl.train_cost(sp.job("train", label), self.pairs(), sp.train))

    def __call__(self, params: dict[str, Any]) -> dict[str, Any] | None:
        from hhh_bench import pipeline as P
        from hhh_bench.core import console
        from hhh_bench.stages.train import run_train

        sp = self.sp
        m, st = None, "to run"
        if sp.base is not None and sp.data is not None:
            mix = {**self.mix, **params}
            m, st = attempt(lambda: run_train(sp.cfg, sp.base, sp.data, dimensions=sp.dims,
                                              mix=mix))  # fmt: skip
        label = " ".join(x for x in (f"mix {self.name}", console.params_text(params)) if x)
        sp.pl.add(sp.pl.train_cost(sp.job("train", label, st), self.pairs(), sp.train))
        return P._model(m, "mixture", f"mix: {self.name}", sp.seed) if m else None


class MergeBuild:
    """Merges (dry) one configuration of a merge method: its merge job, its model."""

    def __init__(self, sp: SeedPlan, method: str) -> None:
        self.sp, self.method = sp, method

    def pending(self, label: str) -> None:
        sp = self.sp
        b = dtype_bytes(sp.pl.plain["model"].get("dtype"))
        sp.pl.add(sp.job("merge", label, disk=b * sp.pl.n, note=MERGE_NOTE))

    def __call__(self, params: dict[str, Any]) -> dict[str, Any] | None:
        from hhh_bench import pipeline as P
        from hhh_bench.core import console

        sp = self.sp
        merged, st = None, "to run"
        if (
            sp.data is not None
            and sp.base is not None
            and all(sp.specialists.get(d) for d in sp.dims)
        ):
            from hhh_bench.stages.merge import run_merge

            mcfg = P.merge_config(sp.cfg, self.method, params)
            base = P.merge_input(sp.base)
            models = [P.merge_input(sp.specialists[d]) for d in sp.dims]
            merged, st = attempt(
                lambda: run_merge(mcfg, base=base, models=models, names=sp.dims, data=sp.data)
            )
        label = " ".join(x for x in (self.method, console.params_text(params)) if x)
        b = dtype_bytes(sp.pl.plain["model"].get("dtype"))
        sp.pl.add(sp.job("merge", label, st, disk=b * sp.pl.n, note=MERGE_NOTE))
        if merged is None:
            return None
        return P._merged_model(merged, self.method, sp.seed, params)


MERGE_NOTE = "streaming on the CPU or one GPU: not in the GPU-hours"


# ---------------------------------------------------------------------------------------------
# The table


def _size(x: float) -> str:
    if not x:
        return "-"
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= f:
            return f"{x / f:.1f} {unit}"
    return f"{x:.0f} B"


def _hours(h: float) -> str:
    if not h:
        return "-"
    return f"{h:.3g}" if h >= 0.001 else f"{h:.1e}"


def render(jobs: Sequence[Job], pl: Planner) -> str:
    """The job list with its marks and costs, then the totals."""
    peak, mem = GPU_PROFILES[pl.profile]
    head = ("#", "seed", "stage", "job", "status", "GPU-h", "GPUs", "mem/GPU", "disk", "how")
    rows = [head]
    for i, j in enumerate(jobs, 1):
        h = gpu_hours(j.flops, pl.profile, pl.mfu)
        warn = " (!)" if j.mem > mem * 1e9 else ""
        rows.append((str(i), str(j.seed), j.stage, j.name, j.status, _hours(h), str(j.gpus) if j.flops else "-",
                     _size(j.mem) + warn, _size(j.disk), j.note))  # fmt: skip
    widths = [max(len(r[c]) for r in rows) for c in range(len(head) - 1)]
    lines = [
        "  ".join(r[c].ljust(widths[c]) for c in range(len(head) - 1)) + "  " + r[-1] for r in rows
    ]
    todo = [j for j in jobs if j.status not in ("cached", "given")]
    unknown = sorted(
        {t for j in todo for t in j.note.partition("size unknown: ")[2].split(", ") if t}
    )
    total_h = sum(gpu_hours(j.flops, pl.profile, pl.mfu) for j in todo)
    all_h = sum(gpu_hours(j.flops, pl.profile, pl.mfu) for j in jobs)
    lines += ["", *pl.why] if pl.why else []
    lines += [
        "",
        f"model: {pl.n / 1e9:.3g}B parameters (from {pl.source}); profile {pl.profile} "
        f"({peak / 1e12:.0f} TFLOP/s dense bf16, {mem:.0f} GB) at MFU {pl.mfu:g}",
        f"jobs: {len(jobs)}, cached or given {len(jobs) - len(todo)}, to run {len(todo)}",
        f"GPU-hours to run: {total_h:.3g} (all jobs: {all_h:.3g}); disk to write: "
        f"{_size(sum(j.disk for j in todo))}; largest memory per GPU: {_size(max((j.mem for j in jobs), default=0))}"
        + (" (!: more than the profile's memory)" if any(j.mem > mem * 1e9 for j in jobs) else ""),
        *(
            [f"not in the totals: the evaluation sets of unknown size here ({', '.join(unknown)})"]
            if unknown
            else []
        ),
        "costs: docs/reproduce.md, 'Planned cost' (activations, judges and merges' CPU time not counted)",
    ]
    return "\n".join(lines)


def check_planned_stage(stage: str) -> None:
    """``plan`` lists the jobs of ``stage=all``; any other stage is refused by name (battery 13,
    F1: ``plan stage=report`` and ``plan stage=bogus`` printed the whole pipeline's 115 jobs)."""
    from hhh_bench.pipeline import STAGES

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {list(STAGES)}")
    if stage != "all":
        raise ValueError(
            f"hhh-bench plan lists the jobs of stage=all (every stage of the run, cached or "
            f"to run), not of stage={stage}: drop stage= to plan the whole run; a single "
            "stage is one job, run it as it is"
        )


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="hhh-bench plan",
        description="List every job of a run (stage=all) in order, mark the ones the stage cache "
        "holds, and estimate what the others cost on a GPU profile; nothing runs. "
        "docs/reproduce.md, 'Planned cost'.",
    )
    ap.add_argument(
        "overrides",
        nargs="*",
        help="the run's overrides, as for hhh-bench (experiment=paper_llama3 ...)",
    )
    ap.add_argument(
        "--gpu", default="H100", choices=sorted(GPU_PROFILES), help="GPU profile (default H100)"
    )
    ap.add_argument(
        "--mfu", type=float, default=0.4, help="model FLOP utilisation, in (0, 1] (default 0.4)"
    )
    ap.add_argument(
        "--gpus",
        type=int,
        default=1,
        help="GPUs per training job when train.num_processes is 1 (default 1)",
    )
    args = ap.parse_args(argv)
    if not 0 < args.mfu <= 1 or math.isnan(args.mfu):
        ap.error(f"--mfu {args.mfu}: give a share in (0, 1]")
    if args.gpus < 1:
        ap.error(f"--gpus {args.gpus}: give 1 or more")
    from hhh_bench.pipeline import compose_run

    try:
        cfg = compose_run(args.overrides)
        check_planned_stage(str(cfg.stage))
        from hhh_bench.stages.eval import results_path
        from hhh_bench.tracking.store import check_one_experiment

        check_one_experiment(results_path(cfg), str(cfg.name))  # as the run (battery 15, F9)
        jobs, pl = plan(cfg, profile=args.gpu, mfu=args.mfu, gpus=args.gpus)
    except (ValueError, OSError) as e:
        print(f"hhh-bench plan: error: {e}", file=sys.stderr)
        return 2
    print(render(jobs, pl))
    return 0
