"""The one merge driver: statistics pass → plan → precompute (cached) → compose → sink.

The in-memory API (:mod:`hhh_bench.merging.api`), the streaming engine
(:mod:`hhh_bench.merging.engine`) and the diagnostics all run through :func:`iter_task_vectors`
and :func:`run_merge` over the same :class:`~hhh_bench.merging.sources.TensorSource` inputs;
what differs is the sink (a dict, or safetensors shards written as tensors arrive).

Reading overlaps compute: while one tensor is merged, a reader thread loads the next one's
inputs (within a byte budget, so the largest tensors are never held twice).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hhh_bench.core.provenance import config_hash
from hhh_bench.merging.base import (
    CommonParams,
    MergeMethod,
    MethodError,
    check_result,
    method_label,
    validate_tensors,
)
from hhh_bench.merging.cache import SweepCache
from hhh_bench.merging.sources import LoraAdapter, TensorSource
from hhh_bench.merging.taskvec import LowRank, TaskVectors

Sink = Callable[[str, Tensor], None]
"""Receives each merged tensor (name, θ) as soon as it is made."""

PREFETCH_BYTES = 512 << 20
"""Inputs of the next tensor are read ahead only when they and the current one's fit in this
many bytes (twice as many for a linear method, whose merge holds no task-vector stack)."""


@dataclass
class Inputs:
    """Opened and checked inputs of a merge: the base, the T finetuned sources, the keys in
    merge order and the vocabulary-policy decisions (``{key: "base" | "truncate"}``)."""

    base: TensorSource
    models: list[TensorSource]
    keys: list[str]
    decisions: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        for m in (self.base, *self.models):
            m.close()


def fast_validate(name: str, base: Tensor, fts: Sequence[Tensor]) -> None:
    """``validate_tensors`` with a fast path: when every tensor is floating with the base's dtype
    and shape and its sum is finite (a NaN or Inf anywhere makes the sum NaN or Inf), nothing can
    fail. A non-finite sum (a bad value, or a float16 sum that overflowed) runs the full check,
    which names the model and counts the bad values."""
    # a sum in the tensor's own dtype (reduced-precision sums accumulate in float32 inside;
    # asking for a float32 result instead takes a path ~20x slower); a finite result proves the
    # tensor clean, an overflowing one only sends it to the exact check
    if (
        fts
        and _plain_floats(base, fts)
        and all(bool(torch.isfinite(t.sum())) for t in (base, *fts))
    ):
        return
    validate_tensors(name, base, fts)


def _plain_floats(base: Tensor, fts: Sequence[Tensor]) -> bool:
    """Every tensor floating, of the base's dtype and shape (what the stack check assumes)."""
    return base.is_floating_point() and all(
        isinstance(t, Tensor) and t.dtype == base.dtype and t.shape == base.shape for t in fts
    )


def check_finite(
    name: str, t: Tensor, what: str = "the merged tensor", params: CommonParams | None = None
) -> None:
    """Raise ``ValueError`` naming ``name`` when ``t`` holds NaN or Inf (fast path: the sum in
    ``t``'s dtype, see :func:`fast_validate`; only a non-finite sum counts the values), and the
    merge's ``scaling`` and ``weights`` when ``params`` is given."""
    if not t.is_floating_point():
        return
    if bool(torch.isfinite(t.sum())):
        return
    bad = t.numel() - int(torch.isfinite(t).sum())
    if bad:
        knobs = f" with {params.knobs()}" if params is not None else ""
        raise ValueError(
            f"parameter {name!r}: {what} holds {bad} NaN/Inf value(s){knobs} (overflow: lower "
            "the scaling or the weights, or write float32 / bfloat16 instead of float16)"
        )


# ---------------------------------------------------------------------------------------------
# Reading one parameter


@dataclass(frozen=True)
class Update:
    """A task vector as an adapter gives it (already τ, not a weight): LoRA factors, a dense
    update (a LoRA bias), or None for τ = 0 (a parameter the adapter leaves untouched)."""

    tau: LowRank | Tensor | None


@dataclass
class Raw:
    """One parameter's inputs as read: the base tensor and, per model, its full weight or an
    :class:`Update`; ``fts`` is None when the finetuned models were not read (a cache hit needs
    only θ0)."""

    base: Tensor
    fts: list[Tensor | Update] | None


def read_raw(inputs: Inputs, key: str, need_finetuned: bool = True) -> Raw:
    b = inputs.base.get(key)
    if not need_finetuned:
        return Raw(b, None)
    fts: list[Tensor | Update] = []
    for m in inputs.models:
        if isinstance(m, LoraAdapter):
            fts.append(Update(m.task_vector(key)))
        else:
            t = m.get(key)
            if isinstance(t, LowRank):  # an in-memory LoRA update (merge_tensors)
                fts.append(Update(t))
                continue
            if inputs.decisions.get(key) == "truncate":
                t = t[: b.shape[0]]
            fts.append(t)
    return Raw(b, fts)


def task_vectors_from_raw(
    key: str, raw: Raw, dtype: torch.dtype, device: torch.device | str
) -> TaskVectors:
    """Validate the full weights of ``raw`` and build the parameter's :class:`TaskVectors`: a
    preallocated stack for full weights; LoRA factors kept as they are; τ = 0 where an adapter
    leaves the parameter untouched. ``raw.fts`` is released (the task vectors hold what is
    needed)."""
    assert raw.fts is not None
    base = raw.base
    full = [t for t in raw.fts if isinstance(t, Tensor)]
    if len(full) == len(raw.fts) and _plain_floats(base, full):
        # One finiteness check on the float32 stack instead of one per input: a NaN or Inf in
        # θ0 or any θ_t makes its τ non-finite (Inf - Inf = NaN); only then the full check runs,
        # which names the model and counts the bad values.
        tv = TaskVectors.from_weights(base, full, dtype, device, single_use=True)
        if not bool(torch.isfinite(tv.stack().sum())):
            validate_tensors(key, base, full)
        raw.fts = None
        return tv
    if full:
        fast_validate(key, base, full)
    dev = torch.device(device)
    b = base.to(device=dev, dtype=dtype)
    items: list[Tensor | LowRank] = []
    for t in raw.fts:
        if isinstance(t, Tensor):
            items.append(t.to(device=dev, dtype=dtype) - b)
        elif t.tau is None:
            zero = LowRank.zero(base.shape, dtype) if base.dim() == 2 else torch.zeros_like(b)
            items.append(zero.to(dtype, dev) if isinstance(zero, LowRank) else zero)
        elif isinstance(t.tau, LowRank):
            items.append(t.tau.to(dtype, dev))
        else:
            items.append(t.tau.to(device=dev, dtype=dtype))
    raw.fts = None
    return TaskVectors(items, base.shape, dtype, dev, single_use=True)


def iter_raw(
    inputs: Inputs,
    keys: Sequence[str],
    need_finetuned: Callable[[str], bool] | None = None,
    prefetch: bool = True,
    budget: int = PREFETCH_BYTES,
) -> Iterator[tuple[str, Raw]]:
    """(key, :class:`Raw`) for each key; the next key's inputs are read by a background thread
    while the caller works on the current one, when both fit ``budget`` bytes."""
    need = need_finetuned or (lambda k: True)

    def load(k: str) -> Raw:
        return read_raw(inputs, k, need(k))

    if not prefetch or len(keys) < 2:
        for k in keys:
            yield k, load(k)
        return
    sizes = [_input_bytes(inputs, k) for k in keys]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hhh-read") as pool:
        pending: Future[Raw] | None = pool.submit(load, keys[0])
        for i, k in enumerate(keys):
            raw = pending.result() if pending is not None else load(k)
            nxt = i + 1
            fits = nxt < len(keys) and sizes[i] + sizes[nxt] <= budget
            pending = pool.submit(load, keys[nxt]) if fits else None
            yield k, raw
            del raw


def _input_bytes(inputs: Inputs, key: str) -> int:
    n = math.prod(inputs.base.shape(key)) * inputs.base.dtype(key).itemsize
    return n * (1 + len(inputs.models))


# ---------------------------------------------------------------------------------------------
# The merge


@dataclass
class MergeStats:
    tensors: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    plan: dict[str, dict[str, Any]] = field(default_factory=dict)


def merged_shapes(inputs: Inputs) -> dict[str, tuple[int, ...]]:
    """The shape of every floating tensor the merge computes (vocabulary-policy ``base`` keys,
    which keep θ0, left out), for :meth:`MergeMethod.check_merge`."""
    return {
        k: tuple(inputs.base.shape(k))
        for k in inputs.keys
        if inputs.decisions.get(k) != "base" and inputs.base.dtype(k).is_floating_point
    }


def plan_merge(
    method: MergeMethod[Any],
    params: CommonParams,
    inputs: Inputs,
    *,
    progress: Callable[[Iterator[Any], str, int], Iterator[Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The method's plan: a first pass of :meth:`~MergeMethod.tensor_stats` over every floating
    tensor when the method needs one, else ``{}``."""
    if not method.needs_global_pass(params):
        return {}
    keys = [k for k in inputs.keys if inputs.decisions.get(k) != "base"]
    stats: dict[str, Any] = {}
    it: Iterator[tuple[str, Raw]] = iter_raw(inputs, keys)
    if progress is not None:
        it = progress(it, "statistics pass", len(keys))
    for k, raw in it:
        if not raw.base.is_floating_point():
            continue
        taus = task_vectors_from_raw(k, raw, params.dtype, params.device)
        s = method.tensor_stats(k, raw.base, taus, params)
        if s is not None:
            stats[k] = s
    return method.plan(stats, params)


def run_merge(
    method: MergeMethod[Any],
    params: CommonParams,
    inputs: Inputs,
    sink: Sink,
    *,
    plan: Mapping[str, Mapping[str, Any]] | None = None,
    cache: SweepCache | None = None,
    cache_prefix: str = "",
    progress: Callable[[Iterator[Any], str, int], Iterator[Any]] | None = None,
    desc: str = "merging",
    out_dtype: Callable[[str], torch.dtype] | None = None,
    params_for: Callable[[str], CommonParams] | None = None,
) -> MergeStats:
    """Merge every key of ``inputs`` and hand each result to ``sink``.

    Floating tensors: precompute (from the cache when ``cache`` holds an entry for this key,
    reading no finetuned tensor) then compose; non-floating buffers must be equal across models
    and are taken from the base; vocabulary-policy ``base`` keys keep θ0. Every merged floating
    tensor is cast to ``out_dtype(key)`` (when given; else it stays in the compute dtype) and
    checked for NaN/Inf before it reaches the sink. A linear method's tensors are merged in one
    fused pass (:func:`merge_linear`; no cache entry: there is nothing expensive to reuse).

    ``params_for`` (optional) gives each floating tensor its own params (per-layer gradients
    and name-filtered values of a mergekit YAML, :mod:`hhh_bench.mergeyaml`); ``params`` is
    then only the record and the default. The shape checks run per group of tensors sharing
    params, a sweep cache key holds the tensor's own precompute knobs, and a method that plans
    over all tensors (a first pass) is refused: its plan assumes one set of params.
    """
    groups = _params_groups(method, params, inputs, params_for)
    for p, shapes in groups:
        method.check_models(len(inputs.models), p)
        method.check_merge(shapes, len(inputs.models), p)
    stats = MergeStats(plan=dict(plan) if plan is not None else {})
    if plan is None:
        stats.plan = plan_merge(method, params, inputs, progress=progress)

    def ckey(k: str) -> str:
        what: dict[str, Any] = {"prefix": cache_prefix, "tensor": k, "plan": stats.plan.get(k, {})}
        if params_for is not None:  # this tensor's own precompute knobs
            pk = params_for(k)
            what["knobs"] = {n: getattr(pk, n) for n in method.precompute_keys}
        return config_hash(what, length=40)

    def need_finetuned(k: str) -> bool:
        if inputs.decisions.get(k) == "base":
            return False
        return cache is None or not cache.path(ckey(k)).is_file()

    coefficients = method.linear_coefficients(params, len(inputs.models))
    linear = {p: method.linear_coefficients(p, len(inputs.models)) for p, _ in groups}
    budget = 2 * PREFETCH_BYTES if coefficients is not None else PREFETCH_BYTES
    it: Iterator[tuple[str, Raw]] = iter_raw(inputs, inputs.keys, need_finetuned, budget=budget)
    if progress is not None:
        it = progress(it, desc, len(inputs.keys))
    threads = _reader_core(params) if coefficients is not None else contextlib.nullcontext()
    with threads:
        for k, raw in it:
            b = raw.base
            if inputs.decisions.get(k) == "base":
                merged = b
            elif not b.is_floating_point():
                if raw.fts is None:
                    raw = read_raw(inputs, k)
                validate_tensors(k, b, [_as_weight(t, b) for t in raw.fts or []])
                merged = b
            else:
                entry = stats.plan.get(k, {})
                pk = params_for(k) if params_for is not None else params
                dt = out_dtype(k) if out_dtype is not None else pk.dtype
                what = _what(dt, out_dtype is not None)
                coeffs = linear.get(pk) if params_for is not None else coefficients
                if coeffs is not None and fusable(raw):
                    merged = merge_linear(k, raw, coeffs, pk, dt, what)
                else:
                    key = ckey(k) if cache is not None else ""
                    pre = cache.get(key) if cache is not None else None
                    if pre is None:
                        if raw.fts is None:
                            raw = read_raw(inputs, k)
                        taus = task_vectors_from_raw(k, raw, pk.dtype, pk.device)
                        pre = _called(method, "precompute", k, b, taus, pk, entry)
                        del taus
                        if cache is not None:
                            cache.put(key, pre)
                    computed = _called(method, "compose", k, b, pre, pk, entry)
                    check_result(method, k, computed, tuple(b.shape), pk, finite=False)
                    del pre
                    merged = computed.to(dtype=dt)
                    if not bool(torch.isfinite(merged.sum())):  # the method's, or an overflow
                        check_result(method, k, computed, tuple(b.shape), pk)
                        check_finite(k, merged, what, pk)
                    del computed
            sink(k, merged)
            stats.tensors += 1
            del merged, raw
    if cache is not None:
        stats.cache_hits, stats.cache_misses = cache.hits, cache.misses
    return stats


def _called(method: MergeMethod[Any], step: str, k: str, *args: Any) -> Any:
    """``method.<step>(k, *args)``; an error other than a ValueError (which names its input
    already) becomes a :class:`MethodError` naming the method and the tensor."""
    try:
        return getattr(method, step)(k, *args)
    except ValueError:
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a method's own failure, named
        raise MethodError(
            f"{method_label(method)} failed on parameter {k!r}: {type(e).__name__}: {e}"
        ) from e


def per_tensor_params(
    m: MergeMethod[Any],
    params: Mapping[str, Any],
    tensor_params: Callable[[str], Mapping[str, Any]] | None,
    keys: Sequence[str],
    dtype_of: Callable[[str], torch.dtype],
) -> tuple[Callable[[str], CommonParams] | None, dict[str, dict[str, Any]]]:
    """Each floating tensor's params (``params`` updated by ``tensor_params(key)``), built and
    validated now, one params object per distinct set; and the record of the keys whose params
    differ from ``params`` (``{key: {param: value}}``)."""
    if tensor_params is None:
        return None, {}
    plain = {n: tuple(v) if isinstance(v, list) else v for n, v in params.items()}
    made: dict[tuple[tuple[str, Any], ...], Any] = {}
    by_key: dict[str, Any] = {}
    record: dict[str, dict[str, Any]] = {}
    for k in keys:
        if not dtype_of(k).is_floating_point:
            continue
        own = {n: tuple(v) if isinstance(v, list) else v for n, v in tensor_params(k).items()}
        ident = tuple(sorted(own.items()))
        if ident not in made:
            try:
                made[ident] = m.make_params(**{**params, **own})
            except ValueError as e:
                raise ValueError(f"parameter {k!r}: {e}") from None
        by_key[k] = made[ident]
        differ = {n: v for n, v in own.items() if plain.get(n) != v}
        if differ:
            record[k] = {n: list(v) if isinstance(v, tuple) else v for n, v in differ.items()}
    default = m.make_params(**params)
    return (lambda k: by_key.get(k, default)), record


def _params_groups(
    method: MergeMethod[Any],
    params: CommonParams,
    inputs: Inputs,
    params_for: Callable[[str], CommonParams] | None,
) -> list[tuple[CommonParams, dict[str, tuple[int, ...]]]]:
    """The merged tensors' shapes grouped by the params each is merged with (one group without
    ``params_for``); every group's weights checked against the number of models."""
    shapes = merged_shapes(inputs)
    if params_for is None:
        return [(params, shapes)]
    if method.needs_global_pass(params):
        raise ValueError(
            f"merge method {method.name!r} with these params plans over all tensors in a first "
            "pass, which takes one set of params: per-tensor params (layer gradients, filters) "
            "cannot be used with it"
        )
    groups: dict[CommonParams, dict[str, tuple[int, ...]]] = {}
    for k, shape in shapes.items():
        pk = params_for(k)
        if method.needs_global_pass(pk):
            raise ValueError(
                f"parameter {k!r}: its params make {method.name!r} plan over all tensors in a "
                "first pass, which per-tensor params cannot use"
            )
        pk.resolve_weights(len(inputs.models))
        groups.setdefault(pk, {})[k] = shape
    return list(groups.items())


@contextlib.contextmanager
def _reader_core(params: CommonParams) -> Iterator[None]:
    """During a linear merge on the CPU torch computes on all but one of the process's cores,
    and the read-ahead and write threads have that one. Chosen when reads were copies (on 2
    cores the fused pass took 1.6-2.0 s with one compute thread, 1.9-2.5 s with two); since
    tensors are mapped (:func:`~hhh_bench.merging.sources.map_bytes`) the two measured the same
    (whole process, median 1.92 s vs 1.91 s over 8 runs each). Element-wise arithmetic: the
    same numbers with any thread count."""
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    want = min(before, max(1, (cores or 1) - 1))
    if torch.device(params.device).type != "cpu" or want == before:
        yield
        return
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(before)


CHUNK_ENTRIES = 1 << 18
"""Entries per piece of a linear merge (:func:`merge_linear`): its float32 buffers stay in the
CPU's cache between the steps."""


def _what(dtype: torch.dtype, cast: bool) -> str:
    return f"the merged tensor in {dtype}" if cast else "the merged tensor"


def fusable(raw: Raw) -> bool:
    """Whether a linear method's tensor can go through :func:`merge_linear`: every input read,
    a full weight of the base's dtype and shape (not a LoRA update)."""
    return raw.fts is not None and _plain_floats(raw.base, raw.fts)  # type: ignore[arg-type]


def merge_linear(
    key: str,
    raw: Raw,
    coefficients: Sequence[float],
    params: CommonParams,
    dtype: torch.dtype,
    what: str = "the merged tensor",
) -> Tensor:
    """θ0 + λ·Σ_t c_t (θ_t − θ0) of one tensor, in the compute dtype, cast into ``dtype``
    (``what``: how a non-finite result is named, as :func:`check_finite`).

    The same arithmetic as stacking the task vectors and contracting them with the
    coefficients (τ_t = θ_t − θ0, accumulated t = 1..T), done :data:`CHUNK_ENTRIES` flattened
    entries at a time in three reused buffers, so that the steps read and write the CPU's cache
    instead of memory and no temporary is allocated per step. One check of the output after
    the cast covers the inputs too (a NaN or Inf in any input makes it non-finite): only when
    it fails do the full checks run, naming the input's model, else the merged tensor."""
    assert raw.fts is not None
    fts = [t for t in raw.fts if isinstance(t, Tensor)]
    dev, cdt = torch.device(params.device), params.dtype
    flat_b = raw.base.reshape(-1)
    flat_f = [t.reshape(-1) for t in fts]
    n = flat_b.numel()
    step = max(1, min(CHUNK_ENTRIES, n))
    out = torch.empty(raw.base.shape, dtype=dtype, device=dev)
    flat_o = out.view(-1)
    acc_buf, base_buf, tau_buf = (torch.empty(step, dtype=cdt, device=dev) for _ in range(3))
    out_ok = True
    for s in range(0, n, step):
        e = min(s + step, n)
        acc, b, tau = acc_buf[: e - s], base_buf[: e - s], tau_buf[: e - s]
        b.copy_(flat_b[s:e])
        for t, (f, c) in enumerate(zip(flat_f, coefficients, strict=True)):
            # θ_t − θ0 read from the input's dtype and computed in the compute dtype in one pass
            # (type promotion: the same numbers as a copy into the compute dtype, then sub_)
            dst = acc if t == 0 else tau
            torch.sub(f[s:e], b, out=dst)
            if t == 0:
                if c != 1.0:
                    acc.mul_(c)
            else:
                acc.add_(tau, alpha=c)
        piece = flat_o[s:e]
        # computed in the compute dtype, rounded once into the output's on the store
        torch.add(b, acc, alpha=params.scaling, out=piece)
        # a NaN or Inf in an input reaches the output (θ0 + λ·(… NaN or ±Inf …)); so does an
        # overflow of the cast: one check of the output covers both
        out_ok = out_ok and bool(torch.isfinite(piece.sum()))
    if not out_ok:
        validate_tensors(key, raw.base, fts)  # an input's fault, named with its model
        check_finite(key, out, what, params)  # else the merge's (e.g. an overflow of the cast)
    raw.fts = None
    return out


def _as_weight(t: Tensor | Update, base: Tensor) -> Tensor:
    """A finetuned model's tensor for the validation of a non-floating buffer (an adapter never
    changes one)."""
    return t if isinstance(t, Tensor) else base
