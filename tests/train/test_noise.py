"""Preference noise: exactly round_half_up(p * n) flips, the same ones for the same seed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hhh_bench.core.schema import make_row
from hhh_bench.data.noise import flip_preferences, n_flips


def rows_of(n_helpful: int, n_honest: int = 0) -> list[dict]:
    rows = [
        make_row(f"q{i} ?", f"good{i}", f"bad{i}", "helpful", "t", f"h{i}")
        for i in range(n_helpful)
    ]
    rows += [
        make_row(f"p{i} ?", f"true{i}", f"lie{i}", "honest", "t", f"o{i}") for i in range(n_honest)
    ]
    return rows


def test_flips_exactly_the_rounded_count_and_swaps_the_pair():
    rows = rows_of(120)
    out, ids = flip_preferences(rows, 0.25, seed=3)
    assert len(ids) == 30  # 0.25 * 120
    flipped = {r["id"] for r in out if r.get("meta", {}).get("noise_flipped")}
    assert flipped == set(ids)
    by_id = {r["id"]: r for r in rows}
    for r in out:
        orig = by_id[r["id"]]
        if r["id"] in flipped:
            assert r["chosen"] == orig["rejected"] and r["rejected"] == orig["chosen"]
        else:
            assert r is orig
    assert [r["id"] for r in out] == [r["id"] for r in rows]  # order kept
    assert "meta" not in rows[0] or "noise_flipped" not in rows[0]["meta"]  # input untouched


def test_same_seed_same_pairs_other_seed_other_pairs():
    rows = rows_of(200)
    _, a = flip_preferences(rows, 0.1, seed=7)
    _, b = flip_preferences(rows, 0.1, seed=7)
    _, c = flip_preferences(rows, 0.1, seed=8)
    assert a == b and len(a) == 20
    assert a != c


def test_rounding_is_half_up():
    # 0.125 * 20 = 2.5 -> 3 (Python's round would give 2); 0.1 * 25 = 2.5 -> 3; 0.3 * 5 = 1.5 -> 2
    assert flip_preferences(rows_of(20), 0.125, seed=0)[1].__len__() == 3
    assert n_flips(0.1, 25) == 3 and n_flips(0.3, 5) == 2 and n_flips(0.0, 9) == 0


def test_one_dimension_only():
    rows = rows_of(30, 10)
    out, ids = flip_preferences(rows, 0.5, seed=1, dimension="honest")
    assert len(ids) == 5  # n = the 10 honest rows, not all 40
    assert all(i.startswith("o") for i in ids)
    assert flip_preferences(rows, 0.5, seed=1, dimension="harmless")[1] == []  # no eligible rows


@pytest.mark.parametrize("rate", [-0.1, 1.01, float("nan")])
def test_rate_outside_unit_interval_is_rejected(rate):
    with pytest.raises(ValueError, match="flip_rate must be in"):
        flip_preferences(rows_of(4), rate, seed=0)


def test_unknown_dimension_is_rejected():
    with pytest.raises(ValueError, match="dimension"):
        flip_preferences(rows_of(4), 0.5, seed=0, dimension="helpfull")


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 60), rate=st.floats(0, 1), seed=st.integers(0, 10**6))
def test_count_property(n, rate, seed):
    rows = rows_of(n)
    out, ids = flip_preferences(rows, rate, seed=seed)
    assert len(ids) == int(rate * n + 0.5) and len(set(ids)) == len(ids)
    assert sum(bool(r.get("meta", {}).get("noise_flipped")) for r in out) == len(ids)
    # flipping the same pairs again restores the data
    back, ids2 = flip_preferences(out, rate, seed=seed)
    assert ids2 == ids
    assert [(r["chosen"], r["rejected"]) for r in back] == [
        (r["chosen"], r["rejected"]) for r in rows
    ]
