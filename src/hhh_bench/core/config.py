"""One frozen dataclass per config group: the single place where defaults live.

One concept: the typed schema of the config groups (their fields, defaults and ranges).

The YAML files under ``conf/`` document each option and hold what differs from these defaults;
the stages read a group through :func:`load` (``TrainConfig``, ``EvalConfig``, ...), never with
``.get(key, default)``. Unknown keys are refused with the valid ones listed (so
``+train.learnin_rate=0.1`` fails instead of training with the default), types are checked, and
ranges are validated in ``__post_init__``.

This is the schema only: it imports no library and no registry. What needs one (the merge
method's knobs, every grid point, the mixing strategies, the toy world's knobs) is checked one
floor up, by :func:`hhh_bench.validation.validate_run`, before any stage runs.

Library code (``merging``, ``data``, ``evaluation``) does not import this module's callers'
Hydra: everything here takes plain mappings (``OmegaConf.to_container`` of a group).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from hhh_bench.core.partition import Partition
from hhh_bench.core.paths import accelerate_config_file
from hhh_bench.core.schema import DIMENSIONS  # the one definition, report order
from hhh_bench.core.sizes import parse_size
from hhh_bench.core.typed import check_fields, from_mapping, param

T = TypeVar("T")


def _post(obj: Any, group: str) -> None:
    check_fields(obj, lambda name: f"{group}.{name}")


DEVICE_FORMS = "cpu, cuda, cuda:N (N a GPU index) or mps"


def check_device(where: str, value: Any) -> None:
    """A torch device the stages accept (``cpu``, ``cuda``, ``cuda:N``, ``mps``), or raise
    naming ``where`` (``model.device``)."""
    if not isinstance(value, str) or not re.fullmatch(r"cpu|mps|cuda(:\d+)?", value):
        raise ValueError(f"{where}={value!r} is not a device: use {DEVICE_FORMS}")


def check_seed(where: str, value: Any) -> None:
    """A seed numpy, torch and TRL all take: an integer in [0, 2**32 - 1] (Python's
    ``random.Random(-3)`` draws what ``Random(3)`` does: a negative seed would silently repeat
    another)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise ValueError(f"{where}={value!r} must be an integer in [0, 2**32 - 1]")


def _positive(group: str, name: str, value: float | int, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{group}.{name} must be {bound}, got {value}")


def _share(group: str, name: str, value: float) -> None:
    """A share of the steps (warmup_ratio): in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{group}.{name} must be a share in [0, 1), got {value}")


DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip
"""``train.loss_type``'s values: the DPO losses of the locked TRL (``DPOTrainer``'s list; it
refuses any other only when training starts, after the data and base stages)."""

NEEDS_LABEL_SMOOTHING = ("robust", "exo_pair")
"""TRL losses defined by a label smoothing ε > 0 (``DPOConfig.label_smoothing``), which
hhh-bench does not expose: refused rather than run as another loss or fail mid-run."""

SPLITS = ("validation", "test")
"""The splits a suite scores (core/scoring.py's SPLIT_SUFFIX): eval.select_split, report_split."""


# ---------------------------------------------------------------------------------------------
# train


@dataclass(frozen=True)
class LoraConfig:
    """The LoRA adapter of ``train=dpo_lora`` (peft ``LoraConfig``)."""

    r: int = param(16, "rank of the update B·A")
    alpha: float = param(32, "lora_alpha: the update is scaled by alpha / r")
    dropout: float = param(0.05, "dropout on the adapter's input")
    target_modules: list[str] = param(
        None,
        "module names to adapt (every linear of a Llama/Mistral block; never lm_head)",
        factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    )
    bias: str = param("none", "which biases train", choices=("none", "all", "lora_only"))

    def __post_init__(self) -> None:
        _post(self, "train.lora")
        _positive("train.lora", "r", self.r)
        if self.alpha == 0 or not math.isfinite(self.alpha):
            raise ValueError(
                f"train.lora.alpha must be a finite number other than 0 (the update is scaled by "
                f"alpha / r: 0 trains nothing), got {self.alpha}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"train.lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("train.lora.target_modules is empty: name the modules to adapt")
        names = list(self.target_modules) if not isinstance(self.target_modules, str) else []
        twice = sorted({m for m in names if names.count(m) > 1})
        if twice:  # battery 18, U4: the same adapter as listing it once, under another key
            raise ValueError(f"train.lora.target_modules lists {twice} more than once")


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe (``conf/train/<name>.yaml``): DPO or SFT, full or LoRA."""

    name: str = param("dpo", "this option's name (logs, W&B)")
    kind: str = param(
        "dpo", "dpo (preference pairs) | sft (on the chosen responses)", choices=("dpo", "sft")
    )
    method: str = param("full", "full fine-tuning or a LoRA adapter", choices=("full", "lora"))
    beta: float | None = param(0.1, "DPO β: weight of the KL to the reference (dpo only)")
    loss_type: str | list[str] | None = param("sigmoid", "TRL loss type(s) (dpo only)")
    loss_weights: list[float] | None = param(None, "one weight per loss_type entry (null: all 1)")
    learning_rate: float = param(2.0e-4, "peak learning rate")
    epochs: float = param(2.0, "passes over the training pairs (ignored when max_steps > 0)")
    max_steps: int = param(-1, "optimizer steps; -1 = use epochs")
    batch_size: int = param(16, "pairs per device per forward pass")
    grad_accum: int = param(1, "forward passes per optimizer step")
    max_length: int = param(64, "prompt + response tokens")
    lr_scheduler_type: str = param(
        "cosine",
        "learning-rate schedule",
        choices=("cosine", "linear", "constant", "constant_with_warmup"),
    )
    warmup_ratio: float = param(0.1, "share of the steps spent warming up linearly from 0")
    weight_decay: float = param(0.0, "AdamW weight decay")
    seed: int = param(0, "training seed (data order, adapter init)")
    device: str = param("cpu", "cpu | cuda")
    bf16: bool = param(False, "bf16 mixed precision")
    gradient_checkpointing: bool = param(False, "recompute activations: less memory, more time")
    precompute_ref_log_probs: bool = param(False, "compute the reference's log-probs once up front")
    report_to: str = param("none", "wandb | none")
    logging_steps: int = param(5, "log every this many steps")
    margin_batch_size: int = param(64, "held-out margin evaluation batch")
    margin_max_pairs: int | None = param(
        200, "held-out margins on at most this many pairs per dimension"
    )
    lora: LoraConfig | None = param(None, "the adapter (method=lora)")
    merge_adapter: bool = param(False, "(LoRA) also write merged full weights")
    num_processes: int = param(
        1, "processes the train stage launches each training run with (`accelerate launch`; "
        "one per GPU): only training runs in them, data, merges, evaluations and the report once",
    )  # fmt: skip
    accelerate_config: str | None = param(
        None, "accelerate config file of those processes (accelerate/ddp.yaml, fsdp.yaml, "
        "deepspeed_zero3.yaml; null: accelerate's defaults); not part of the cache key",
    )  # fmt: skip

    def __post_init__(self) -> None:
        _post(self, "train")
        check_device("train.device", self.device)
        check_seed("train.seed", self.seed)
        for name in ("learning_rate", "batch_size", "grad_accum", "max_length", "logging_steps",
                     "num_processes"):  # fmt: skip
            _positive("train", name, getattr(self, name))
        if self.accelerate_config is not None:
            accelerate_config_file(self.accelerate_config)
        _share("train", "warmup_ratio", self.warmup_ratio)
        if self.lr_scheduler_type == "constant" and self.warmup_ratio > 0:
            raise ValueError(  # battery 18, S3: transformers' constant schedule has no warmup
                f"train.warmup_ratio={self.warmup_ratio} with train.lr_scheduler_type=constant: "
                "that schedule has no warmup (the weights are those of warmup_ratio=0); use "
                "lr_scheduler_type=constant_with_warmup, or set train.warmup_ratio=0"
            )
        _positive("train", "weight_decay", self.weight_decay, allow_zero=True)
        if self.max_steps == 0:
            raise ValueError(
                "train.max_steps=0: give a number of optimizer steps > 0, or -1 to train for "
                "train.epochs"
            )
        if self.margin_max_pairs is not None and not self.margin_max_pairs >= 1:
            raise ValueError(
                f"train.margin_max_pairs must be >= 1 (null: every validation pair), got "
                f"{self.margin_max_pairs}"
            )
        if self.max_steps <= 0 and not self.epochs > 0:
            raise ValueError(f"train.epochs must be > 0 when max_steps <= 0, got {self.epochs}")
        if self.kind == "dpo" and (
            self.beta is None or not self.beta > 0 or not math.isfinite(self.beta)
        ):
            raise ValueError(
                f"train.beta must be a finite number > 0 for kind=dpo, got {self.beta}"
            )
        if self.method == "lora" and self.lora is None:
            raise ValueError(
                "train.method=lora needs a train.lora block (r, alpha, dropout, target_modules)"
            )
        if self.kind == "sft" and self.method == "lora":
            raise ValueError("train.kind=sft supports full fine-tuning only (train.method=full)")
        # a knob of another recipe is refused, never trained without (battery 16, A5/A6: an
        # adapter asked for under full fine-tuning, a β under SFT: both ignored, both keyed)
        if self.method == "full" and self.lora is not None:
            raise ValueError(
                "train.lora is set but train.method=full trains every weight, no adapter: use "
                "train=dpo_lora (or train.method=lora) for an adapter, or drop it (~train.lora)"
            )
        if self.method == "full" and self.merge_adapter:  # battery 17, U1: a retrain, unchanged
            raise ValueError(
                "train.merge_adapter=true merges a LoRA adapter into full weights, but "
                "train.method=full writes full weights already (no adapter): drop it "
                "(train.merge_adapter=false), or train a LoRA adapter (train=dpo_lora)"
            )
        if self.kind == "sft":
            dpo_only = {"beta": self.beta, "loss_type": self.loss_type,
                        "loss_weights": self.loss_weights,
                        "precompute_ref_log_probs": self.precompute_ref_log_probs or None}  # fmt: skip
            given = [f"train.{k}={v!r}" for k, v in dpo_only.items() if v is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)}: DPO-only setting(s), which train.kind=sft (the chosen "
                    "responses only, no reference model) has no use for; drop them (set null / "
                    "false) or use train=dpo"
                )
        losses = [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type or [])
        smoothed = [t for t in losses if t in NEEDS_LABEL_SMOOTHING]
        if smoothed:  # battery 15, F6/F7: `robust` trained plain DPO, `exo_pair` failed late
            raise ValueError(
                f"train.loss_type={self.loss_type!r}: {smoothed} need TRL's label smoothing ε > 0 "
                "(robust: the assumed label-noise rate), which hhh-bench does not set: with "
                "ε = 0 robust is plain DPO (sigmoid) and exo_pair does not run; use sigmoid, "
                "ipo, hinge, ..."
            )
        unknown = [t for t in losses if t not in DPO_LOSS_TYPES]
        if self.kind == "dpo" and unknown:
            raise ValueError(
                f"train.loss_type={self.loss_type!r}: {unknown} not a DPO loss of TRL; use "
                f"{', '.join(DPO_LOSS_TYPES)}"
            )
        if self.loss_weights is not None:
            types_ = (
                [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type or [])
            )
            bad = [w for w in self.loss_weights
                   if isinstance(w, bool) or not isinstance(w, (int, float))
                   or not math.isfinite(w) or w < 0]  # fmt: skip
            if bad:
                raise ValueError(
                    f"train.loss_weights={list(self.loss_weights)!r}: {bad} not finite numbers "
                    ">= 0 (each weighs one loss of loss_type)"
                )
            if len(self.loss_weights) != len(types_):
                raise ValueError(
                    f"train.loss_weights has {len(self.loss_weights)} entries for loss_type {self.loss_type!r}"
                )
            if not any(self.loss_weights):
                raise ValueError(
                    f"train.loss_weights={list(self.loss_weights)!r}: every weight is 0, so the "
                    "loss is 0 and training would leave θ0 unchanged; give one weight > 0"
                )


# ---------------------------------------------------------------------------------------------
# model


@dataclass(frozen=True)
class BaseSftConfig:
    """The base stage's SFT of a freshly built (tiny) model on the toy world."""

    enabled: bool | str = param(
        True,
        "run the SFT: true | false (θ0 is the model as built or loaded) | auto (on for "
        "model.kind=tiny, a fresh model learning the world; off for kind=hub, the model as it is)",
    )
    trainer: str = param(
        "plain", "plain (a minimal PyTorch loop) | trl (TRL SFTTrainer)", choices=("plain", "trl")
    )
    epochs: float = param(20.0, "passes over the SFT corpus")
    learning_rate: float = param(5.0e-3, "peak learning rate")
    batch_size: int = param(64, "conversations per step")
    weight_decay: float = param(0.0, "AdamW weight decay")
    warmup_ratio: float = param(0.05, "share of steps of linear warmup")
    lr_scheduler_type: str = param(
        "cosine", "cosine | constant (after the warmup)", choices=("cosine", "constant")
    )
    max_length: int = param(64, "tokens per conversation")

    def __post_init__(self) -> None:
        _post(self, "model.base_sft")
        if self.enabled not in (True, False, "auto"):
            raise ValueError(
                f"model.base_sft.enabled must be true, false or auto, got {self.enabled!r}"
            )
        for name in ("epochs", "learning_rate", "batch_size", "max_length"):
            _positive("model.base_sft", name, getattr(self, name))
        _share("model.base_sft", "warmup_ratio", self.warmup_ratio)
        _positive("model.base_sft", "weight_decay", self.weight_decay, allow_zero=True)


@dataclass(frozen=True)
class ModelConfig:
    """The base model θ0 (``conf/model/<name>.yaml``)."""

    name: str = param("tiny", "this option's name")
    kind: str = param(
        "tiny",
        "tiny: built here, offline | hub: loaded by id or local folder",
        choices=("tiny", "hub"),
    )
    path: str | None = param(None, "(hub) hub id or folder")
    revision: str | None = param(None, "(hub) pinned revision")
    dtype: str | None = param(
        "float32", "float32 | bfloat16 | float16 (eval and merge only: never trained in) | auto"
    )
    device: str = param("cpu", "cpu | cuda | cuda:N | mps")
    chat_template: bool = param(True, "render prompts with the tokenizer's chat template")
    spec: dict[str, Any] | None = param(None, "(tiny) the model's shape (models.TinyModelSpec)")
    standin: str | None = param(
        None, "(rehearsal) the real model this local stand-in replaces (conf/rehearsal/small.yaml)"
    )
    base_sft: BaseSftConfig = param(
        None, "SFT of θ0 on the toy world", factory=lambda: BaseSftConfig(enabled=False)
    )

    @property
    def sft_enabled(self) -> bool:
        """Whether the base stage SFTs θ0 (``base_sft.enabled``; ``auto``: for a tiny model)."""
        enabled = self.base_sft.enabled
        return self.kind == "tiny" if enabled == "auto" else bool(enabled)

    def __post_init__(self) -> None:
        _post(self, "model")
        check_device("model.device", self.device)
        if self.kind == "hub" and not self.path:
            raise ValueError("model.path must be a hub id or a folder when model.kind=hub")
        if self.kind == "tiny" and self.spec is None:
            raise ValueError("model.kind=tiny needs model.spec (the tiny model's shape)")
        if self.kind == "tiny" and (self.path or self.revision):
            which = "model.path" if self.path else "model.revision"
            raise ValueError(
                f"{which}={self.path or self.revision!r} is for model.kind=hub; model.kind=tiny "
                "builds its model from model.spec and would ignore it: drop it, or load that "
                "model with model.kind=hub"
            )
        if self.dtype not in (None, "float32", "bfloat16", "float16", "auto"):
            raise ValueError(
                f"model.dtype must be float32, bfloat16, float16, auto or null, got {self.dtype!r}"
            )


# ---------------------------------------------------------------------------------------------
# eval


@dataclass(frozen=True)
class EvalConfig:
    """An evaluation suite (``conf/eval/<name>.yaml``): lm-eval tasks scored per dimension."""

    name: str = param("toy3h", "the suite's name (in every result row)")
    task_template: str = param("{task}", "lm-eval task name of a dimension entry ({task}, {split})")
    dimensions: dict[str, dict[str, float]] = param(
        None, "per dimension {task: weight}", factory=dict
    )
    metric: str = param("acc", "primary metric of every task")
    metrics: dict[str, str | None] = param(None, "per-task override of metric", factory=dict)
    select_split: str | None = param("validation", "split on which configurations are chosen")
    report_split: str = param("test", "split reported in the main table")
    select_by: str = param("average", "score a family's best configuration is chosen by")
    apply_chat_template: bool = param(True, "render prompts with the chat template")
    batch_size: int | str = param(64, "lm-eval batch size (int or auto)")
    limit: int | float | None = param(None, "items per task (int) or share (float < 1)")
    include_defaults: bool = param(False, "index lm-eval's built-in tasks too")
    bootstrap_iters: int = param(0, "lm-eval bootstrap iterations for stderrs")
    log_samples: bool = param(True, "write per-item samples")
    data_files: dict[str, str | None] = param(None, "data files of the custom tasks", factory=dict)
    include_paths: list[str] = param(None, "folders of the user's own task YAMLs", factory=list)
    model: str | None = param(None, "(stage=eval) a model folder to evaluate instead of θ0")
    columns: dict[str, dict[str, Any]] = param(
        None,
        "extra report columns beside the 3H ones: {name: {task, metric, higher_is_better, "
        "table (main | diagnostics)}}",
        factory=dict,
    )
    judges: dict[str, dict[str, Any] | None] = param(
        None, "judges of the generation tasks (evaluation/judges.py)", factory=dict
    )
    refusal_rule: str = param(
        "any",
        "over_refusal: any (string match or classifier) | strmatch | classifier",
        choices=("any", "strmatch", "classifier"),
    )
    summary_bootstrap_iters: int = param(1000, "bootstrap draws of the stderr of `min`")
    backend: str = param(
        "hf",
        "hf (lm-eval's HFLM) | vllm (lm-eval's VLLM) | server (over HTTP: eval.server)",
        choices=("hf", "vllm", "server"),
    )
    backend_args: dict[str, Any] = param(None, "vllm only: options of lm-eval's VLLM", factory=dict)
    server: dict[str, Any] = param(
        None,
        "backend=server: {url, launch, python, port, args, env, data_parallel_size, "
        "startup_timeout_s, request_timeout_s, max_concurrency, max_retries} "
        "(evaluation/serving.py)",
        factory=dict,
    )
    gen_kwargs: dict[str, Any] | None = param(None, "override every generation task's settings")
    holdout: dict[str, float | int] | None = param(
        None,
        "suites with one split: {fraction, seed}: select_split evaluates a seeded share of each "
        "task's items, report_split the disjoint rest",
    )
    partitions: dict[str, dict[str, Any]] = param(
        None,
        "{set: {seed, eval_fraction}}: a public set both evaluated and trained on, split by "
        "question (core/partition.py); its tasks read the eval part, its sources drop it",
        factory=dict,
    )

    def __post_init__(self) -> None:
        _post(self, "eval")
        from hhh_bench.core.text import format_fields_problem

        bad = format_fields_problem(self.task_template, ("task", "split"))
        if bad or "{task}" not in self.task_template:  # battery 14, F6: tracebacks, or a
            # one-split refusal that named the wrong problem
            raise ValueError(
                f"eval.task_template={self.task_template!r}: "
                + (bad or "it has no {task} field")
                + " (the task's name is the template filled with {task} and, for a suite "
                "with a split per task, {split}: e.g. toy3h_{task}_{split})"
            )
        one_split = "{split}" not in self.task_template
        if not one_split and self.holdout is not None:  # battery 14, F8: halved the test items
            raise ValueError(
                f"eval.holdout={self.holdout} is for a suite whose tasks have one split; "
                f"task_template {self.task_template!r} has a task per split ({{split}}), so "
                "select_split and report_split read their own items already: drop eval.holdout"
            )
        if one_split:  # battery 12, F17: test items stored as a validation row
            from hhh_bench.core.scoring import SPLIT_SUFFIX

            named = {sp for sp, suf in SPLIT_SUFFIX.items()
                     if re.search(rf"(^|[_\-.]){re.escape(suf)}($|[_\-.])", self.task_template)}  # fmt: skip
            asked = {sp for sp in (self.report_split, self.select_split) if sp}
            if len(named) == 1 and not asked <= named and self.holdout is None:
                raise ValueError(
                    f"eval: task_template {self.task_template!r} names the {named.pop()} split's "
                    f"tasks, but the rows would be stored as split(s) {sorted(asked - named)} "
                    "(eval.report_split / eval.select_split): write {split} in the template, or "
                    "ask for the split the template names"
                )
        if (
            one_split
            and self.select_split
            and self.select_split != self.report_split
            and self.holdout is None
        ):
            raise ValueError(
                f"eval: task_template {self.task_template!r} has one split, so select_split "
                f"{self.select_split!r} would choose on the very items report_split reports: set "
                "eval.holdout={fraction, seed} (a held-out share for selection) or select_split=null"
            )
        if self.holdout is not None:
            if set(self.holdout) != {"fraction", "seed"} or not 0 < self.holdout["fraction"] < 1:
                raise ValueError(
                    f"eval.holdout must be {{fraction in (0, 1), seed}}, got {self.holdout}"
                )
            if self.select_split is None or self.select_split == self.report_split:
                raise ValueError("eval.holdout needs a select_split different from report_split")
        unknown = sorted(set(self.dimensions) - set(DIMENSIONS))
        if unknown:
            raise ValueError(
                f"eval.dimensions has unknown dimension(s) {unknown}; use {list(DIMENSIONS)}"
            )
        if (
            isinstance(self.batch_size, str)
            and self.batch_size != "auto"
            and not self.batch_size.startswith("auto:")
        ):
            raise ValueError(f"eval.batch_size must be an int or 'auto', got {self.batch_size!r}")
        if isinstance(self.batch_size, int) and self.batch_size < 1:
            raise ValueError(
                f"eval.batch_size must be a positive integer or 'auto', got {self.batch_size}"
            )
        for name, part in (self.partitions or {}).items():
            Partition.from_config(name, part)
        _positive("eval", "bootstrap_iters", self.bootstrap_iters, allow_zero=True)
        _positive("eval", "summary_bootstrap_iters", self.summary_bootstrap_iters, allow_zero=True)
        for name in ("report_split", "select_split"):
            split = getattr(self, name)
            if split is not None and split not in SPLITS:
                raise ValueError(f"eval.{name} must be one of {list(SPLITS)}, got {split!r}")
        scores = ("average", "min", *DIMENSIONS)
        if self.select_by not in scores:
            raise ValueError(
                f"eval.select_by={self.select_by!r} is not a score; use one of {list(scores)}"
            )
        lim = self.limit
        if lim is not None and (
            isinstance(lim, bool)
            or not isinstance(lim, (int, float))
            or (isinstance(lim, int) and lim < 1)
            or (isinstance(lim, float) and not 0 < lim < 1)
        ):
            raise ValueError(
                f"eval.limit={lim!r}: give a positive integer (items per task), a fraction in "
                "(0, 1) (that share of each task's items), or null (every item)"
            )


# ---------------------------------------------------------------------------------------------
# merge, merge_engine


@dataclass(frozen=True)
class MergeConfig:
    """One merge (``conf/merge/<method>.yaml``): the method's knobs are checked by the method."""

    method: str = param("resm", "a registered merge method")
    params: dict[str, Any] = param(None, "the method's hyperparameters", factory=dict)
    base: str | None = param(None, "explicit θ0 (folder or hub id); null = the pipeline's")
    models: list[str] | None = param(
        None, "explicit finetuned models; null = the pipeline's specialists"
    )

    def __post_init__(self) -> None:
        _post(self, "merge")
        if self.models is not None and len(self.models) == 0:
            raise ValueError(
                "merge.models is an empty list: give the models to merge, or null for the "
                "pipeline's specialists"
            )


@dataclass(frozen=True)
class StatisticsConfig:
    """How the stats stage computes the data-aware statistics of Fisher merging and RegMean
    (``merge_engine.statistics``; :mod:`hhh_bench.merging.datastats`)."""

    num_samples: int = param(256, "N: training rows per specialist (all when fewer)")
    seed: int = param(0, "seed of the rows' draw")
    max_length: int = param(512, "tokens per sample (the first ones)")
    dtype: str = param(
        "float32",
        "the model's dtype in the passes",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    device: str | None = param(None, "device of the passes (null: merge_engine.device)")
    gram_dtype: str = param(
        "float64", "dtype of the Gram accumulators", choices=("float64", "float32")
    )
    gram_budget_gb: float = param(4.0, "memory of the Gram accumulators per pass (GiB)")

    def __post_init__(self) -> None:
        _post(self, "merge_engine.statistics")
        _positive("merge_engine.statistics", "num_samples", self.num_samples)
        _positive("merge_engine.statistics", "gram_budget_gb", self.gram_budget_gb)
        if self.max_length < 2:
            raise ValueError(
                f"merge_engine.statistics.max_length must be >= 2, got {self.max_length}"
            )
        if self.device is not None:
            check_device("merge_engine.statistics.device", self.device)


@dataclass(frozen=True)
class MergeEngineConfig:
    """Settings of the streaming merge engine (``conf/merge_engine/default.yaml``)."""

    device: str = param("cpu", "where the per-tensor arithmetic runs")
    out_dtype: str | None = param(
        None,
        "dtype of the written weights (null: the base's)",
        choices=(None, "float32", "bfloat16", "float16"),
    )  # type: ignore[arg-type]
    max_shard_size: str | int = param("2GB", "largest output shard")
    allow_pickle: bool = param(False, "accept .bin/.pt checkpoints")
    overwrite: bool = param(False, "replace an earlier merge at an explicit out_dir")
    allow_architecture_mismatch: bool = param(False, "merge models whose architectures differ")
    vocab_policy: str = param(
        "error", "vocabulary-size mismatch policy", choices=("error", "base", "truncate_to_base")
    )
    cache_dir: str | None = param(None, "sweep cache folder (null: none)")
    cache_max_gb: float = param(20.0, "size cap of the sweep cache")
    progress: bool = param(True, "progress bars")
    diagnostics: bool = param(True, "diagnose the task vectors of every merge")
    diagnostics_top_k: int | None = param(None, "k of the subspace statistics (null: TSV-M's)")
    diagnostics_tail_sigmas: list[float] = param(
        None, "tail thresholds c", factory=lambda: [3.0, 5.0]
    )
    diagnostics_svd_embeddings: bool = param(False, "also SVD embeddings and lm_head")
    diagnostics_label: str | None = param(None, "name of the set in the report")
    statistics: StatisticsConfig = param(
        None, "data-aware statistics of fisher and regmean", factory=StatisticsConfig
    )

    def __post_init__(self) -> None:
        _post(self, "merge_engine")
        check_device("merge_engine.device", self.device)
        _positive("merge_engine", "cache_max_gb", self.cache_max_gb)
        if self.diagnostics_top_k is not None:
            _positive("merge_engine", "diagnostics_top_k", self.diagnostics_top_k)
        if not self.diagnostics_tail_sigmas:  # battery 12, F16: refused only after the stages
            raise ValueError(
                "merge_engine.diagnostics_tail_sigmas is empty: give at least one tail threshold "
                "c > 0 (the default is [3.0, 5.0])"
            )
        for i, t in enumerate(self.diagnostics_tail_sigmas):
            _positive("merge_engine", f"diagnostics_tail_sigmas[{i}]", t)
        try:
            parse_size(self.max_shard_size)
        except ValueError as e:
            raise ValueError(f"merge_engine.{e}") from None


# ---------------------------------------------------------------------------------------------
# logger, pipeline


@dataclass(frozen=True)
class LoggerConfig:
    name: str = param("none", "wandb | none", choices=("wandb", "none"))
    project: str | None = param(None, "W&B project")
    entity: str | None = param(None, "W&B entity")
    mode: str | None = param(
        None,
        "W&B mode (null: $WANDB_MODE, else offline)",
        choices=(None, "online", "offline", "disabled"),
    )  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        _post(self, "logger")


@dataclass(frozen=True)
class OracleConfig:
    enabled: bool = param(True, "train the oracle (all dimensions, upper reference)")
    mix: str = param("resolved", "its mixing strategy")
    budget: str | int = param("all_specialists", "its budget")
    train: dict[str, Any] = param(None, "overrides of `train` for the oracle", factory=dict)

    def __post_init__(self) -> None:
        _post(self, "pipeline.oracle")
        try:  # keys and values checked; a value's error names where it was given
            from_mapping(TrainConfig, self.train, "pipeline.oracle.train")
        except ValueError as e:
            raise ValueError(
                re.sub(r"(?<![\w.])train\.", "pipeline.oracle.train.", str(e))
            ) from None


@dataclass(frozen=True)
class TuningConfig:
    emphasis: list[Any] = param(
        None, "per-dimension weightings tried on the selection split besides the equal one "
        "(one weight > 0 per data.dimensions entry): merges weight their task vectors, the "
        "mixtures of `mixtures` take them as shares", factory=list,
    )  # fmt: skip
    mixtures: list[str] = param(
        None, "mixture strategies (each with a `shares` knob) whose shares are tuned", factory=list
    )

    def __post_init__(self) -> None:
        _post(self, "pipeline.tuning")


@dataclass(frozen=True)
class PipelineConfig:
    """What ``stage=all`` runs after data and base (``conf/pipeline/<name>.yaml``)."""

    oracle: OracleConfig = param(None, "the oracle run", factory=OracleConfig)
    mixtures: list[Any] = param(
        None, "data-mixture baselines (names or {name, budget, ...})", factory=list
    )
    base_seed: int | None = param(None, "one θ0 for every seed (null: each seed its own)")
    report_every_grid_point: bool = param(False, "report every grid configuration as its own row")
    merge_grid: dict[str, dict[str, Any] | None] = param(
        None, "method -> {knob: [values]} (null drops a method)", factory=dict
    )
    tuning: TuningConfig = param(None, "tuning parity of merges and mixtures", factory=TuningConfig)

    def __post_init__(self) -> None:
        _post(self, "pipeline")
        check_seed("pipeline.base_seed", self.base_seed)


@dataclass(frozen=True)
class ReportConfig:
    """The report stage (``conf/report/default.yaml``)."""

    skip_invalid: bool = param(
        False,
        "skip invalid lines of the results store (NaN, boolean, null or string scores, no "
        "kind, not a JSON object, a newer schema) and say under the main table how many and "
        "why; false: such a line stops the report, naming the file and line",
    )
    interval: str = param(
        "t", "the mix-or-merge answer's interval over paired seeds: t (Student t) or bca (BCa)"
    )
    judge_failure_threshold: float = param(
        0.05,
        "mark (‡) a main-table cell whose judged task had more than this share of empty answers "
        "or unparsed judge answers, (n_empty + n_unparsed) / n, with the counts under the table",
    )

    def __post_init__(self) -> None:
        _post(self, "report")
        if self.interval not in ("t", "bca"):
            raise ValueError(f"report.interval must be 't' or 'bca', got {self.interval!r}")
        t = self.judge_failure_threshold
        if isinstance(t, bool) or not 0.0 <= t < 1.0:
            raise ValueError(f"report.judge_failure_threshold must be a share in [0, 1), got {t!r}")


# ---------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class NoiseConfig:
    """Preference noise: swap chosen/rejected of a seeded share of the training pairs."""

    flip_rate: float = param(0.0, "share of training pairs swapped, in [0, 1]")
    dimension: str | None = param(None, "only this dimension's pairs (null: all)")
    seed: int = param(0, "seed of the draw")

    def __post_init__(self) -> None:
        _post(self, "data.noise")
        check_seed("data.noise.seed", self.seed)
        if not 0.0 <= self.flip_rate <= 1.0:
            raise ValueError(f"data.noise.flip_rate must be in [0, 1], got {self.flip_rate}")
        if self.dimension is not None and self.dimension not in DIMENSIONS:
            raise ValueError(
                f"data.noise.dimension must be one of {list(DIMENSIONS)} or null, got {self.dimension!r}"
            )


@dataclass(frozen=True)
class DataConfig:
    """The preference data (``conf/data/<name>.yaml``): the toy world or public sources."""

    kind: str = param(
        "toy3h",
        "toy3h (bundled synthetic world) | sources (public sets)",
        choices=("toy3h", "sources"),
    )
    name: str | None = param(None, "name of this data setup")
    dimensions: list[str] = param(
        None, "dimensions, in report order", factory=lambda: list(DIMENSIONS)
    )
    world: dict[str, Any] | None = param(None, "(toy3h) the world's knobs (data.toy3h.Toy3HConfig)")
    sources: dict[str, list[Any]] | None = param(None, "(sources) source configs per dimension")
    max_rows_per_source: int | None = param(None, "(sources) cap per source")
    eval_fraction: float = param(0.05, "(sources) share of pairs held out as validation")
    seed: int = param(0, "(sources) seed of the caps and the validation draw")
    noise: NoiseConfig = param(None, "preference noise", factory=NoiseConfig)
    leakage: dict[str, Any] = param(None, "(sources) leakage guards", factory=dict)
    cache_dir: str | None = param(None, "(sources) the datasets cache")
    max_malformed_fraction: float = param(
        0.5,
        "(sources) most share of a source's raw rows its adapter may drop as malformed (missing "
        "or mistyped fields) before the data stage fails naming the source; a source that "
        "yields no pair at all always fails",
    )

    def __post_init__(self) -> None:
        _post(self, "data")
        bad = [d for d in self.dimensions if d not in DIMENSIONS]
        if bad or not self.dimensions or len(set(self.dimensions)) != len(self.dimensions):
            raise ValueError(
                f"data.dimensions must be distinct names from {list(DIMENSIONS)}, got {self.dimensions}"
            )
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(
                f"data.eval_fraction must be a share in [0, 1), got {self.eval_fraction}"
            )
        if self.max_rows_per_source is not None and self.max_rows_per_source < 1:
            raise ValueError(
                f"data.max_rows_per_source must be a positive number of pairs or null, got "
                f"{self.max_rows_per_source}"
            )
        if not 0.0 <= self.max_malformed_fraction <= 1.0:
            raise ValueError(
                f"data.max_malformed_fraction must be in [0, 1], got {self.max_malformed_fraction}"
            )
        # data.world is checked by the toy world's own config, one floor up
        # (hhh_bench.validation.check_world: the schema knows no library)
        if self.kind == "sources" and not self.sources:
            raise ValueError("data.kind=sources needs data.sources (source names per dimension)")
        n = self.noise
        if n.flip_rate > 0 and n.dimension is not None and n.dimension not in self.dimensions:
            # battery 17, F1: every run reused the clean one's key, a noisy condition unsaid
            raise ValueError(
                f"data.noise.dimension={n.dimension!r} is not in data.dimensions "
                f"{list(self.dimensions)}: no pair would be flipped (flip_rate={n.flip_rate}); "
                f"add {n.dimension!r} to data.dimensions, or set data.noise.dimension to one of "
                "them (null: all)"
            )


@dataclass(frozen=True)
class CacheConfig:
    """The stage cache (docs/caching.md): every reuse of a finished stage output is checked
    against its ``checksums.json``."""

    on_mismatch: str = param(
        "error",
        "what a reuse does when a cached output's files differ from its checksums.json: error "
        "(stop before any work, naming the folder and the file) | recompute (replace the output)",
        choices=("error", "recompute"),
    )

    def __post_init__(self) -> None:
        _post(self, "cache")


@dataclass(frozen=True)
class ConsoleConfig:
    """What the console shows (docs/console.md): one line per job; details in the run's log
    file. Only what is printed: no stage key and no results row depends on it."""

    verbosity: int = param(
        1,
        "0: the results table and the answer only; 1: also the log file's path, one line per "
        "job, the cache summary; 2 (what -v/--verbose gives, with tracebacks): also hhh-bench's "
        "INFO lines; 3: also the libraries' logs, warnings and progress bars as they write them",
    )
    progress: str = param(
        "auto",
        "the live progress line: auto (only when stdout is a terminal and CI is not set) | "
        "always | never",
        choices=("auto", "always", "never"),
    )

    def __post_init__(self) -> None:
        _post(self, "console")
        if self.verbosity not in (0, 1, 2, 3):
            raise ValueError(f"console.verbosity must be 0, 1, 2 or 3, got {self.verbosity}")


# ---------------------------------------------------------------------------------------------
# loading

GROUPS: dict[str, type] = {
    "cache": CacheConfig,
    "console": ConsoleConfig,
    "data": DataConfig,
    "model": ModelConfig,  # before train, whose device follows model.device: named as set
    "train": TrainConfig,
    "eval": EvalConfig,
    "merge": MergeConfig,
    "merge_engine": MergeEngineConfig,
    "logger": LoggerConfig,
    "pipeline": PipelineConfig,
    "report": ReportConfig,
}


def load(cls: type[T], mapping: Mapping[str, Any] | None, where: str | None = None) -> T:
    """The typed config of one group from its plain mapping (unknown keys refused)."""
    name = where or next((g for g, c in GROUPS.items() if c is cls), cls.__name__)
    return from_mapping(cls, mapping, name)
