"""The report's RESM vs TSV-M section (issue 29, part 4): paired by seed with a t interval
whatever the sign, what RESM's mechanisms did from each merge's diagnostics, and *mechanism
inert* when the reweighting moved nothing."""

from __future__ import annotations

import json
import math

import pytest

from hhh_bench.tracking.entries import table_entries
from hhh_bench.tracking.resm_tsv import resm_section, resm_vs_tsv

T975_2 = 4.302652729911275  # t(0.975, 2 df)


def _row(tmp_path, method: str, seed: int, average: float, moves: list[float] | None):
    folder = tmp_path / f"{method}-{seed}"
    folder.mkdir()
    if moves is not None:  # what the merge stage writes beside the merged weights
        resm = {"decomposed_layers": len(moves), "moved_at": 0.01,
                "layers_reweight_moved": sum(m >= 0.01 for m in moves),
                "layers_with_changed_rank": 1,
                "reweight_merge_change": {f"l{i}": m for i, m in enumerate(moves)}}  # fmt: skip
        (folder / "diagnostics.json").write_text(json.dumps({"resm": resm}))
    return {"row_key": f"{method}-{seed}", "name": method, "kind": "merge", "method": method,
            "seed": seed, "split": "test", "suite": "toy3h", "metric": "acc", "data_key": f"d{seed}",
            "artifacts": {"model": str(folder)}, "params": {"scaling": 1.0}, "task_specs": [],
            **{d: average for d in ("helpful", "honest", "harmless", "average", "min")}}  # fmt: skip


def test_resm_against_tsv_by_hand_and_what_the_mechanism_did(tmp_path):
    """Per-seed RESM − TSV-M = +0.01, +0.03, +0.02: mean +0.02, SD 0.01, the 95% t interval
    0.02 ± 4.303·0.01/√3 = [−0.005, +0.045]: inconclusive. Reweighting moved 2 of 3 layers
    (the largest 30%) on each seed."""
    rows = []
    for s, d in enumerate((0.01, 0.03, 0.02)):
        rows.append(_row(tmp_path, "tsv", s, 0.5, None))
        rows.append(_row(tmp_path, "resm", s, 0.5 + d, [0.3, 0.05, 0.001]))
    r = resm_vs_tsv(table_entries(rows))
    half = T975_2 * 0.01 / math.sqrt(3)
    assert r.diff == pytest.approx(0.02) and r.low == pytest.approx(0.02 - half)
    assert r.high == pytest.approx(0.02 + half) and not r.inert
    md = "\n".join(resm_section(r))
    assert "RESM − TSV-M = +0.020, 95% t interval over 3 paired seeds [-0.005, +0.045]" in md
    assert ": inconclusive." in md and "| 0 | 2 of 3 (≥ 1%) | 30.0% | 1 of 3 |" in md
    assert "Mechanism inert" not in md


def test_a_reweighting_that_moved_nothing_is_marked_inert_and_a_missing_one_said(tmp_path):
    rows = []
    for s, d in enumerate((-0.01, -0.02)):
        rows.append(_row(tmp_path, "tsv", s, 0.6, None))
        rows.append(_row(tmp_path, "resm", s, 0.6 + d, [0.0, 0.0]))
    r = resm_vs_tsv(table_entries(rows))
    assert r.inert and r.diff == pytest.approx(-0.015)
    md = "\n".join(resm_section(r))
    assert "**Mechanism inert**" in md and "RESM − TSV-M = -0.015" in md
    rows.append(_row(tmp_path, "tsv", 2, 0.6, None))
    rows.append(_row(tmp_path, "resm", 2, 0.7, None))  # no diagnostics for this seed
    r = resm_vs_tsv(table_entries(rows))
    assert r.missing == ["2"] and "No diagnostics of RESM's merge on seed(s) 2" in "\n".join(
        resm_section(r)
    )
    assert resm_vs_tsv(table_entries([x for x in rows if x["method"] == "tsv"])) is None
