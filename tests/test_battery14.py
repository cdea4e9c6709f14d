"""Battery 14's findings (an independent battery on c4252c4) that have no better home."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def test_a_copy_of_theta0s_model_files_is_that_theta0(tmp_path, small_base, small_specialists):
    """F1: θ0's weights, config and tokenizer copied without the stage output's records were
    refused as "a folder hhh-bench cannot match" without a word of what differed. A copy of
    the files a loader reads is that θ0 now; a copy that differs is refused naming the file."""
    from hhh_bench.stages.merge import MODEL_FILE_PATTERNS, check_same_base

    theta0 = Path(small_base["path"])
    models = sorted(str(p) for p in small_specialists)
    copy = tmp_path / "theta0-copy"
    copy.mkdir()
    for pattern in MODEL_FILE_PATTERNS:
        for f in theta0.glob(pattern):
            shutil.copy2(f, copy / f.name)
    assert not (copy / "key.json").exists() and not (copy / "base_info.json").exists()
    check_same_base(str(copy), models)  # the same weights, config and tokenizer: accepted
    (copy / "tokenizer.json").unlink()
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("}", " }"))
    with pytest.raises(ValueError, match=r"is not a copy of its model files: its config\.json "
                       r"differs; it lacks tokenizer\.json"):  # fmt: skip
        check_same_base(str(copy), models)


FIXTURE = Path(__file__).resolve().parent / "assets" / "eval" / "results_fixture.jsonl"


def test_the_report_shows_the_setup_its_config_scores_with(tmp_path):
    """F4: one `stage=eval eval.limit=5` of θ0 on a finished root took the default report (a
    one-row table, "No answer"), the two setups described in the same words. The tables are
    the config's setup now, the other one apart, named by its limit."""
    from hhh_bench.tracking.entries import setup_matches
    from hhh_bench.tracking.report import build_report
    from hhh_bench.tracking.store import read_results

    rows = [r for r in read_results(FIXTURE) if r["split"] == "test"]
    for r in rows:
        r["setup"] = {"suite": r["suite"], "split": "test", "metric": "acc", "limit": None}
    stray = {**rows[0], "row_key": "stray", "name": "stray", "created_at": "2099-01-01",
             "setup": {**rows[0]["setup"], "limit": 5}}  # fmt: skip
    want = {"limit": None, "num_fewshot": None, "apply_chat_template": None, "backend": "hf",
            "tasks": sorted((s["name"], s["dimension"], s["weight"], s["metric"])
                            for s in rows[0]["task_specs"])}  # fmt: skip
    assert setup_matches(rows[0], want) and not setup_matches(stray, want)
    newest = build_report([*rows, stray], tmp_path / "a", experiment="x")
    assert [e.name for e in newest["entries"]] == ["stray"]  # without a config: the newest
    rep = build_report([*rows, stray], tmp_path / "b", experiment="x", config_setup=want)
    assert "stray" not in [e.name for e in rep["entries"]] and len(rep["entries"]) > 1
    md = rep["markdown"]
    assert "The tables above are the evaluation setup this report's config scores with" in md
    assert "### Setup 2: suite toy3h, metric acc, limit 5," in md


SPECS = [{"name": t, "dimension": d, "weight": 1.0, "metric": "acc"}
         for t, d in (("h", "helpful"), ("o", "honest"), ("s", "harmless"))]  # fmt: skip


def _row(name, seed, split, score, *, kind="merge", params=None, extra=None):
    return {"row_key": f"{name}-{seed}-{split}-{params}-{extra}", "name": name, "kind": kind,
            **({"method": name} if kind == "merge" else {"mix_strategy": name}),
            "params": params or {}, "extra": extra or {}, "seed": seed, "split": split,
            "suite": "hand", "metric": "acc", "data_key": f"d{seed}", "task_specs": SPECS,
            "tasks": {t: {"acc": score} for t in "hos"},
            **{d: score for d in ("helpful", "honest", "harmless", "average", "min")}}  # fmt: skip


def test_a_sweep_reported_on_validation_still_marks_the_pipelines_choice(tmp_path):
    """F3: with `eval.report_split=validation` (the README's way to report a sweep) the sweep
    tables lost the chosen marks: the choice is recorded on the test rows."""
    from hhh_bench.tracking.report import build_report

    rows = []
    for s in (0, 1):
        for k, score in ((0.5, 0.6), (1.0, 0.7)):
            rows.append(_row("task_arithmetic", s, "validation", score, params={"scaling": k}))
        rows.append(_row("task_arithmetic", s, "test", 0.68, params={"scaling": 1.0},
                         extra={"selected_on": "validation", "n_configs": 2}))  # fmt: skip
    rep = build_report(rows, tmp_path, report_split="validation", select_split="validation")
    (sweep,) = rep["sweeps"]
    assert {p.knobs["scaling"]: p.chosen for p in sweep.points} == {0.5: 0, 1.0: 2}


def test_choices_made_among_other_candidates_are_not_pooled_as_seeds():
    """F5: seed 0 of a run with a 6-point grid and seeds 1, 2 of a later run with a 3-point
    grid into the same root were one row "best of 6 (3 seeds)"."""
    from hhh_bench.tracking.entries import table_entries

    rows = [_row("task_arithmetic", 0, "test", 0.74, extra={"selected_on": "validation",
                                                            "n_configs": 6})]  # fmt: skip
    rows += [_row("task_arithmetic", s, "test", 0.7, extra={"selected_on": "validation",
                                                            "n_configs": 3}) for s in (0, 1, 2)]  # fmt: skip
    entries = table_entries(rows)
    assert sorted(len(e.rows) for e in entries) == [1, 3]


@pytest.mark.parametrize("template", ["toy3h_{task}_{split}_{oops}", "toy3h_{0}_{task}_{split}",
                                      "toy3h_{task.x}_{split}", "toy3h_{task", "foo"])  # fmt: skip
def test_a_task_template_that_cannot_be_filled_is_named(tmp_path, template):
    """F6: an unknown, positional or attribute field of eval.task_template was a traceback
    (KeyError, IndexError, AttributeError); an unbalanced brace or no {task} was refused for
    having one split."""
    from hhh_bench.pipeline import compose_run

    with pytest.raises(ValueError, match=r"^eval\.task_template='.*': (its field|it is not a "
                       r"format string|it has no \{task\} field)"):  # fmt: skip
        compose_run([f"root={tmp_path}", f"eval.task_template='{template}'"])


def test_a_judge_template_with_an_attribute_or_a_huge_width_is_named():
    """F7: `{prompt.x}` (AttributeError) and `{response:>9999999999999}` (MemoryError) escaped
    the judge template's trial format as tracebacks."""
    from hhh_bench.evaluation.judges import specs_from_config

    base = {"model": "m", "kind": "guard", "labels": ["Yes", "No"], "on_unparsed": "error"}
    for template, says in (("{prompt.x} {response}", "its field {prompt.x} is not one of"),
                           ("{prompt} {response} {response:>9999999999999}", "has a conversion or format")):  # fmt: skip
        with pytest.raises(ValueError, match=r"eval\.judges\.safety\.template cannot be filled"):
            specs_from_config({"safety": {**base, "template": template}})
        try:
            specs_from_config({"safety": {**base, "template": template}})
        except ValueError as e:
            assert says in str(e)


def test_rows_without_a_digest_are_said_under_the_table_and_on_the_console(tmp_path, capsys):
    """F12: a written row whose digest was deleted (its scores edited consistently) was read
    unchecked and bolded as the table's best, unmarked. Rows without a digest are named under
    the table and counted on the console; cells whose paired test could not run still say `?`
    on the console (the flag travels with the stage's result)."""
    import json

    from conftest import compose
    from hhh_bench.stages.report import run_report
    from hhh_bench.tracking.store import read_results

    rows = read_results(FIXTURE)
    for r in rows:  # the items of every row are named but gone: no paired test can run
        r["artifacts"] = {"eval_dir": str(tmp_path / "gone" / r["row_key"])}
    with (tmp_path / "results.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    # eval.name=fixture: the hand rows' one-task scoring is not the toy suite's (as in
    # tests/eval/test_multirun_reports.py)
    result = run_report(compose([f"root={tmp_path}", "logger=none", "name=fixture",
                                 "eval.name=fixture"]))  # fmt: skip
    out = capsys.readouterr()
    md = Path(result["report_md"]).read_text()
    assert (
        f"**{len([r for r in rows if r['split'] == 'test'])} rows of this table carry no digest**"
        in md
    )
    assert "row(s) of the table carry no digest" in out.out + out.err


def test_a_holdout_on_a_suite_with_a_task_per_split_is_refused(tmp_path):
    """F8: `+eval.holdout` on the toy suite (a task per split) halved the test items, unsaid;
    the report then blamed the row's missing noise_rate for the difference."""
    from hhh_bench.pipeline import compose_run
    from hhh_bench.tracking.entries import configuration

    with pytest.raises(ValueError, match=r"eval\.holdout=.* is for a suite whose tasks have one "
                       r"split"):  # fmt: skip
        compose_run([f"root={tmp_path}", "+eval.holdout={fraction: 0.5, seed: 0}"])
    row = {"kind": "base", "name": "base"}
    assert configuration({**row, "noise_rate": None}) == configuration({**row, "noise_rate": 0.0})


def test_a_column_states_its_direction_and_an_unknown_task_names_the_column(tmp_path):
    """F9: a column without higher_is_better became true (a lower-is-better column bolded the
    wrong way); F10: an unknown task of a column was said as `eval.dimensions.columns.kq`."""
    from hhh_bench.evaluation.judged_eval import column_specs
    from hhh_bench.evaluation.suite import known_tasks
    from hhh_bench.pipeline import compose_run

    with pytest.raises(ValueError, match=r"eval\.columns\.kq needs higher_is_better: true, false"):
        compose_run([f"root={tmp_path}", "+eval.columns.kq={task: known_qa, metric: acc}"])
    ecfg = {"task_template": "toy3h_{task}_{split}",
            "columns": {"kq": {"task": "nonexist", "metric": "acc", "higher_is_better": True}}}  # fmt: skip
    with pytest.raises(ValueError, match=r"^eval\.columns\.kq asks for lm-eval task "
                       r"'toy3h_nonexist_test'"):  # fmt: skip
        known_tasks(ecfg, column_specs(ecfg, "test"), [])


def test_a_config_folder_without_config_yaml_is_one_line(tmp_path):
    """F11: HHH_BENCH_CONF naming a folder without config.yaml was a traceback."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HHH_BENCH_CONF": str(tmp_path / "nowhere")}
    env.pop("HHH_VERBOSE", None)
    r = subprocess.run([sys.executable, "-m", "hhh_bench", "stage=data", f"root={tmp_path}/r"],
                       env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"hhh-bench: error: HHH_BENCH_CONF={tmp_path / 'nowhere'}: no config.yaml" in r.stderr


@pytest.mark.parametrize("emphasis, says", [
    ("[[2,1,1],[4,2,2]]", r"emphasis\[1\] = \[4\.0, 2\.0, 2\.0\] is emphasis\[0\] = \[2\.0, 1\.0, 1\.0\] scaled"),
    ("[[3,3,3]]", r"emphasis\[0\] = \[3\.0, 3\.0, 3\.0\] is equal weights"),
])  # fmt: skip
def test_an_emphasis_that_is_another_scaled_is_refused(tmp_path, emphasis, says):
    """F13: emphases [2,1,1] and [4,2,2] give the same merge and mixture (each is used scaled)
    but were counted twice in "best of N"."""
    from hhh_bench.pipeline import compose_run

    with pytest.raises(ValueError, match=says):
        compose_run([f"root={tmp_path}", f"pipeline.tuning.emphasis={emphasis}"])


@pytest.mark.parametrize(("mixtures", "says"), [
    (["uniform", "uniform"], r"pipeline.mixtures\[1\] names 'uniform' again \(pipeline.mixtures\[0\]\)"),
    (["uniform", {"name": "uniform", "strategy": "uniform"}], r"names 'uniform' again"),
    ([{"strategy": "uniform"}], r"pipeline.mixtures\[0\] names no strategy"),
    ([""], r"pipeline.mixtures\[0\] names no strategy"),
])  # fmt: skip
def test_a_mixture_listed_twice_or_unnamed_is_refused(mixtures, says):
    """Two entries of one strategy were both reported as "mix: <name>", one row hiding the
    other; a mapping without its name stopped the pipeline with a KeyError after θ0 trained."""
    from hhh_bench.validation import check_mixes

    cfg = {"stage": "all", "data": {"dimensions": ["helpful", "honest", "harmless"]},
           "mix": {"name": "uniform"}, "pipeline": {"mixtures": mixtures, "oracle": {"enabled": False}}}  # fmt: skip
    with pytest.raises(ValueError, match=says):
        check_mixes(cfg)
    check_mixes(
        {**cfg, "pipeline": {"mixtures": ["uniform", "sequential"], "oracle": {"enabled": False}}}
    )
