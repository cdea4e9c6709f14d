"""Consensus merging with TALL masks (Wang et al., "Localizing Task Information for Improved Model
Merging and Compression", ICML 2024, arXiv:2405.07813, Sec. 3-4), as the authors' code computes it
(github.com/nik-dim/tall_masks, ``src/utils/tallmask_utils.py`` and ``src/eval/aggregation.py``;
FusionBench holds the same functions in ``fusion_bench/method/tall_mask/utils.py``).

Per tensor, with x_t = w_t·τ_t (t = 1..T, T ≥ 2):

1. The multi-task vector: τ_MTL = Σ_t x_t (``consensus_ta``: task arithmetic, unscaled), or TIES
   of the x_t (``consensus_ties``: trim to the top ``density`` of each |τ_t|, elect
   γ = sign(Σ_t x̂_t), a zero sum counting as +, then the agreeing entries **summed**, the authors'
   ``dis-sum``; ``aggregate: mean`` takes TIES's disjoint mean instead, :mod:`.ties`).
2. A TALL mask per task, **strictly** greater as in the code (the paper writes ≥):

       m_t = |x_t| > λ_tall · |τ_MTL − x_t|

   (the code compares |θ0 − θ_t| with λ·|θ0 + τ_MTL − θ_t| on weights; the same up to rounding).
   The task's own vector x_t is untrimmed in both variants.
3. The consensus mask keeps the entries on in at least k TALL masks (``min_agreement``; k = 2, the
   paper's choice, drops both "catastrophic" weights, on for no task, and "selfish" ones, on for
   one task only; k = 0 keeps all: plain TA or TIES):

       c = [Σ_t m_t ≥ k]        τ_m = c ⊙ τ_MTL        θ = θ0 + λ·τ_m

λ (``scaling``) multiplies the masked vector after the masks are built from the unscaled τ_MTL, as
the authors' code (which tunes λ on validation data).

Routing: every floating tensor gets the method (the authors flatten every parameter of the model
into one vector; every step above is entrywise, so per tensor is the same for ``consensus_ta``).

Deviations from the authors' code:

- λ_tall is one value for all tasks (FusionBench's ``tall_mask_lambda``, default 0.6); the paper
  picks one per task from {0.2, 0.3, 0.4, 0.5, 0.6} on that task's validation data and stores the
  masks, which a merge method without task data cannot do.
- ``consensus_ties``: the authors trim over the whole flattened model (``topk_values_mask`` with
  K = 20) and keep the entries ≥ the k-th largest magnitude, i.e. int(0.2·n) + 1 of them, and give a
  zero sign sum the sign of the majority; we trim per tensor (``scope: tensor``, default) or over the
  whole model at bfloat16 resolution (``scope: global``), keep k = int(density·n) entries and break
  zero sums to +, as :mod:`.ties` does.
- ``min_agreement`` above T is an error here (no entry can reach it: the merge would be θ0); the
  authors' code documents it as "reduces to zero-shot".
- Weights are ours (the authors sum the task vectors with weight 1): each τ_t is replaced by w_t·τ_t
  before every step, masks included.
- FusionBench's ``TallMaskTaskArithmeticAlgorithm`` (tall_mask/task_arithmetic.py) builds per-task
  compressed models, not a merge, and passes θ0 where the code expects θ_t, comparing
  |θ0 − τ_t| with λ·|τ_MTL − τ_t|; we follow the authors' utilities, not that class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hhh_bench.merging.base import (
    CommonParams,
    FunctionMethod,
    finish,
    merge_function,
    on_device,
    param,
    register_method,
)
from hhh_bench.merging.methods.ties import (
    MERGE_PIECE,
    TiesMethod,
    TiesParams,
    keep_count,
    magnitude_key,
    topk_mask,
)
from hhh_bench.merging.taskvec import TaskVectors


@dataclass(frozen=True)
class ConsensusParams(CommonParams):
    """Consensus-merging hyperparameters (FusionBench's and the authors' names in the docs)."""

    tall_mask_lambda: float = param(
        0.6,
        "λ_tall of the TALL masks m_t = |w_t τ_t| > λ_tall·|τ_MTL − w_t τ_t|, one for all tasks "
        "(>= 0; FusionBench's tall_mask_lambda 0.6; the paper picks 0.2-0.6 per task).",
    )
    min_agreement: int = param(
        2,
        "k: an entry of τ_MTL is kept where at least k TALL masks are on (the paper's k = 2; "
        "the authors' prun_thre_k); 0 keeps all; at most the number of models.",
    )

    def validate(self) -> None:
        super().validate()
        if not (self.tall_mask_lambda >= 0.0 and self.tall_mask_lambda < float("inf")):
            raise ValueError(
                "merge parameter 'tall_mask_lambda' must be >= 0 and finite, got "
                f"{self.tall_mask_lambda}"
            )
        if self.min_agreement < 0:
            raise ValueError(
                f"merge parameter 'min_agreement' must be >= 0, got {self.min_agreement}"
            )


def check_agreement(min_agreement: int, num_models: int) -> None:
    """Refuse a ``min_agreement`` that no entry can reach (more than the T TALL masks)."""
    if min_agreement > num_models:
        raise ValueError(
            f"merge parameter 'min_agreement' = {min_agreement} exceeds the {num_models} "
            "finetuned model(s): no entry is on in more TALL masks than there are models, so the "
            f"merge would return θ0 everywhere; use min_agreement <= {num_models} (consensus "
            "merging needs at least 2 models for its default k = 2)"
        )


def consensus_merge(
    stack: Tensor,
    weights: Tensor,
    params: ConsensusParams,
    keep: Tensor | None = None,
    aggregate: str = "sum",
) -> Tensor:
    """c ⊙ τ_MTL of a (T, *shape) stack of untrimmed τ_t with (T, 1, .., 1) weights (module doc):
    τ_MTL = Σ_t w_t τ_t when ``keep`` is None, else TIES of the w_t τ_t trimmed by the bool
    ``keep`` (T, *shape), agreeing entries summed or averaged (``aggregate``).

    Entry by entry, so it runs over :data:`MERGE_PIECE` flattened entries at a time: the
    temporaries are a few (T, piece) blocks whatever the tensor's size (``stack`` is not
    modified)."""
    num = len(stack)
    check_agreement(params.min_agreement, num)
    w = weights.reshape(num, 1)
    flat = stack.reshape(num, -1)
    kept = None if keep is None else keep.reshape(num, -1)
    n = flat.shape[1]
    out = torch.empty(n, dtype=stack.dtype, device=stack.device)
    step = max(1, min(MERGE_PIECE, n))
    for s in range(0, n, step):
        x = flat[:, s : s + step] * w  # x_t = w_t τ_t, untrimmed: the TALL masks' input
        if kept is None:
            merged = x.sum(dim=0)
        else:
            trimmed = x * kept[:, s : s + step]
            positive = trimmed.sum(dim=0) >= 0  # γ = +1 where the sum is 0
            agree = torch.where(positive, trimmed > 0, trimmed < 0)  # zeros never agree
            merged = (trimmed * agree).sum(dim=0)
            if aggregate == "mean":
                merged /= agree.sum(dim=0).clamp(min=1)
        tall = x.abs() > (merged - x).abs_().mul_(params.tall_mask_lambda)  # m_t, strictly
        on = tall.sum(dim=0) >= params.min_agreement
        out[s : s + step] = merged * on
    return out.view(stack.shape[1:])


class AgreementCount:
    """A consensus method's model count, checked against ``min_agreement`` up front."""

    def check_models(self, num_models: int, params: Any) -> None:
        check_agreement(params.min_agreement, num_models)


class ConsensusTA(AgreementCount, FunctionMethod[ConsensusParams]):
    """Consensus TA (:func:`consensus_ta`) with its up-front model count check."""


@merge_function(
    "consensus_ta",
    ConsensusParams,
    summary="task arithmetic kept where ≥ k tasks' TALL masks agree (Wang et al. 2024, "
    "arXiv:2405.07813)",
    base=ConsensusTA,
)
def consensus_ta(stack: Tensor, weights: Tensor, params: ConsensusParams) -> Tensor:
    """Consensus Task Arithmetic: c ⊙ Σ_t w_t τ_t (module doc; arXiv:2405.07813)."""
    return consensus_merge(stack, weights, params)


@dataclass(frozen=True)
class ConsensusTiesParams(ConsensusParams, TiesParams):
    """Consensus-TIES hyperparameters: TIES's trim (``density``, ``scope``), the TALL masks' and
    how the agreeing entries are combined."""

    aggregate: str = param(
        "sum",
        "How TIES combines the agreeing entries into τ_MTL: 'sum' (the authors' dis-sum for "
        "Consensus-TIES) or 'mean' (TIES's disjoint mean, as the ties method).",
        choices=("sum", "mean"),
    )


@register_method
class ConsensusTies(AgreementCount, TiesMethod):
    """Consensus-TIES (arXiv:2405.07813): TIES's trim is the cached part (per tensor, or from the
    thresholds of a first pass with ``scope: global``); the TALL masks need the untrimmed τ_t, so
    ``precompute`` keeps the stack and the trim's keep mask."""

    name = "consensus_ties"
    params_cls = ConsensusTiesParams
    precompute_keys = ("density", "scope", "compute_dtype")
    summary = (
        "TIES (disjoint sum) kept where ≥ k tasks' TALL masks agree (Wang et al. 2024, "
        "arXiv:2405.07813)"
    )

    def precompute(
        self,
        name: str,
        base: Tensor,
        taus: TaskVectors,
        params: Any,
        plan_entry: Mapping[str, Any],
    ) -> dict[str, Tensor]:
        """``tau``: the (T, *shape) stack as given; ``keep``: TIES's trim of each row (bool)."""
        thresholds = None
        if params.scope == "global":
            thresholds = plan_entry.get("thresholds")
            if thresholds is None or len(thresholds) != len(taus):
                raise ValueError(
                    f"parameter {name!r}: consensus_ties with scope='global' needs the plan's "
                    "per-model thresholds; run tensor_stats over every tensor and plan() first"
                )
        stack = taus.stack()
        keep = torch.empty(stack.shape, dtype=torch.bool, device=stack.device)
        for t, (row, out) in enumerate(
            zip(stack.view(len(stack), -1), keep.view(len(stack), -1), strict=True)
        ):
            if thresholds is None:
                k = keep_count(params.density, row.numel(), f"tensor {name!r}")
                out.copy_(topk_mask(row.abs(), k))
            else:
                out.copy_(magnitude_key(row) >= thresholds[t])
        return {"tau": stack, "keep": keep}

    def compose(
        self,
        name: str,
        base: Tensor,
        pre: Mapping[str, Tensor],
        params: Any,
        plan_entry: Mapping[str, Any],
    ) -> Tensor:
        pre = on_device(pre, params)
        stack = pre["tau"]
        weights = params.weight_tensor(len(stack), stack)
        merged = consensus_merge(stack, weights, params, pre["keep"], params.aggregate)
        return finish(base, merged, params)
