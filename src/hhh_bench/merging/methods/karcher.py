"""Karcher mean: the Riemannian (Fréchet) barycentre of the finetuned models' weights on the unit
sphere, rescaled by their mean norm, per tensor, as mergekit's ``karcher`` computes it (no
method paper: Karcher 1977, "Riemannian center of mass and mollifier smoothing"; mergekit's
documentation now cites arXiv:2603.04972 for it).

Per tensor (flattened), the points are the finetuned weights θ_t = θ0 + τ_t (θ0 is not a point;
it is only where λ scales from), with barycentric weights α_t = w_t / Σ_s w_s (w_t ≥ 0; equal
by default, as mergekit, which takes no weights):

    n_t = ‖θ_t‖,  u_t = θ_t / n_t;  V = {t: n_t > tol} (no such t: the result is 0)
    a_t = α_t / Σ_{s∈V} α_s  (t ∈ V)
    u = Σ a_t u_t / ‖·‖  (‖Σ a_t u_t‖ < tol: u = u_first of V)
    repeat max_iter times:
        φ_t = arccos(clamp(⟨u, u_t⟩, −1, 1))
        g = Σ_{t∈V, φ_t ≥ tol} a_t · φ_t / sin φ_t · (u_t − ⟨u, u_t⟩·u)      (the log map's mean)
        stop when ‖g‖ < tol
        u ← cos‖g‖·u + sin‖g‖·g/‖g‖,  then u ← u/‖u‖ when ‖u‖ > tol            (the exp map)
    K = (Σ_t α_t n_t)·u         τ_m = K − θ0,  θ = θ0 + λ·τ_m  (λ = 1 gives K)

One finetuned model gives θ_1 (mergekit returns it as it is).

Deviations from mergekit: it computes the iteration in the models' dtype (bf16 for a bf16
checkpoint; norms in float32), we in ``compute_dtype``; weights are ours (mergekit: equal); a
model (nearly) antipodal to the running mean, φ_t > π − tol (where sin φ_t ≈ 0 and mergekit's
step φ/sin φ blows up to huge or NaN values), is an error naming the tensor.
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


def check_barycentric_weights(params: CommonParams, method: str) -> None:
    """``weights`` that interpolate models (Karcher mean, multi-SLERP) must be >= 0 and not all 0;
    ``ValueError`` naming the entry otherwise."""
    if params.weights is None:
        return
    for i, w in enumerate(params.weights):
        if w < 0:
            raise ValueError(
                f"merge parameter 'weights' entry {i} is {w:g}: {method} interpolates the models "
                "on a sphere and takes weights >= 0"
            )
    if sum(params.weights) <= 0:
        raise ValueError(f"merge parameter 'weights' are all 0: {method} needs one positive weight")


@dataclass(frozen=True)
class KarcherParams(CommonParams):
    """Karcher-mean hyperparameters (mergekit's names and defaults)."""

    max_iter: int = param(
        10, "Most iterations of the Karcher mean's fixed-point update (>= 1; mergekit's 10)."
    )
    tol: float = param(
        1e-5,
        "Convergence tolerance: stop when the mean tangent step's norm is below it; also the "
        "norm under which a model counts as zero and the angle under which it is skipped (> 0; "
        "mergekit's 1e-5).",
    )

    def validate(self) -> None:
        super().validate()
        if self.max_iter < 1:
            raise ValueError(f"merge parameter 'max_iter' must be >= 1, got {self.max_iter}")
        if not (self.tol > 0.0 and math.isfinite(self.tol)):
            raise ValueError(f"merge parameter 'tol' must be > 0 and finite, got {self.tol}")
        check_barycentric_weights(self, "karcher")


def karcher_mean(
    points: Tensor, alphas: Tensor, max_iter: int, tol: float, name: str = ""
) -> Tensor:
    """The Karcher mean of the rows of a (T, n) ``points`` with barycentric weights ``alphas``
    (T,), summing to 1, rescaled by Σ α_t‖θ_t‖ (module doc), shape (n,)."""
    norms = points.norm(dim=1)
    valid = norms > tol
    if not bool(valid.any()):
        return torch.zeros_like(points[0])
    units = points[valid] / norms[valid].unsqueeze(1)
    a = alphas[valid] / alphas[valid].sum()
    u = a @ units
    u_norm = float(u.norm())
    u = units[0].clone() if u_norm < tol else u / u_norm
    for _ in range(max_iter):
        dots = (units @ u).clamp_(-1.0, 1.0)
        angles = torch.arccos(dots)
        moving = angles >= tol
        if bool((angles > math.pi - tol).any()):
            label = repr(name) if name else "(unnamed)"
            raise ValueError(
                f"parameter {label}: karcher's running mean is antipodal to a model's weights "
                "(angle π), where the Karcher mean is undefined; drop or reweight that model"
            )
        coeff = torch.where(moving, a * angles / torch.sin(angles), 0.0)
        step = coeff @ units - (coeff * dots).sum() * u
        step_norm = step.norm()
        if float(step_norm) < tol:
            break
        u = torch.cos(step_norm) * u + torch.sin(step_norm) * (step / step_norm)
        u_norm = float(u.norm())
        if u_norm > tol:
            u = u / u_norm
    return (alphas @ norms) * u


def karcher_tau(
    base: Tensor, stack: Tensor, weights: Tensor, params: KarcherParams, name: str = ""
) -> Tensor:
    """τ_m = K(θ_1..θ_T) − θ0 for a (T, *shape) stack of task vectors (module doc)."""
    b = base.to(device=stack.device, dtype=stack.dtype)
    if len(stack) == 1:
        return stack[0].clone()
    w = weights.reshape(-1)
    points = (stack + b).reshape(len(stack), -1)
    mean = karcher_mean(points, w / w.sum(), params.max_iter, params.tol, name)
    return mean.view(stack.shape[1:]).sub_(b)


class KarcherMethod(FunctionMethod[KarcherParams]):
    """The Karcher mean averages weights, not task vectors: its merge_stack needs θ0."""

    def merge_stack(
        self, name: str, base: Tensor, stack: Tensor, weights: Tensor, params: KarcherParams
    ) -> Tensor:
        return karcher_tau(base, stack, weights, params, name)


@merge_function(
    "karcher",
    KarcherParams,
    summary="Riemannian (Karcher) mean of the models' weights on the sphere, times their mean "
    "norm (mergekit's karcher; no method paper: Karcher 1977)",
    base=KarcherMethod,
)
def karcher(stack: Tensor, weights: Tensor, params: KarcherParams) -> Tensor:
    """Karcher mean about θ0 = 0: the stack's task vectors taken as the weights (use the method
    through merge_tensors / merge_models for θ0 ≠ 0; mergekit's karcher)."""
    return karcher_tau(torch.zeros_like(stack[0]), stack, weights, params)
