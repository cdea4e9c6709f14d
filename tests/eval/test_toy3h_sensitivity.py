"""experiments/toy3h_sensitivity: the draw script answers each world of a sweep by the report's
rule and writes its figure and table; the experiment composes with every world's overrides.

Hand-made stores (no training), one task per dimension of N = 20 items (weight 1, acc), so a
model with its first ``r`` items right scores r/20 on every dimension and on the average. Per
seed k = 0, 1, 2, in every world: the mixture "mix uniform" has 10 right (0.50) and "mix
sequential" 6; the merge "task_arithmetic" has 5.

- ``default``: "ties" has 15 + k right, so merge − mix = 0.25 + k/20 = 0.25, 0.30, 0.35: mean
  0.30, per-seed SD 0.05, 95% t interval 0.30 ± 4.303 · 0.05/√3 = [0.176, 0.424]: merging wins.
- ``conflict_rate-0.4``: "ties" has 9, 10, 12 right: −0.05, 0, +0.10, mean +0.017, SD 0.076:
  the interval holds 0, inconclusive.

On validation the same models score as on test, so each group's representative is "ties" and
"mix uniform" (the better of each group there).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import CONF, REPO, compose
from hhh_bench.tracking.store import append_result

_SPEC = importlib.util.spec_from_file_location(
    "toy3h_sensitivity_draw", REPO / "experiments" / "toy3h_sensitivity" / "draw.py"
)
draw = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = draw  # its dataclass looks its module up there
_SPEC.loader.exec_module(draw)
_SWEEP = importlib.util.spec_from_file_location(
    "toy3h_sensitivity_sweep", REPO / "experiments" / "toy3h_sensitivity" / "sweep.py"
)
sweep = importlib.util.module_from_spec(_SWEEP)
_SWEEP.loader.exec_module(sweep)

N = 20
SPECS = [
    {"name": t, "dimension": d, "weight": 1.0, "metric": "acc"}
    for t, d in (("h", "helpful"), ("o", "honest"), ("s", "harmless"))
]
T975_2 = 4.302652729911275  # t(0.975, 2 df)


def _row(kind: str, name: str, seed: int, right: int, split: str) -> dict[str, Any]:
    score = right / N
    return {
        "row_key": f"{name}-{seed}-{split}", "name": name, "kind": kind, "seed": seed,
        **({"method": name} if kind == "merge" else {}),  # a merge row names its method
        "split": split, "suite": "hand", "metric": "acc", "model_key": f"{name}-{seed}",
        "data_key": "d", "task_specs": SPECS,
        "tasks": {s["name"]: {"acc": score, "n": N} for s in SPECS},
        **{d: score for d in ("helpful", "honest", "harmless", "average", "min")},
    }  # fmt: skip


def _world(root: Path, ties: tuple[int, int, int]) -> None:
    for k in range(3):
        for kind, name, right in [("base", "base", 8), ("mixture", "mix uniform", 10),
                                  ("mixture", "mix sequential", 6), ("merge", "ties", ties[k]),
                                  ("merge", "task_arithmetic", 5)]:  # fmt: skip
            for split in ("validation", "test"):
                append_result(root / "results.jsonl", _row(kind, name, k, right, split))


@pytest.fixture
def sweep_root(tmp_path: Path) -> Path:
    _world(tmp_path / "default", (15, 16, 17))
    _world(tmp_path / "conflict_rate-0.4", (9, 10, 12))
    (tmp_path / "story_share-0").mkdir()  # a world not run yet: no store, no point
    return tmp_path


def test_each_world_answered_by_the_reports_rule(sweep_root):
    points = draw.collect(sweep_root)
    # the default world on each of the three panels, the moved world on its own
    assert [(p.knob, p.value, p.world) for p in points] == [
        ("conflict_rate", 0.2, "default"), ("conflict_rate", 0.4, "conflict_rate-0.4"),
        ("story_share", 0.25, "default"), ("two_sided_share", 0.25, "default"),
    ]  # fmt: skip
    default, moved = points[0].answer, points[1].answer
    assert (default["merge"], default["mixture"]) == ("ties", "mix uniform")
    assert default["mixture_choice"]["on"] == "validation"
    assert default["per_seed"] == pytest.approx([0.25, 0.30, 0.35])
    half = T975_2 * 0.05 / math.sqrt(3)
    assert (default["ci_low"], default["ci_high"]) == pytest.approx((0.30 - half, 0.30 + half))
    assert default["verdict"] == "merging wins"
    assert moved["per_seed"] == pytest.approx([-0.05, 0.0, 0.10])
    assert moved["diff"] == pytest.approx(0.05 / 3)
    assert moved["verdict"] == "inconclusive" and moved["ci_low"] < 0 < moved["ci_high"]


def test_table_and_figure_written(sweep_root, tmp_path):
    fig, md = tmp_path / "out" / "s.png", tmp_path / "out" / "s.md"
    assert draw.main([str(sweep_root), "--figure", str(fig), "--table", str(md)]) == 0
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 3  # header + the two worlds, the default once
    assert rows[1].startswith("| default | 3 | +0.300 | [+0.176, +0.424] |")
    assert "| merging wins | - |" in rows[1]
    assert rows[2].startswith("| `conflict_rate=0.4` | 3 | +0.017 |")
    assert "| inconclusive |" in rows[2]
    assert "Mix or merge? merge − mix = +0.300" in text  # the report's own answer line


def test_world_folders_round_trip_and_defaults_match_the_world_config():
    world = yaml.safe_load((CONF / "data" / "toy3h.yaml").read_text())["world"]
    assert {k: world[k] for k in draw.KNOBS} == draw.DEFAULTS == sweep.DEFAULTS
    assert set(sweep.VALUES) == set(draw.KNOBS)
    assert draw.parse_world(draw.world_name("two_sided_share", 0.5)) == ("two_sided_share", 0.5)
    assert draw.parse_world("default") is None and draw.parse_world("noise-0.1") is None


@pytest.mark.parametrize("world", [w for w, _ in sweep.worlds()])
def test_the_experiment_composes_with_each_worlds_overrides(world):
    from hhh_bench.validation import validate_run

    overrides = dict(sweep.worlds())[world]
    cfg = compose(["experiment=toy3h_sensitivity", *overrides, f"root=/tmp/x/{world}"])
    plain = OmegaConf.to_container(cfg, resolve=True)
    validate_run(plain)
    assert plain["seeds"] == [0, 1, 2]  # the design seeds, never the report seeds
    assert plain["pipeline"]["oracle"]["enabled"] is False
    assert plain["pipeline"]["tuning"]["emphasis"] == []
    assert {m if isinstance(m, str) else m["name"] for m in plain["pipeline"]["mixtures"]} >= {
        "reward_select", "conflict_aware"}  # fmt: skip
    knob = draw.parse_world(world)
    moved = {knob[0]: knob[1]} if knob else {}
    assert {k: plain["data"]["world"][k] for k in draw.KNOBS} == {**draw.DEFAULTS, **moved}
