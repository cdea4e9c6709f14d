"""Weight averaging, the trivial baseline ("model soup", Wortsman et al. 2022, arXiv:2203.05482).

    θ = θ0 + λ · Σ_t w_t τ_t / Σ_t w_t

With λ = 1 this is the weighted mean of the models, Σ_t w_t θ_t / Σ_t w_t (weights are
normalised, unlike task arithmetic); λ ≠ 1 moves along the line from θ0 through that mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from hhh_bench.merging.base import (
    CommonParams,
    MergeMethod,
    finish,
    on_device,
    register_method,
    task_vectors,
)


def weighted_mean(taus: Tensor, weights: Tensor) -> Tensor:
    """Σ_t w_t τ_t / Σ_t w_t of a (T, *shape) stack with (T, 1, .., 1) weights."""
    total = float(weights.sum())
    if abs(total) < 1e-12:
        raise ValueError("merge parameter 'weights' sums to 0; weight_average divides by the sum")
    return (weights * taus).sum(dim=0) / total


@dataclass(frozen=True)
class WeightAverageParams(CommonParams):
    """Weight averaging takes only the common parameters (weights are normalised to sum 1)."""


@register_method
class WeightAverage(MergeMethod):
    """The weighted mean of the models (the baseline every merge should beat)."""

    name = "weight_average"
    params_cls = WeightAverageParams
    precompute_keys = ("compute_dtype",)
    summary = "Σ w_t θ_t / Σ w_t, the model soup baseline (arXiv:2203.05482)"

    def precompute(
        self,
        name: str,
        base: Tensor,
        finetuned: Sequence[Tensor],
        params: CommonParams,
        plan_entry: Mapping[str, Any],
    ) -> dict[str, Tensor]:
        return {"tau": task_vectors(base, finetuned, params)}

    def compose(
        self,
        name: str,
        base: Tensor,
        pre: Mapping[str, Tensor],
        params: CommonParams,
        plan_entry: Mapping[str, Any],
    ) -> Tensor:
        taus = on_device(pre, params)["tau"]
        return finish(base, weighted_mean(taus, params.weight_tensor(len(taus), taus)), params)
