"""``resolved``: the union of the sets with every pair the scorer's priority verdict rejects
dropped, then drawn by shares: what a labeller who knew how to settle every conflict would train
on. With the ``toy3h`` scorer it uses the world's own reward, so it is an *upper reference* (the
pipeline's oracle), not a baseline a real study could run.

A pair's verdict is the sign of its margin on the first dimension of ``priority`` with a margin
beyond ``threshold`` (none: kept). On the toy world (:data:`hhh_bench.data.toy3h.PRIORITY`) a
contested prompt keeps its harmless or honest pair and loses the helpful one that reverses it.
A dimension left with fewer pairs than its count is topped up with replacement, as everywhere.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hhh_bench.core.schema import DIMENSIONS, PreferenceSets
from hhh_bench.data.mixing.registry import (
    MixResult,
    draw_by_shares,
    register_strategy,
    shares_or_equal,
)
from hhh_bench.data.mixing.scorers import ScoredParams


@dataclass
class ResolvedParams(ScoredParams):
    """The scorer (:class:`~.scorers.ScoredParams`), the dimensions' ``priority`` (first wins),
    the ``threshold`` a margin must pass to count, and ``shares`` of the final mixture."""

    priority: list[str] = field(default_factory=lambda: ["harmless", "honest", "helpful"])
    threshold: float = 0.0
    shares: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if len(set(self.priority)) != len(self.priority) or not set(self.priority) <= set(
            DIMENSIONS
        ):
            raise ValueError(
                f"mix.priority must list distinct dimensions of {list(DIMENSIONS)}, "
                f"got {self.priority}"
            )
        if self.threshold < 0:
            raise ValueError(f"mix.threshold must be >= 0, got {self.threshold}")


def verdict(margins: dict[str, float], priority: list[str], threshold: float = 0.0) -> int:
    """+1 / −1: the sign of the first margin of ``priority`` beyond ``threshold``; 0: none."""
    for d in priority:
        m = margins.get(d, 0.0)
        if abs(m) > threshold:
            return 1 if m > 0 else -1
    return 0


@register_strategy("resolved", ResolvedParams)
def resolved(
    sets: PreferenceSets, *, budget: int, rng: random.Random, params: ResolvedParams
) -> MixResult:
    """Drop the pairs whose verdict is −1, then draw each dimension's share of ``budget``."""
    dims = list(sets)
    kept = {
        d: [
            r
            for r, m in zip(sets[d], margins, strict=True)
            if verdict(m, params.priority, params.threshold) >= 0
        ]
        for d, margins in params.margins(sets).items()
    }
    empty = [d for d in dims if not kept[d]]
    if empty:
        raise ValueError(f"mix resolved: every pair of {empty} is overruled; nothing is left")
    drawn, info = draw_by_shares(kept, shares_or_equal(params.shares, dims), budget, rng)
    info["dropped"] = {d: len(sets[d]) - len(kept[d]) for d in dims}
    # battery 21, A-U1: a threshold above every margin resolves nothing (said by stage=train)
    info["selects_nothing"] = not any(info["dropped"].values())
    return MixResult.shuffled(drawn, info, rng)
