"""Model Stock (Jang et al., "Model Stock: All we need is just a few fine-tuned models",
arXiv:2403.19522, Eq. (1)-(2)), as mergekit's ``model_stock`` computes it for N ≥ 2 models.

Per tensor, with x_t = w_t·τ_t (t = 1..N, N ≥ 2 finetuned models):

    cos = mean over pairs i < j of  ⟨x_i, x_j⟩ / max(‖x_i‖·‖x_j‖, 1e-6),  clamped to [−1, 1]
    t   = N·cos / (1 + (N − 1)·cos)
    τ_m = t · (1/N) Σ_t x_t              (so θ = t·θ_avg + (1 − t)·θ0 at λ = 1)

The paper derives t for the angle θ between two (or N) fine-tuned models around θ0 and uses one
angle; for N > 2 mergekit averages the pairwise cosines, as here. With ``filter_wise`` the
cosine and t are computed per row (the last dimension: one t per output filter of a 2-D weight;
a 1-D tensor is one row), otherwise over the whole flattened tensor (mergekit's default).

As mergekit: the norm product is clamped at 1e-6 (task vectors with ‖x_i‖·‖x_j‖ < 1e-6 get a
smaller cosine, so t → 0 and the tensor stays near θ0), and a zero task vector gives cos = 0,
t = 0, θ0. A mean cosine at −1/(N − 1) (antipodal task vectors at N = 2) makes t infinite:
where |1 + (N − 1)·cos| < 1e-6 mergekit returns huge or Inf/NaN values, we raise ``ValueError``
naming the tensor. mergekit has no
weights; here w_t scales τ_t before the cosines (a negative weight flips its direction).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hhh_bench.merging.base import (
    CommonParams,
    FunctionMethod,
    merge_function,
    param,
)


@dataclass(frozen=True)
class ModelStockParams(CommonParams):
    """Model Stock hyperparameters (mergekit's names)."""

    filter_wise: bool = param(
        False,
        "One interpolation ratio t per row (last dimension) instead of per tensor; mergekit's "
        "default false ('not generally recommended').",
    )


def model_stock(stack: Tensor, weights: Tensor, params: ModelStockParams, name: str = "") -> Tensor:
    """τ_m of a (T, *shape) stack of task vectors with (T, 1, .., 1) weights (module doc)."""
    num = len(stack)
    label = repr(name) if name else "(unnamed)"
    if num < 2:
        raise ValueError(
            f"merge method 'model_stock' needs at least 2 finetuned models (mergekit: a base plus "
            f"two or more), got {num}"
        )
    shape = stack.shape[1:]
    last = shape[-1] if params.filter_wise and len(shape) >= 1 else max(1, stack[0].numel())
    x = (stack * weights).reshape(num, -1, last)  # (T, rows, entries per row)
    norms = x.norm(dim=-1)
    cos_sum = torch.zeros_like(norms[0])
    for i in range(num):
        for j in range(i + 1, num):
            dots = (x[i] * x[j]).sum(dim=-1)
            cos_sum += (dots / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1.0, 1.0)
    cos = cos_sum / (num * (num - 1) // 2)
    denominator = 1 + (num - 1) * cos
    if bool((denominator.abs() < 1e-6).any()):
        raise ValueError(
            f"parameter {label}: model_stock's mean cosine between the task vectors is "
            f"−1/(N − 1) = {-1 / (num - 1):g} (within 1e-6), where t = N·cos/(1 + (N − 1)·cos) "
            "is infinite "
            "(task vectors pointing in opposite directions); Model Stock assumes cos > 0"
        )
    ratio = (num * cos / denominator).unsqueeze(-1)
    return (ratio * x.mean(dim=0)).reshape(shape)


class ModelStockMethod(FunctionMethod[ModelStockParams]):
    """Model Stock's merge_stack passes the tensor's name to the merge function (its errors)."""

    min_models = 2  # its t needs the angle between task vectors (mergekit: a base plus two)

    def merge_stack(
        self, name: str, base: Tensor, stack: Tensor, weights: Tensor, params: ModelStockParams
    ) -> Tensor:
        return model_stock(stack, weights, params, name)


merge_function(
    "model_stock",
    ModelStockParams,
    summary="θ0 + t·(θ_avg − θ0), t = N·cos/(1 + (N − 1)·cos) from the task vectors' mean "
    "cosine (Jang et al. 2024, arXiv:2403.19522)",
    base=ModelStockMethod,
)(model_stock)
