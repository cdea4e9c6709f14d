"""DELLA-Merging (Deep et al., "DELLA-Merging: Reducing Interference in Model Merging through
Magnitude-Based Sampling", arXiv:2406.11617), with mergekit's parameterisation (``della``,
``della_linear``, its ``della_magprune`` sparsification).

MagPrune, per row of each task vector (a 2-D tensor's rows; a 1-D tensor is one row; a tensor
of more dimensions is flattened to (shape[0], rest)): the n entries of the row are ranked by
|τ| ascending, r = 0 .. n − 1 (equal magnitudes: lower index first), and entry i is kept with
probability

    p_i = (density − ε) + 2ε · r_i / (n − 1)        (a row of one entry: p = density)

so the smallest entry of a row is kept with density − ε, the largest with density + ε, and the
row keeps density of its entries in expectation. A kept entry is rescaled (``rescale``):
``inverse_p`` τ_i / p_i (the paper; mergekit before v0.1.0), ``l1`` to the task vector's L1
norm (mergekit's ``rescale: true`` since v0.1.0), or ``none``. density = 1 keeps everything.

Then ``della`` elects signs and combines the agreeing entries, ``della_linear`` sums
(:mod:`hhh_bench.merging.methods.gta`; ``normalize`` defaults: on for della, off for
della_linear, as mergekit). θ = θ0 + λ·τ_m (λ: mergekit's ``lambda``).

Seeded like DARE's masks (:mod:`hhh_bench.merging.methods.dare`): uniform numbers u ~ U[0, 1)
are drawn in float32 on the CPU by a generator seeded from (seed, parameter name, model index),
and entry i is kept where u_i < p_i (p in float64). The same seed gives the same masks on every
device, in every process and for either compute dtype (the ranks come from |τ| in the compute
dtype, so only exact magnitude ties could rank differently).

Deviations from mergekit: mergekit draws from the global torch RNG (not reproducible per
tensor); a row of one entry gets density (mergekit divides 0 by 0); a tensor of 3+ dimensions is
ranked over (shape[0], rest) rows (mergekit ranks along dim 1); equal magnitudes rank by index
(mergekit: ``argsort``'s order); the default rescale is the paper's 1/p (mergekit: L1 norm); a
density with int(density·n) = 0 for some tensor (under one entry kept in expectation) is refused
from the shapes before any tensor is read, as TIES's
(:class:`~hhh_bench.merging.methods.ties.DensityMethod`; mergekit draws).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hhh_bench.merging.base import CommonParams, merge_function, param
from hhh_bench.merging.methods.dare import mask_seed
from hhh_bench.merging.methods.gta import combine, rescale_l1_
from hhh_bench.merging.methods.ties import DensityMethod


@dataclass(frozen=True)
class DellaParams(CommonParams):
    """DELLA hyperparameters (mergekit's names; ``seed``, common to all methods, seeds the masks)."""

    density: float = param(
        0.5,
        "Mean keep probability of each task-vector entry, (0, 1]; 1 keeps all (the paper keeps "
        "0.3–0.5 on 7B deltas; 0.5 as our DARE default's 1 − p).",
    )
    epsilon: float = param(
        0.15,
        "ε: keep probabilities spread over [density − ε, density + ε] by magnitude rank in each "
        "row; needs 0 < density − ε and density + ε < 1 (mergekit's default 0.15).",
    )
    normalize: bool = param(
        True,
        "Divide the combined task vector by the sum of the weights (della: of the agreeing "
        "models' weights, per entry); mergekit's default: on for della, off for della_linear.",
    )
    rescale: str = param(
        "inverse_p",
        "Scale of a kept entry: 'inverse_p' τ/p_i (paper), 'l1' the task vector's L1 norm "
        "restored (mergekit's rescale: true), 'none'.",
        choices=("inverse_p", "l1", "none"),
    )

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"merge parameter 'density' must be in (0, 1], got {self.density}")
        if not self.epsilon >= 0.0:
            raise ValueError(f"merge parameter 'epsilon' must be >= 0, got {self.epsilon}")
        lo, hi = self.density - self.epsilon, self.density + self.epsilon
        if self.density < 1.0 and not (lo > 0.0 and hi < 1.0):
            raise ValueError(
                f"merge parameter 'epsilon' = {self.epsilon:g} puts the keep probabilities "
                f"density ± epsilon = [{lo:g}, {hi:g}] outside (0, 1); use epsilon < "
                f"min(density, 1 − density) = {min(self.density, 1 - self.density):g}"
            )


def _rows(x: Tensor) -> Tensor:
    return x.reshape(1, -1) if x.dim() < 2 else x.reshape(x.shape[0], -1)


def keep_probabilities(tau: Tensor, density: float, epsilon: float) -> Tensor:
    """p_i of every entry of ``tau`` (module doc), float64 on the CPU, shaped as ``tau``."""
    if epsilon == 0.0:  # every rank gets p = density (DARE, mergekit's dare_*): no ranking
        return torch.full(tau.shape, density, dtype=torch.float64)
    rows = _rows(tau.detach().abs().cpu())
    n = rows.shape[1]
    if n <= 1:
        return torch.full(tau.shape, density, dtype=torch.float64)
    order = rows.argsort(dim=1, stable=True)
    rank = torch.empty(rows.shape, dtype=torch.float64)
    rank.scatter_(1, order, torch.arange(n, dtype=torch.float64).expand_as(rank))
    return rank.mul_(2.0 * epsilon / (n - 1)).add_(density - epsilon).view(tau.shape)


def della_keep_mask(
    tau: Tensor, density: float, epsilon: float, seed: int, name: str, index: int
) -> tuple[Tensor, Tensor]:
    """(bool keep mask, float64 keep probabilities) of model ``index``'s τ for ``name``, on the
    CPU: kept where u < p, u drawn in float32 by the generator seeded from (seed, name, index)."""
    probs = keep_probabilities(tau, density, epsilon)
    g = torch.Generator(device="cpu").manual_seed(mask_seed(seed, name, index))
    u = torch.rand(tuple(tau.shape), generator=g, dtype=torch.float32)
    return u < probs, probs


def della_prepare(name: str, taus: Tensor, params: DellaParams) -> Tensor:
    """Each τ_t dropped by MagPrune and rescaled, in place; ``taus`` is returned."""
    if params.density >= 1.0:
        return taus
    for t, tau in enumerate(taus):
        keep, probs = della_keep_mask(tau, params.density, params.epsilon, params.seed, name, t)
        l1 = tau.abs().sum() if params.rescale == "l1" else None
        tau.mul_(keep.to(tau.device))
        if params.rescale == "inverse_p":
            tau.div_(probs.to(device=tau.device, dtype=tau.dtype))
        elif l1 is not None:
            rescale_l1_(tau, l1)
    return taus


_KEYS = ("density", "epsilon", "rescale", "seed")


@merge_function(
    "della",
    DellaParams,
    summary="magnitude-ranked random drop (density ± ε), rescale, TIES sign election "
    "(Deep et al. 2024, arXiv:2406.11617)",
    prepare=della_prepare,
    prepare_keys=_KEYS,
    base=DensityMethod,
)
def della(dropped: Tensor, weights: Tensor, params: DellaParams) -> Tensor:
    """DELLA: MagPrune then TIES's sign election and agreeing mean (arXiv:2406.11617)."""
    return combine(dropped, weights, consensus=True, normalize=params.normalize)


@dataclass(frozen=True)
class DellaLinearParams(DellaParams):
    """DELLA-linear hyperparameters: DELLA's, with ``normalize`` off by default (mergekit)."""

    normalize: bool = param(
        False,
        "Divide the summed task vector by the sum of the weights; mergekit's default for "
        "della_linear: off.",
    )


@merge_function(
    "della_linear",
    DellaLinearParams,
    summary="magnitude-ranked random drop (density ± ε), rescale, then task arithmetic "
    "(arXiv:2406.11617)",
    prepare=della_prepare,
    prepare_keys=_KEYS,
    base=DensityMethod,
)
def della_linear(dropped: Tensor, weights: Tensor, params: DellaParams) -> Tensor:
    """DELLA's MagPrune then Σ_t w_t τ̂_t (arXiv:2406.11617; mergekit's della_linear)."""
    return combine(dropped, weights, consensus=False, normalize=params.normalize)
