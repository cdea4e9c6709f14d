"""The tenth independent battery's findings (issue 27), each refused or said by name."""

from __future__ import annotations

import pytest
from datasets import Dataset

from hhh_bench.evaluation.length_control import length_controlled
from hhh_bench.evaluation.tasks import generation as g
from hhh_bench.validation import check_columns


@pytest.mark.parametrize("name, col, message", [
    ("helpful_stderr", {"task": "t", "metric": "acc"}, "is a field of every results row"),
    ("name", {"task": "t", "metric": "acc"}, "is a field of every results row"),
    ("family", {"task": "t", "metric": "acc"}, "is a field of every results row"),
    ("mine_stderr", {"task": "t", "metric": "acc"}, "is a field of every results row"),
    ("refuse", {"task": "t", "metric": "acc", "higher_is_better": "false"},
     "must be true, false or null"),
    ("refuse", {"task": "t"}, "needs `task` and `metric`"),
    ("probe", {"task": "t", "metric": "acc", "table": "diagnostic"}, r"table must be one of"),
    ("probe", {"task": "t", "metric": "acc", "tabel": "diagnostics"}, r"unknown key\(s\) \['tabel'\]"),
])  # fmt: skip
def test_a_column_that_would_overwrite_a_row_field_or_flip_its_direction_is_refused(
    name, col, message
):
    """A column named like a row field overwrote it in the stored row (helpful_stderr 0.47 for
    0.03, a model's name 1.0); ``higher_is_better: "false"`` was read as true."""
    with pytest.raises(ValueError, match=f"eval.columns.{name}.*{message}|{message}"):
        check_columns({name: col})
    check_columns({"length": {"task": "alpaca_lc", "metric": "length", "higher_is_better": None},
                   "refuse": {"task": "t", "metric": "acc", "higher_is_better": False},
                   "probe": {"task": "t", "metric": "acc", "table": "diagnostics",
                             "higher_is_better": True}})  # fmt: skip


def test_a_difficulty_missing_on_some_rows_is_refused_before_the_holdout_splits_them():
    rows = [{"instruction": f"q{i}", "output": "a", "instruction_difficulty": 0.5}
            for i in range(3)] + [{"instruction": "q3", "output": "a"}]  # fmt: skip
    with pytest.raises(ValueError, match=r"rows \[3\] have no numeric `instruction_difficulty`"):
        g.alpaca_reference_docs(Dataset.from_list(rows))
    none = [{"instruction": "q", "output": "a"}]
    assert g.alpaca_reference_docs(Dataset.from_list(none))["prompt"] == ["q"]
    with pytest.raises(ValueError, match="non-text reference `output` \\(5\\)"):
        g.alpaca_reference_docs(Dataset.from_list([{"instruction": "q", "output": 5}]))


@pytest.mark.parametrize("pref", [0.0, 1.0, 0.5])
def test_every_answer_alike_gives_that_rate_not_a_failed_fit(pref):
    """Every answer empty (preference 0) stopped the evaluation with a Newton error."""
    fit = length_controlled([pref] * 40, [0.0] * 40, [float(100 + i) for i in range(40)])
    assert fit.lc_win_rate == pref == fit.win_rate and fit.values == (pref,) * 40


def test_a_classifier_given_as_a_guard_judge_is_refused_not_run_with_a_random_head(tmp_path):
    from hhh_bench.evaluation.judges import JudgeSpec, make_judge
    from hhh_bench.evaluation.standins import build_standin_judges

    judges = build_standin_judges(tmp_path, ["a", "b"])
    spec = JudgeSpec.from_config(
        "safety",
        {
            "kind": "guard",
            "model": str(judges["reward"]),
            "labels": ["Yes", "No"],
            "on_unparsed": "positive",
        },
    )
    with pytest.raises(OSError, match=r"(?s)lacks: \[.lm_head.weight.\].*a causal LM"):
        make_judge(spec)
    gone = JudgeSpec.from_config("safety", {**spec.describe(), "model": str(tmp_path / "nope")})
    with pytest.raises(OSError, match="no such folder"):
        make_judge(gone)


def test_configurations_are_not_called_merge_methods():
    from hhh_bench.tracking.answer import _how

    choice = {"on": "validation", "candidates": 9, "methods": 2, "left_out": [],
              "fallback": True}  # fmt: skip
    assert _how(choice, "merge methods") == (
        "chosen on validation from 9 configurations of 2 merge methods, the reported split"
    )
    assert _how({**choice, "methods": 9}, "merge methods").startswith(
        "chosen on validation from 9 merge methods"
    )


def test_zero_answer_tokens_are_refused_before_work(tmp_path):
    from conftest import compose
    from hhh_bench.pipeline import prepare

    cfg = compose([f"root={tmp_path}", "logger=none", "+eval.gen_kwargs={max_gen_toks: 0}"])
    with pytest.raises(ValueError, match=r"eval.gen_kwargs.max_gen_toks=0 must be an integer >= 1"):
        prepare(cfg)


def _store_row(eval_dir: str, ref_dir: str) -> dict:
    """A valid hand-written store row whose eval folder and reference lie where it says."""
    return {
        "row_key": "k:m", "name": "m", "kind": "merge", "method": "ties", "params": {}, "seed": 0,
        "split": "test", "suite": "toy3h", "metric": "acc",
        "task_specs": [{"name": "t", "dimension": "helpful", "weight": 1.0, "metric": "acc"}],
        "tasks": {"t": {"acc": 0.5, "n": 10}},
        "helpful": 0.5, "honest": 0.5, "harmless": 0.5, "average": 0.5, "min": 0.5,
        "artifacts": {"eval_dir": eval_dir, "results": f"{eval_dir}/results.json"},
        "reference": {"kind": "given", "eval_dir": ref_dir, "row_key": f"k:{ref_dir}"},
    }  # fmt: skip


def test_a_copied_root_without_an_eval_folder_never_reads_the_original_roots(tmp_path):
    """A root copied without its eval folder read the original root's (``relocated``'s
    fallback): the copy's row now points into the copy, where the folder is missing (said as a
    deleted one is); a reference outside the original root (given by folder) is kept as given,
    and a row key holding a path is left alone."""
    import json
    import shutil

    from hhh_bench.tracking.store import read_results

    orig, copy, other = tmp_path / "orig", tmp_path / "copy", tmp_path / "other"
    for d in (orig / "eval" / "abc", orig / "eval" / "def", other / "eval" / "ref"):
        d.mkdir(parents=True)
    row = _store_row(str(orig / "eval" / "abc"), str(other / "eval" / "ref"))
    row["reference"]["row_key"] = f"k:{orig / 'eval' / 'def'}"
    (orig / "results.jsonl").write_text(json.dumps(row) + "\n")
    shutil.copytree(orig, copy, ignore=shutil.ignore_patterns("abc"))
    (got,) = read_results(copy / "results.jsonl")
    assert got["artifacts"]["eval_dir"] == str(copy / "eval" / "abc")  # not orig's
    assert got["artifacts"]["results"] == str(copy / "eval" / "abc" / "results.json")
    assert got["reference"]["eval_dir"] == str(other / "eval" / "ref")  # given: as it is
    assert got["reference"]["row_key"] == row["reference"]["row_key"]  # a key, not a path
    (got,) = read_results(orig / "results.jsonl")
    assert got["artifacts"]["eval_dir"] == str(orig / "eval" / "abc")


@pytest.mark.parametrize("field, value, message", [
    ("weight", "heavy", r"task_specs\[0\]\.weight \(task 't'\) = a string \('heavy'\) is not a "
                        r"finite number >= 0"),
    ("weight", True, r"task_specs\[0\]\.weight \(task 't'\) = a boolean"),
    ("weight", -1.0, r"task_specs\[0\]\.weight \(task 't'\) = -1.0 is not a finite number >= 0"),
    ("dimension", "helpfull", r"task_specs\[0\]\.dimension \(task 't'\) = 'helpfull' is not one"),
    ("metric", 3, r"task_specs\[0\]\.metric \(task 't'\) = 3 is not a metric name"),
])  # fmt: skip
def test_a_hand_written_task_spec_is_named_by_file_line_and_field(tmp_path, field, value, message):
    """A non-numeric task weight in a hand-written row passed the store's check and stopped the
    report with ``could not convert string to float: 'heavy'`` (no file, line or field)."""
    import json

    from hhh_bench.tracking.store import StoreError, read_results

    good, row = (_store_row(str(tmp_path / "eval" / "abc"), "") for _ in range(2))
    row["task_specs"][0][field] = value
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({**good, "row_key": "a"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(StoreError, match=rf"results.jsonl, line 2: result row 'k:m': {message}"):
        read_results(path)
    assert len(read_results(path, skip_invalid=True)) == 1


def _cli(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    import sys

    from hhh_bench import cli

    monkeypatch.setattr(sys, "argv", ["hhh-bench", *argv])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    out = capsys.readouterr()
    return int(exit_.value.code or 0), out.out, out.err


def test_help_after_a_stage_name_prints_that_stages_usage_and_a_bare_word_is_one_line(
    monkeypatch, capsys
):
    """``hhh-bench report --help`` stopped with Hydra's OverrideParseException (with -v, a
    traceback); ``hhh-bench report`` printed Hydra's five lines. A stage typed as a subcommand
    gets its usage in the Hydra form (exit 0 with --help, one line and 2 without); any other
    bare word is one line naming the subcommands."""
    from hhh_bench import cli
    from hhh_bench.pipeline import STAGES

    assert set(cli.STAGE_HELP) == set(STAGES)  # every stage has its usage line
    for argv in (["report", "--help"], ["-v", "report", "-h"]):
        code, out, err = _cli(monkeypatch, capsys, *argv)
        assert code == 0 and out.startswith("usage: hhh-bench stage=report "), (out, err)
        assert "write the report" in out and "Traceback" not in out + err
    code, out, err = _cli(monkeypatch, capsys, "eval", "--help")
    assert code == 0 and out.startswith("usage: hhh-bench stage=eval ")
    code, out, err = _cli(monkeypatch, capsys, "report", "root=runs/x")
    assert code == 2 and not out and err.count("\n") == 1
    assert "'report' is a stage, not a subcommand: hhh-bench stage=report root=runs/x" in err
    code, out, err = _cli(monkeypatch, capsys, "reprot", "--help")
    assert code == 2 and err.count("\n") == 1 and "did you mean report?" in err
    assert "subcommands: cache, list" in err


def test_the_skip_invalid_note_keeps_row_keys_and_reasons_whole():
    """The note cut each reason at its first ": ": a row key holding one showed its tail as
    the reason (``b': kind ...``), and a reason holding one lost its head (the digest's
    "was changed after hhh-bench wrote it" read only "run the stage that wrote it again")."""
    from hhh_bench.tracking.sections import skipped_note
    from hhh_bench.tracking.store import SkippedLine

    changed = ("result row 'c' was changed after hhh-bench wrote it (its digest does not match "
               "its content): run the stage that wrote it again (stage=eval) or delete the line")  # fmt: skip
    (note, _) = skipped_note([
        SkippedLine(3, "result row 'a: b': kind 'robot' not in ('base',)"),
        SkippedLine(4, "result row \"d'x\": kind 'robot' not in ('base',)"),
        SkippedLine(5, changed),
        SkippedLine(6, "cut short (no closing brace): a torn write"),
    ])  # fmt: skip
    assert "lines 3–4: kind 'robot' not in ('base',) (rows 'a: b', \"d'x\")" in note, note
    assert f"line 5: {changed}" in note.replace("\\", "")
    assert "line 6: cut short (no closing brace): a torn write" in note


def test_a_win_rate_column_without_a_base_is_refused_before_the_evaluation(tmp_path, monkeypatch):
    """`stage=eval eval=harness_3h +eval.model=<a model of no run>` on a store without the base
    ran the whole evaluation, then stopped on the default `win_vs_base` column (a win rate
    against the base's answers, which no evaluated base gave). Refused before any work, naming
    the column, the model and the two ways on; with the base's row and items it goes on."""
    import json

    from conftest import compose
    from hhh_bench.core.items import ITEMS_FILE, write_jsonl
    from hhh_bench.evaluation import judged_eval
    from hhh_bench.stages import eval as eval_stage

    def no_work(*a, **k):
        raise AssertionError("the evaluation started")

    monkeypatch.setattr(eval_stage, "cached_stage", no_work)
    monkeypatch.setattr(eval_stage, "standin_names", no_work)  # the first step after the check
    cfg = compose([f"root={tmp_path}", "logger=none", "eval=harness_3h"])
    model = {"path": str(tmp_path / "mine"), "key": "m0", "kind": "external", "name": "mine"}
    data = {"dir": str(tmp_path / "data"), "key": "d0"}
    with pytest.raises(ValueError, match=(
        r"eval.columns.win_vs_base \(task helpful_gen, metric win_rate\) is scored against the "
        rf"base model's answers, but no evaluated base .* is in {tmp_path}/results.jsonl, for "
        r"model 'mine'.*~eval.columns.win_vs_base.*nothing was evaluated"
    )):  # fmt: skip
        eval_stage.run_eval(cfg, model, data, split="test")
    # the base evaluated (its row and per-item values): the reference is found, work goes on
    base_dir = tmp_path / "eval" / "b0"
    base_dir.mkdir(parents=True)
    write_jsonl(base_dir / ITEMS_FILE, {"helpful_gen": [{"doc_id": 0, "reward": 0.1}]})
    row = {**_store_row(str(base_dir), ""), "row_key": "b0:base", "name": "base", "kind": "base",
           "suite": "harness_3h", "data_key": "d0"}  # fmt: skip
    del row["reference"]
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(AssertionError, match="the evaluation started"):
        eval_stage.run_eval(cfg, model, data, split="test")
    needs = judged_eval.reference_needs(eval_stage.to_dict(cfg.eval), [], "test")
    assert needs == ["eval.columns.win_vs_base (task helpful_gen, metric win_rate)"]
