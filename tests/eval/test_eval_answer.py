"""The report's answer line, "mix or merge?", on a hand-made store with per-item values.

Three tasks of 20 items, one per dimension (h helpful, o honest, s harmless; acc, weight 1), so
the average is (h + o + s) / 3; items 4j..4j+3 are about entity j. In seed k (0, 1, 2): the
mixture "mix uniform" gets the first 10 items of every task right (0.5); the merge "ties" the
first 15 + k (0.75, 0.80, 0.85). So merge − mix is 0.25 + k/20 per seed: 0.30 over the seeds,
per-seed SD 0.05, SE 0.05/√3 = 0.0289, and the 95% t interval 0.30 ± 4.303 · 0.0289 =
[0.176, 0.424] (t(0.975, 2 df) = 4.303). A weaker family of each group ("mix sequential" 0.3,
"task_arithmetic" 0.6) must not be the one compared on the report split; with validation rows
(``validation=...``) the choice is theirs.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from scipy import stats

from hhh_bench.core.items import ITEMS_FILE, write_jsonl
from hhh_bench.tracking.answer import (
    VERDICTS,
    answer_line,
    answer_section,
    compare,
    decomposition,
    environment_fingerprint,
    mix_vs_merge,
    mixed_line,
    verdict,
)
from hhh_bench.tracking.entries import table_entries
from hhh_bench.tracking.report import build_report
from hhh_bench.tracking.store import append_result

N = 20
SPECS = [
    {"name": t, "dimension": d, "weight": 1.0, "metric": "acc"}
    for t, d in (("h", "helpful"), ("o", "honest"), ("s", "harmless"))
]
T975_2 = 4.302652729911275  # t(0.975, 2 df): 4.303 in any t table


def row(folder: Path, kind: str, name: str, seed: int, right: int, *, items: bool = True,
        split: str = "test", env: str | None = None):  # fmt: skip
    """A row whose every task has its first ``right`` of N items right; ``env``: the
    fingerprint its eval folder's provenance.json records."""
    values = {s["name"]: [1.0] * right + [0.0] * (N - right) for s in SPECS}
    eval_dir = folder / f"{name}-{seed}-{split}"
    eval_dir.mkdir(parents=True, exist_ok=True)
    if items:
        write_jsonl(
            eval_dir / ITEMS_FILE,
            {
                t: [
                    {"doc_id": i, "acc": v, "cluster": f"entity=e{i // 4}"}
                    for i, v in enumerate(xs)
                ]
                for t, xs in values.items()
            },
        )
    if env:
        (eval_dir / "provenance.json").write_text(json.dumps({"environment": {"fingerprint": env}}))
    score = right / N
    return {
        "row_key": f"{name}-{seed}-{split}",
        "name": name,
        "kind": kind,
        **({"method": name} if kind == "merge" else {}),  # a merge row names its method
        "seed": seed,
        "split": split,
        "suite": "hand",
        "metric": "acc",
        "model_key": f"{name}-{seed}",
        "data_key": "d",
        "task_specs": SPECS,
        "tasks": {t: {"acc": score, "n": N} for t in values},
        **{d: score for d in ("helpful", "honest", "harmless", "average", "min")},
        "artifacts": {"eval_dir": str(eval_dir)},
    }


def store(folder: Path, *, merge_right=(15, 16, 17), other=12, mixture=True, items=True,
          validation: dict[str, int] | None = None, env: str | None = "abc123"):  # fmt: skip
    """The module docstring's store; ``validation``: ``{name: right}`` validation rows (every
    seed) of those models."""
    rows: list[dict[str, Any]] = []
    for k in range(3):
        models = [("base", "base", 8)]
        if mixture:
            models += [("mixture", "mix uniform", 10), ("mixture", "mix sequential", 6)]
        models += [("merge", "ties", merge_right[k]), ("merge", "task_arithmetic", other)]
        for kind, name, right in models:
            rows.append(row(folder, kind, name, k, right, items=items, env=env))
            if validation and name in validation:
                rows.append(row(folder, kind, name, k, validation[name], split="validation"))
    return rows


def test_verdict_reads_the_interval_against_zero():
    assert verdict(-0.1, 0.2) == verdict(0.0, 0.2) == verdict(-0.2, 0.0) == VERDICTS[2]
    assert VERDICTS[2] == verdict(None, None) == "inconclusive"
    assert verdict(0.01, 0.2) == "merging wins"
    assert verdict(-0.3, -0.01) == "mixing wins"


def test_seed_level_interval_of_the_best_of_each_group(tmp_path):
    """No validation rows: each group's best on the report split, said so. The interval is the
    t interval over the 3 per-seed differences (module docstring), checked against scipy's
    one-sample t test."""
    res = mix_vs_merge(table_entries(store(tmp_path)))
    assert res is not None
    assert (res["merge"], res["mixture"]) == ("ties", "mix uniform")
    assert res["per_seed"] == pytest.approx([0.25, 0.30, 0.35])
    assert res["diff"] == pytest.approx(0.30) == res["merge_mean"] - res["mixture_mean"]
    se = 0.05 / math.sqrt(3)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx(
        (0.30 - T975_2 * se, 0.30 + T975_2 * se)
    )
    assert res["p_value"] == pytest.approx(stats.ttest_1samp([0.25, 0.30, 0.35], 0).pvalue)
    assert res["verdict"] == "merging wins" and res["seeds_needed"] is None
    assert res["n_seeds"] == 3 and res["seeds"] == [0, 1, 2] and res["interval"] == "t"
    for kind in ("merge", "mixture"):
        assert res[f"{kind}_choice"]["fallback"] and res[f"{kind}_choice"]["candidates"] == 2
    # the item-level views beside it: the bootstrap diagnostic and the mixed model (clustered)
    assert res["items_per_task"] == {"h": N, "o": N, "s": N} and res["n_items"] == 3 * N
    assert res["weights"] == pytest.approx({"h": 1 / 3, "o": 1 / 3, "s": 1 / 3})
    assert res["item_bootstrap"]["diff"] == pytest.approx(0.30)
    mixed = res["mixed"]
    assert mixed["clusters"] == "entity" and mixed["n_clusters"] == 3 * 5  # 5 entities per seed
    assert mixed["estimate"] == pytest.approx(0.30) and mixed["error"] is None
    assert res["environment"] == "abc123"
    assert mix_vs_merge(table_entries(store(tmp_path / "again"))) == {
        **res,
        "environment": "abc123",
    }  # seeded


def test_representatives_are_chosen_on_validation(tmp_path):
    """On validation task_arithmetic (14 of 20) beats ties (11) and mix sequential (12) beats
    mix uniform (9): those two are compared on test, though each is its group's worse row
    there: sequential 0.30, task_arithmetic 0.60: merge − mix = +0.30 on every seed."""
    rows = store(tmp_path, validation={"ties": 11, "task_arithmetic": 14, "mix uniform": 9,
                                       "mix sequential": 12})  # fmt: skip
    test_rows = [r for r in rows if r["split"] == "test"]
    val_rows = [r for r in rows if r["split"] == "validation"]
    res = compare(table_entries(test_rows), select_rows=val_rows, select_split="validation")
    assert (res["merge"], res["mixture"]) == ("task_arithmetic", "mix sequential")
    assert res["merge_choice"]["select_scores"] == pytest.approx(
        {"ties": 0.55, "task_arithmetic": 0.70}
    )
    assert not res["merge_choice"]["fallback"] and res["mixture_choice"]["on"] == "validation"
    assert res["diff"] == pytest.approx(0.30) and res["sd"] == 0.0
    rep = build_report(rows, tmp_path / "out")
    line = rep["answer_line"]
    assert "best merge task_arithmetic 0.600 (chosen on validation from 2 merge methods)" in line
    assert (
        "best mixture mix sequential 0.300 (chosen on validation from 2 mixing strategies)" in line
    )
    md = rep["report_md"].read_text()
    assert "| merges | task_arithmetic | 0.700 | 0.600 | yes |" in md
    assert "| merges | ties | 0.550 | 0.800 |  |" in md  # every candidate, chosen or not
    assert "*Multiplicity.*" in md
    # one candidate without a validation score (battery 8: a model evaluated with stage=eval on
    # the report split only): it is left out of the choice, which stays on validation, and the
    # answer says so; it moved the whole group's choice to the reported split before
    partial = [r for r in rows if not (r["split"] == "validation" and r["name"] == "ties")]
    res = compare(
        table_entries(test_rows),
        select_rows=[r for r in partial if r["split"] == "validation"],
        select_split="validation",
    )
    assert res["merge_choice"]["missing"] == ["ties"] == res["merge_choice"]["left_out"]
    assert res["merge"] == "task_arithmetic" and not res["merge_choice"]["fallback"]
    assert (
        "(chosen on validation from 1 merge method; 1 without a validation score left out: ties)"
        in answer_line(res)
    )
    assert "(chosen on validation from 2 mixing strategies)" in answer_line(res)
    # none has one: the group falls back to the reported split, and says so
    res = compare(table_entries(test_rows), select_rows=[r for r in val_rows if "mix" in r["name"]],
                  select_split="validation")  # fmt: skip
    assert res["merge_choice"]["fallback"] and res["merge_choice"]["left_out"] == []
    assert "(chosen on test from 2 merge methods, the reported split)" in answer_line(res)


def test_mixing_wins_inconclusive_one_seed_and_shared_seeds_only(tmp_path):
    worse = mix_vs_merge(table_entries(store(tmp_path / "a", merge_right=(6, 5, 4), other=2)))
    assert worse["merge"] == "ties" and worse["diff"] == pytest.approx(-0.25)
    assert worse["verdict"] == "mixing wins" and worse["ci_high"] < 0
    # the same items right: every difference 0, a degenerate interval at 0, inconclusive
    same = mix_vs_merge(table_entries(store(tmp_path / "b", merge_right=(10, 10, 10), other=2)))
    assert (same["diff"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)
    assert same["verdict"] == "inconclusive" and same["seeds_needed"] == 2
    from hhh_bench.tracking.answer import headline  # battery 20, B-F5: not "needs 2 seeds"

    assert headline(same).endswith("inconclusive (the interval lies within ±0.02: any "
                                   "difference is smaller)")  # fmt: skip
    # a spread that the interval cannot resolve: the seeds a ±0.02 interval would need
    wide = mix_vs_merge(table_entries(store(tmp_path / "w", merge_right=(8, 12, 13), other=2)))
    assert wide["per_seed"] == pytest.approx([-0.1, 0.1, 0.15])
    assert wide["verdict"] == "inconclusive" and wide["seeds_needed"] > 100
    # only the seeds both have are paired: the merge's seed 0 goes unused
    rows = [r for r in store(tmp_path / "c") if not (r["kind"] == "mixture" and r["seed"] == 0)]
    res = mix_vs_merge(table_entries(rows))
    assert res["seeds"] == [1, 2] and res["diff"] == pytest.approx((0.30 + 0.35) / 2)
    # ... and the answer line says so (battery 9, 4: it was unsaid)
    assert res["unpaired"] == {"0": ["best mixture mix uniform"]}
    assert "; not paired: seed 0 (best mixture mix uniform has no test row of it); env" in (
        answer_line(res)
    )
    assert mix_vs_merge(table_entries(store(tmp_path / "c2")))["unpaired"] == {}
    # one seed: no interval, said plainly; no mixed model either
    one = [r for r in store(tmp_path / "d") if r["seed"] == 0]
    res = compare(table_entries(one))
    assert res["ci_low"] is None and res["p_value"] is None and res["verdict"] == "inconclusive"
    assert "at least 2 seeds" in res["mixed"]["error"]
    assert "merge − mix = +0.250 on 1 seed: no interval" in answer_line(res)


def test_a_given_model_is_its_own_group_never_the_answers_merge(tmp_path):
    """Battery 9 (6): a `+eval.model` row was filed as a merge, so a user's model (here 19 of
    20 right, better than every merge) became the answer's "best merge". Filed as external,
    it has a group of its own and the answer compares ties with mix uniform."""
    rows = store(tmp_path)
    rows += [{**row(tmp_path, "external", "/models/theirs", k, 19), "row_key": f"ext-{k}"}
             for k in range(3)]  # fmt: skip
    res = mix_vs_merge(table_entries(rows))
    assert (res["merge"], res["mixture"]) == ("ties", "mix uniform")
    md = build_report(rows, tmp_path / "out")["markdown"]
    assert "| *Given models (+eval.model)* |" in md and "| /models/theirs | **0.950" in md


def test_grid_points_reported_as_rows_are_not_more_candidates(tmp_path):
    """Battery 9 (8): with pipeline.report_every_grid_point=true each of ties' grid points is a
    row of its own (its model also scored on validation, as the pipeline chose among them);
    the answer counted each as a merge method ("from 4 merge methods" for 2). The chosen
    row stands for its method; the points stay in the table."""
    rows = store(tmp_path, validation={"ties": 15, "task_arithmetic": 14, "mix uniform": 9,
                                       "mix sequential": 12})  # fmt: skip
    for r in rows:
        r["method"] = r["mix_strategy"] = r["name"]
        if r["name"] == "ties":
            r["extra"] = {"selected_on": "validation", "n_configs": 2, "grid_params": {"d": 1}}
    for r in [r for r in rows if r["name"] == "ties"]:
        for d in (1, 2):  # the same model as the chosen one (d=1) and another (d=2)
            name = f"ties (d={d})"
            rows.append({**r, "row_key": f"{r['row_key']}-{d}", "name": name,
                         "family": f"Merge: {name}", "model_key": f"{r['model_key']}-{d}",
                         "extra": {"grid_params": {"d": d}}})  # fmt: skip
    for r in [r for r in rows if r.get("model_key", "").endswith("-1")]:
        r["model_key"] = r["model_key"][:-2]  # d=1 is the chosen model itself
    test_rows = [r for r in rows if r["split"] == "test"]
    es = table_entries(test_rows)
    assert sorted(e.name for e in es if e.kind == "merge") == [
        "task_arithmetic", "ties", "ties (d=1)", "ties (d=2)"]  # fmt: skip
    res = compare(es, select_rows=[r for r in rows if r["split"] == "validation"],
                  select_split="validation")  # fmt: skip
    assert res["merge"] == "ties (best of 2 on validation)"
    assert res["merge_choice"]["candidates"] == 2
    assert "(chosen on validation from 2 merge methods)" in answer_line(res)


def test_bca_option(tmp_path):
    res = compare(table_entries(store(tmp_path / "s")), interval="bca")
    # three seeds: below BCa's floor the t interval is given, and the line says so
    t = compare(table_entries(store(tmp_path / "t")))
    assert (res["interval"], res["interval_requested"]) == ("t", "bca")
    assert (res["ci_low"], res["ci_high"], res["verdict"]) == (
        t["ci_low"],
        t["ci_high"],
        t["verdict"],
    )
    assert "95% t interval (report.interval=bca needs ≥ 8 paired seeds) [" in answer_line(res)


def test_environment_fingerprint_recorded_mixed_or_not_recorded(tmp_path):
    rows = store(tmp_path / "a")
    assert environment_fingerprint(rows) == "abc123"
    (Path(rows[0]["artifacts"]["eval_dir"]) / "provenance.json").write_text(
        json.dumps({"environment": {"fingerprint": "def456"}})
    )
    assert environment_fingerprint(rows) == "mixed"
    res = compare(table_entries(store(tmp_path / "b", env=None)))
    assert answer_line(res).endswith("; env not recorded")


def test_report_ends_with_the_answer(tmp_path):
    rep = build_report(store(tmp_path / "store"), tmp_path / "out", experiment="hand")
    md = rep["report_md"].read_text()
    last = md.rstrip("\n").splitlines()[-1]
    assert last == rep["answer_line"]
    assert last == (
        "Mix or merge? merge − mix = +0.300, 95% t interval [+0.176, +0.424] over 3 paired "
        "seeds, p = 0.0091 (t test): merging wins; best merge ties 0.800 (chosen on test from 2 "
        "merge methods, the reported split) vs best mixture mix uniform 0.500 (chosen on test "
        "from 2 mixing strategies, the reported split); env abc123"
    )
    section = md.split("\n## ")[-1]
    assert section.startswith("Mix or merge?\n")  # the last section
    assert "| h | 0.333 | 20 |" in section
    assert "Per-seed differences (merge − mix of the average): 0: +0.250, 1: +0.300" in section
    assert "Mixed-effects view (linear probability model on the item scores" in section
    assert "Diagnostic, not the headline: the paired bootstrap over items and seeds" in section
    assert rep["answer"]["verdict"] == rep["summary"]["mix_or_merge/verdict"] == "merging wins"


def test_no_answer_is_said_not_raised(tmp_path):
    rep = build_report(store(tmp_path / "a", mixture=False), tmp_path / "out_a")
    assert rep["answer"] is None
    assert rep["answer_line"] == "Mix or merge? No answer: the main table has no data-mixture row."
    assert rep["report_md"].read_text().rstrip("\n").endswith(rep["answer_line"])
    assert "mix_or_merge/verdict" not in rep["summary"]
    # rows without per-item values: the seed-level answer stands; the item views say why not
    lines, res, _ = answer_section(table_entries(store(tmp_path / "b", items=False)))
    assert res["verdict"] == "merging wins" and res["mixed"] is None
    md = "\n".join(lines)
    assert "No item-level view: row 'ties-0-test' has no per-item values" in md
    assert "eval.log_samples=true" in md
    # rows of different items: no answer, naming both
    rows = store(tmp_path / "c")
    for r in rows:
        if r["name"] == "ties":
            r["suite"] = "other"
    reason = compare(table_entries(rows))
    assert isinstance(reason, str) and "differ in suite" in reason


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
    assert printed[-1] == out["answer_line"] and ": merging wins;" in printed[-1]
    assert any(line.startswith("| Method |") for line in printed[:-1])  # the table before it
    assert out["answer"]["verdict"] == "merging wins"


def test_report_stage_reuses_a_report_of_the_same_store(tmp_path, capsys, monkeypatch):
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
    import hhh_bench.stages.report as stage

    real = stage.code_identity
    monkeypatch.setattr(stage, "code_identity", lambda *m: {**real(*m), "changed": True})
    run_report(cfg)  # the report's code changed: built anew, never the old answer reused
    assert "unchanged" not in capsys.readouterr().out
    monkeypatch.undo()
    run_report(cfg)
    capsys.readouterr()
    # report.md edited by hand (the second review of #26: "cached", the edited table shown):
    # its manifest says so, and it is built again
    md.write_text(md.read_text().replace("merging wins", "mixing wins"))
    rebuilt = run_report(cfg)
    printed = capsys.readouterr().out
    assert re.search(r"report \(.*\): report.md (has|differs).*rebuilding it", printed), printed
    assert "mixing wins" not in md.read_text() and rebuilt["answer_line"] == first["answer_line"]
    monkeypatch.undo()
    append_result(tmp_path / "results.jsonl", rows[-1])  # the store changed: built anew
    third = run_report(cfg)
    assert "unchanged" not in capsys.readouterr().out
    assert third["n_rows"] == first["n_rows"] + 1


def test_mixed_line_quotes_statsmodels_warnings_with_one_full_stop():
    """statsmodels' warnings end with a full stop of their own (the demo's boundary warning):
    the sentence ends with one, never '..'."""
    from hhh_bench.core.seedstats import MixedView

    view = MixedView(estimate=-0.075, se=0.025, low=-0.123, high=-0.026, p_value=0.0026,
                     seed_var=0.0014, cluster_var=0.032, n_seeds=3, n_clusters=240,
                     clusters="entity", level=0.95,
                     warnings=("The MLE may be on the boundary of the parameter space.",
                               "a second one"))  # fmt: skip
    line = mixed_line(view.as_dict())
    assert line.endswith(
        "statsmodels warned: The MLE may be on the boundary of the parameter space; a second one."
    ), line
    assert ".." not in line


def _task_row(seed: int, kind: str, scores: dict[str, float]) -> dict[str, Any]:
    """A row whose tasks h (helpful), o (honest), s (harmless) score ``scores``."""
    dims = {"h": "helpful", "o": "honest", "s": "harmless"}
    avg = sum(scores.values()) / 3
    return {"row_key": f"{kind}-{seed}", "kind": kind, "seed": seed, "task_specs": SPECS,
            "tasks": {t: {"acc": v} for t, v in scores.items()}, "average": avg,
            **{dims[t]: v for t, v in scores.items()}}  # fmt: skip


def test_the_margin_is_decomposed_by_task_and_a_dominant_task_is_named(tmp_path):
    """Issue 29: by hand, the average is (h + o + s)/3, so each task's contribution is a third
    of its merge − mix difference. Seeds 0, 1: harmless differs by −0.30 and −0.24 (mean
    −0.27, contribution −0.09), helpful by +0.03 (+0.01), honest by 0 (0): margin −0.08, of
    which harmless carries −0.09 / −0.08 = 112%."""
    merge = {0: _task_row(0, "merge", {"h": 0.83, "o": 0.5, "s": 0.6}),
             1: _task_row(1, "merge", {"h": 0.73, "o": 0.4, "s": 0.66})}  # fmt: skip
    mix = {0: _task_row(0, "mixture", {"h": 0.8, "o": 0.5, "s": 0.9}),
           1: _task_row(1, "mixture", {"h": 0.7, "o": 0.4, "s": 0.9})}  # fmt: skip
    dec = decomposition(merge, mix, [0, 1])
    by = {t["task"]: t for t in dec["tasks"]}
    assert by["s"]["contribution"] == pytest.approx(-0.09)
    assert by["h"]["contribution"] == pytest.approx(0.01)
    assert by["o"]["contribution"] == pytest.approx(0.0)
    assert by["s"]["weight"] == pytest.approx(1 / 3) and dec["residual"] == pytest.approx(0)
    # in the report: the table, and the answer line names the task
    rows = store(tmp_path)
    result = compare(table_entries(rows))
    assert result["dominant_task"] is None  # every task moves alike: a third each
    assert "one task carries" not in answer_line(result)
    shares = [t["contribution"] / result["diff"] for t in result["decomposition"]["tasks"]]
    assert shares == pytest.approx([1 / 3] * 3)
    for r in rows:  # now the merges equal the mixture (0.5) but on the harmless task
        if r["kind"] == "merge":
            r["tasks"]["h"]["acc"] = r["tasks"]["o"]["acc"] = 0.5
            r["average"] = (1.0 + r["tasks"]["s"]["acc"]) / 3
    result = compare(table_entries(rows))
    line = answer_line(result)
    assert result["dominant_task"]["task"] == "s"
    assert result["dominant_task"]["share"] == pytest.approx(1.0)
    assert re.search(r"one task carries more than half the margin: s \+0\.\d{3} of \+0\.\d{3} "
                     r"\(\d+%\); env ", line), line  # fmt: skip
    md = "\n".join(answer_section(table_entries(rows))[0])
    assert "| Task | Weight | Merge | Mixture | Contribution | Share of the margin |" in md


def test_an_answer_chosen_across_two_configurations_of_one_name_says_so(tmp_path):
    """Battery 20, B-F10: a root rerun with another recipe held "ties" and "ties [2]"; the best
    merge and the best mixture were chosen across them without a word."""
    from hhh_bench.tracking.answer import answer_line

    rows = store(tmp_path / "a")
    again = [r for r in store(tmp_path / "b", merge_right=(9, 9, 9))
             if r["kind"] == "merge" and r["name"] == "ties"]  # fmt: skip
    for r in again:
        r.update(row_key=r["row_key"] + "-b", model_key=r["model_key"] + "-b",
                 config_hash="another-recipe")  # fmt: skip
    res = mix_vs_merge(table_entries(rows + again))
    assert res["generations"] == ["ties [2]"]
    assert "the table holds other configurations of the same names (ties [2]: a rerun" in (
        answer_line(res)
    )
    assert mix_vs_merge(table_entries(rows))["generations"] == []
