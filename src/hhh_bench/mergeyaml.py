"""``hhh-bench merge CONFIG.yaml OUT_DIR``: run a mergekit YAML (``mergekit-yaml``'s format) with
hhh-bench's merge methods and streaming engine, writing a Hugging Face folder.

One concept: a mergekit YAML run here (its settings, its checks, its mapping onto our methods).

hhh-bench merge ties.yaml out/                  # weights, config, tokenizer, model card, provenance
hhh-bench merge ties.yaml out/ --device cuda    # arithmetic on a GPU
hhh-bench merge --help

The YAML is read as mergekit reads it (written from its documented format and config rules, not
from its code): ``merge_method``, ``base_model``, ``models: [{model, parameters}]``, one
whole-model ``slices`` entry, global ``parameters``, ``dtype`` / ``out_dtype``. A parameter's
value is a scalar, a gradient (a list of numbers interpolated across the layers: layer i of L
sits at t = i/(L − 1), tensors outside the layers at t = 0), or a list of ``{filter, value}``
entries whose first filter contained in the tensor's name (or with no filter / ``*``) gives the
value. A model's own parameters win over the global ones, which fill in what a model leaves
out. Each mergekit method maps onto one of ours with mergekit's defaults (:data:`SPECS`;
docs/merging.md has the table); what cannot be honoured is refused by name before any tensor is
read (:class:`MergekitConfigError`, exit status 2).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hhh_bench.merging.sources import ARCH_SWITCH, PICKLE_SWITCH, open_source


class MergekitConfigError(ValueError):
    """A mergekit YAML that cannot be run as written; the message names the option."""


REQUIRED = object()
"""A parameter default meaning: the YAML must give it (mergekit's ``required``)."""

TOP_KEYS = ("merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype")
REFUSED_KEYS = {
    "tokenizer_source": "hhh-bench writes the base model's tokenizer and needs every model to "
    "share its vocabulary (no tokenizer union or permutation of embeddings); remove the option "
    "and give models with the base's vocabulary",
    "tokenizer": "hhh-bench writes the base model's tokenizer (no tokenizer building or added "
    "tokens); remove the option",
    "chat_template": "hhh-bench copies the base's chat template as it is; remove the option",
    "modules": "multi-module merges (vision-language models) are not supported; merge one "
    "language model with models: or one whole-model slice",
}
DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
IGNORED = {"int8_mask": "the dtype of mergekit's sign mask, which changes no value"}
"""mergekit parameters accepted and ignored, with why that changes nothing."""


@dataclass(frozen=True)
class Spec:
    """How one mergekit method runs here.

    Attributes:
        ours: the hhh-bench method it maps to (default; ``translate`` may name another).
        global_params: mergekit's method-wide parameters and their defaults.
        model_params: its per-model ("tensor") parameters and their defaults.
        base: ``required`` (the base is θ0 and no point), ``optional`` or ``none`` (mergekit
            takes no base; it is one more model if given).
        points: which models are our finetuned models: ``others`` (every model but the base),
            ``all`` (every model, the base included: the method averages weights, not task
            vectors, and our θ0 is only where λ scales from).
        translate: ``(global values, per-model values, models) -> our params`` for one tensor.
    """

    ours: str
    global_params: Mapping[str, Any]
    model_params: Mapping[str, Any]
    base: str
    points: str
    translate: Callable[[dict[str, Any], list[dict[str, Any]], str], dict[str, Any]]


def _one(values: list[dict[str, Any]], name: str, tensor: str) -> Any:
    """The per-model parameter ``name`` that all models share (our methods take one value)."""
    seen = sorted({repr(v[name]) for v in values})
    if len(seen) > 1:
        raise MergekitConfigError(
            f"parameter {name!r} differs between the models at tensor {tensor!r} ({', '.join(seen)})"
            f": hhh-bench's methods take one {name} for all models; give every model the same "
            f"{name} (a gradient or filter may still vary it across tensors)"
        )
    return values[0][name]


def _number(v: Any, name: str, tensor: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise MergekitConfigError(
            f"parameter {name!r} must be a finite number, got {v!r} at {tensor!r}"
        )
    return float(v)


def _density(values: list[dict[str, Any]], tensor: str) -> float:
    d = _one(values, "density", tensor)
    if not isinstance(d, (int, float)) or isinstance(d, bool) or not 0.0 < d <= 1.0:
        raise MergekitConfigError(f"parameter 'density' must be in (0, 1], got {d!r} at {tensor!r}")
    return float(d)


def _weights(values: list[dict[str, Any]], tensor: str) -> list[float]:
    out = []
    for i, v in enumerate(values):
        w = v["weight"]
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w):
            raise MergekitConfigError(f"parameter 'weight' of model {i} is {w!r} at {tensor!r}")
        out.append(float(w))
    return out


def _flag(g: dict[str, Any], name: str) -> bool:
    v = g[name]
    if not isinstance(v, bool):
        raise MergekitConfigError(f"parameter {name!r} must be true or false, got {v!r}")
    return v


def _gta(sparsify: str) -> Callable[..., dict[str, Any]]:
    """mergekit's generalized task arithmetic family: sparsify each τ_t, weight, (elect signs),
    sum, divide by the weights' sum with ``normalize``, times ``lambda``."""

    def translate(g: dict[str, Any], m: list[dict[str, Any]], tensor: str) -> dict[str, Any]:
        w = _weights(m, tensor)
        normalize, rescale = _flag(g, "normalize"), _flag(g, "rescale")
        lam = g["lambda"]
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
            # named as the YAML names it, not as our 'scaling' (battery 22, B-F1: `lambda: abc`
            # was "could not convert string to float: 'abc'")
            raise MergekitConfigError(f"parameter 'lambda' must be a finite number, got {lam!r}")
        scale = float(lam)
        out: dict[str, Any] = {"scaling": scale}
        if sparsify == "none":
            if _density(m, tensor) < 1.0:
                raise MergekitConfigError(
                    f"parameter 'density' is {_one(m, 'density', tensor)} for task_arithmetic, "
                    "which sparsifies nothing (mergekit ignores it): remove it, or use ties, "
                    "dare_linear, breadcrumbs or della_linear"
                )
            total = sum(w)
            div = total if normalize and abs(total) >= 1e-8 else 1.0
            return {**out, "weights": [x / div for x in w]}
        out |= {"weights": w, "normalize": normalize, "density": _density(m, tensor)}
        out["rescale"] = "l1" if rescale else "none"
        if sparsify == "magnitude":  # mergekit's ties: magnitude top-k = breadcrumbs, gamma 0
            out["gamma"] = 0.0
        elif sparsify == "outliers":
            out["gamma"] = _number(_one(m, "gamma", tensor), "gamma", tensor)
        elif sparsify == "random":  # mergekit's dare: Bernoulli(density) = DELLA with ε = 0
            out["epsilon"] = 0.0
        elif sparsify == "magprune":
            out["epsilon"] = _number(_one(m, "epsilon", tensor), "epsilon", tensor)
        return out

    return translate


def _linear(g: dict[str, Any], m: list[dict[str, Any]], tensor: str) -> dict[str, Any]:
    w = _weights(m, tensor)
    if not _flag(g, "normalize") and abs(sum(w) - 1.0) > 1e-6:
        raise MergekitConfigError(
            f"parameter 'normalize' is false for linear and the weights sum to {sum(w):g} at "
            f"{tensor!r}: Σ w_t θ_t then scales the model as a whole, which hhh-bench does not "
            "write; set normalize: true or make the weights sum to 1"
        )
    if abs(sum(w)) < 1e-12:
        raise MergekitConfigError(
            f"parameter 'weight' sums to 0 at {tensor!r} (linear divides by it)"
        )
    return {"weights": w}


def _multislerp(g: dict[str, Any], m: list[dict[str, Any]], tensor: str) -> dict[str, Any]:
    w = _weights(m, tensor)
    for i, x in enumerate(w):
        if x < 0:
            raise MergekitConfigError(
                f"parameter 'weight' of model {i} is {x:g} at {tensor!r}: multislerp "
                "interpolates on a sphere and takes weights >= 0"
            )
    return {"weights": w, "normalize_weights": _flag(g, "normalize_weights"), "eps": g["eps"]}


GTA_GLOBAL = {"int8_mask": False, "lambda": 1.0}
SPECS: dict[str, Spec] = {
    "linear": Spec("weight_average", {"normalize": True}, {"weight": REQUIRED}, "none", "all",
                   _linear),
    "task_arithmetic": Spec(
        "task_arithmetic", {**GTA_GLOBAL, "normalize": False, "rescale": False},
        {"weight": REQUIRED, "density": 1.0}, "required", "others",
        _gta("none")),
    "ties": Spec(
        "breadcrumbs_ties", {**GTA_GLOBAL, "normalize": True, "rescale": False},
        {"weight": REQUIRED, "density": 1.0}, "required", "others",
        _gta("magnitude")),
    "dare_ties": Spec(
        "della", {**GTA_GLOBAL, "normalize": False, "rescale": True},
        {"weight": REQUIRED, "density": 1.0}, "required", "others",
        _gta("random")),
    "dare_linear": Spec(
        "della_linear", {**GTA_GLOBAL, "normalize": False, "rescale": True},
        {"weight": REQUIRED, "density": 1.0}, "required", "others",
        _gta("random")),
    "breadcrumbs": Spec(
        "breadcrumbs", {**GTA_GLOBAL, "normalize": False, "rescale": False},
        {"weight": REQUIRED, "density": 1.0, "gamma": 0.01}, "required", "others",
        _gta("outliers")),
    "breadcrumbs_ties": Spec(
        "breadcrumbs_ties", {**GTA_GLOBAL, "normalize": False, "rescale": False},
        {"weight": REQUIRED, "density": 1.0, "gamma": 0.01}, "required", "others",
        _gta("outliers")),
    "della": Spec(
        "della", {**GTA_GLOBAL, "normalize": True, "rescale": True},
        {"weight": REQUIRED, "density": 1.0, "epsilon": 0.15}, "required", "others",
        _gta("magprune")),
    "della_linear": Spec(
        "della_linear", {**GTA_GLOBAL, "normalize": False, "rescale": True},
        {"weight": REQUIRED, "density": 1.0, "epsilon": 0.15}, "required", "others",
        _gta("magprune")),
    "model_stock": Spec("model_stock", {"filter_wise": False}, {}, "required", "others",
                        lambda g, m, k: {"filter_wise": _flag(g, "filter_wise")}),
    "slerp": Spec("slerp", {"t": REQUIRED}, {}, "required", "others",
                  lambda g, m, k: {"t": g["t"]}),
    "sce": Spec("sce", {"int8_mask": False, "select_topk": 1.0}, {}, "required", "others",
                lambda g, m, k: {"select_topk": g["select_topk"]}),
    "karcher": Spec("karcher", {"max_iter": 10, "tol": 1e-5}, {}, "none", "all",
                    lambda g, m, k: {"max_iter": g["max_iter"], "tol": g["tol"]}),
    "multislerp": Spec("multislerp", {"normalize_weights": True, "eps": 1e-8},
                       {"weight": REQUIRED}, "optional", "others", _multislerp),
}  # fmt: skip
"""mergekit's method name -> how it runs here (docs/merging.md, "hhh-bench merge")."""

NOT_SHARED = {
    "passthrough": "it stacks layers (frankenmerges), which hhh-bench does not do",
    "nuslerp": "hhh-bench has no nuslerp; slerp (two models) or multislerp are the nearest",
    "arcee_fusion": "hhh-bench has no arcee_fusion",
    "nearswap": "hhh-bench has no nearswap",
    "ram": "hhh-bench has no ram",
}


# ---------------------------------------------------------------------------------------------
# Parameter settings: scalars, gradients, filters


def check_setting(name: str, setting: Any, where: str) -> None:
    """Refuse a malformed setting (an empty list, a filter entry without ``value``, a mix of
    numbers and filters), naming the parameter."""
    if isinstance(setting, (bool, int, float, str)):
        return
    if isinstance(setting, Mapping):
        setting = [setting]
    if not isinstance(setting, list) or not setting:
        raise MergekitConfigError(
            f"{where}: parameter {name!r} must be a value, a list of values (a gradient) or a "
            f"list of {{filter, value}} entries, got {setting!r}"
        )
    if all(isinstance(e, Mapping) for e in setting):
        for e in setting:
            extra = set(e) - {"filter", "value"}
            if "value" not in e or extra:
                raise MergekitConfigError(
                    f"{where}: parameter {name!r} has an entry {dict(e)!r}; each filtered entry "
                    "is {filter: NAME-PART, value: V} (filter optional: the fallback)"
                )
            if e.get("filter") is not None and not isinstance(e["filter"], str):
                raise MergekitConfigError(
                    f"{where}: parameter {name!r} has a filter {e['filter']!r} (not a string)"
                )
            check_setting(name, e["value"], where)
        return
    if any(isinstance(e, (Mapping, list)) for e in setting):
        raise MergekitConfigError(
            f"{where}: parameter {name!r} mixes filtered entries and plain values: {setting!r}"
        )


def evaluate(setting: Any, tensor: str, t: float) -> Any:
    """The value of a (checked) setting for ``tensor`` at layer position ``t`` in [0, 1]; None
    when no filter matches (the next level of settings is asked)."""
    if isinstance(setting, (bool, int, float, str)):
        return setting
    if isinstance(setting, Mapping):
        setting = [setting]
    if all(isinstance(e, Mapping) for e in setting):
        for e in setting:
            f = e.get("filter")
            if f is None or f == "*" or f in tensor:
                return evaluate(e["value"], tensor, t)
        return None
    if all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting):
        # a gradient: its n values spread evenly over t in [0, 1], linear in between
        pos = t * (len(setting) - 1)
        i = min(int(pos), len(setting) - 1)
        j = min(i + 1, len(setting) - 1)
        return (1 - (pos - i)) * setting[i] + (pos - i) * setting[j]
    return setting[int(t * (len(setting) - 1))]  # a list of flags or names: the nearest below


def gradient_lengths(setting: Any) -> list[int]:
    """The lengths of the gradients (lists of values) in a setting."""
    if isinstance(setting, Mapping):
        setting = [setting]
    if not isinstance(setting, list):
        return []
    if all(isinstance(e, Mapping) for e in setting):
        return [n for e in setting for n in gradient_lengths(e["value"])]
    return [len(setting)]


LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|block|layer)\.(\d+)\.")
"""A decoder layer's index in a tensor name (``model.layers.3.mlp.up_proj.weight``: 3)."""


def layer_position(tensor: str, num_layers: int) -> float:
    """mergekit's t of a tensor: i/(L − 1) for layer i of L (1 when L = 1), 0 outside the layers
    (embeddings, final norm, head)."""
    m = LAYER_RE.search(tensor)
    if m is None:
        return 0.0
    return int(m.group(1)) / (num_layers - 1) if num_layers > 1 else 1.0


# ---------------------------------------------------------------------------------------------
# The config


@dataclass
class ModelEntry:
    model: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class MergekitConfig:
    """A mergekit YAML, checked: the method, the base (or None), the models with their own
    parameters, the shared parameters (a whole-model slice's, then the global ones), dtypes."""

    merge_method: str
    base_model: str | None
    models: list[ModelEntry]
    shared: list[dict[str, Any]]
    dtype: str | None
    out_dtype: str | None
    text: str

    @property
    def spec(self) -> Spec:
        return SPECS[self.merge_method]


def _model_ref(x: Any, where: str) -> str:
    if not isinstance(x, str) or not x:
        raise MergekitConfigError(
            f"{where}: a model must be a path or hub id (a string), got {x!r}"
        )
    if "+" in x:
        raise MergekitConfigError(
            f"{where}: model {x!r} uses mergekit's MODEL+LORA syntax, which hhh-bench merge does "
            "not read; give the merged model's folder (hhh-bench's Python API, merge_models, "
            "takes a LoRA adapter folder as a finetuned model)"
        )
    return x


def _params(x: Any, where: str) -> dict[str, Any]:
    if x is None:
        return {}
    if not isinstance(x, Mapping) or not all(isinstance(k, str) for k in x):
        raise MergekitConfigError(f"{where}: parameters must be a mapping of names to values")
    for k, v in x.items():
        if isinstance(v, str):  # `density: '0.5'`: quoted, a string, not the number it reads as
            try:
                float(v)
            except ValueError:
                continue
            raise MergekitConfigError(
                f"{where}: parameter {k!r} is the string {v!r}, not a number: write it "
                f"unquoted ({k}: {v})"
            )
    return dict(x)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that repeats a key (PyYAML keeps the last one:
    `merge_method: task_arithmetic` then `merge_method: ties` would run ties without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2's floats (what mergekit's pydantic reads): PyYAML follows YAML 1.1, where `1.0e9`,
# `1e-3` and `5e-1` (no dot, or no sign in the exponent) are strings, and the quoted-number
# refusal then told the user to write unquoted what was unquoted (battery 21, B-F1)
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_config(path: str | Path, num_layers: Callable[[str], int | None]) -> MergekitConfig:
    """Read and check a mergekit YAML (``num_layers(model)``: a model's layer count, for
    ``slices``). Raise :class:`MergekitConfigError` naming the first option that cannot run."""
    p = Path(path)
    try:
        text = p.read_text()
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except OSError as e:
        raise MergekitConfigError(f"{path}: cannot read the config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise MergekitConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, Mapping):
        raise MergekitConfigError(f"{path}: a mergekit config is a YAML mapping")
    for key in raw:
        if key in REFUSED_KEYS:
            raise MergekitConfigError(
                f"{path}: option {key!r} is not supported: {REFUSED_KEYS[key]}"
            )
        if key not in TOP_KEYS:
            raise MergekitConfigError(
                f"{path}: unknown option {key!r}; hhh-bench merge reads {', '.join(TOP_KEYS)}"
            )
    method = raw.get("merge_method")
    if method in NOT_SHARED:
        raise MergekitConfigError(
            f"{path}: merge_method {method!r} is not supported: {NOT_SHARED[method]}"
        )
    if method not in SPECS:
        raise MergekitConfigError(
            f"{path}: merge_method {method!r} is not one hhh-bench runs; choose from "
            f"{', '.join(SPECS)}"
        )
    base = raw.get("base_model")
    base = _model_ref(base, f"{path}: base_model") if base is not None else None
    dtypes = {}
    for key in ("dtype", "out_dtype"):
        v = raw.get(key)
        if v is not None:
            name = str(v).removeprefix("torch.")
            if name not in DTYPES:
                raise MergekitConfigError(f"{path}: {key} {v!r} is not one of {', '.join(DTYPES)}")
            dtypes[key] = name
    shared = [_params(raw.get("parameters"), f"{path}: parameters")]
    if ("models" in raw) == ("slices" in raw):
        raise MergekitConfigError(f"{path}: give exactly one of 'models' and 'slices'")
    if "models" in raw:
        items = raw["models"]
        if not isinstance(items, list) or not items:
            raise MergekitConfigError(f"{path}: models must be a non-empty list")
        models = []
        for i, e in enumerate(items):
            where = f"{path}: models[{i}]"
            if not isinstance(e, Mapping) or "model" not in e or set(e) - {"model", "parameters"}:
                raise MergekitConfigError(
                    f"{where}: each entry is {{model, parameters}}, got {e!r}"
                )
            models.append(
                ModelEntry(_model_ref(e["model"], where), _params(e.get("parameters"), where))
            )
    else:
        models, slice_params, base = _whole_slice(raw["slices"], base, num_layers, path)
        shared.insert(0, slice_params)
    cfg = MergekitConfig(method, base, models, shared, dtypes.get("dtype"),
                         dtypes.get("out_dtype"), text)  # fmt: skip
    _check_names(cfg, path)
    return cfg


def _whole_slice(
    slices: Any, base: str | None, num_layers: Callable[[str], int | None], path: str | Path
) -> tuple[list[ModelEntry], dict[str, Any], str | None]:
    """A ``slices`` list that is one slice over every layer of every model, as models."""
    what = (
        "hhh-bench merges whole models: slices are accepted only as one slice whose sources "
        "each cover every layer ([0, num_hidden_layers]); other layouts (frankenmerges) are not "
        "supported"
    )
    if not isinstance(slices, list) or len(slices) != 1 or not isinstance(slices[0], Mapping):
        n = len(slices) if isinstance(slices, list) else slices
        raise MergekitConfigError(f"{path}: option 'slices' has {n} slices: {what}")
    s = slices[0]
    for key in s:
        if key not in ("sources", "parameters", "base_model"):
            raise MergekitConfigError(f"{path}: option 'slices[0].{key}' is not supported: {what}")
    if s.get("base_model") is not None:
        sb = _model_ref(s["base_model"], f"{path}: slices[0].base_model")
        if base is not None and sb != base:
            raise MergekitConfigError(
                f"{path}: slices[0].base_model {sb!r} differs from base_model {base!r}"
            )
        base = sb
    sources = s.get("sources")
    if not isinstance(sources, list) or not sources:
        raise MergekitConfigError(f"{path}: slices[0].sources must be a non-empty list")
    models = []
    for i, src in enumerate(sources):
        where = f"{path}: slices[0].sources[{i}]"
        if not isinstance(src, Mapping) or set(src) - {"model", "layer_range", "parameters"}:
            raise MergekitConfigError(f"{where}: each source is {{model, layer_range, parameters}}")
        model = _model_ref(src.get("model"), where)
        rng = src.get("layer_range")
        n = num_layers(model)
        if n is None:
            raise MergekitConfigError(f"{where}: {model!r} has no num_hidden_layers in its config")
        if list(rng or []) != [0, n]:
            raise MergekitConfigError(
                f"{where}: option 'layer_range' is {rng!r} but {model!r} has {n} layers: {what}"
            )
        models.append(ModelEntry(model, _params(src.get("parameters"), where)))
    return models, _params(s.get("parameters"), f"{path}: slices[0].parameters"), base


def _check_names(cfg: MergekitConfig, path: str | Path) -> None:
    spec = cfg.spec
    known = {*spec.global_params, *spec.model_params}
    for level in cfg.shared:
        for name, setting in level.items():
            if name not in known and name not in IGNORED:
                raise MergekitConfigError(
                    f"{path}: parameter {name!r} is not one of {cfg.merge_method}'s "
                    f"({', '.join(sorted(known)) or 'none'})"
                )
            check_setting(name, setting, str(path))
    for i, e in enumerate(cfg.models):
        for name, setting in e.parameters.items():
            if name in spec.global_params or name in IGNORED:
                raise MergekitConfigError(
                    f"{path}: models[{i}] ({e.model}): parameter {name!r} is global for "
                    f"{cfg.merge_method} (mergekit ignores it per model): move it to the "
                    "top-level parameters"
                )
            if name not in spec.model_params:
                raise MergekitConfigError(
                    f"{path}: models[{i}] ({e.model}): parameter {name!r} is not one of "
                    f"{cfg.merge_method}'s per-model parameters "
                    f"({', '.join(spec.model_params) or 'none'})"
                )
            check_setting(name, setting, f"{path}: models[{i}]")


# ---------------------------------------------------------------------------------------------
# The plan: our method, base, finetuned models and each tensor's params


@dataclass
class MergePlan:
    """What :func:`run` hands to :func:`~hhh_bench.merging.engine.merge_models`."""

    method: str
    base: str
    finetuned: list[str]
    params: dict[str, Any]
    tensor_params: dict[str, dict[str, Any]]
    out_dtype: str | None
    base_as_model: bool

    def params_of(self, tensor: str) -> dict[str, Any]:
        return self.tensor_params.get(tensor, self.params)


def _same(a: str, b: str) -> bool:
    return a == b or (os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b))


def plan(cfg: MergekitConfig, tensors: Sequence[str], num_layers: int | None) -> MergePlan:
    """Map ``cfg`` onto our method for the floating ``tensors`` of the base (``num_layers``: its
    layer count, for gradients)."""
    spec = cfg.spec
    name = cfg.merge_method
    base_i = next((i for i, e in enumerate(cfg.models) if cfg.base_model and _same(e.model, cfg.base_model)), None)  # fmt: skip
    if spec.base == "required" and cfg.base_model is None:
        raise MergekitConfigError(f"merge_method {name!r} needs a base_model")
    if name == "linear" and cfg.base_model is not None and base_i is None:
        raise MergekitConfigError(
            "base_model is given for linear but is not one of the models: mergekit's linear "
            "averages the models listed (it has no base); list it with a weight, or remove it"
        )
    entries = list(cfg.models)
    if spec.points == "all":
        if cfg.base_model is not None and base_i is None:  # mergekit adds the base as a model
            entries.append(ModelEntry(cfg.base_model))
        base = cfg.base_model or entries[0].model
        points = entries
    else:
        base = cfg.base_model or entries[0].model
        points = [e for e in entries if not _same(e.model, base)]
    if name == "multislerp" and cfg.base_model is None:
        points = entries  # mergekit's multislerp without a base: the weights themselves
    _check_counts(name, points)
    grads = [
        (n, k)
        for level in [*cfg.shared, *(e.parameters for e in points)]
        for n, s in level.items()
        for k in gradient_lengths(s)
    ]
    if grads and num_layers is None:
        raise MergekitConfigError(
            f"parameter {grads[0][0]!r} is a gradient but the base's config gives no "
            "num_hidden_layers to spread it over"
        )
    for n, k in grads:
        if k > max(num_layers or 1, 2):
            raise MergekitConfigError(
                f"parameter {n!r} is a gradient of {k} values but the model has {num_layers} "
                f"layers: at most one value per layer (mergekit would skip values silently)"
            )
    per_tensor = {k: _translate(cfg, spec, points, k, num_layers or 1) for k in tensors}
    extra: dict[str, Any] = {}
    if name == "multislerp":
        extra["origin"] = "base" if cfg.base_model is not None else "zero"
    method = spec.ours
    if name == "ties" and all(
        p["normalize"] and p["rescale"] == "none" and all(w == 1.0 for w in p["weights"])
        for p in per_tensor.values()
    ):  # exactly TIES's disjoint mean: our ties
        method = "ties"
        per_tensor = {k: {"density": p["density"], "scaling": p["scaling"]} for k, p in per_tensor.items()}  # fmt: skip
    counts = Counter(repr(sorted(p.items())) for p in per_tensor.values())
    common = next((p for p in per_tensor.values() if repr(sorted(p.items())) == counts.most_common(1)[0][0]), {}) if per_tensor else _translate(cfg, spec, points, "", 0)  # fmt: skip
    params = {**common, **extra}
    tensor_params = {k: {**p, **extra} for k, p in per_tensor.items() if p != common}
    return MergePlan(
        method=method,
        base=base,
        finetuned=[e.model for e in points],
        params=params,
        tensor_params=tensor_params,
        out_dtype=cfg.out_dtype or cfg.dtype,
        base_as_model=any(_same(e.model, base) for e in points),
    )


def _check_counts(name: str, points: list[ModelEntry]) -> None:
    n = len(points)
    if name == "slerp" and n != 1:
        raise MergekitConfigError(
            f"merge_method 'slerp' interpolates two models, the base_model and one other; got "
            f"{n + 1}: use karcher or multislerp for more"
        )
    if name == "model_stock" and n < 2:
        raise MergekitConfigError(
            f"merge_method 'model_stock' needs a base_model and at least 2 other models, got {n}"
        )
    if name == "sce" and n < 2:
        raise MergekitConfigError(
            f"merge_method 'sce' needs at least 2 models besides the base, got {n}"
        )
    if name in ("linear", "karcher") and n < 2:
        raise MergekitConfigError(f"merge_method {name!r} needs at least 2 models, got {n}")
    if n < 1:  # battery 15, F10: "needs at least 2 models, got 0" for a list of the base alone
        raise MergekitConfigError(
            f"merge_method {name!r} needs at least 1 model besides base_model; models lists "
            "only the base (or nothing)"
        )


def _lookup(levels: Sequence[Mapping[str, Any]], name: str, tensor: str, t: float) -> Any:
    for level in levels:
        if name in level:
            v = evaluate(level[name], tensor, t)
            if v is not None:
                return v
    return None


def _translate(
    cfg: MergekitConfig, spec: Spec, points: list[ModelEntry], tensor: str, num_layers: int
) -> dict[str, Any]:
    t = layer_position(tensor, num_layers)
    g = {}
    for n, default in spec.global_params.items():
        v = _lookup(cfg.shared, n, tensor, t)
        if v is None:
            if default is REQUIRED:
                raise MergekitConfigError(f"parameter {n!r} of {cfg.merge_method} is required; no value reaches tensor {tensor!r}")  # fmt: skip
            v = default
        g[n] = v
    m = []
    for e in points:
        vals = {}
        for n, default in spec.model_params.items():
            v = _lookup([e.parameters, *cfg.shared], n, tensor, t)
            if v is None:
                if default is REQUIRED:
                    raise MergekitConfigError(
                        f"parameter {n!r} is required for model {e.model!r} ({cfg.merge_method}); "
                        f"no value reaches tensor {tensor!r}"
                    )
                v = default
            vals[n] = v
        m.append(vals)
    return spec.translate(g, m, tensor)


# ---------------------------------------------------------------------------------------------
# The command


def _num_layers(config: Mapping[str, Any]) -> int | None:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        v = config.get(key)
        if isinstance(v, int) and v > 0:
            return v
    text = config.get("text_config")
    return _num_layers(text) if isinstance(text, Mapping) else None


def run(
    config: str | Path,
    out_dir: str | Path,
    *,
    allow_pickle: bool = False,
    allow_architecture_mismatch: bool = False,
    device: str = "cpu",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Any:
    """Run a mergekit YAML: read, map, merge. Returns the engine's
    :class:`~hhh_bench.merging.engine.MergeResult`."""
    from hhh_bench.merging.engine import merge_models
    from hhh_bench.merging.sources import resolve_path

    def layers_of(model: str) -> int | None:
        src = open_source(model, model, None, allow_pickle)
        try:
            return _num_layers(src.config())
        finally:
            src.close()

    cfg = load_config(config, layers_of)
    base_ref = cfg.base_model or cfg.models[0].model
    src = open_source(resolve_path(base_ref), "the base", None, allow_pickle)
    try:
        keys = [k for k in src.keys() if src.dtype(k).is_floating_point]  # noqa: SIM118
        layers = _num_layers(src.config())
    finally:
        src.close()
    mp = plan(cfg, keys, layers)
    if cfg.base_model and not mp.base_as_model:  # battery 18, F7: dropped as mergekit does
        for e in cfg.models:
            if _same(e.model, cfg.base_model):
                print(f"note: {config}: model {e.model} is the base_model: merged as θ0 (its "
                      "task vector would be 0), not as one of the models, as mergekit does")  # fmt: skip
    # the pipeline's merge stage's checks of its inputs (battery 9): each model fine-tuned from
    # this base (a train output's record, a LoRA adapter's base), and its tokenizer the base's
    from hhh_bench.stages.merge import check_same_base, check_tokenizers

    names = (f"{config}: base_model", f"{config}: models")
    finetuned = [str(x) for x in mp.finetuned]
    if cfg.base_model:  # without one, the first model stands in as the base (linear, karcher,
        # multislerp need none): it is no θ0 to compare with (battery 15, F1)
        check_same_base(str(mp.base), finetuned, names=names)
    check_tokenizers(str(mp.base), finetuned, names=names)
    extra: dict[str, Any] = {"device": device}
    if mp.method in ("della", "della_linear"):
        extra["seed"] = seed
    return merge_models(
        mp.method,
        mp.base,
        mp.finetuned,
        out_dir,
        out_dtype=mp.out_dtype,
        overwrite=overwrite,
        allow_pickle=allow_pickle,
        allow_architecture_mismatch=allow_architecture_mismatch,
        base_as_model=mp.base_as_model,
        tensor_params=(lambda k: {**mp.params_of(k), **extra}) if mp.tensor_params else None,
        extra_files={"mergekit_config.yml": cfg.text},
        progress=progress,
        **mp.params,
        **extra,
    )


def check_out_dir(out_dir: str | Path) -> None:
    """OUT_DIR lies inside no finished stage output (a pipeline's merged model, a data folder)
    and no stage folder of a run root (:func:`hhh_bench.core.stagecache.held_by_a_run`)."""
    from hhh_bench.core.stagecache import held_by_a_run

    why = held_by_a_run(out_dir)
    if why is not None:
        raise ValueError(
            f"{out_dir} {why}: a merge written there would change an output its checksums and "
            "results rows vouch for, or mix with that run's outputs; choose a folder outside "
            "the run's stage folders"
        )


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="hhh-bench merge",
        description="Merge models as a mergekit YAML says (mergekit-yaml's format; "
        "docs/merging.md, 'hhh-bench merge'), into a Hugging Face folder.",
    )
    ap.add_argument("config", help="the mergekit YAML")
    ap.add_argument("out_dir", help="the output folder (must not exist, or see --overwrite)")
    ap.add_argument("--allow-pickle", action="store_true",
                    help="accept .bin/.pt checkpoints (loading them can run code)")  # fmt: skip
    ap.add_argument("--allow-architecture-mismatch", action="store_true",
                    help="merge models whose config.json differs from the base's in its "
                    "architecture or a variant field (hidden_act, rope_theta, ...)")  # fmt: skip
    ap.add_argument(
        "--device", default="cpu", help="torch device of the arithmetic (cpu, cuda, ...)"
    )
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the random drops (dare_*, della*); mergekit has none")  # fmt: skip
    ap.add_argument("--overwrite", action="store_true",
                    help="replace OUT_DIR if it is an earlier merge's output")  # fmt: skip
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--verbose", "-v", action="store_true", help="full tracebacks on errors")
    args = ap.parse_args(list(argv))
    if not 0 <= args.seed < 2**32:
        ap.error(f"argument --seed: {args.seed} is outside [0, 2**32 - 1]")
    try:
        from hhh_bench.validation import check_device_here

        check_device_here("--device", args.device)  # battery 15, F13: mps/xla/meta: tracebacks
        check_out_dir(args.out_dir)
        res = run(args.config, args.out_dir, allow_pickle=args.allow_pickle, device=args.device,
                  allow_architecture_mismatch=args.allow_architecture_mismatch,
                  seed=args.seed, overwrite=args.overwrite, progress=not args.no_progress)  # fmt: skip
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, OSError) as e:
        if args.verbose or os.environ.get("HHH_VERBOSE") == "1":
            raise
        # battery 11, mk_pk1: this command's switch is its flag, not the pipeline's key
        text = str(e).replace(PICKLE_SWITCH, "--allow-pickle")
        text = text.replace(ARCH_SWITCH, "--allow-architecture-mismatch")
        print(f"hhh-bench merge: error: {text}", file=sys.stderr)
        return 2
    print(
        f"merged {res.n_tensors} tensors with {res.method} into {res.out_dir} ({res.seconds:.1f} s)"
    )
    return 0
