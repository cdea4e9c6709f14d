"""The report's merge sweeps (issue 31): which methods are swept, along which knobs, each point's
mean and seed interval, the chosen configuration, the figure and the section."""

from __future__ import annotations

import math

import pytest

from hhh_bench.tracking.sweeps import series_label, sweep_points, sweep_section, sweep_table


def _row(method, seed, avg, split="validation", stderr=None, selected=None, **params):
    return {
        "kind": "merge", "name": method, "method": method, "split": split, "seed": seed,
        "average": avg, "average_stderr": stderr,
        "params": {"seed": seed, "compute_dtype": "float32", **params},
        "extra": {"selected_on": selected} if selected else {},
    }  # fmt: skip


# density x scaling grid of ties over three seeds; values chosen so the sums are exact
GRID = {(0.3, 0.5): [0.50, 0.60, 0.70], (0.3, 1.0): [0.55, 0.55, 0.70],
        (0.6, 0.5): [0.40, 0.50, 0.60], (0.6, 1.0): [0.80, 0.90, 0.85]}  # fmt: skip


def _grid_rows():
    return [_row("ties", s, v, density=d, scaling=lam)
            for (d, lam), vals in GRID.items() for s, v in enumerate(vals)]  # fmt: skip


def test_a_grid_gives_two_axes_and_t_intervals_over_seeds():
    (sweep,) = sweep_points(_grid_rows())
    assert sweep.method == "ties" and sweep.knobs == ["density", "scaling"]
    assert sweep.axes == ["density", "scaling"]  # seed and compute_dtype are not knobs
    assert len(sweep.points) == 4
    t975_2 = 4.302652729911275  # Student t, 2 degrees of freedom, 97.5% (tables)
    for p in sweep.points:
        vals = GRID[(p.knobs["density"], p.knobs["scaling"])]
        mean = sum(vals) / 3
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / 2)
        assert p.mean == pytest.approx(mean)
        assert p.high - p.mean == pytest.approx(t975_2 * sd / math.sqrt(3))
        assert p.mean - p.low == pytest.approx(t975_2 * sd / math.sqrt(3))
        assert p.interval == "t over seeds" and sorted(p.seeds) == [0, 1, 2]
    # by hand: (0.3, 0.5) is 0.6 ± 4.303·0.1/√3 = 0.6 ± 0.2484
    p = next(p for p in sweep.points if p.knobs == {"density": 0.3, "scaling": 0.5})
    assert (p.low, p.high) == pytest.approx((0.3516, 0.8484), abs=1e-4)
    assert series_label(p, "scaling") == "density=0.3"


def test_what_is_not_a_sweep():
    rows = [
        _row("tsv", 0, 0.7, scaling=1.0),  # one configuration
        _row("ta", 0, 0.6, weights=None),
        _row("ta", 0, 0.65, weights=[1, 1, 2]),  # no number
        _row("dare", 0, 0.6, drop_rate=0.3),
        _row("dare", 1, 0.62, drop_rate=0.3),  # seeds only
        _row("ties", 0, 0.9, split="test", selected="validation", density=0.5),  # a choice
        {**_row("x", 0, 0.5, flag=True), "kind": "mixture"},  # not a merge
        _row("b", 0, 0.5, flag=True),
        _row("b", 0, 0.6, flag=False),  # booleans are no axis
    ]
    assert sweep_points(rows) == []


def test_one_seed_shows_item_intervals_and_the_choice_is_marked():
    rows = [_row("resm", 0, 0.60, stderr=0.02, kappa=2.0, weights=None),
            _row("resm", 0, 0.70, stderr=0.01, kappa=3.0, weights=None),
            _row("resm", 0, 0.65, kappa=3.0, weights=[1, 1, 2])]  # fmt: skip
    chosen = [_row("resm", 0, 0.66, split="test", selected="validation", kappa=3.0,
                   weights=None)]  # fmt: skip
    (sweep,) = sweep_points(rows, chosen_rows=chosen)
    assert sweep.knobs == ["kappa", "weights"] and sweep.axes == ["kappa"]
    by = {(p.knobs["kappa"], str(p.knobs["weights"])): p for p in sweep.points}
    p = by[(2.0, "None")]
    assert (p.interval, p.low, p.high) == ("items", pytest.approx(0.5608), pytest.approx(0.6392))
    assert by[(3.0, "None")].chosen == 1 and by[(2.0, "None")].chosen == 0
    assert by[(3.0, "[1, 1, 2]")].interval == "none"  # no stderr: no interval, said so
    md = "\n".join(sweep_section([sweep], {}))
    assert "| 2.0 | null | 0.600 | [0.561, 0.639] (items) | 1 |  |" in md
    assert "| 3.0 | null | 0.700 | [0.680, 0.720] (items) | 1 | 1 |" in md
    assert "| 3.0 | [1, 1, 2] | 0.650 | - | 1 |  |" in md
    columns, data = sweep_table([sweep])
    assert columns[0] == "method" and len(data) == 3


def test_the_report_draws_one_figure_per_swept_method(tmp_path):
    from hhh_bench.tracking.report import build_report

    rows = _grid_rows() + [
        _row("tsv", s, 0.6 + 0.01 * s, rank_fraction=f) for s in range(3) for f in (0.1, 0.3)
    ] + [_row("ta", 0, 0.5, scaling=1.0)]  # fmt: skip
    base = {"kind": "base", "name": "base", "seed": 0, "split": "validation",
            **{d: 0.5 for d in ("helpful", "honest", "harmless", "average", "min")}}  # fmt: skip
    rows = [{**r, **{d: r["average"] for d in ("helpful", "honest", "harmless", "min")}}
            for r in rows] + [base]  # fmt: skip
    rep = build_report(rows, tmp_path, report_split="validation", select_split=None)
    assert sorted(rep["sweep_figures"]) == ["ties", "tsv"]
    for path in rep["sweep_figures"].values():
        assert path.read_bytes()[:4] == b"\x89PNG"
    md = rep["report_md"].read_text()
    assert "## Merge sweeps" in md and "![ties sweep](sweep_ties.png)" in md
    assert md.rstrip().splitlines()[-1].startswith("Mix or merge?")  # the answer stays last
