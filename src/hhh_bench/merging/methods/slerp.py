"""SLERP: spherical linear interpolation of two models' weights, per tensor, as mergekit's
``slerp`` computes it (no paper; Shoemake 1985, "Animating rotation with quaternion curves").

The two endpoints, per tensor (flattened): with **one** finetuned model, v0 = θ0 and
v1 = θ0 + w_1·τ_1 (mergekit's layout: its ``base_model`` is the t = 0 end); with **two**,
v0 = θ0 + w_1·τ_1 and v1 = θ0 + w_2·τ_2 (θ0 is then only the point λ scales from). Then

    u_k = v_k / ‖v_k‖ (left as v_k when ‖v_k‖ ≤ 1e-8),   d = ⟨u_0, u_1⟩
    |d| > 0.9995 (near-colinear):  s = (1 − t)·v0 + t·v1                        (lerp)
    otherwise, Ω = arccos d:       s = sin((1 − t)Ω)/sin Ω · v0 + sin(tΩ)/sin Ω · v1

(the raw v_k are interpolated, not the unit vectors), τ_m = s − θ0 and θ = θ0 + λ·τ_m, so λ = 1
gives s. Three or more finetuned models are refused (Karcher mean or multi-SLERP take N).

Deviations from mergekit: it computes in float32 NumPy whatever the inputs; we compute in
``compute_dtype`` (float32 by default: equal within float32 rounding, tested). It accepts any
``t`` (extrapolation); we require t ∈ [0, 1]. Per-layer ``t`` gradients are the job of the
mergekit YAML reader, not of this function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hhh_bench.merging.base import (
    CommonParams,
    FunctionMethod,
    merge_function,
    param,
)

DOT_THRESHOLD = 0.9995
"""|cos| above which the endpoints count as colinear and SLERP falls back to lerp (mergekit's)."""
NORM_EPS = 1e-8
"""An endpoint of norm at most this is not normalised (mergekit's eps)."""


@dataclass(frozen=True)
class SlerpParams(CommonParams):
    """SLERP hyperparameters (mergekit's names)."""

    t: float = param(
        0.5,
        "Interpolation factor in [0, 1]: 0 gives the first endpoint (θ0 with one finetuned "
        "model, mergekit's base_model), 1 the second.",
    )

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.t <= 1.0:
            raise ValueError(f"merge parameter 't' must be in [0, 1], got {self.t}")


def slerp_vectors(t: float, v0: Tensor, v1: Tensor) -> Tensor:
    """SLERP of two same-shaped tensors, each taken as one flat vector (module doc). The unit
    vectors are never formed: ⟨u_0, u_1⟩ = ⟨v_0, v_1⟩ / (‖v_0‖·‖v_1‖), one fused dot product,
    so the only new tensor is the result (a merge's peak memory is a few copies of its largest
    tensor, not seven)."""
    n0, n1 = float(v0.norm()), float(v1.norm())
    d0 = n0 if n0 > NORM_EPS else 1.0
    d1 = n1 if n1 > NORM_EPS else 1.0
    dot = float(torch.dot(v0.reshape(-1), v1.reshape(-1))) / (d0 * d1)
    if abs(dot) > DOT_THRESHOLD:
        c0, c1 = 1 - t, t
    else:
        omega = math.acos(dot)
        sin_omega = math.sin(omega)
        c0, c1 = math.sin((1 - t) * omega) / sin_omega, math.sin(t * omega) / sin_omega
    return torch.mul(v0, c0).add_(v1, alpha=c1)


def check_two(num: int) -> None:
    """SLERP takes one finetuned model (from θ0) or two; more is refused, naming the others."""
    if num not in (1, 2):
        raise ValueError(
            f"merge method 'slerp' interpolates two models: give one finetuned model (SLERP "
            f"from the base) or two, got {num}; for more use karcher or multislerp"
        )


def slerp_tau(base: Tensor, stack: Tensor, weights: Tensor, params: SlerpParams) -> Tensor:
    """τ_m = SLERP(v0, v1; t) − θ0 for a (T, *shape) stack, T ∈ {1, 2} (module doc)."""
    num = len(stack)
    check_two(num)
    b = base.to(device=stack.device, dtype=stack.dtype)
    w = [float(x) for x in weights.reshape(-1)]
    ends = [torch.add(b, stack[i], alpha=w[i]) for i in range(num)]  # θ0 + w_t τ_t
    v0, v1 = (b, ends[0]) if num == 1 else (ends[0], ends[1])
    return slerp_vectors(params.t, v0, v1).sub_(b)


class SlerpMethod(FunctionMethod[SlerpParams]):
    """SLERP interpolates weights, not task vectors: its merge_stack needs θ0."""

    def check_models(self, num_models: int, params: SlerpParams) -> None:
        check_two(num_models)

    def merge_stack(
        self, name: str, base: Tensor, stack: Tensor, weights: Tensor, params: SlerpParams
    ) -> Tensor:
        return slerp_tau(base, stack, weights, params)


@merge_function(
    "slerp",
    SlerpParams,
    summary="spherical interpolation of two models' weights by t, lerp when near-colinear "
    "(mergekit's slerp; no arXiv paper: Shoemake 1985)",
    base=SlerpMethod,
)
def slerp(stack: Tensor, weights: Tensor, params: SlerpParams) -> Tensor:
    """SLERP of two models about θ0 = 0: the stack's task vectors taken as the weights (use the
    method through merge_tensors / merge_models for θ0 ≠ 0; mergekit's slerp)."""
    return slerp_tau(torch.zeros_like(stack[0]), stack, weights, params)
