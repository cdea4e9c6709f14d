"""Task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", arXiv:2212.04089).

    θ = θ0 + λ · Σ_t w_t τ_t

λ (``scaling``) multiplies the summed task vector, as in the paper's Eq. (1) with one λ for the
sum. Same as ``peft.utils.merge_utils.task_arithmetic`` (which returns Σ_t w_t τ_t) and as
mergekit's ``task_arithmetic`` without ``normalize``; FusionBench's ``TaskArithmeticAlgorithm``
is the case w_t = 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hhh_bench.merging.base import CommonParams, merge_function


@merge_function(
    "task_arithmetic",
    summary="θ0 + λ·Σ w_t τ_t (Ilharco et al. 2023, arXiv:2212.04089)",
    coefficients=lambda weights, params: weights,
)
def task_arithmetic(taus: Tensor, weights: Tensor, params: CommonParams | None = None) -> Tensor:
    """Σ_t w_t τ_t of a (T, *shape) stack with (T, 1, .., 1) weights (one pass: a (1 × T)·(T × n)
    product, no T-sized temporary)."""
    return torch.tensordot(weights.reshape(-1), taus, dims=1)
