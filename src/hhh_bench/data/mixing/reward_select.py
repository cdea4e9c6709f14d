"""``reward_select``: keep the pairs with the best combined multi-objective reward margin.

Every pair is scored by a pluggable scorer (:mod:`hhh_bench.data.mixing.scorers`: the toy world's
exact reward, or an ArmoRM-style reward model for real data) into per-dimension margins ``r_d``;
its combined margin is ``m = sum_d w_d * r_d`` over the mixed dimensions (``weights``, default 1
each). With ``scope: per_dimension`` (default) the budget is first split by ``shares`` (fractions
of the final mixture, equal by default, largest-remainder counts) and each dimension keeps its
``count`` pairs of highest ``m``; with ``scope: global`` the ``budget`` pairs of highest ``m`` are
kept from all sets together and the realized counts per dimension are whatever they are (logged).
Ties in ``m`` are broken by a seeded random order. Pairs beyond a set's size are drawn again with
replacement, as everywhere (``info["resampled"]``).

This is the data-selection recipe of reward-model filtering (e.g. the multi-objective reward
ArmoRM, Wang et al. 2024, arXiv:2406.12845, used to rank pairs); the scoring of every pair with
all objectives and the weighted sum are ours.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from hhh_bench.core.schema import PreferenceRow, PreferenceSets
from hhh_bench.data.mixing.registry import (
    MixResult,
    allocate,
    check_weights,
    register_strategy,
    shares_or_equal,
    take,
)
from hhh_bench.data.mixing.scorers import ScoredParams

SCOPES = ("per_dimension", "global")


@dataclass
class RewardSelectParams(ScoredParams):
    """The scorer (:class:`~.scorers.ScoredParams`), then ``weights``, ``shares`` and ``scope`` as
    the module docstring says."""

    weights: dict[str, float] | None = None
    shares: dict[str, float] | None = None
    scope: str = "per_dimension"

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"mix.scope must be one of {list(SCOPES)}, got {self.scope!r}")
        bad = {d: w for d, w in (self.weights or {}).items()
               if not math.isfinite(float(w)) or float(w) < 0}  # fmt: skip
        if bad:  # battery 13, F9: a negative weight selected the least helpful pairs
            raise ValueError(f"mix.weights must be finite numbers >= 0, got {bad}")
        if self.scope == "global" and self.shares:  # up front (battery 18, U2: after θ0)
            raise ValueError(
                "mix.shares has no meaning with scope: global (the counts are what the ranking "
                "keeps): drop mix.shares, or use scope: per_dimension"
            )


def combined_margins(margins: list[dict[str, float]], weights: dict[str, float]) -> list[float]:
    """``sum_d w_d * r_d`` for each pair; a weighted dimension the scorer did not score is an error."""
    out = []
    for m in margins:
        missing = [d for d, w in weights.items() if w and d not in m]
        if missing:
            raise ValueError(f"the scorer gives no margin for dimension(s) {missing}")
        out.append(sum(w * m.get(d, 0.0) for d, w in weights.items()))
    return out


def _ranked(rows: list[PreferenceRow], scores: list[float], rng: random.Random) -> list[int]:
    tiebreak = list(range(len(rows)))
    rng.shuffle(tiebreak)
    return sorted(range(len(rows)), key=lambda i: (-scores[i], tiebreak[i]))


_SAID: set[str] = set()


def _say_selects_nothing(counts: dict[str, int], sizes: dict[str, int]) -> None:
    """Once per process, in the log: every dimension keeps all its pairs, so the ranking
    (``weights``, ``scorer``) changes nothing and the mixture is ``uniform``'s data (battery 16,
    A8; ``stage=train`` says it on the console, from ``mix_info.selects_nothing``)."""
    import logging

    text = f"{counts} of {sizes}"
    if text in _SAID:
        return
    _SAID.add(text)
    logging.getLogger("hhh_bench").info(
        "mix=reward_select keeps every pair (%s): its ranking selects nothing here, and the "
        "mixture is uniform's data; a budget below the pairs there are, or shares, select",
        text,
    )


@register_strategy("reward_select", RewardSelectParams)
def reward_select(
    sets: PreferenceSets, *, budget: int, rng: random.Random, params: RewardSelectParams
) -> MixResult:
    """Keep the pairs with the best combined reward margin (per dimension or globally)."""
    dims = list(sets)
    check_weights(params.weights, dims)
    weights = {d: 1.0 for d in dims} if params.weights is None else dict(params.weights)
    scores = {d: combined_margins(m, weights) for d, m in params.margins(sets).items()}
    info: dict[str, Any] = {"weights": weights, "resampled": {}}
    drawn: PreferenceSets = {}
    if params.scope == "per_dimension":
        shares = shares_or_equal(params.shares, dims)
        info["shares"] = shares
        kept_scores: dict[str, list[float]] = {}
        counts = allocate(shares, budget)
        if all(k >= len(sets[d]) for d, k in counts.items()):
            _say_selects_nothing(counts, {d: len(sets[d]) for d in dims})
        info["selects_nothing"] = all(k >= len(sets[d]) for d, k in counts.items())
        for d, k in counts.items():
            order = _ranked(sets[d], scores[d], rng)
            top = order[:k]
            rows, extra = take([sets[d][i] for i in top], k, rng)
            drawn[d], info["resampled"][d] = rows, extra
            kept_scores[d] = [scores[d][i] for i in top]
    else:
        pool = [(d, i) for d in dims for i in range(len(sets[d]))]
        flat = [scores[d][i] for d, i in pool]
        order = _ranked([sets[d][i] for d, i in pool], flat, rng)[:budget]
        kept_scores = {d: [] for d in dims}
        for d in dims:
            drawn[d] = []
        for j in order:
            d, i = pool[j]
            drawn[d].append(sets[d][i])
            kept_scores[d].append(flat[j])
        extra_n = budget - len(order)
        info["resampled"] = {d: 0 for d in dims}
        if extra_n > 0:  # budget larger than all sets together
            picked = [pool[j] for j in order]
            for d, i in rng.choices(picked, k=extra_n):
                drawn[d].append(sets[d][i])
                info["resampled"][d] += 1
    info["mean_margin"] = {
        d: {
            "all": sum(scores[d]) / len(scores[d]),
            "kept": sum(kept_scores[d]) / len(kept_scores[d]) if kept_scores[d] else None,
        }
        for d in dims
    }
    info["min_kept_margin"] = {d: min(v) if v else None for d, v in kept_scores.items()}
    return MixResult.shuffled(drawn, info, rng)
