"""TIES-merging (Yadav et al., "TIES-Merging: Resolving Interference When Merging Models",
arXiv:2306.01708, Algorithm 1).

For each task vector (scaled by its weight, see below):

1. **Trim**: keep the k = int(density·n) entries of largest |τ_t|, zero the rest. With
   ``scope: tensor`` (default) n is the tensor's size and the top k is exact (equal
   magnitudes at the cut kept lowest index first); with ``scope: global`` the threshold is
   chosen over the whole model (n = all floating entries), as the paper and FusionBench do.
   A density with k = 0 for some tensor (or, global, for the model) is refused before any
   tensor is read (:meth:`TiesMethod.check_shapes`): the trim would leave it at θ0 silently.
2. **Elect**: γ = sign(Σ_t τ̂_t) per entry, a zero sum counting as + (peft's and mergekit's
   ``>= 0``).
3. **Disjoint mean**: τ_m = Σ_t τ̂_t·[sign τ̂_t = γ] / max(1, #{t: sign τ̂_t = γ}); zeros never
   count as agreeing.

Then θ = θ0 + λ·τ_m.

Weights: ``weights`` w_t make this TIES applied to w_t·τ_t. Trimming is unchanged by the scale of
one model, so w_t acts on the election and the mean: γ = sign(Σ_t w_t τ̂_t) and
τ_m = Σ_t w_t τ̂_t·[agree] / #agree. With equal weights this is exactly
``peft.utils.merge_utils.ties`` (peft elects the sign from the unweighted τ̂ and multiplies the
weights in after; mergekit elects from the weighted τ̂ like us but divides by Σ w_t over agreeing
models when ``normalize`` is set). A zero weight removes a model entirely.

``scope: global`` deviations from FusionBench's ``ties_merging``: FusionBench keeps the entries
with |τ| >= the (n−k)-th smallest magnitude, i.e. k + 1 entries (one extra; more with ties), and
breaks a zero sign sum by the majority sign; we keep k and break ties to +. To be computable in
a streaming pass, magnitudes are ranked at bfloat16 resolution (the top 16 bits of the float32
bit pattern of |τ|, 8 significant bits): the threshold is the k-th largest such key, and every
entry whose key reaches it is kept, so at most the entries sharing the threshold's bin (relative
width 2⁻⁷) are kept beyond k.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hhh_bench.merging.base import (
    CommonParams,
    FunctionMethod,
    PlanEntry,
    TaskVectors,
    merge_function,
    param,
)

KEEP_NONE = 1 << 16
"""A magnitude-key threshold above every key: nothing is kept (k = 0)."""


def magnitude_key(x: Tensor) -> Tensor:
    """|x| at bfloat16 resolution as an int32 key (monotone in |x|): the float32 bit pattern of
    |x| shifted right by 16 bits."""
    return x.abs().to(torch.float32).view(torch.int32) >> 16


SORT_MAX = 1 << 16
"""Tensors of at most this many entries are ranked by a stable sort, larger ones by
:func:`topk_mask`'s histogram selection (the same entries; cheaper each where it is used)."""


def topk_mask(magnitude: Tensor, k: int, sort_max: int = SORT_MAX) -> Tensor:
    """Boolean mask of the ``k`` largest entries of a flat non-negative ``magnitude``; among
    entries equal to the k-th largest value the lowest indices are kept, so exactly k are.

    Selection without sorting: a histogram of the bfloat16-resolution keys (:func:`magnitude_key`)
    finds the bin holding the k-th largest value, and an exact ``kthvalue`` runs on that bin
    only (about 2⁻⁷ of the entries for smooth data). Five times faster than ``torch.topk`` on
    a 45M-entry tensor on 2 CPU threads. Up to ``sort_max`` entries, a stable sort (its 32K-bin
    histogram costs more there)."""
    n = magnitude.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=magnitude.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=magnitude.device)
    if n <= sort_max:  # a stable sort: the same entries
        mask = torch.zeros(n, dtype=torch.bool, device=magnitude.device)
        mask[torch.sort(magnitude, descending=True, stable=True).indices[:k]] = True
        return mask
    keys = magnitude.to(torch.float32).view(torch.int32) >> 16  # magnitude_key of |x| = x
    counts = torch.bincount(keys, minlength=KEEP_NONE)
    from_top = counts.flip(0).cumsum(0)  # from_top[i]: entries with key >= KEEP_NONE - 1 - i
    i = int(torch.searchsorted(from_top, torch.tensor(k, device=from_top.device)))
    bin_key = KEEP_NONE - 1 - i
    above = int(from_top[i - 1]) if i > 0 else 0
    in_bin = magnitude[keys == bin_key]
    del keys
    threshold = torch.kthvalue(in_bin, in_bin.numel() - (k - above) + 1).values
    mask = magnitude > threshold
    missing = k - int(mask.sum())
    if missing > 0:  # entries equal to the threshold, lowest indices first
        ties = torch.nonzero(magnitude == threshold).reshape(-1)[:missing]
        mask[ties] = True
    return mask


def keep_count(density: float, n: int, what: str, knob: str = "density") -> int:
    """k = int(density·n), the entries TIES keeps of ``n``; a k of 0 for n > 0 (the trim would
    zero ``what`` whole and leave it at θ0, silently) raises ``ValueError`` naming the parameter
    ``knob`` (``density``, or e.g. SCE's ``select_topk``), ``what`` and the smallest value that
    keeps one entry."""
    k = int(density * n)
    if k == 0 and n > 0:
        raise ValueError(
            f"merge parameter {knob!r} = {density:g} keeps k = int({density:g} × {n}) = 0 of "
            f"the {n} entries of {what}, which the merge would leave at θ0; use a {knob} of at "
            f"least 1/{n} (≈ {1 / n:.3g})"
        )
    return k


def check_density_keeps(
    shapes: Mapping[str, tuple[int, ...]], density: float, knob: str = "density"
) -> None:
    """:func:`keep_count` ≥ 1 for every tensor of ``shapes`` (the smallest is the one named): the
    shape check of every method whose ``density`` (or ``knob``) is the fraction of each tensor
    kept (TIES per tensor, Breadcrumbs, DELLA, SCE's ``select_topk``)."""
    sizes = {name: math.prod(shape) for name, shape in shapes.items() if math.prod(shape)}
    if sizes:
        smallest = min(sizes, key=lambda name: sizes[name])
        keep_count(density, sizes[smallest], f"tensor {smallest!r} (its smallest)", knob)


class DensityMethod(FunctionMethod[Any]):
    """A method whose ``density`` keeps int(density·n) entries of each tensor (or that many in
    expectation): a density that keeps none of some tensor is refused before any tensor is read
    (:func:`check_density_keeps`)."""

    def check_shapes(self, shapes: Mapping[str, tuple[int, ...]], params: Any) -> None:
        check_density_keeps(shapes, params.density)


def trim_topk(tau: Tensor, density: float) -> Tensor:
    """``tau`` with all but its k = int(density·numel) largest-magnitude entries set to 0 (the
    rule of peft's ``magnitude_based_pruning`` and mergekit's ``magnitude``; equal magnitudes
    at the cut are kept lowest index first, see :func:`topk_mask`)."""
    n = tau.numel()
    k = int(density * n)
    if k >= n:
        return tau.clone()
    flat = tau.reshape(-1)
    return torch.where(topk_mask(flat.abs(), k), flat, 0.0).view_as(tau)


def trim_threshold(tau: Tensor, key_threshold: int) -> Tensor:
    """``tau`` with the entries whose :func:`magnitude_key` is below ``key_threshold`` set to 0."""
    return tau * (magnitude_key(tau) >= key_threshold)


def elect_sign(weighted: Tensor) -> Tensor:
    """γ = sign(Σ_t x_t) over dim 0 of a (T, *shape) stack, +1 where the sum is 0."""
    return torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0).to(weighted.dtype)


def disjoint_mean(weighted: Tensor, elected: Tensor) -> Tensor:
    """Mean over dim 0 of the entries whose sign equals ``elected`` (0 where none does)."""
    agree = torch.sign(weighted) == elected
    num = (weighted * agree).sum(dim=0)
    return num / agree.sum(dim=0, dtype=weighted.dtype).clamp(min=1)


@dataclass(frozen=True)
class TiesParams(CommonParams):
    """TIES hyperparameters."""

    density: float = param(
        0.2,
        "Fraction of each task vector's entries kept (largest |τ|), k = int(density·n); the "
        "paper's default top-20%.",
    )
    scope: str = param(
        "tensor",
        "Where the top-k is taken: per tensor (peft, mergekit) or over the whole model (TIES "
        "paper, FusionBench; needs a first pass).",
        choices=("tensor", "global"),
    )

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"merge parameter 'density' must be in (0, 1], got {self.density}")


def global_thresholds(
    stats: Mapping[str, Mapping[str, Any]], density: float
) -> dict[str, PlanEntry]:
    """The per-task key thresholds that keep k = int(density·N) entries of each task vector over
    all tensors of ``stats`` (N = their total size); every tensor gets the same entry."""
    if not stats:
        return {}
    first = next(iter(stats.values()))
    num_models = len(first["keys"])
    total = sum(int(s["numel"]) for s in stats.values())
    k = int(density * total)
    thresholds = []
    for t in range(num_models):
        keys = torch.cat([s["keys"][t].to(torch.int64) for s in stats.values()])
        counts = torch.cat([s["counts"][t].to(torch.int64) for s in stats.values()])
        uniq, inverse = torch.unique(keys, return_inverse=True)  # ascending
        tot = torch.zeros(len(uniq), dtype=torch.int64).index_add_(0, inverse, counts)
        kept_from_top = tot.flip(0).cumsum(0)  # entries with key >= uniq.flip(0)[i]
        if k == 0:
            thresholds.append(KEEP_NONE)
        else:
            i = int(torch.searchsorted(kept_from_top, torch.tensor(k)))
            thresholds.append(int(uniq.flip(0)[i]))
    entry = {"thresholds": thresholds, "k": k, "total": total}
    return {name: dict(entry) for name in stats}


class TiesMethod(FunctionMethod[TiesParams]):
    """TIES's trim step (the cached ``prepare``): per tensor, or with ``scope: global`` from
    the thresholds planned over every tensor in a first pass."""

    def needs_global_pass(self, params: TiesParams) -> bool:
        return params.scope == "global"

    def check_shapes(self, shapes: Mapping[str, tuple[int, ...]], params: TiesParams) -> None:
        """k = int(density·n) ≥ 1 for every tensor (``scope: tensor``; its smallest tensor is
        the one named) or for the model's n entries in all (``scope: global``)."""
        if params.scope == "tensor":
            check_density_keeps(shapes, params.density)
            return
        total = sum(math.prod(shape) for shape in shapes.values())
        if total:
            keep_count(params.density, total, "the model (scope: global)")

    def tensor_stats(
        self, name: str, base: Tensor, taus: TaskVectors, params: TiesParams
    ) -> dict[str, Any] | None:
        keys, counts = [], []
        for tau in taus.stack():
            k, c = torch.unique(magnitude_key(tau).reshape(-1), return_counts=True)
            keys.append(k.cpu())
            counts.append(c.cpu())
        return {"numel": base.numel(), "keys": keys, "counts": counts}

    def plan(
        self, stats: Mapping[str, Mapping[str, Any]], params: TiesParams
    ) -> dict[str, PlanEntry]:
        return global_thresholds(stats, params.density) if params.scope == "global" else {}

    def prepared(
        self, name: str, taus: TaskVectors, params: TiesParams, plan_entry: Mapping[str, Any]
    ) -> Tensor:
        """The stack trimmed in place (:meth:`TaskVectors.consume`)."""
        thresholds = None
        if params.scope == "global":
            thresholds = plan_entry.get("thresholds")
            if thresholds is None or len(thresholds) != len(taus):
                raise ValueError(
                    f"parameter {name!r}: ties with scope='global' needs the plan's per-model "
                    "thresholds; run tensor_stats over every tensor and plan() first"
                )
        stack = taus.consume()
        for t, row in enumerate(stack.view(len(stack), -1)):
            if thresholds is None:
                k = keep_count(params.density, row.numel(), f"tensor {name!r}")
                if k < row.numel():
                    row.masked_fill_(topk_mask(row.abs(), k).logical_not_(), 0.0)
            else:
                row.masked_fill_(magnitude_key(row) < thresholds[t], 0.0)
        return stack


MERGE_PIECE = 1 << 18
"""Entries per piece of :func:`ties_merge` (its temporaries stay in the CPU's cache)."""


@merge_function(
    "ties",
    TiesParams,
    summary="trim to top density, elect sign, disjoint mean (Yadav et al. 2023, arXiv:2306.01708)",
    prepare_keys=("density", "scope"),
    base=TiesMethod,
)
def ties_merge(trimmed: Tensor, weights: Tensor, params: CommonParams | None = None) -> Tensor:
    """Elect + disjoint mean of a (T, *shape) stack of trimmed τ, weighted by (T, 1, .., 1).

    Entry by entry, so it runs over :data:`MERGE_PIECE` flattened entries at a time: the
    temporaries are a few pieces (in the CPU's cache) whatever the tensor's size and T
    (``trimmed`` is not modified)."""
    w = weights.reshape(-1)
    num_models = len(trimmed)
    flat = trimmed.reshape(num_models, -1)
    n = flat.shape[1]
    out = torch.empty(n, dtype=trimmed.dtype, device=trimmed.device)
    step = max(1, min(MERGE_PIECE, n))
    count_buf = torch.empty(step, dtype=trimmed.dtype, device=trimmed.device)
    for s in range(0, n, step):
        e = min(s + step, n)
        piece = flat[:, s:e]
        positive = torch.tensordot(w, piece, dims=1) >= 0  # γ = +1 where the sum is 0
        num, count = out[s:e].zero_(), count_buf[: e - s].zero_()
        for t in range(num_models):
            x = piece[t] * w[t]
            agree = torch.where(positive, x > 0, x < 0)  # zeros never agree
            num.add_(x.mul_(agree))
            count.add_(agree)
        num.div_(count.clamp_(min=1))
    return out.view(trimmed.shape[1:])
