"""SCE: Select, Calculate, Erase (Wan et al., "FuseChat: Knowledge Fusion of Chat Models",
arXiv:2408.07990, its SCE merge), as mergekit's ``sce`` computes it.

Per tensor, with x_t = w_t·τ_t (t = 1..T, T ≥ 2; w_t = 1 is mergekit, which takes no weights):

1. **Select** (only when ``select_topk`` p < 1): the population variance across the models,
   v = Var_t(x_t) entrywise; of the m positions with v ≠ 0, the k = int(p·m) of largest v are
   kept in every x_t, all other positions are zeroed in every x_t (so a position where all
   models agree exactly, v = 0, is always dropped). k = 0 zeroes the tensor (mergekit's rule).
2. **Calculate**: one coefficient per model, c_t = mean(x̂_t²) / Σ_s mean(x̂_s²) (the paper's
   sum of squares, normalised over the models); where Σ_s mean(x̂_s²) < ``uniform_below``
   (mergekit's 1e-6) every c_t = 1/T.
3. **Erase**: TIES's sign election on the selected x̂_t, γ = sign(Σ_t x̂_t) (a zero sum: +);
   a_t = [sign x̂_t = γ] (zeros never agree).

    τ_m = Σ_t c_t·a_t·x̂_t / max(Σ_t c_t·a_t, 1e-6)         θ = θ0 + λ·τ_m

Deviations from mergekit: equal variances at the select cut are kept lowest index first
(mergekit: ``torch.topk``'s order); mergekit computes in the models' dtype, we in
``compute_dtype``; a ``select_topk`` with int(p·n) = 0 for some tensor of n entries is refused
from the shapes before any tensor is read (mergekit zeroes it); one finetuned model is refused
(the selection compares models; mergekit's documentation asks for two or more).
``uniform_below`` is an absolute threshold on mean squares: with mergekit's 1e-6, task vectors
whose entries are below about 1e-3 in RMS (common for LLM finetunes) get uniform coefficients;
set it to 0 for the paper's coefficients at any scale (a deviation from mergekit, on request).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from hhh_bench.merging.base import CommonParams, FunctionMethod, merge_function, param
from hhh_bench.merging.methods.ties import check_density_keeps, topk_mask

DIVISOR_FLOOR = 1e-6
"""The smallest divisor Σ_t c_t·a_t of the erase step's weighted mean (mergekit's clamp)."""


@dataclass(frozen=True)
class SceParams(CommonParams):
    """SCE hyperparameters (mergekit's names, and the fallback threshold it hard-codes)."""

    select_topk: float = param(
        1.0,
        "Fraction p of the positions with non-zero variance across the models kept, by variance "
        "(the paper's τ); (0, 1]; 1 (mergekit's default) skips the selection.",
    )
    uniform_below: float = param(
        1e-6,
        "Σ_t mean(x_t²) below which the calculated coefficients are uniform 1/T (mergekit's "
        "hard-coded 1e-6; 0: only at exactly 0); >= 0.",
    )

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.select_topk <= 1.0:
            raise ValueError(
                f"merge parameter 'select_topk' must be in (0, 1], got {self.select_topk}"
            )
        if not self.uniform_below >= 0.0:
            raise ValueError(
                f"merge parameter 'uniform_below' must be >= 0, got {self.uniform_below}"
            )


def sce_select(x: Tensor, select_topk: float) -> Tensor:
    """The (T, *shape) stack ``x`` with every position outside the top int(p·m) variances zeroed
    (m: positions of non-zero variance; step 1 of the module doc), a new tensor."""
    if select_topk >= 1.0:
        return x.clone()
    flat = x.reshape(len(x), -1)
    var = flat.var(dim=0, correction=0)
    k = int(int(torch.count_nonzero(var)) * select_topk)
    return flat.mul(topk_mask(var, k)).view_as(x)  # k = 0: an all-False mask


def sce_coefficients(x: Tensor, uniform_below: float) -> Tensor:
    """c_t = mean(x_t²) / Σ_s mean(x_s²), or 1/T where that sum is below ``uniform_below``."""
    num = len(x)
    energy = x.reshape(num, -1).square().mean(dim=1)
    total = float(energy.sum())
    if abs(total) < uniform_below or total == 0.0:
        return torch.full_like(energy, 1.0 / num)
    return energy / total


def sce(stack: Tensor, weights: Tensor, params: SceParams) -> Tensor:
    """τ_m of a (T, *shape) stack with (T, 1, .., 1) weights (module doc; mergekit's sce)."""
    num = len(stack)
    if num < 2:
        raise ValueError(
            f"merge method 'sce' needs at least 2 finetuned models (its selection compares "
            f"them; mergekit: a base plus two or more), got {num}"
        )
    x = sce_select(stack * weights, params.select_topk).reshape(num, -1)
    coeff = sce_coefficients(x, params.uniform_below)
    positive = x.sum(dim=0) >= 0  # γ = +1 where the sum is 0
    merged = torch.zeros_like(x[0])
    divisor = torch.zeros_like(x[0])
    for t in range(num):
        agree = torch.where(positive, x[t] > 0, x[t] < 0)  # zeros never agree
        merged.add_(x[t] * agree, alpha=float(coeff[t]))
        divisor.add_(agree.to(x.dtype), alpha=float(coeff[t]))
    return merged.div_(divisor.clamp_(min=DIVISOR_FLOOR)).view(stack.shape[1:])


class SceMethod(FunctionMethod[SceParams]):
    """SCE's shape check: a ``select_topk`` that keeps no position of some tensor is refused."""

    min_models = 2  # its selection compares the models (mergekit: a base plus two or more)

    def check_shapes(self, shapes: Mapping[str, tuple[int, ...]], params: SceParams) -> None:
        """int(select_topk·n) ≥ 1 for every tensor of n entries (the smallest is named); the
        positions of non-zero variance, m ≤ n, are known only once the tensor is read."""
        if params.select_topk < 1.0:
            check_density_keeps(shapes, params.select_topk, "select_topk")


merge_function(
    "sce",
    SceParams,
    summary="select positions by variance across models, coefficients from squared sums, erase "
    "minority signs (Wan et al. 2024, FuseChat, arXiv:2408.07990)",
    base=SceMethod,
)(sce)
