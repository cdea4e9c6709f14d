"""The combine step of mergekit's "generalized task arithmetic" family (Breadcrumbs, DELLA),
written from its documented rules: each task vector is sparsified first (by the method), then

    x_t = w_t·τ̂_t
    linear:     τ_m = Σ_t x_t                         / D,   D = Σ_t w_t              (|D| < 1e-8: 1)
    consensus:  γ = sign(Σ_t x_t) (a zero sum: +),  a_t = [sign x_t = γ]  (zeros never agree)
                τ_m = Σ_t a_t·x_t                     / D,   D = Σ_t a_t·w_t  entrywise (0: 1)

where the division by D happens only with ``normalize`` (mergekit's ``normalize`` parameter; its
default differs per method and is each method's default here). With ``normalize`` and w_t = 1
the consensus rule is TIES's disjoint mean (:func:`hhh_bench.merging.methods.ties.ties_merge`).

Also the two rescalings of a sparsified task vector mergekit offers (``rescale``): none, or the
L1 norm of τ_t restored (``l1``: mergekit's ``rescale: true`` since v0.1.0).
"""

from __future__ import annotations

import torch
from torch import Tensor

L1_EPS = 1e-7
"""Below this L1 norm (before or after masking) a task vector is not rescaled (mergekit's eps)."""


def rescale_l1_(masked: Tensor, l1_before: Tensor) -> Tensor:
    """Scale ``masked`` in place so its L1 norm is ``l1_before`` (the unmasked τ's); left as it is
    when either norm is below :data:`L1_EPS`."""
    after = masked.abs().sum()
    if float(l1_before) >= L1_EPS and float(after) >= L1_EPS:
        masked.mul_(l1_before / after)
    return masked


def combine(stack: Tensor, weights: Tensor, *, consensus: bool, normalize: bool) -> Tensor:
    """τ_m of a (T, *shape) stack of sparsified τ̂_t with (T, 1, .., 1) weights (module doc)."""
    w = weights.reshape(-1)
    num_models = len(stack)
    flat = stack.reshape(num_models, -1)
    if not consensus:
        mixed = torch.tensordot(w, flat, dims=1)
        total = float(w.sum())
        if normalize and abs(total) >= 1e-8:
            mixed.div_(total)
        return mixed.view(stack.shape[1:])
    positive = torch.tensordot(w, flat, dims=1) >= 0
    mixed = torch.zeros_like(flat[0])
    divisor = torch.zeros_like(flat[0])
    for t in range(num_models):
        x = flat[t] * w[t]
        agree = torch.where(positive, x > 0, x < 0)
        mixed.add_(x.mul_(agree))
        divisor.add_(agree.to(flat.dtype), alpha=float(w[t]))
    if normalize:
        mixed.div_(torch.where(divisor == 0, 1.0, divisor))
    return mixed.view(stack.shape[1:])
