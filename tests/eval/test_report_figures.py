"""The report's figures stay readable with 20 models (issue 18): the radar's series are told
apart by color within each panel (one panel per group, the base in grey in each, legends
outside the plot area); the Pareto figure has one panel per pair of dimensions and its numbers
and key never overlap, however the models crowd; the diagnostics' color scales follow the
statistics' ranges.

The synthetic store: a base, an oracle, 3 specialists, 5 mixtures and 10 merges (20 models,
one test row each), drawn around the middle of the square so that many crowd together.
"""

from __future__ import annotations

import itertools
import random
import re

import pytest

from hhh_bench.tracking.entries import table_entries
from hhh_bench.tracking.plots import PARETO_PAIRS, diag_color_range, pareto_figure, radar_figure
from hhh_bench.tracking.report import build_report

GROUP_SIZES = {"base": 1, "oracle": 1, "specialist": 3, "mixture": 5, "merge": 10}


def synthetic_rows(spread: float, seed: int = 0) -> list[dict]:
    """20 models, one test row each; scores 0.6 ± ``spread`` (the base at 0.5, the oracle and
    specialists where they usually are)."""
    rng = random.Random(seed)
    rows = []
    for kind, n in GROUP_SIZES.items():
        for i in range(n):
            h, o, a = (round(0.6 + rng.uniform(-spread, spread), 3) for _ in range(3))
            extra: dict = {}
            if kind == "base":
                h = o = a = 0.5
            elif kind == "oracle":
                h = o = a = 0.9
            elif kind == "specialist":
                dim = ("helpful", "honest", "harmless")[i]
                extra["train_dimensions"] = [dim]
            name = {"base": "base", "oracle": "oracle"}.get(kind, f"{kind} {i}")
            if kind == "specialist":
                name = f"{extra['train_dimensions'][0]} specialist"
            rows.append({
                "kind": kind, "name": name, "split": "test", "seed": 0, "suite": "toy3h",
                "metric": "acc", "helpful": h, "honest": o, "harmless": a,
                "average": (h + o + a) / 3, "min": min(h, o, a), **extra,
            })  # fmt: skip
    assert len(rows) == 20
    return rows


def _numbers(label: str) -> list[int]:
    out: list[int] = []
    for part in label.split(","):
        lo, _, hi = part.partition("–")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def test_radar_one_panel_per_group_distinct_colors_legends_outside():
    from matplotlib.colors import to_rgba

    entries = table_entries(synthetic_rows(0.1))
    fig = radar_figure(entries)
    renderer = fig.canvas.get_renderer()
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Oracle (1)", "Specialists (3)", "Data mixture (5)", "Model merging (10)"]
    for ax, kind in zip(fig.axes, ("oracle", "specialist", "mixture", "merge"), strict=True):
        lines = {ln.get_label(): to_rgba(ln.get_color()) for ln in ax.get_lines()}
        assert lines.pop("base (reference)") == to_rgba("#888888")  # the base in every panel
        assert sorted(lines) == sorted(e.name for e in entries if e.kind == kind)
        colors = list(lines.values())
        assert len(set(colors)) == len(colors), (kind, colors)  # pairwise distinct
        assert to_rgba("#888888") not in colors
        legend = ax.get_legend().get_window_extent(renderer)
        assert not legend.overlaps(ax.get_window_extent(renderer)), kind  # below the panel
    legends = [ax.get_legend().get_window_extent(renderer) for ax in fig.axes]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(legends, 2))


@pytest.mark.parametrize("spread", [0.0, 0.02, 0.3])
def test_pareto_three_panels_numbers_never_overlap(spread):
    """All 20 models on one point (spread 0), crowded (0.02) and spread out (0.3): each panel
    numbers every main-table row once, and no two labels (numbers and key lines) overlap."""
    rows = synthetic_rows(spread)
    entries = table_entries(rows)
    fig = pareto_figure(rows, entries)
    renderer = fig.canvas.get_renderer()
    assert len(fig.axes) == 3
    pairs = [(ax.get_xlabel().lower(), ax.get_ylabel().lower()) for ax in fig.axes]
    assert pairs == list(PARETO_PAIRS) and any("honest" in p for p in pairs)
    boxes = []
    for ax in fig.axes:
        labels = [t for t in ax.texts if t.get_gid() == "pareto-label"]
        numbers = sorted(n for t in labels for n in _numbers(t.get_text()))
        assert numbers == list(range(1, 21)), (spread, numbers)
        boxes += [t.get_window_extent(renderer) for t in labels]
    key = [t for t in fig.texts if t.get_gid() == "pareto-key"]
    assert len(key) == 21  # a header and one line per model: number, name, three means
    assert re.match(r"^ 6  mixture 0\s+0\.\d\d 0\.\d\d 0\.\d\d$", key[6].get_text())
    boxes += [t.get_window_extent(renderer) for t in key]
    overlaps = [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]
    assert not overlaps, (spread, overlaps[:3])
    if spread == 0.0:  # all but the base and the oracle on one point: one shared label
        assert {t.get_text() for t in fig.axes[0].texts} == {"1", "2", "3–20"}


def test_report_writes_the_figures_for_20_models(tmp_path):
    rep = build_report(synthetic_rows(0.05), tmp_path, select_split=None)
    for key in ("radar", "pareto", "conflict"):
        data = rep[key].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, key


def test_diagnostics_color_scales_follow_the_statistics_ranges():
    # shares are drawn on 0-1 whatever their values, so one color is one share everywhere
    assert diag_color_range("sign_conflict", [0.2, 0.3]) == (0.0, 1.0)
    assert diag_color_range("tail_share_3", [0.0, 0.0]) == (0.0, 1.0)
    # the normalized STI is not bounded by 1 (docs/merging.md): its own range, not 0-1
    assert diag_color_range("sti_normalized", [2.4, float("nan"), 5.2]) == (2.4, 5.2)
    # constant maps: from 0 to at least 1, never a scale around 0 such as -0.5..0.5
    assert diag_color_range("norm", [0.0, 0.0]) == (0.0, 1.0)
    assert diag_color_range("kurtosis", [3.0, 3.0]) == (0.0, 3.0)
    assert diag_color_range("norm", [float("nan")]) == (0.0, 1.0)
