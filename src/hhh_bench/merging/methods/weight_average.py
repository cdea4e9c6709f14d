"""Weight averaging, the trivial baseline ("model soup", Wortsman et al. 2022, arXiv:2203.05482).

    θ = θ0 + λ · Σ_t w_t τ_t / Σ_t w_t

With λ = 1 this is the weighted mean of the models, Σ_t w_t θ_t / Σ_t w_t (weights are
normalised, unlike task arithmetic); λ ≠ 1 moves along the line from θ0 through that mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hhh_bench.merging.base import CommonParams, merge_function


@dataclass(frozen=True)
class WeightAverageParams(CommonParams):
    """The common parameters; weights are normalised to sum 1, so they must not sum to 0."""

    def validate(self) -> None:
        super().validate()
        if self.weights is not None and abs(sum(self.weights)) < 1e-12:
            raise ValueError(
                "merge parameter 'weights' sums to 0; weight_average divides by the sum"
            )


@merge_function(
    "weight_average",
    WeightAverageParams,
    summary="Σ w_t θ_t / Σ w_t, the model soup baseline (arXiv:2203.05482)",
    coefficients=lambda weights, params: [w / sum(weights) for w in weights],
)
def weighted_mean(taus: Tensor, weights: Tensor, params: CommonParams | None = None) -> Tensor:
    """Σ_t w_t τ_t / Σ_t w_t of a (T, *shape) stack with (T, 1, .., 1) weights."""
    total = float(weights.sum())
    if abs(total) < 1e-12:
        raise ValueError("merge parameter 'weights' sums to 0; weight_average divides by the sum")
    return torch.tensordot(weights.reshape(-1), taus, dims=1).div_(total)
