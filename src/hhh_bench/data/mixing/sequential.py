"""``sequential``: one dimension after another (a curriculum), in a configurable order.

The counts per dimension follow ``shares`` (uniform when not given) exactly as in ``uniform`` /
``fixed_ratio``; the rows come out grouped by dimension in ``order``, each group shuffled, and
:attr:`MixResult.phases` carries the order. The train stage then trains the phases one after the
other (:func:`hhh_bench.train.dpo.train_dpo`): with ``schedule: per_phase`` (the default) each
phase gets its own learning-rate warmup and decay, so every phase trains at the configured peak
rate; ``one`` is a single schedule over the whole curriculum (the last phases then train at the
tail of the decay: a cosine's last third stays below a quarter of the peak). ``reference:
phase`` makes each phase's DPO reference the model as the phase starts (full fine-tuning);
``base`` (the default) keeps θ0 for every phase. SFT curricula use one schedule.
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
    ``shares``: fractions of the final mixture (None: equal shares); ``schedule``: ``per_phase``
    (each phase its own warmup and decay) or ``one`` (one schedule over all phases);
    ``reference``: the DPO reference of each phase, ``base`` (θ0) or ``phase`` (the model as
    the phase starts; needs ``schedule: per_phase`` and full fine-tuning)."""

    order: list[str] | None = None
    shares: dict[str, float] | None = None
    schedule: str = "per_phase"
    reference: str = "base"


@register_strategy("sequential", SequentialParams)
def sequential(
    sets: PreferenceSets, *, budget: int, rng: random.Random, params: SequentialParams
) -> MixResult:
    """Counts by ``shares``; rows grouped by dimension in ``order`` (curriculum)."""
    if params.schedule not in ("per_phase", "one"):
        raise ValueError(f"mix.schedule must be 'per_phase' or 'one', got {params.schedule!r}")
    if params.reference not in ("base", "phase"):
        raise ValueError(f"mix.reference must be 'base' or 'phase', got {params.reference!r}")
    if params.reference == "phase" and params.schedule != "per_phase":
        raise ValueError("mix.reference=phase needs mix.schedule=per_phase")
    dims = list(sets)
    order = list(params.order) if params.order else dims
    if sorted(order) != sorted(dims) or len(set(order)) != len(order):
        raise ValueError(
            f"mix.order must list each mixed dimension {dims} exactly once, got {order}"
        )
    shares = shares_or_equal(params.shares, dims)
    drawn, info = draw_by_shares(sets, shares, budget, rng)
    rows = [r for d in order for r in drawn[d]]
    info.update(order=order, schedule=params.schedule, reference=params.reference)
    return MixResult(rows, {d: len(drawn[d]) for d in dims}, info, phases=order)
