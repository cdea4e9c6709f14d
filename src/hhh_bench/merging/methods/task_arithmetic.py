"""Task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", arXiv:2212.04089).

    θ = θ0 + λ · Σ_t w_t τ_t

λ (``scaling``) multiplies the summed task vector, as in the paper's Eq. (1) with one λ for the
sum. Same as ``peft.utils.merge_utils.task_arithmetic`` (which returns Σ_t w_t τ_t) and as
mergekit's ``task_arithmetic`` without ``normalize``; FusionBench's ``TaskArithmeticAlgorithm``
is the case w_t = 1.
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


def task_arithmetic(taus: Tensor, weights: Tensor) -> Tensor:
    """Σ_t w_t τ_t of a (T, *shape) stack with (T, 1, .., 1) weights."""
    return (weights * taus).sum(dim=0)


@dataclass(frozen=True)
class TaskArithmeticParams(CommonParams):
    """Task arithmetic takes only the common parameters."""


@register_method
class TaskArithmetic(MergeMethod):
    """θ0 + λ·Σ_t w_t τ_t (arXiv:2212.04089). Precompute is the τ stack itself."""

    name = "task_arithmetic"
    params_cls = TaskArithmeticParams
    precompute_keys = ("compute_dtype",)
    summary = "θ0 + λ·Σ w_t τ_t (Ilharco et al. 2023, arXiv:2212.04089)"

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
        return finish(base, task_arithmetic(taus, params.weight_tensor(len(taus), taus)), params)
