"""PCB-merging (Du et al., "Parameter Competition Balancing for Model Merging", NeurIPS 2024,
arXiv:2410.02396, Sec. 3.2-3.3), as the authors' released ``pcb-merging.py`` computes it
(github.com/duguodong7/pcb-merging at 5897888, ``PCB_merge``, the file its README names as "the
details of our method"; FusionBench has no PCB).

Per tensor, each task vector τ_t flattened to its d entries (t = 1..T), q_t(i) the (i+1)-th
smallest value of a row (``sorted[i]`` in the code), N(x) = (x − min x)/(max x − min x) per task:

1. Clip the magnitudes at both ends (c = ``clip_ratio``; the code's 1e-4):
   a_t = clamp(|τ_t|, q(int(d·c)), q(int(d·(1 − c) − 1))) of |τ_t|;  τ̃_t = sign(τ_t)·a_t.
2. Intra-balancing (the paper's softmax of N·Norm(τ ⊙ τ) within a task):
   β_intra,t = exp(s·N(a_t)²),  s = ``intra_temperature`` (null: T, the code's ``n``).
3. Inter-balancing (the paper's softmax of Norm(τ_t ⊙ τ_j) summed over tasks j):
   β_inter,t = tanh(τ_t ⊙ Σ_j τ_j)  (the raw, unclipped τ).
4. β_t = β_intra,t ⊙ β_inter,t.
5. Drop and rescale, r = ``pcb_ratio``: b_t = q(i0) of β_t with i0 = int(d·(1 − r));
   s_t = N(max(β_t, b_t)): the scores above the cut, about the top r of the entries, are mapped
   onto (0, 1] (the top one to 1), every other entry gets 0.
6. τ_m = Σ_t w_t·τ̃_t ⊙ s_t / max(Σ_t s_t, 1e-12),   θ = θ0 + λ·τ_m.

A softmax over a task's entries is exp(·) divided by a constant of the task; step 5's N removes
any positive factor, so the code's exp is the paper's softmax (and we compute exp(s·(N² − 1)),
the same after N, which cannot overflow). ``weights`` w_t are the paper's
per-model coefficients λ_i (searched by an evolutionary strategy in [0.8, 1.3] in the authors'
``pcb_ES.py``; ``pcb.py`` uses 1.2 for all): as in the code, they multiply τ̃_t after the scores,
so, unlike most methods here, the balancing scores do not depend on them.

Routing: every floating tensor gets the method, embeddings and 1-D tensors included (the code
flattens every parameter into one vector).

Deviations from ``pcb-merging.py``:

- Per tensor, not over the whole flattened model: the quantiles of steps 1 and 5 and both
  normalisations are taken over each tensor's entries (a streaming merge never holds the whole
  model). On a tensor of fewer than 1/c entries the clip still lowers its largest magnitude to the
  second largest (the code's index rounding, int(d·(1 − c) − 1) = d − 2).
- Where N's max equals its min (a task vector that is zero on a tensor, e.g. a module a LoRA
  adapter did not touch, or a constant one) N is 0 (the code divides 0 by 0 and gets NaN): such a
  task then gets s_t = 0 on the tensor and does not dilute the others.
- Where the cut would keep no entry (d − 1 − int(d·(1 − r)) < 1: a tensor of fewer than about
  1/r entries; the code would give NaN or 0), the cut index is lowered to d − 2 so each task keeps
  its top-scored entry; a one-entry tensor gets s_t = 1 for every task (the mean of w_t·τ_t).
- The evolutionary search of the per-model coefficients (nevergrad, on validation accuracy) is not
  implemented: set ``weights`` by hand or sweep them.
- The authors' other scripts differ: ``vision_source_code/pcb_ES.py`` clips 1% at each end and
  scores inter-balancing as Σ_j tanh(n_t ⊙ n_j) with n = sign(τ)·N(a); ``pcb.py`` as
  tanh(τ_t ⊙ Σ_j n_j). We follow ``pcb-merging.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hhh_bench.merging.base import (
    CommonParams,
    MergeMethod,
    TaskVectors,
    finish,
    on_device,
    param,
    register_method,
)

SCALE_FLOOR = 1e-12
"""The smallest divisor Σ_t s_t of the final weighted mean (the authors' clamp)."""


@dataclass(frozen=True)
class PcbParams(CommonParams):
    """PCB-merging hyperparameters (the authors' names where the code has one)."""

    pcb_ratio: float = param(
        0.05,
        "r: fraction of each task vector's entries kept by balancing score (the top r, "
        "rescaled to (0, 1]), (0, 1]; the authors' scripts use 0.05.",
    )
    clip_ratio: float = param(
        1e-4,
        "c: fraction of each task vector's smallest and of its largest magnitudes clipped to "
        "the quantile before scoring, [0, 0.5); pcb-merging.py's 1e-4 (pcb_ES.py: 0.01).",
    )
    intra_temperature: float | None = param(
        None,
        "s of the intra-balancing exp(s·N(|τ_t|)²), > 0; null = the number of models T, as "
        "the authors' code and paper.",
    )

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.pcb_ratio <= 1.0:
            raise ValueError(f"merge parameter 'pcb_ratio' must be in (0, 1], got {self.pcb_ratio}")
        if not 0.0 <= self.clip_ratio < 0.5:
            raise ValueError(
                f"merge parameter 'clip_ratio' must be in [0, 0.5), got {self.clip_ratio}"
            )
        if self.intra_temperature is not None and not (0.0 < self.intra_temperature < float("inf")):
            raise ValueError(
                "merge parameter 'intra_temperature' must be > 0 and finite, or null, got "
                f"{self.intra_temperature}"
            )


def kth_smallest(row: Tensor, index: int) -> Tensor:
    """``sorted(row)[index]`` (0-based) without sorting."""
    return torch.kthvalue(row, index + 1).values


def minmax_(x: Tensor) -> Tensor:
    """N(x) = (x − min)/(max − min) in place; 0 everywhere when max = min."""
    lo, hi = x.min(), x.max()
    span = hi - lo
    if float(span) == 0.0:
        return x.zero_()
    return x.sub_(lo).div_(span)


def pcb_scores(stack: Tensor, params: PcbParams) -> tuple[Tensor, Tensor]:
    """(τ̃_t ⊙ s_t stack, Σ_t s_t) of a (T, *shape) stack (steps 1-5 of the module doc); the
    stack is overwritten with the first and returned."""
    num = len(stack)
    rows = stack.view(num, -1)
    d = rows.shape[1]
    total = torch.zeros(d, dtype=stack.dtype, device=stack.device)
    if d == 1:  # N is undefined on one entry: every task counts (the mean of w_t τ_t)
        total.fill_(float(num))
        return stack, total.view(stack.shape[1:])
    temperature = float(num) if params.intra_temperature is None else params.intra_temperature
    c, r = params.clip_ratio, params.pcb_ratio
    low, high = int(d * c), int(d * (1 - c) - 1)  # the code's indices, as it rounds them
    cut = min(int(d * (1 - r)), d - 2)  # keep at least the top entry (module doc)
    summed = rows.sum(dim=0)
    for row in rows:
        inter = torch.tanh(row * summed)  # step 3, on the raw τ_t
        mag = row.abs()
        mag = torch.clamp(mag, kth_smallest(mag, low), kth_smallest(mag, high))  # step 1
        row.sign_().mul_(mag)  # τ̃_t
        # step 2 as exp(s·(N² − 1)): e^(−s) times the code's exp(s·N²), a factor of the task that
        # step 5's N removes, and no overflow whatever s (the code's exp(T) overflows float32 at T = 89)
        intra = minmax_(mag).square_().sub_(1.0).mul_(temperature).exp_()
        score = intra.mul_(inter)  # step 4
        score.clamp_(min=kth_smallest(score, cut))  # step 5: the cut (its max bound is a no-op)
        minmax_(score)
        row.mul_(score)
        total.add_(score)
    return stack, total.view(stack.shape[1:])


def pcb_combine(scored: Tensor, total: Tensor, weights: Tensor) -> Tensor:
    """τ_m = Σ_t w_t (τ̃_t ⊙ s_t) / max(Σ_t s_t, 1e-12) (step 6)."""
    mixed = torch.tensordot(weights.reshape(-1), scored.reshape(len(scored), -1), dims=1)
    return mixed.view(total.shape).div_(total.clamp(min=SCALE_FLOOR))


@register_method
class Pcb(MergeMethod[PcbParams]):
    """PCB-merging (arXiv:2410.02396): balancing scores within and across tasks, the top
    ``pcb_ratio`` kept and rescaled, a score-weighted mean of the clipped task vectors."""

    name = "pcb"
    params_cls = PcbParams
    precompute_keys = ("pcb_ratio", "clip_ratio", "intra_temperature", "compute_dtype")
    summary = (
        "intra- and inter-task balancing scores, top pcb_ratio kept, score-weighted mean "
        "(Du et al. 2024, arXiv:2410.02396)"
    )

    def precompute(
        self,
        name: str,
        base: Tensor,
        taus: TaskVectors,
        params: PcbParams,
        plan_entry: Mapping[str, Any],
    ) -> dict[str, Tensor]:
        """``tau``: (T, *shape) τ̃_t ⊙ s_t; ``total``: Σ_t s_t (the weights enter in compose)."""
        scored, total = pcb_scores(taus.consume(), params)
        return {"tau": scored, "total": total}

    def compose(
        self,
        name: str,
        base: Tensor,
        pre: Mapping[str, Tensor],
        params: PcbParams,
        plan_entry: Mapping[str, Any],
    ) -> Tensor:
        pre = on_device(pre, params)
        scored = pre["tau"]
        weights = params.weight_tensor(len(scored), scored)
        return finish(base, pcb_combine(scored, pre["total"], weights), params)
