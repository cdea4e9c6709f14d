"""``fixed_ratio``: user-given shares of the final mixture.

A share here is the fraction of the *final mixture* made of a dimension's pairs
(``counts[d] = share[d] * budget`` up to largest-remainder rounding). It is neither the fraction
of each source that is kept (the alignment-handbook's ``dataset_mixer`` meaning) nor a per-source
sampling probability: with shares 0.5/0.25/0.25 and a budget of 400 the mixture holds exactly
200/100/100 pairs, whatever the source sizes. The realized counts are logged with the run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hhh_bench.core.schema import PreferenceSets
from hhh_bench.data.mixing.registry import (
    MixResult,
    check_shares,
    draw_by_shares,
    register_strategy,
)


@dataclass
class FixedRatioParams:
    """``shares``: ``{dimension: fraction of the final mixture}``, summing to 1."""

    shares: dict[str, float] = field(default_factory=dict)


@register_strategy("fixed_ratio", FixedRatioParams)
def fixed_ratio(
    sets: PreferenceSets, *, budget: int, rng: random.Random, params: FixedRatioParams
) -> MixResult:
    """Dimension d gets ``shares[d]`` of the final mixture (largest-remainder counts)."""
    shares = check_shares(params.shares, list(sets))
    drawn, info = draw_by_shares(sets, shares, budget, rng)
    return MixResult.shuffled(drawn, info, rng)
