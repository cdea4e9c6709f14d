"""``conflict_aware``: drop or down-weight pairs whose preference another dimension would reverse.

After Hummer (Jiang et al. 2024, "Hummer: Towards Limited Competitive Preference Dataset",
arXiv:2405.11647), which measures how much the preference data of one alignment dimension
conflicts with another's and builds a mixture with less conflict. Our per-pair reading: a pair of
dimension ``t`` *conflicts* when a scorer (``toy3h`` exact reward, or an ArmoRM-style reward
model) finds some other mixed dimension ``d != t`` with margin ``r_d < -threshold``, i.e. ``d``
would prefer the rejected response. Then, with the budget split by ``shares`` (fractions of the
final mixture, equal by default; largest-remainder counts):

* ``mode: drop`` removes conflicting pairs. A dimension left with no pair gets share 0 and the
  others are renormalised (logged in ``info["emptied"]``); one left with fewer pairs than its
  count is topped up with replacement, as everywhere (``info["resampled"]``).
* ``mode: downweight`` keeps every pair but samples conflicting ones with relative weight
  ``weight`` (non-conflicting: 1), without replacement (Efraimidis–Spirakis weighted sampling), so
  the counts per dimension stay exactly those of the shares. DPO's per-pair loss weight is not
  exposed by TRL's trainer, so down-weighting acts on how often a pair is seen, not on its loss.

Deviations from Hummer: no dimension-level conflict metric (AD) and no trained HummerRM; conflicts
come from the per-pair margins of whichever scorer is configured.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from hhh_bench.core.schema import PreferenceSets
from hhh_bench.data.mixing.registry import (
    MixResult,
    allocate,
    register_strategy,
    shares_or_equal,
    take,
    weighted_take,
)
from hhh_bench.data.mixing.scorers import ScoredParams

MODES = ("drop", "downweight")


@dataclass
class ConflictAwareParams(ScoredParams):
    """The scorer (:class:`~.scorers.ScoredParams`), then ``mode``, ``weight``, ``threshold`` and
    ``shares`` as the module docstring says."""

    mode: str = "downweight"
    weight: float = 0.25
    threshold: float = 0.0
    shares: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mix.mode must be one of {list(MODES)}, got {self.mode!r}")
        if not 0.0 < self.weight <= 1.0:
            raise ValueError(f"mix.weight must be in (0, 1], got {self.weight}")
        default = type(self).__dataclass_fields__["weight"].default
        if self.mode == "drop" and self.weight != default:  # battery 16, A9: ignored, keyed
            raise ValueError(
                f"mix.weight={self.weight} weighs conflicting pairs in mode: downweight; "
                "mode: drop removes them, whatever the weight: drop mix.weight, or use "
                "mode: downweight"
            )
        if self.threshold < 0:
            raise ValueError(f"mix.threshold must be >= 0, got {self.threshold}")


def conflicts(
    dimension: str, margins: dict[str, float], against: list[str], threshold: float
) -> list[str]:
    """The dimensions of ``against`` (other than ``dimension``) whose margin is below ``-threshold``."""
    return [d for d in against if d != dimension and margins.get(d, 0.0) < -threshold]


@register_strategy("conflict_aware", ConflictAwareParams)
def conflict_aware(
    sets: PreferenceSets, *, budget: int, rng: random.Random, params: ConflictAwareParams
) -> MixResult:
    """Drop (``mode: drop``) or sample less often (``downweight``) the conflicting pairs."""
    dims = list(sets)
    shares = shares_or_equal(params.shares, dims)
    flags = {
        t: [bool(conflicts(t, m, dims, params.threshold)) for m in margins]
        for t, margins in params.margins(sets).items()
    }
    info: dict[str, Any] = {
        "conflicting": {d: sum(f) for d, f in flags.items()},
        "resampled": {},
    }
    drawn: PreferenceSets = {}
    if params.mode == "drop":
        kept = {d: [r for r, f in zip(sets[d], flags[d], strict=True) if not f] for d in dims}
        emptied = [d for d in dims if not kept[d]]
        if len(emptied) == len(dims):
            raise ValueError("mix conflict_aware (drop): every pair conflicts; nothing is left")
        live = {d: shares[d] for d in dims if d not in emptied}
        if sum(live.values()) <= 0:
            raise ValueError("mix conflict_aware (drop): the dimensions left all have share 0")
        counts = {d: 0 for d in dims} | allocate(live, budget)
        for d in dims:
            drawn[d], info["resampled"][d] = take(kept[d], counts[d], rng) if counts[d] else ([], 0)
        info["emptied"] = emptied
        info["dropped"] = {d: len(sets[d]) - len(kept[d]) for d in dims}
    else:
        counts = allocate(shares, budget)
        for d in dims:
            w = [params.weight if f else 1.0 for f in flags[d]]
            drawn[d], info["resampled"][d] = weighted_take(sets[d], w, counts[d], rng)
        flagged = {id(r) for d in dims for r, f in zip(sets[d], flags[d], strict=True) if f}
        info["conflicting_kept"] = {d: sum(id(r) in flagged for r in drawn[d]) for d in dims}
    info["shares"] = shares
    return MixResult.shuffled(drawn, info, rng)
