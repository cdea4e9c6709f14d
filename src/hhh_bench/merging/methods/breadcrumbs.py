"""Model Breadcrumbs (Davari & Belilovsky, "Model Breadcrumbs: Scaling Multi-Task Model Merging
with Sparse Masks", arXiv:2312.06795), with mergekit's parameterisation (``breadcrumbs``,
``breadcrumbs_ties``, its ``magnitude_outliers`` sparsification).

Per tensor and task vector, n entries ranked by |τ_t| (largest first, equal magnitudes lowest
index first):

    k   = int(density·n)                       entries kept (density is the fraction *kept*)
    top = min(int(gamma·n), n − k)             largest entries removed (the paper's β)
    τ̂_t keeps the entries of rank top+1 .. top+k, zeros elsewhere

so the int((1 − density − gamma)·n)-ish smallest are removed too; ``density`` is always what is
kept (mergekit caps ``gamma`` at 1 − density the same way). density = 1 keeps everything.
Then ``breadcrumbs`` sums (task arithmetic) and ``breadcrumbs_ties`` elects signs and sums the
agreeing entries (:mod:`hhh_bench.merging.methods.gta`), each divided by the weights' sum only
with ``normalize`` (mergekit's default for both: off). θ = θ0 + λ·τ_m (λ: mergekit's ``lambda``).

Deviations from mergekit: where int(gamma·n) = 0 (gamma = 0, or a tensor of fewer than 1/gamma
entries) mergekit's slice ``sorted[n_bot:-0]`` is empty and keeps *nothing*; we keep the top k.
A density that keeps 0 entries of a tensor is an error here, raised from the shapes before any
tensor is read (:class:`~hhh_bench.merging.methods.ties.DensityMethod`; mergekit zeroes it). Equal
magnitudes at a cut are kept lowest index first (mergekit: the order of ``torch.sort``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hhh_bench.merging.base import CommonParams, merge_function, param
from hhh_bench.merging.methods.gta import combine, rescale_l1_
from hhh_bench.merging.methods.ties import SORT_MAX, DensityMethod, keep_count, topk_mask


@dataclass(frozen=True)
class BreadcrumbsParams(CommonParams):
    """Model Breadcrumbs hyperparameters (mergekit's names)."""

    density: float = param(
        0.9,
        "Fraction of each task vector's entries kept, k = int(density·n), after removing the "
        "largest gamma and the smallest rest (mergekit's documented example: 0.9).",
    )
    gamma: float = param(
        0.01,
        "Fraction of each task vector's largest-magnitude entries removed (the paper's β; "
        "capped at 1 − density so density is always kept). mergekit's default 0.01.",
    )
    normalize: bool = param(
        False,
        "Divide the combined task vector by the sum of the weights (consensus: of the agreeing "
        "models' weights, per entry); mergekit's default for breadcrumbs: off.",
    )
    rescale: str = param(
        "none",
        "After the mask: 'none', or 'l1' to restore each task vector's L1 norm (mergekit's "
        "rescale: true).",
        choices=("none", "l1"),
    )

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"merge parameter 'density' must be in (0, 1], got {self.density}")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"merge parameter 'gamma' must be in [0, 1), got {self.gamma}")

    def capped_note(self) -> str | None:
        """What the merge does not do as written: ``gamma`` above ``1 − density`` is capped
        there (mergekit's rule), so every such gamma merges alike (battery 12, F18); None
        otherwise. The merge stage says it on the console."""
        if self.density < 1.0 and self.gamma > 1.0 - self.density + 1e-12:
            return (
                f"merge parameter 'gamma' = {self.gamma:g} is capped at 1 − density = "
                f"{1.0 - self.density:.4g} (density {self.density:g} is always kept; mergekit's "
                "rule): any gamma above that merges alike"
            )
        return None


def breadcrumbs_mask(magnitude: Tensor, density: float, gamma: float, name: str = "") -> Tensor:
    """Boolean keep mask of a flat ``magnitude``: ranks top+1 .. top+k (module doc)."""
    n = magnitude.numel()
    k = keep_count(density, n, f"tensor {name!r}")
    top = min(int(gamma * n), n - k)
    if n <= SORT_MAX:  # a stable sort: the same entries as topk_mask's, faster when small
        mask = torch.zeros(n, dtype=torch.bool, device=magnitude.device)
        mask[magnitude.argsort(descending=True, stable=True)[top : top + k]] = True
        return mask
    mask = topk_mask(magnitude, top + k)
    if top > 0:
        mask &= topk_mask(magnitude, top).logical_not_()
    return mask


def breadcrumbs_prepare(name: str, taus: Tensor, params: BreadcrumbsParams) -> Tensor:
    """Each τ_t masked (and rescaled with ``rescale: l1``) in place; ``taus`` is returned."""
    for row in taus.view(len(taus), -1):
        l1 = row.abs().sum() if params.rescale == "l1" else None
        row.mul_(breadcrumbs_mask(row.abs(), params.density, params.gamma, name))
        if l1 is not None:
            rescale_l1_(row, l1)
    return taus


_KEYS = ("density", "gamma", "rescale")


@merge_function(
    "breadcrumbs",
    BreadcrumbsParams,
    summary="drop the largest gamma and the smallest, keep density, then task arithmetic "
    "(Davari & Belilovsky 2023, arXiv:2312.06795)",
    prepare=breadcrumbs_prepare,
    prepare_keys=_KEYS,
    base=DensityMethod,
)
def breadcrumbs(masked: Tensor, weights: Tensor, params: BreadcrumbsParams) -> Tensor:
    """Model Breadcrumbs then Σ_t w_t τ̂_t (arXiv:2312.06795; mergekit's breadcrumbs)."""
    return combine(masked, weights, consensus=False, normalize=params.normalize)


@merge_function(
    "breadcrumbs_ties",
    BreadcrumbsParams,
    summary="Breadcrumbs masks, then TIES sign election, agreeing entries summed "
    "(arXiv:2312.06795, 2306.01708)",
    prepare=breadcrumbs_prepare,
    prepare_keys=_KEYS,
    base=DensityMethod,
)
def breadcrumbs_ties(masked: Tensor, weights: Tensor, params: BreadcrumbsParams) -> Tensor:
    """Model Breadcrumbs then TIES's sign election (arXiv:2312.06795; mergekit's breadcrumbs_ties)."""
    return combine(masked, weights, consensus=True, normalize=params.normalize)
