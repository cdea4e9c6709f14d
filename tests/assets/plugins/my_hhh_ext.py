"""An extension module living *outside* hhh-bench: a merge method and a mixing strategy.

Used by tests/test_extending.py exactly as docs/extending.md shows: ``plugins=[my_hhh_ext]``.
"""

from __future__ import annotations

import random
from typing import Any

from hhh_bench.data.mixing.registry import MixResult, NoParams, register_strategy
from hhh_bench.merging import merge_function


@merge_function("median_tv", summary="θ0 + λ·elementwise median of the task vectors")
def median_tv(taus, weights, params):
    """θ0 + λ·median_t(w_t·τ_t), entry by entry (a robust baseline)."""
    return (weights * taus).median(dim=0).values


@register_strategy("first_half_each", NoParams)
def first_half_each(sets, *, budget: int, rng: random.Random, params: Any) -> MixResult:
    """The first ``budget // k`` pairs of each dimension, in file order (a deterministic baseline)."""
    k = len(sets)
    drawn = {d: rows[: budget // k] for d, rows in sets.items()}
    rows = [r for d in sets for r in drawn[d]]
    return MixResult(rows, {d: len(r) for d, r in drawn.items()}, {"rule": "first n per dimension"})
