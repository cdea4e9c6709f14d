"""An extension module living *outside* hhh-bench: a merge method and a mixing strategy.

Used by tests/test_extending.py exactly as docs/extending.md shows: ``plugins=[my_hhh_ext]``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from hhh_bench.data.mixing.registry import MixResult, NoParams, register_strategy
from hhh_bench.merging import CommonParams, MergeMethod, register_method


@dataclass(frozen=True)
class MedianParams(CommonParams):
    """Only the common knobs."""


@register_method
class ElementwiseMedian(MergeMethod):
    """θ0 + λ·median_t(τ_t), entry by entry (a robust baseline)."""

    name = "median_tv"
    params_cls = MedianParams
    precompute_keys = ("compute_dtype",)
    summary = "θ0 + λ·elementwise median of the task vectors"

    def precompute(
        self,
        name: str,
        base: Tensor,
        finetuned: Sequence[Tensor],
        params: CommonParams,
        plan_entry: Mapping[str, Any],
    ) -> dict[str, Tensor]:
        b = base.to(params.dtype)
        taus = [t.to(params.dtype) - b for t in finetuned]
        import torch

        return {"tau": torch.stack(taus).median(dim=0).values}

    def compose(self, name, base, pre, params, plan_entry):  # noqa: D102
        out = base.to(params.dtype) + params.scaling * pre["tau"].to(params.dtype)
        return out.to(base.dtype)


@register_strategy("first_half_each", NoParams)
def first_half_each(sets, *, budget: int, rng: random.Random, params: Any) -> MixResult:
    """The first ``budget // k`` pairs of each dimension, in file order (a deterministic baseline)."""
    k = len(sets)
    drawn = {d: rows[: budget // k] for d, rows in sets.items()}
    rows = [r for d in sets for r in drawn[d]]
    return MixResult(rows, {d: len(r) for d, r in drawn.items()}, {"rule": "first n per dimension"})
