"""The merge-method protocol, its registry, input validation and the arithmetic helpers.

Notation (DESIGN.md §3): base θ0, finetuned models θ_t (t = 1..T), task vectors τ_t = θ_t − θ0,
merged weight θ = θ0 + λ·merge(w_1·τ_1, .., w_T·τ_T).

A method receives the task vectors of one parameter as :class:`~hhh_bench.merging.taskvec.TaskVectors`
(dense, or LoRA factors kept as such) and is driven in these steps by the one merge driver
(:mod:`hhh_bench.merging.driver`), for in-memory state dicts and streamed model folders alike::

    params = method.make_params(**kw)                                # typed, validated
    stats  = {name: method.tensor_stats(name, base, taus, params)}   # only if needs_global_pass
    plan   = method.plan(stats, params)                              # per-tensor extra arguments
    pre    = method.precompute(name, base, taus, params, plan.get(name, {}))  # expensive, cached
    out    = method.compose(name, base, pre, params, plan.get(name, {}))      # cheap: weights, λ

``precompute`` depends only on the inputs, on the params named in ``precompute_keys`` and on the
plan entry, so a sweep over the other knobs (λ, weights, ...) reuses it from a cache.

Two ways to write a method:

- :func:`merge_function`: a decorated function ``(stack, weights, params) -> merged τ`` for
  methods that map the (T, *shape) stack of task vectors to one (task arithmetic, weight
  averaging, TIES, DARE), with an optional cached ``prepare`` step (a trim, a random drop);
- a :class:`MergeMethod` subclass decorated with :func:`register_method`, for methods that plan
  over all tensors or decompose the task vectors themselves (TSV-M, RESM).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import Tensor

from hhh_bench.core.registry import Registry
from hhh_bench.merging.params import (
    COMPUTE_DTYPES,
    CommonParams,
    describe_params,
    param,
)
from hhh_bench.merging.taskvec import LowRank, TaskVectors

__all__ = [
    "COMPUTE_DTYPES",
    "CommonParams",
    "FunctionMethod",
    "LowRank",
    "MergeMethod",
    "PlanEntry",
    "TaskVectors",
    "finish",
    "get_method",
    "merge_function",
    "on_device",
    "param",
    "register_method",
    "registered_methods",
    "validate_state_dicts",
    "validate_tensors",
]

PlanEntry = dict[str, Any]
"""Per-tensor output of :meth:`MergeMethod.plan`: plain Python scalars and lists only (JSON-able),
so the engine can put it in a cache key."""

P = TypeVar("P", bound=CommonParams)


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


def finish(base: Tensor, merged_tau: Tensor, params: CommonParams) -> Tensor:
    """θ0 + λ·merged τ in the compute dtype (the caller casts once, to the output dtype: rounding
    θ0 + λτ through a bf16 base would lose a small LoRA update)."""
    b = base.to(device=merged_tau.device, dtype=merged_tau.dtype)
    return torch.add(b, merged_tau, alpha=params.scaling)


def on_device(pre: Mapping[str, Tensor], params: CommonParams) -> dict[str, Tensor]:
    """A precompute result (maybe loaded from a cache on CPU) on the compute device and dtype."""
    dev, dt = torch.device(params.device), params.dtype
    return {
        k: v.to(device=dev, dtype=dt if v.is_floating_point() else v.dtype) for k, v in pre.items()
    }


def task_vectors_of(
    base: Tensor, finetuned: Sequence[Tensor | LowRank], params: CommonParams
) -> TaskVectors:
    """The :class:`TaskVectors` of full weights θ_t (τ_t = θ_t − θ0) or of LoRA updates given as
    :class:`LowRank` (already τ), in the compute dtype on the compute device."""
    dev, dt = torch.device(params.device), params.dtype
    if not any(isinstance(f, LowRank) for f in finetuned):
        return TaskVectors.from_weights(base, finetuned, dt, dev)  # type: ignore[arg-type]
    b = base.to(device=dev, dtype=dt)
    items = [
        f.to(dt, dev) if isinstance(f, LowRank) else f.to(device=dev, dtype=dt) - b
        for f in finetuned
    ]
    return TaskVectors(items, base.shape, dt, dev)


# ---------------------------------------------------------------------------------------------
# The protocol


class MergeMethod(Generic[P]):
    """One merge method. Subclass, set the class attributes, implement :meth:`precompute` and
    :meth:`compose`, and decorate with :func:`register_method` (or write a function and use
    :func:`merge_function`).

    Attributes:
        name: the registry name (stable: it appears in W&B tables, sweeps and
            ``conf/merge/<name>.yaml``).
        min_models, max_models: how many finetuned models it merges (checked up front by
            :meth:`check_models`; ``max_models`` None: no limit).
        params_cls: the method's :class:`CommonParams` subclass.
        precompute_keys: names of the params :meth:`precompute` depends on. Its output is a
            function of (name, base, task vectors, those params, plan entry) only, so a cache
            keyed on them is correct.
        summary: one line for listings.
        statistics_kind: what a data-aware method reads from one statistics file per finetuned
            model (its ``statistics`` param; :mod:`hhh_bench.merging.statsfile`): ``"fisher"``
            or ``"gram"``; None for the methods that need only the weights. The pipeline
            computes those files when the param is null.
    """

    name: ClassVar[str]
    params_cls: ClassVar[type[CommonParams]] = CommonParams
    precompute_keys: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""
    statistics_kind: ClassVar[str | None] = None
    min_models: ClassVar[int] = 1
    max_models: ClassVar[int | None] = None

    @property
    def draws(self) -> bool:
        """Whether the merge draws random numbers, seeded by ``params.seed`` (DARE's and DELLA's
        drop masks: ``seed`` is among the params their cached step depends on). The merge stage
        seeds such a method with the run's ``seed`` unless ``merge.params.seed`` is given, so
        that each seed of ``seeds=[...]`` draws its own masks."""
        return "seed" in self.precompute_keys

    def check_models(self, num_models: int, params: P) -> None:
        """Refuse, before any input is opened, a number of finetuned models this method cannot
        merge with these params (:attr:`min_models`, :attr:`max_models`; a method whose knobs
        depend on it, such as consensus merging's ``min_agreement``, overrides this)."""
        lo, hi = self.min_models, self.max_models
        if num_models < lo or (hi is not None and num_models > hi):
            want = f"{lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
            raise ValueError(
                f"merge method {self.name!r} needs {want} finetuned models, got {num_models}"
            )

    def make_params(self, **kw: Any) -> P:
        """Validated params; an unknown name raises ``ValueError`` listing the valid ones.
        ``seed=None`` (``merge.params.seed: null``) is the default seed here: the merge stage
        gives a drawing method the run's seed before it gets here (:attr:`draws`)."""
        if "seed" in kw and kw["seed"] is None:
            kw = {k: v for k, v in kw.items() if k != "seed"}
        seed = kw.get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed < 2**32:
            # a seed a run takes (battery 16: -5 was accepted); its type: the params' own check
            raise ValueError(
                f"merge.params.seed must be an integer in [0, 2**32 - 1] (or null: the run's "
                f"seed), got {seed!r}"
            )  # fmt: skip
        valid = [f["name"] for f in describe_params(self.params_cls)]
        unknown = sorted(set(kw) - set(valid))
        if unknown:
            raise ValueError(
                f"merge method {self.name!r}: unknown parameter(s) {unknown}; valid: {valid}"
            )
        return self.params_cls(**kw)  # type: ignore[return-value]

    def check_shapes(self, shapes: Mapping[str, tuple[int, ...]], params: P) -> None:
        """Refuse, before any tensor is read, knobs that cannot work on these tensors (``shapes``:
        every floating tensor the merge computes, by name): e.g. a TIES ``density`` that keeps
        no entry of a tensor. Raise ``ValueError`` naming the parameter and the tensor; the
        default accepts everything."""

    def check_merge(
        self, shapes: Mapping[str, tuple[int, ...]], num_models: int, params: P
    ) -> None:
        """What the driver calls before any tensor is read: :meth:`check_shapes`, by default. A
        method that reads inputs of its own (Fisher merging and RegMean: one statistics file per
        finetuned model) overrides this to check them against the ``num_models`` models and
        the merged tensors' ``shapes``."""
        self.check_shapes(shapes, params)

    def needs_global_pass(self, params: P) -> bool:
        """Whether :meth:`tensor_stats` and :meth:`plan` must run over all tensors first."""
        return False

    def tensor_stats(
        self, name: str, base: Tensor, taus: TaskVectors, params: P
    ) -> dict[str, Any] | None:
        """First-pass statistics of one floating tensor (small: scalars or tiny tensors), or
        None when this tensor needs no plan entry. Called only if :meth:`needs_global_pass`."""
        return None

    def plan(self, stats: Mapping[str, Mapping[str, Any]], params: P) -> dict[str, PlanEntry]:
        """Per-tensor extra arguments from all tensors' stats. A tensor absent from the result
        gets the empty entry ``{}``. Entries hold plain (JSON-able) values only."""
        return {}

    def precompute(
        self,
        name: str,
        base: Tensor,
        taus: TaskVectors,
        params: P,
        plan_entry: Mapping[str, Any],
    ) -> dict[str, Tensor]:
        """The expensive, knob-independent part for one floating tensor (see ``precompute_keys``).
        Tensors are returned on ``params.device``."""
        raise NotImplementedError

    def compose(
        self,
        name: str,
        base: Tensor,
        pre: Mapping[str, Tensor],
        params: P,
        plan_entry: Mapping[str, Any],
    ) -> Tensor:
        """The merged weight θ0 + λ·merged τ from ``pre``, in the compute dtype on the compute
        device (the driver casts it once to the output dtype)."""
        raise NotImplementedError

    def merge_tensor(
        self,
        name: str,
        base: Tensor,
        taus: TaskVectors,
        params: P,
        plan_entry: Mapping[str, Any] | None = None,
    ) -> Tensor:
        """``precompute`` then ``compose`` for one (already validated) floating tensor."""
        entry = dict(plan_entry or {})
        pre = self.precompute(name, base, taus, params, entry)
        return self.compose(name, base, pre, params, entry)

    def linear_coefficients(self, params: P, num_models: int) -> tuple[float, ...] | None:
        """(c_1..c_T) when the merged τ is Σ_t c_t τ_t with coefficients that depend on the
        params only (task arithmetic, weight average), else None.

        The driver then merges each tensor as θ0 + λ·Σ_t c_t (θ_t − θ0) in one fused pass over
        cache-sized pieces (:func:`hhh_bench.merging.driver.merge_linear`), without
        :meth:`precompute`, :meth:`compose` or a sweep cache (there is nothing to reuse)."""
        return None

    def diagnostics(self, name: str, base: Tensor, taus: TaskVectors, params: P) -> dict[str, Any]:
        """Method-specific statistics of one floating tensor for the task-vector diagnostics
        (plain values; ``{}`` by default). RESM reports what its reweighting changes here."""
        return {}

    def describe(self) -> list[dict[str, Any]]:
        """Each parameter as ``{"name", "type", "default", "description"}``."""
        return describe_params(self.params_cls)


StackFn = Callable[[Tensor, Tensor, Any], Tensor]
"""(the (T, *shape) stack, the (T, 1, .., 1) weights, the params) -> the merged τ."""
PrepareFn = Callable[[str, Tensor, Any], Tensor]
"""(parameter name, the (T, *shape) stack, the params) -> the prepared stack (cached)."""
CoefficientsFn = Callable[[Sequence[float], Any], Sequence[float]]
"""(the resolved weights, the params) -> c_t of a linear method's Σ_t c_t τ_t."""


class FunctionMethod(MergeMethod[P]):
    """A method made of two functions on the dense stack of task vectors: ``prepare``
    (expensive, cached: trim, random drop; default none) and ``merge`` (cheap, run at every
    compose with the current weights). Built by :func:`merge_function`."""

    merge_fn: ClassVar[StackFn]
    prepare_fn: ClassVar[PrepareFn | None] = None
    coefficients_fn: ClassVar[CoefficientsFn | None] = None

    def linear_coefficients(self, params: P, num_models: int) -> tuple[float, ...] | None:
        fn = type(self).coefficients_fn
        return None if fn is None else tuple(fn(params.resolve_weights(num_models), params))

    def prepared(
        self, name: str, taus: TaskVectors, params: P, plan_entry: Mapping[str, Any]
    ) -> Tensor:
        """The stack after ``prepare`` (override to use the plan entry)."""
        prepare = type(self).prepare_fn
        return taus.stack() if prepare is None else prepare(name, taus.consume(), params)

    def precompute(
        self,
        name: str,
        base: Tensor,
        taus: TaskVectors,
        params: P,
        plan_entry: Mapping[str, Any],
    ) -> dict[str, Tensor]:
        return {"tau": self.prepared(name, taus, params, plan_entry)}

    def compose(
        self,
        name: str,
        base: Tensor,
        pre: Mapping[str, Tensor],
        params: P,
        plan_entry: Mapping[str, Any],
    ) -> Tensor:
        stack = on_device(pre, params)["tau"]
        weights = params.weight_tensor(len(stack), stack)
        tau = self.merge_stack(name, base, stack, weights, params)
        check_result(self, name, tau, tuple(base.shape), params, finite=False)
        return finish(base, tau, params)

    def merge_stack(
        self, name: str, base: Tensor, stack: Tensor, weights: Tensor, params: P
    ) -> Tensor:
        """The merged τ of one tensor from its (prepared) stack: ``merge_fn``. A method that
        needs θ0 (one averaging weights, not task vectors) or the tensor's name (for its errors)
        overrides this, not :meth:`compose`."""
        return type(self).merge_fn(stack, weights, params)


class MethodError(ValueError):
    """A merge method that failed on a tensor or returned something that cannot be a merged
    tensor (wrong shape, not floating point, NaN/Inf from finite inputs): named with the
    method, its module when it is not ours, and the tensor; not a traceback from inside it
    (``--verbose`` shows that)."""


def method_label(method: MergeMethod[Any]) -> str:
    """``merge method 'x'``, with ``(from module 'm')`` for a method not of hhh-bench."""
    fn = getattr(type(method), "merge_fn", None)
    mod = getattr(fn, "__module__", None) or type(method).__module__
    ours = mod.startswith("hhh_bench.")
    return f"merge method {method.name!r}" + ("" if ours else f" (from module {mod!r})")


def check_result(
    method: MergeMethod[Any],
    name: str,
    out: Any,
    shape: tuple[int, ...],
    params: CommonParams,
    finite: bool = True,
) -> None:
    """What a method returned for tensor ``name`` can be a merged tensor: a floating-point
    tensor of ``shape`` and, with ``finite``, finite (its inputs were checked finite, so a
    NaN/Inf is the method's, or an overflow of ``scaling``/``weights``; the driver checks this
    only once the written tensor is found non-finite, so the fast path pays no extra pass).
    Raises :class:`MethodError`."""
    what = method_label(method)
    if not isinstance(out, Tensor):
        raise MethodError(
            f"{what} returned a {type(out).__name__} for parameter {name!r}, not a tensor"
        )
    if out.is_meta or out.is_sparse:
        raise MethodError(
            f"{what} returned a {'meta' if out.is_meta else 'sparse'} tensor for parameter "
            f"{name!r}; a merged weight is a dense tensor with values"
        )
    if tuple(out.shape) != tuple(shape):
        raise MethodError(
            f"{what} returned shape {tuple(out.shape)} for parameter {name!r}, whose shape is "
            f"{tuple(shape)}"
        )
    if not out.is_floating_point():
        raise MethodError(
            f"{what} returned a {out.dtype} tensor for parameter {name!r}; a merged weight is "
            "floating point"
        )
    if finite and not bool(torch.isfinite(out.sum())):
        bad = out.numel() - int(torch.isfinite(out).sum())
        if bad:
            raise MethodError(
                f"{what} returned {bad} NaN/Inf value(s) for parameter {name!r} in the compute "
                f"dtype {out.dtype}, from finite inputs, with {params.knobs()} (a division by "
                "zero in the method, or a scaling/weights so large they overflow)"
            )


def merge_function(
    name: str,
    params_cls: type[CommonParams] = CommonParams,
    *,
    summary: str = "",
    prepare: PrepareFn | None = None,
    prepare_keys: Sequence[str] = (),
    base: type[FunctionMethod] = FunctionMethod,
    coefficients: CoefficientsFn | None = None,
) -> Callable[[StackFn], StackFn]:
    """Register ``fn(stack, weights, params) -> merged τ`` as the merge method ``name``.

    Args:
        name: the registry name.
        params_cls: the method's params (default: the common ones only).
        summary: one line for listings (default: the function's first docstring line).
        prepare: optional ``(name, stack, params) -> stack``, the expensive step cached across
            sweeps of the other knobs (its output is what ``fn`` receives); it may overwrite
            the stack it is given (:meth:`TaskVectors.consume`) and return it.
        prepare_keys: the params ``prepare`` depends on (with ``compute_dtype``, the cache key).
        base: the :class:`FunctionMethod` subclass to build on (one that plans, e.g. TIES).
        coefficients: for a linear method (``fn`` is Σ_t c_t τ_t and there is no ``prepare``),
            ``(weights, params) -> c``; the driver then merges in one fused pass
            (:meth:`MergeMethod.linear_coefficients`). A test should check that ``fn`` and the
            coefficients agree.

    Returns the function unchanged (it stays usable on its own).
    """

    def deco(fn: StackFn) -> StackFn:
        doc = (fn.__doc__ or "").strip().splitlines()
        attrs = {
            "name": name,
            "params_cls": params_cls,
            "precompute_keys": tuple(dict.fromkeys((*prepare_keys, "compute_dtype"))),
            "summary": summary or (doc[0] if doc else ""),
            "merge_fn": staticmethod(fn),
            "prepare_fn": staticmethod(prepare) if prepare is not None else None,
            "coefficients_fn": staticmethod(coefficients)
            if coefficients is not None and prepare is None
            else None,
            "__doc__": fn.__doc__,
            "__module__": fn.__module__,
        }
        cls = type(f"{fn.__name__}_method", (base,), attrs)
        register_method(cls)
        return fn

    return deco


METHODS: Registry[MergeMethod[Any]] = Registry("merge method", "hhh_bench.merge_methods")
"""Every registered merge method, by name (plugins: the ``hhh_bench.merge_methods`` entry-point
group)."""


def register_method(cls: type[MergeMethod[Any]]) -> type[MergeMethod[Any]]:
    """Class decorator: instantiate ``cls`` and register it under ``cls.name``."""
    METHODS.add(cls.name, cls())
    return cls


def registered_methods() -> list[str]:
    """Sorted names of the registered methods."""
    return METHODS.names()


def get_method(name: str) -> MergeMethod[Any]:
    """The registered method ``name``; an unknown name raises ``ValueError`` listing the known."""
    return METHODS.get(name)
