"""The merge-method protocol, its registry, the shared hyperparameters and input validation.

Notation (DESIGN.md §3): base θ0, finetuned models θ_t (t = 1..T), task vectors τ_t = θ_t − θ0,
merged weight θ = θ0 + λ·merge(w_1·τ_1, .., w_T·τ_T).

Every method is one :class:`MergeMethod` instance registered under a stable name. The streaming
engine and :mod:`hhh_bench.merging.api` drive it in the same steps::

    params = method.make_params(**kw)                                # typed, validated
    stats  = {name: method.tensor_stats(name, base, fts, params)}    # only if needs_global_pass
    plan   = method.plan(stats, params)                              # per-tensor extra arguments
    pre    = method.precompute(name, base, fts, params, plan.get(name, {}))  # expensive, cacheable
    out    = method.compose(name, base, pre, params, plan.get(name, {}))     # cheap: weights, λ

``precompute`` depends only on the inputs, on the params named in ``precompute_keys`` and on the
plan entry, so a sweep over the other knobs (λ, weights, ...) reuses it from a cache.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

import torch
from torch import Tensor

COMPUTE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}

PlanEntry = dict[str, Any]
"""Per-tensor output of :meth:`MergeMethod.plan`: plain Python scalars and lists only (JSON-able),
so the engine can put it in a cache key."""


def param(
    default: Any, help: str, *, choices: Sequence[str] | Callable[[], Sequence[str]] | None = None
) -> Any:
    """A dataclass field with its description (and allowed values) kept as field metadata."""
    return field(default=default, metadata={"help": help, "choices": choices})


def _choices(f: dataclasses.Field) -> tuple[str, ...] | None:
    c = f.metadata.get("choices")
    if c is None:
        return None
    return tuple(c() if callable(c) else c)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _type_name(tp: Any) -> str:
    if _is_union(tp):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    if typing.get_origin(tp) is tuple:
        return f"tuple[{_type_name(typing.get_args(tp)[0])}, ...]"
    return getattr(tp, "__name__", str(tp))


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """``value`` converted to the field type ``tp``, or a ValueError naming the parameter."""
    if _is_union(tp):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = (a for a in args if a is not type(None))
        return _coerce(name, inner, value)
    bad = ValueError(f"merge parameter {name!r} must be {_type_name(tp)}, got {value!r}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise bad
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise bad
        return int(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if typing.get_origin(tp) is tuple:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            raise bad
        inner = typing.get_args(tp)[0]
        return tuple(_coerce(name, inner, v) for v in value)
    raise TypeError(f"unsupported parameter type {tp!r} for {name!r}")  # a bug in a params class


@dataclass(frozen=True)
class CommonParams:
    """Hyperparameters every method takes. Subclass it (frozen dataclass, every field with a
    default made by :func:`param`) and extend :meth:`validate` for a method's own knobs.

    Values are type-checked and converted on construction (an int for a float field becomes a
    float, a list for ``weights`` a tuple), then :meth:`validate` runs; both raise ``ValueError``
    naming the parameter.
    """

    scaling: float = param(
        1.0,
        "λ, multiplies the merged task vector (not each τ_t): θ = θ0 + λ·merge(w_1·τ_1, .., w_T·τ_T).",
    )
    weights: tuple[float, ...] | None = param(
        None,
        "One weight per finetuned model, in their order; w_t multiplies τ_t before the method "
        "(null = all 1).",
    )
    seed: int = param(0, "Seed of the random steps (DARE masks); other methods are deterministic.")
    compute_dtype: str = param(
        "float32",
        "Dtype of the arithmetic (SVDs included); the result is cast back to the base's dtype.",
        choices=tuple(COMPUTE_DTYPES),
    )
    device: str = param("cpu", "Torch device of the arithmetic (cpu, cuda, cuda:1, mps, ...).")

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _coerce(f.name, hints[f.name], getattr(self, f.name))
            choices = _choices(f)
            if choices is not None and value not in choices:
                raise ValueError(
                    f"merge parameter {f.name!r} must be one of {list(choices)}, got {value!r}"
                )
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the parameter whose value is out of range."""
        if not math.isfinite(self.scaling):
            raise ValueError(f"merge parameter 'scaling' must be finite, got {self.scaling}")
        if self.weights is not None:
            if len(self.weights) == 0:
                raise ValueError("merge parameter 'weights' is empty; use null for all 1")
            for i, w in enumerate(self.weights):
                if not math.isfinite(w):
                    raise ValueError(f"merge parameter 'weights' entry {i} is not finite: {w}")
        try:
            dev = torch.device(self.device)
        except (RuntimeError, ValueError) as e:
            raise ValueError(
                f"merge parameter 'device' is not a torch device: {self.device!r}"
            ) from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"merge parameter 'device' is {self.device!r} but CUDA is not available"
            )

    # -- helpers used by the methods -----------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype of ``compute_dtype``."""
        return COMPUTE_DTYPES[self.compute_dtype]

    def resolve_weights(self, num_models: int) -> tuple[float, ...]:
        """The weights for ``num_models`` finetuned models (all 1 when unset)."""
        if self.weights is None:
            return (1.0,) * num_models
        if len(self.weights) != num_models:
            raise ValueError(
                f"merge parameter 'weights' has {len(self.weights)} entries but {num_models} "
                "finetuned models were given; give one weight per finetuned model, in their order"
            )
        return self.weights

    def weight_tensor(self, num_models: int, like: Tensor) -> Tensor:
        """Weights as a (T, 1, .., 1) tensor that broadcasts against a (T, *shape) stack ``like``."""
        w = torch.tensor(self.resolve_weights(num_models), dtype=like.dtype, device=like.device)
        return w.view(num_models, *([1] * (like.dim() - 1)))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists), as they would appear in ``conf/merge/<name>.yaml``."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Input validation (shared with the streaming engine)


def _who(index: int | None) -> str:
    return "the base model" if index is None else f"finetuned model {index}"


def validate_tensors(name: str, base: Tensor, finetuned: Sequence[Tensor]) -> None:
    """Check one parameter across models; raise ``ValueError`` naming it and the model index.

    Rules: at least one finetuned model; every tensor has the base's shape and dtype; floating
    tensors hold no NaN or Inf; non-floating tensors (integer or bool buffers) are equal across
    models (they are returned from the base, not merged); complex tensors are refused.
    """
    label = repr(name) if name else "(unnamed)"
    if len(finetuned) == 0:
        raise ValueError(f"parameter {label}: no finetuned models given; pass at least one")
    for idx, t in [(None, base), *enumerate(finetuned)]:
        if not isinstance(t, Tensor):
            raise ValueError(
                f"parameter {label}: {_who(idx)} gives {type(t).__name__}, not a Tensor"
            )
        if t.is_complex():
            raise ValueError(
                f"parameter {label}: {_who(idx)} is complex ({t.dtype}); not supported"
            )
        if idx is not None:
            if t.shape != base.shape:
                raise ValueError(
                    f"parameter {label}: {_who(idx)} has shape {tuple(t.shape)} but the base has "
                    f"{tuple(base.shape)}; every model must share the base's architecture "
                    "(for a resized vocabulary, resize every model's embeddings to one size first)"
                )
            if t.dtype != base.dtype:
                raise ValueError(
                    f"parameter {label}: {_who(idx)} has dtype {t.dtype} but the base has "
                    f"{base.dtype}; load every model in one dtype"
                )
        if t.is_floating_point():
            bad = t.numel() - int(torch.isfinite(t).sum())
            if bad:
                raise ValueError(
                    f"parameter {label}: {_who(idx)} holds {bad} NaN/Inf value(s); "
                    "the model is corrupt or diverged"
                )
        elif idx is not None and not torch.equal(t.cpu(), base.cpu()):
            raise ValueError(
                f"parameter {label}: {_who(idx)} is a {t.dtype} tensor that differs from the "
                "base's; non-floating buffers cannot be merged and must be equal across models"
            )


def validate_state_dicts(
    base: Mapping[str, Tensor], finetuned: Sequence[Mapping[str, Tensor]]
) -> None:
    """Check keys, shapes, dtypes and values of whole state dicts (see :func:`validate_tensors`)."""
    if len(finetuned) == 0:
        raise ValueError("no finetuned models given; pass at least one state dict")
    keys = set(base)
    for i, sd in enumerate(finetuned):
        missing, extra = sorted(keys - set(sd)), sorted(set(sd) - keys)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"lacks {len(missing)} of the base's keys, e.g. {missing[:3]}")
            if extra:
                parts.append(f"has {len(extra)} keys the base lacks, e.g. {extra[:3]}")
            raise ValueError(
                f"finetuned model {i} {' and '.join(parts)}; all models must share the base's "
                "parameter names (same architecture, same naming)"
            )
    for k in base:
        validate_tensors(k, base[k], [sd[k] for sd in finetuned])


# ---------------------------------------------------------------------------------------------
# Arithmetic helpers shared by the methods


def task_vectors(base: Tensor, finetuned: Sequence[Tensor], params: CommonParams) -> Tensor:
    """The (T, *shape) stack of τ_t = θ_t − θ0 in ``params.compute_dtype`` on ``params.device``."""
    dev, dt = torch.device(params.device), params.dtype
    b = base.to(device=dev, dtype=dt)
    return torch.stack([t.to(device=dev, dtype=dt) - b for t in finetuned])


def finish(base: Tensor, merged_tau: Tensor, params: CommonParams) -> Tensor:
    """θ0 + λ·merged τ, computed in the compute dtype, returned in the base's dtype and device."""
    b = base.to(device=merged_tau.device, dtype=merged_tau.dtype)
    return (b + params.scaling * merged_tau).to(device=base.device, dtype=base.dtype)


def on_device(pre: Mapping[str, Tensor], params: CommonParams) -> dict[str, Tensor]:
    """A precompute result (maybe loaded from a cache on CPU) on the compute device and dtype."""
    dev, dt = torch.device(params.device), params.dtype
    return {
        k: v.to(device=dev, dtype=dt if v.is_floating_point() else v.dtype) for k, v in pre.items()
    }


# ---------------------------------------------------------------------------------------------
# The protocol


class MergeMethod:
    """One merge method. Subclass, set the class attributes, implement :meth:`precompute` and
    :meth:`compose`, and decorate with :func:`register_method`.

    Attributes:
        name: the registry name (stable: it appears in W&B tables, sweeps and
            ``conf/merge/<name>.yaml``).
        params_cls: the method's :class:`CommonParams` subclass.
        precompute_keys: names of the params :meth:`precompute` depends on. Its output is a
            function of (name, base, finetuned, those params, plan entry) only, so a cache keyed on
            them is correct.
        summary: one line for listings.
    """

    name: ClassVar[str]
    params_cls: ClassVar[type[CommonParams]] = CommonParams
    precompute_keys: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""

    def make_params(self, **kw: Any) -> CommonParams:
        """Validated params; an unknown name raises ``ValueError`` listing the valid ones."""
        valid = [f.name for f in dataclasses.fields(self.params_cls)]
        unknown = sorted(set(kw) - set(valid))
        if unknown:
            raise ValueError(
                f"merge method {self.name!r}: unknown parameter(s) {unknown}; valid: {valid}"
            )
        return self.params_cls(**kw)

    def needs_global_pass(self, params: CommonParams) -> bool:
        """Whether :meth:`tensor_stats` and :meth:`plan` must run over all tensors first."""
        return False

    def tensor_stats(
        self, name: str, base: Tensor, finetuned: Sequence[Tensor], params: CommonParams
    ) -> dict[str, Any] | None:
        """First-pass statistics of one floating tensor (small: scalars or tiny tensors), or
        None when this tensor needs no plan entry. Called only if :meth:`needs_global_pass`."""
        return None

    def plan(
        self, stats: Mapping[str, Mapping[str, Any]], params: CommonParams
    ) -> dict[str, PlanEntry]:
        """Per-tensor extra arguments from all tensors' stats. A tensor absent from the result
        gets the empty entry ``{}``. Entries hold plain (JSON-able) values only."""
        return {}

    def precompute(
        self,
        name: str,
        base: Tensor,
        finetuned: Sequence[Tensor],
        params: CommonParams,
        plan_entry: Mapping[str, Any],
    ) -> dict[str, Tensor]:
        """The expensive, knob-independent part for one floating tensor (see ``precompute_keys``).
        Tensors are returned on ``params.device`` in ``params.compute_dtype``."""
        raise NotImplementedError

    def compose(
        self,
        name: str,
        base: Tensor,
        pre: Mapping[str, Tensor],
        params: CommonParams,
        plan_entry: Mapping[str, Any],
    ) -> Tensor:
        """The merged weight θ0 + λ·merged τ from ``pre``, in the base's dtype and device."""
        raise NotImplementedError

    def merge_tensor(
        self,
        name: str,
        base: Tensor,
        finetuned: Sequence[Tensor],
        params: CommonParams,
        plan_entry: Mapping[str, Any] | None = None,
    ) -> Tensor:
        """``precompute`` then ``compose`` for one (already validated) floating tensor."""
        entry = dict(plan_entry or {})
        pre = self.precompute(name, base, finetuned, params, entry)
        return self.compose(name, base, pre, params, entry)

    def describe(self) -> list[dict[str, Any]]:
        """Each parameter as ``{"name", "type", "default", "description"}``."""
        hints = typing.get_type_hints(self.params_cls)
        out = []
        for f in dataclasses.fields(self.params_cls):
            tp = _type_name(hints[f.name])
            choices = _choices(f)
            if choices is not None:
                tp = f"{tp} ({' | '.join(choices)})"
            out.append(
                {
                    "name": f.name,
                    "type": tp,
                    "default": f.default,
                    "description": f.metadata["help"],
                }
            )
        return out


_REGISTRY: dict[str, MergeMethod] = {}


def register_method(cls: type[MergeMethod]) -> type[MergeMethod]:
    """Class decorator: instantiate ``cls`` and register it under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"merge method {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def registered_methods() -> list[str]:
    """Sorted names of the registered methods."""
    return sorted(_REGISTRY)


def get_method(name: str) -> MergeMethod:
    """The registered method ``name``; an unknown name raises ``ValueError`` listing the known."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown merge method {name!r}; known: {registered_methods()}") from None
