"""Multi-SLERP: weighted barycentric interpolation of N models on a hypersphere, per tensor, as
mergekit's ``multislerp`` computes it (no paper: C. Goddard's note
https://goddard.blog/posts/multislerp-wow-what-a-cool-idea, mergekit's reference).

The points x_t (flattened), per ``origin``: ``base`` (default; mergekit with a ``base_model``)
the task vectors τ_t, so the sphere is centred on θ0; ``zero`` (mergekit without one) the
finetuned weights θ_t = θ0 + τ_t. Weights w_t ≥ 0 (mergekit's per-model ``weight``; all 1 by
default), divided by Σ_s w_s when ``normalize_weights``:

    n_t = ‖x_t‖,  u_t = x_t / (n_t + eps)
    m = Σ_t w_t u_t;  ‖m‖ < eps: two models lerp, r = w_1 x_1 + w_2 x_2; more is an error
    μ = m / ‖m‖                                       (the tangent point: the weighted mean)
    v_t = u_t − ⟨u_t, μ⟩·μ,   v = Σ_t w_t v_t,   ν = ‖v‖ + eps        (log map, approximately)
    r = (cos ν·μ + sin ν / ν · v) · Σ_t w_t n_t                  (exp map, times the mean norm)

then τ_m = r (origin ``base``) or r − θ0 (origin ``zero``), and θ = θ0 + λ·τ_m. One finetuned model
gives θ_1 (mergekit returns it, weights ignored).

In exact arithmetic the tangent sum vanishes, v = m − ⟨m, μ⟩μ = m − ‖m‖μ = 0, so the result is
μ·Σ_t w_t n_t: the normalised weighted mean of the unit vectors times the weighted mean norm (not
an iterated spherical barycentre; that is :mod:`~hhh_bench.merging.methods.karcher`). The steps
are computed as mergekit writes them, so the two agree to rounding.

Deviations from mergekit: it computes in the models' dtype, we in ``compute_dtype``; weights must
be ≥ 0 here (mergekit accepts any; a negative weight is not a point on the sphere's barycentre);
the zero-mean error names the tensor; where every point is 0 (with ``origin: base``, a tensor no
model changed, e.g. outside LoRA adapters' targets) the result is 0, i.e. θ0, where mergekit
raises its zero-mean error for three or more models. mergekit's optional ``base_model`` is our ``origin``, since
a base is always given here.
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
from hhh_bench.merging.methods.karcher import check_barycentric_weights


@dataclass(frozen=True)
class MultislerpParams(CommonParams):
    """Multi-SLERP hyperparameters (mergekit's names and defaults, plus ``origin``)."""

    normalize_weights: bool = param(
        True, "Divide the weights by their sum before interpolating (mergekit's default: true)."
    )
    eps: float = param(
        1e-8, "Small constant added to the norms for stability (> 0; mergekit's 1e-8)."
    )
    origin: str = param(
        "base",
        "Centre of the sphere: 'base' interpolates the task vectors (mergekit with a "
        "base_model), 'zero' the finetuned weights themselves (mergekit without one).",
        choices=("base", "zero"),
    )

    def validate(self) -> None:
        super().validate()
        if not (self.eps > 0.0 and math.isfinite(self.eps)):
            raise ValueError(f"merge parameter 'eps' must be > 0 and finite, got {self.eps}")
        check_barycentric_weights(self, "multislerp")


def multislerp_points(x: Tensor, w: Tensor, eps: float, name: str = "") -> Tensor:
    """Multi-SLERP of the rows of a (T, n) ``x`` with (already normalised or not) weights ``w``
    (T,), T ≥ 2 (module doc), shape (n,)."""
    norms = x.norm(dim=1)
    units = x / (norms + eps).unsqueeze(1)
    mean = w @ units
    mean_norm = float(mean.norm())
    if mean_norm < eps:
        if len(x) == 2:
            return w @ x
        if not bool((norms > 0).any()):  # every point 0 (a tensor no model changed): 0
            return torch.zeros_like(x[0])
        label = repr(name) if name else "(unnamed)"
        raise ValueError(
            f"parameter {label}: multislerp's weighted mean of the unit vectors is zero (below "
            f"eps = {eps:g}): the models' directions cancel out (antipodal models with balancing "
            "weights); change the merge parameter 'weights'"
        )
    mean = mean / mean_norm
    tangent = w @ (units - (units @ mean).unsqueeze(1) * mean)
    tangent_norm = tangent.norm() + eps
    result = torch.cos(tangent_norm) * mean + torch.sin(tangent_norm) / tangent_norm * tangent
    return result * (w @ norms)


def multislerp_tau(
    base: Tensor, stack: Tensor, weights: Tensor, params: MultislerpParams, name: str = ""
) -> Tensor:
    """τ_m of a (T, *shape) stack of task vectors (module doc)."""
    if len(stack) == 1:
        return stack[0].clone()
    w = weights.reshape(-1)
    if params.normalize_weights:
        w = w / w.sum()
    flat = stack.reshape(len(stack), -1)
    if params.origin == "base":
        return multislerp_points(flat, w, params.eps, name).view(stack.shape[1:])
    b = base.to(device=stack.device, dtype=stack.dtype)
    points = flat + b.reshape(1, -1)
    return multislerp_points(points, w, params.eps, name).view(stack.shape[1:]).sub_(b)


class MultislerpMethod(FunctionMethod[MultislerpParams]):
    """Multi-SLERP with ``origin: zero`` interpolates weights: its merge_stack needs θ0."""

    def merge_stack(
        self, name: str, base: Tensor, stack: Tensor, weights: Tensor, params: MultislerpParams
    ) -> Tensor:
        return multislerp_tau(base, stack, weights, params, name)


@merge_function(
    "multislerp",
    MultislerpParams,
    summary="weighted spherical barycentre of N models via the tangent space at their mean "
    "(mergekit's multislerp; no paper)",
    base=MultislerpMethod,
)
def multislerp(stack: Tensor, weights: Tensor, params: MultislerpParams) -> Tensor:
    """Multi-SLERP about θ0 = 0 (use the method through merge_tensors / merge_models for
    ``origin: zero`` with θ0 ≠ 0; mergekit's multislerp)."""
    return multislerp_tau(torch.zeros_like(stack[0]), stack, weights, params)
