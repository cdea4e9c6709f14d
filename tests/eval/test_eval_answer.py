"""The report's answer line, "mix or merge?", on a hand-made store with per-item values.

Three tasks of 20 items, one per dimension (h helpful, o honest, s harmless; acc, weight 1), so
the average is (h + o + s) / 3. In seed k (0, 1, 2): the mixture "mix uniform" gets the first
10 items of every task right (0.5); the merge "ties" the first 15 + k (0.75, 0.80, 0.85). The
per-item differences are 5 + k ones and 15 − k zeros in each task, so merge − mix is 0.25 + k/20
in every task and in the average: 0.30 over the seeds. A weaker family of each group
("mix sequential" 0.3, "task_arithmetic" 0.6) must not be the one compared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hhh_bench.core.items import ITEMS_FILE, write_jsonl
from hhh_bench.tracking.answer import VERDICTS, compare, mix_vs_merge, verdict
from hhh_bench.tracking.entries import table_entries
from hhh_bench.tracking.report import build_report
from hhh_bench.tracking.store import append_result

N = 20
SPECS = [
    {"name": t, "dimension": d, "weight": 1.0, "metric": "acc"}
    for t, d in (("h", "helpful"), ("o", "honest"), ("s", "harmless"))
]


def row(folder: Path, kind: str, name: str, seed: int, right: int, *, items: bool = True):
    """A test-split row whose every task has its first ``right`` of N items right."""
    values = {s["name"]: [1.0] * right + [0.0] * (N - right) for s in SPECS}
    eval_dir = folder / f"{name}-{seed}"
    if items:
        eval_dir.mkdir(parents=True)
        write_jsonl(
            eval_dir / ITEMS_FILE,
            {t: [{"doc_id": i, "acc": v} for i, v in enumerate(xs)] for t, xs in values.items()},
        )
    score = right / N
    return {
        "row_key": f"{name}-{seed}-test",
        "name": name,
        "kind": kind,
        "seed": seed,
        "split": "test",
        "suite": "hand",
        "metric": "acc",
        "task_specs": SPECS,
        "tasks": {t: {"acc": score, "n": N} for t in values},
        **{d: score for d in ("helpful", "honest", "harmless", "average", "min")},
        "artifacts": {"eval_dir": str(eval_dir)},
    }


def store(folder: Path, *, merge_right=(15, 16, 17), other=12, mixture=True, items=True):
    rows: list[dict[str, Any]] = []
    for k in range(3):
        rows.append(row(folder, "base", "base", k, 8, items=items))
        if mixture:
            rows.append(row(folder, "mixture", "mix uniform", k, 10, items=items))
            rows.append(row(folder, "mixture", "mix sequential", k, 6, items=items))
        rows.append(row(folder, "merge", "ties", k, merge_right[k], items=items))
        rows.append(row(folder, "merge", "task_arithmetic", k, other, items=items))
    return rows


def test_verdict_reads_the_interval_against_zero():
    assert verdict(-0.1, 0.2) == verdict(0.0, 0.2) == verdict(-0.2, 0.0) == VERDICTS[2]
    assert VERDICTS[2] == "no difference we can resolve"
    assert verdict(0.01, 0.2) == "merging wins"
    assert verdict(-0.3, -0.01) == "mixing wins"


def test_best_of_each_group_paired_by_seed(tmp_path):
    """Merge − mix = 0.30 by hand (module docstring). Its bootstrap SD: per task and seed
    sqrt(p(1 − p) / 20) ≈ 0.10, over three tasks / 3 ≈ 0.06, over three seed slots ≈ 0.035
    (plus the seeds' spread, 0.05 apart): the 95% interval is about ±0.08 wide, well above 0."""
    res = mix_vs_merge(table_entries(store(tmp_path)))
    assert res is not None
    assert (res["merge"], res["mixture"]) == ("ties", "mix uniform")
    assert res["diff"] == pytest.approx(0.30)
    assert res["diff"] == pytest.approx(res["merge_mean"] - res["mixture_mean"])
    assert (res["merge_mean"], res["mixture_mean"]) == pytest.approx((0.80, 0.50))
    assert 0.15 < res["ci_low"] < 0.30 < res["ci_high"] < 0.45
    assert res["verdict"] == "merging wins"
    assert res["n_seeds"] == 3 and res["seeds"] == [0, 1, 2]
    assert res["items_per_task"] == {"h": N, "o": N, "s": N} and res["n_items"] == 3 * N
    assert res["weights"] == pytest.approx({"h": 1 / 3, "o": 1 / 3, "s": 1 / 3})
    assert mix_vs_merge(table_entries(store(tmp_path / "again"))) == res  # seeded


def test_mixing_wins_and_ties_and_shared_seeds_only(tmp_path):
    worse = mix_vs_merge(table_entries(store(tmp_path / "a", merge_right=(6, 5, 4), other=2)))
    assert worse["merge"] == "ties" and worse["diff"] == pytest.approx(-0.25)
    assert worse["verdict"] == "mixing wins" and worse["ci_high"] < 0
    # the same items right: every paired difference 0, a degenerate interval at 0
    same = mix_vs_merge(table_entries(store(tmp_path / "b", merge_right=(10, 10, 10), other=2)))
    assert (same["diff"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)
    assert same["verdict"] == "no difference we can resolve"
    # only the seeds both have are paired: the merge's seed 0 goes unused
    rows = [r for r in store(tmp_path / "c") if not (r["kind"] == "mixture" and r["seed"] == 0)]
    res = mix_vs_merge(table_entries(rows))
    assert res["seeds"] == [1, 2] and res["diff"] == pytest.approx((0.30 + 0.35) / 2)


def test_report_ends_with_the_answer(tmp_path):
    rep = build_report(store(tmp_path / "store"), tmp_path / "out", experiment="hand")
    md = rep["report_md"].read_text()
    last = md.rstrip("\n").splitlines()[-1]
    assert last == rep["answer_line"]
    assert last.startswith("Mix or merge? best merge ties 0.800 vs best mixture mix uniform 0.500")
    assert "(3 seeds): merge − mix = +0.300, 95% CI [+0." in last
    assert last.endswith("(paired bootstrap over items and seeds): merging wins")
    section = md.split("\n## ")[-1]
    assert section.startswith("Mix or merge?\n")  # the last section
    assert "| h | 0.333 | 20 |" in section
    assert rep["answer"]["verdict"] == rep["summary"]["mix_or_merge/verdict"] == "merging wins"


def test_no_answer_is_said_not_raised(tmp_path):
    rep = build_report(store(tmp_path / "a", mixture=False), tmp_path / "out_a")
    assert rep["answer"] is None
    assert rep["answer_line"] == "Mix or merge? No answer: the main table has no data-mixture row."
    assert rep["report_md"].read_text().rstrip("\n").endswith(rep["answer_line"])
    assert "mix_or_merge/verdict" not in rep["summary"]
    # rows without per-item values: the report names the row and the fix
    rep = build_report(store(tmp_path / "b", items=False), tmp_path / "out_b")
    assert rep["answer"] is None
    assert "has no per-item values" in rep["answer_line"]
    assert "eval.log_samples=true" in rep["answer_line"]
    reason = compare(table_entries(store(tmp_path / "c", items=False)))
    assert isinstance(reason, str) and "row 'ties-0-test'" in reason


def report_cfg(root: Path):
    """The config the report stage reads, for a store under ``root``."""
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            "name": "hand",
            "root": str(root),
            "eval": {"report_split": "test", "select_split": "validation", "select_by": "average"},
            "logger": {"name": "none"},
        }
    )


def test_report_stage_prints_the_answer_last(tmp_path, capsys):
    from hhh_bench.stages.report import run_report

    for r in store(tmp_path / "evals"):
        append_result(tmp_path / "results.jsonl", r)
    cfg = report_cfg(tmp_path)
    out = run_report(cfg)
    printed = capsys.readouterr().out.rstrip("\n").splitlines()
    assert printed[-1] == out["answer_line"] and printed[-1].endswith("merging wins")
    assert any(line.startswith("| Method |") for line in printed[:-1])  # the table before it
    assert out["answer"]["verdict"] == "merging wins"


def test_report_stage_reuses_a_report_of_the_same_store(tmp_path, capsys):
    """A rerun on an unchanged store prints the same table and answer without rebuilding the
    report (its files untouched); a new row rebuilds it."""
    from hhh_bench.stages.report import run_report

    rows = store(tmp_path / "evals")
    for r in rows[:-1]:
        append_result(tmp_path / "results.jsonl", r)
    cfg = report_cfg(tmp_path)
    first = run_report(cfg)
    md = tmp_path / "report" / "report.md"
    stamp = md.stat().st_mtime_ns
    capsys.readouterr()
    again = run_report(cfg)
    printed = capsys.readouterr().out
    assert again == json.loads(json.dumps(first, default=str))
    assert "unchanged since the store was last reported" in printed
    assert printed.rstrip("\n").splitlines()[-1] == first["answer_line"]
    assert md.stat().st_mtime_ns == stamp
    append_result(tmp_path / "results.jsonl", rows[-1])  # the store changed: built anew
    third = run_report(cfg)
    assert "unchanged" not in capsys.readouterr().out
    assert third["n_rows"] == first["n_rows"] + 1
