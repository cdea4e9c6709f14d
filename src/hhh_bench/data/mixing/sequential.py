"""``sequential``: one dimension after another (a curriculum), in a configurable order.

The counts per dimension follow ``shares`` (uniform when not given) exactly as in ``uniform`` /
``fixed_ratio``; the rows come out grouped by dimension in ``order``, each group shuffled, and
:attr:`MixResult.phases` carries the order. The train stage then trains the phases one after the
other in a single run against the same reference model (the base): see
:func:`hhh_bench.train.dpo.curriculum_order`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hhh_bench.core.schema import PreferenceSets
from hhh_bench.data.mixing.registry import (
    MixResult,
    draw_by_shares,
    register_strategy,
    shares_or_equal,
)


@dataclass
class SequentialParams:
    """``order``: the dimensions in training order (None: the order of ``data.dimensions``);
    ``shares``: fractions of the final mixture (None: equal shares)."""

    order: list[str] | None = None
    shares: dict[str, float] | None = None


@register_strategy("sequential", SequentialParams)
def sequential(
    sets: PreferenceSets, *, budget: int, rng: random.Random, params: SequentialParams
) -> MixResult:
    """Counts by ``shares``; rows grouped by dimension in ``order`` (curriculum)."""
    dims = list(sets)
    order = list(params.order) if params.order else dims
    if sorted(order) != sorted(dims) or len(set(order)) != len(order):
        raise ValueError(
            f"mix.order must list each mixed dimension {dims} exactly once, got {order}"
        )
    shares = shares_or_equal(params.shares, dims)
    drawn, info = draw_by_shares(sets, shares, budget, rng)
    rows = [r for d in order for r in drawn[d]]
    info["order"] = order
    return MixResult(rows, {d: len(drawn[d]) for d in dims}, info, phases=order)
