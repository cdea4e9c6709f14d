"""Preference noise for the robustness study: swap chosen and rejected of a seeded random share.

``data.noise.flip_rate=p`` flips exactly ``k = round_half_up(p * n)`` pairs, where ``n`` is the
number of *eligible* rows (all rows, or only those of ``data.noise.dimension``). Which pairs are
flipped is decided by ``random.Random(seed).sample(eligible positions, k)``, so the same rows and
seed always flip the same pairs, and a flipped set at a lower rate is not in general a subset of
the one at a higher rate (each rate draws its own sample).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence

from hhh_bench.core.schema import DIMENSIONS, PreferenceRow


def n_flips(rate: float, n: int) -> int:
    """``round_half_up(rate * n)``: 2.5 → 3 (unlike Python's ``round``, which gives 2)."""
    return int(math.floor(rate * n + 0.5))


def flip_preferences(
    rows: Sequence[PreferenceRow],
    rate: float,
    seed: int,
    dimension: str | None = None,
) -> tuple[list[PreferenceRow], list[str]]:
    """Swap ``chosen`` and ``rejected`` of exactly ``round_half_up(rate * n)`` eligible pairs.

    Args:
        rows: preference rows (not modified; flipped rows are deep copies).
        rate: share of the eligible rows to flip, in [0, 1].
        seed: seed of the ``random.Random`` that picks the flipped rows.
        dimension: flip only rows of this dimension (``n`` counts only those); None: all rows.

    Returns:
        ``(rows, flipped_ids)``: the rows in their original order, flipped ones with
        ``meta["noise_flipped"] = True``, and the ids of the flipped rows in row order.

    Raises:
        ValueError: ``rate`` outside [0, 1] or an unknown ``dimension``.
    """
    if not isinstance(rate, (int, float)) or not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"data.noise.flip_rate must be in [0, 1], got {rate!r}")
    if dimension is not None and dimension not in DIMENSIONS:
        raise ValueError(
            f"data.noise.dimension must be null or one of {list(DIMENSIONS)}, got {dimension!r}"
        )
    eligible = [i for i, r in enumerate(rows) if dimension is None or r["dimension"] == dimension]
    k = n_flips(float(rate), len(eligible))
    chosen_positions = set(random.Random(seed).sample(eligible, k)) if k else set()
    out: list[PreferenceRow] = []
    flipped: list[str] = []
    for i, row in enumerate(rows):
        if i not in chosen_positions:
            out.append(row)
            continue
        new = copy.deepcopy(row)
        new["chosen"], new["rejected"] = new["rejected"], new["chosen"]
        new["meta"] = {**new.get("meta", {}), "noise_flipped": True}
        out.append(new)
        flipped.append(row["id"])
    return out, flipped
