"""``proportional``: shares of the final mixture proportional to the source sizes."""

from __future__ import annotations

import random
from typing import Any

from hhh_bench.core.schema import PreferenceSets
from hhh_bench.data.mixing.registry import (
    MixResult,
    NoParams,
    draw_by_shares,
    register_strategy,
)


@register_strategy("proportional", NoParams)
def proportional(
    sets: PreferenceSets, *, budget: int, rng: random.Random, params: Any
) -> MixResult:
    """Dimension d gets the share ``n_d / sum(n)`` of the final mixture.

    Example: sources of 300, 100, 100 pairs with budget ``per_specialist`` (167) → quotas
    (100.2, 33.4, 33.4) → (100, 34, 33); with ``all_specialists`` (500) → every pair once.
    """
    total = sum(len(r) for r in sets.values())
    shares = {d: len(r) / total for d, r in sets.items()}
    drawn, info = draw_by_shares(sets, shares, budget, rng)
    return MixResult.shuffled(drawn, info, rng)
