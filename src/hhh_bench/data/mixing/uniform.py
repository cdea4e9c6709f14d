"""``uniform``: equal shares of the final mixture for every dimension."""

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


@register_strategy("uniform", NoParams)
def uniform(sets: PreferenceSets, *, budget: int, rng: random.Random, params: Any) -> MixResult:
    """Each of the k dimensions gets a share 1/k of the final mixture (largest-remainder counts).

    Example: budget 400 over three dimensions → (134, 133, 133).
    """
    shares = {d: 1.0 / len(sets) for d in sets}
    drawn, info = draw_by_shares(sets, shares, budget, rng)
    return MixResult.shuffled(drawn, info, rng)
