"""Issue 27, the results store and the report: a store is validated on read as on write, invalid
lines name the file and line (or, with ``report.skip_invalid=true``, are skipped and counted
under the main table), rows that differ in anything but the seed are never pooled as seeds, and
the user's names are literal text in report.md (no heading, no raw HTML)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import run_cli
from hhh_bench.tracking import store as store_mod
from hhh_bench.tracking.report import build_report
from hhh_bench.tracking.store import append_result, read_results

REPO = Path(__file__).resolve().parents[2]


def row(key: str, avg: float = 0.5, **kw):
    """A valid row: scores ``avg`` everywhere, one task scored by acc."""
    return {
        "row_key": key, "name": key, "kind": "merge", "method": "ties", "params": {}, "seed": 0,
        "split": "test", "suite": "toy3h", "metric": "acc",
        "task_specs": [{"name": "t", "dimension": "helpful", "weight": 1.0, "metric": "acc"}],
        "tasks": {"t": {"acc": avg, "acc_stderr": 0.01, "n": 10}},
        "helpful": avg, "honest": avg, "harmless": avg, "average": avg, "min": avg, **kw,
    }  # fmt: skip


def store_with(tmp_path: Path, bad_line: str) -> Path:
    """A store whose line 2 is ``bad_line`` between two valid rows (lines 1 and 3)."""
    path = tmp_path / "results.jsonl"
    lines = [json.dumps(row("a")), bad_line, json.dumps(row("c"))]
    path.write_text("\n".join(lines) + "\n")
    return path


def without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


def bad_task(value):
    return {**row("b"), "tasks": {"t": {"acc": value, "n": 10}}}


# One case per way a line can be wrong; each must name the file and line 2 and say what is wrong.
BAD_LINES = {
    "helpful NaN": (json.dumps(row("b", helpful=float("nan"))), r"helpful = nan"),
    "average Infinity": (json.dumps(row("b", average=float("inf"))), r"average = inf"),
    "helpful true": (json.dumps(row("b", helpful=True)), r"helpful = True"),
    "honest null": (json.dumps(row("b", honest=None)), r"lacks field\(s\) \['honest'\]"),
    "harmless string": (json.dumps(row("b", harmless="0.5")), r"harmless = '0.5'"),
    "min string": (json.dumps(row("b", min="high")), r"min = 'high'"),
    "no kind": (json.dumps(without(row("b"), "kind")), r"lacks `kind`"),
    "unknown kind": (json.dumps(row("b", kind="merged")), r"kind 'merged' not in"),
    "JSON array": ("[1, 2, 3]", r"not a JSON object but a JSON array"),
    "JSON string": ('"a row"', r"not a JSON object but a JSON string"),
    "broken JSON": ('{"row_key": "b", "helpful": 0.5,, }', r"not valid JSON"),
    "newer schema": (json.dumps(row("b", schema_version=99)), r"schema_version 99 is newer"),
    "schema not int": (json.dumps(row("b", schema_version="2")), r"schema_version '2'"),
    "no row_key": (json.dumps(without(row("b"), "row_key")), r"lacks field\(s\) \['row_key'\]"),
    "score above 1": (json.dumps(row("b", helpful=1.7)), r"helpful = 1.7 is outside \[0, 1\]"),
    "negative score": (json.dumps(row("b", honest=-0.2)), r"honest = -0.2 is outside \[0, 1\]"),
    "average not the scores' average": (
        json.dumps({**row("b"), "helpful": 0.9}),
        r"average = .* is not the average of its three scores \(0.6",
    ),
    "min not the scores' min": (
        json.dumps({**row("b"), "min": 0.1}),
        r"min = 0.1 is not the min of its three scores",
    ),
    "task metric NaN": (json.dumps(bad_task(float("nan"))), r"tasks\.t\.acc = nan"),
    "task metric bool": (json.dumps(bad_task(False)), r"tasks\.t\.acc = a boolean"),
    "task metric null": (json.dumps(bad_task(None)), r"tasks\.t\.acc = null"),
    "task metric string": (json.dumps(bad_task("0.9")), r"tasks\.t\.acc = a string"),
    "stderr NaN": (json.dumps(row("b", helpful_stderr=float("nan"))), r"helpful_stderr = nan"),
    "delta string": (json.dumps(row("b", delta_average="+0.1")), r"delta_average = a string"),
    "not UTF-8": ('{"row_key": "b\xff"}', r"not UTF-8"),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_an_invalid_line_is_an_error_naming_the_file_and_line(tmp_path, case):
    line, what = BAD_LINES[case]
    path = store_with(tmp_path, line)
    if case == "not UTF-8":
        path.write_bytes(path.read_bytes().replace("\xff".encode(), b"\xff"))
    with pytest.raises(ValueError, match=what) as err:
        read_results(path)
    assert type(err.value).__name__ == "StoreError"
    assert f"{path}, line 2:" in str(err.value)
    assert "report.skip_invalid=true" in str(err.value)  # and what to do about it


def test_the_writer_refuses_what_the_reader_refuses(tmp_path):
    """Validated on write as on read: a boolean or a string score, or a string task metric."""
    path = tmp_path / "results.jsonl"
    for bad in (row("b", helpful=True), row("b", min="0.5"), bad_task("0.9")):
        with pytest.raises(ValueError):
            append_result(path, bad)
    assert not path.exists()
    append_result(path, row("a"))
    assert read_results(path)[0]["schema_version"] == 1  # rows say which format they are in


def test_a_row_edited_after_it_was_written_is_named(tmp_path):
    """A row's digest is written with it (issue 26: the independent review changed a score in
    results.jsonl and the report showed it): an edit of any field is named by file and line;
    a row written by hand without a digest is still read."""
    path = tmp_path / "results.jsonl"
    append_result(path, row("a", 0.5))
    append_result(path, row("b", 0.4))
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    assert first["digest"] and read_results(path)[0]["average"] == 0.5
    first.update(dict.fromkeys(("helpful", "honest", "harmless", "average", "min"), 0.9))
    path.write_text("\n".join([json.dumps(first), lines[1], json.dumps(row("c"))]) + "\n")
    with pytest.raises(store_mod.StoreError, match=r"results.jsonl, line 1: result row 'a' "
                       r"was changed after hhh-bench wrote it"):  # fmt: skip
        read_results(path)
    assert [r["row_key"] for r in read_results(path, skip_invalid=True)] == ["b", "c"]
    assert not append_result(path, row("b", 0.4))  # unchanged content: nothing appended


def test_a_torn_last_write_still_only_warns(tmp_path):
    """A crash mid-write leaves an unfinished line (no closing brace): skipped with a warning,
    never an error, as before."""
    path = tmp_path / "results.jsonl"
    append_result(path, row("a"))
    with open(path, "a") as f:
        f.write(json.dumps(row("b"))[:40])
    with pytest.warns(RuntimeWarning, match="last line"):
        assert [r["row_key"] for r in read_results(path)] == ["a"]


def test_lines_cut_short_in_the_middle_of_the_store_are_damage_not_a_crash(tmp_path):
    """Battery 8: six mixture and merge rows cut short mid-store were skipped as "torn" with
    one warning, even with skip_invalid false, and the answer changed. A crash cuts only the
    last line (the next append sets it aside), so a cut-short line elsewhere is an error naming
    it, unless skip_invalid."""
    path = tmp_path / "results.jsonl"
    for key in "abc":
        append_result(path, row(key))
    lines = path.read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(store_mod.StoreError, match=r"results.jsonl, line 2: cut short \(no "
                       r"closing brace\) in the middle of the store"):  # fmt: skip
        read_results(path)
    assert [r["row_key"] for r in read_results(path, skip_invalid=True)] == ["a", "c"]


def test_skip_invalid_skips_and_the_report_says_how_many_and_why(tmp_path):
    path = tmp_path / "results.jsonl"
    rows = [row("base", 0.5, kind="base", name="base"), row("nan", 0.6), row("ok", 0.7),
            row("bool", 0.6, helpful=True), without(row("nokind", 0.6), "kind")]  # fmt: skip
    text = [json.dumps(r) for r in rows]
    path.write_text("\n".join(text) + "\n")
    path.write_text(
        path.read_text().replace(
            '"helpful": 0.6, "honest": 0.6', '"helpful": NaN, "honest": 0.6', 1
        )
    )
    scan = store_mod.scan_results(path, skip_invalid=True)
    assert [r["row_key"] for r in scan.rows] == ["base", "ok"]
    assert [s.line for s in scan.skipped] == [2, 4, 5]
    md = build_report(scan.rows, tmp_path / "out", skipped=scan.skipped)["markdown"]
    note = md.split("## Main table")[1].split("\n## ")[0]
    assert "Skipped 3 invalid rows of the results store" in note
    assert "line 2: helpful = nan" in note and "line 4: helpful = True" in note
    assert "line 5: the row lacks \\`kind\\`" in note  # as literal text
    assert "| nan |" not in md and "| bool |" not in md  # in no table


def test_report_stage_skip_invalid_option(tmp_path, monkeypatch):
    """``report.skip_invalid`` through the stage: false stops the report naming the line and
    writes no report folder; true writes it with the note, and the console says so."""
    from omegaconf import OmegaConf

    from hhh_bench.stages.report import run_report

    store_with(tmp_path, json.dumps(row("b", helpful=float("nan"))))
    cfg = OmegaConf.create({
        "name": "x", "root": str(tmp_path), "logger": {"name": "none"},
        "eval": {"report_split": "test", "select_split": None, "select_by": "average"},
        "report": {"skip_invalid": False},
    })  # fmt: skip
    with pytest.raises(ValueError, match=r"results.jsonl, line 2: result row 'b': helpful = nan"):
        run_report(cfg)
    assert not (tmp_path / "report").exists()
    cfg.report.skip_invalid = True
    out = run_report(cfg)
    assert out["skipped"] == 1 and out["n_rows"] == 2
    assert "Skipped 1 invalid row of the results store" in Path(out["report_md"]).read_text()


def validation_sweep_rows() -> list[dict]:
    """What the README's sweep writes (`-m stage=merge_eval merge=ties
    merge.params.scaling=0.5,1.0`): one seed, one validation row per configuration, all named
    after the method."""
    out = [row("base", 0.5, kind="base", name="base", split="validation")]
    for scaling, avg in ((0.5, 0.6), (1.0, 0.8)):
        out.append(row(f"ties-{scaling}", avg, name="ties", params={"scaling": scaling},
                       split="validation"))  # fmt: skip
    return out


def test_configurations_of_one_name_are_not_pooled_as_seeds(tmp_path):
    rep = build_report(validation_sweep_rows(), tmp_path, report_split="validation")
    merges = {e.name: e for e in rep["entries"] if e.kind == "merge"}
    assert set(merges) == {"ties [scaling=0.5]", "ties [scaling=1.0]"}
    assert all(e.n == 1 for e in merges.values())  # one seed each, not "2 seeds"
    assert merges["ties [scaling=1.0]"].mean["average"] == pytest.approx(0.8)
    assert "0.700" not in rep["main_table"]  # no mean of the two, no ± between them
    assert "Cells: mean ± std over seeds" not in rep["markdown"]


def test_seeds_of_one_configuration_still_pool_and_a_repeated_seed_does_not(tmp_path):
    rows = [row("base", 0.5, kind="base", name="base")]
    rows += [row(f"ties-s{s}", 0.6 + s / 10, name="ties", seed=s, params={"scaling": 1.0})
             for s in (0, 1)]  # fmt: skip
    # the pipeline's chosen configuration per seed pools whatever knobs each seed chose
    rows += [row(f"tsv-s{s}", 0.7, name="tsv", method="tsv", seed=s, params={"scaling": 0.5 + s},
                 extra={"selected_on": "validation", "n_configs": 2}) for s in (0, 1)]  # fmt: skip
    # the same configuration and seed again, on other data: a row apart, not a third seed
    rows.append(row("ties-s0-other", 0.9, name="ties", seed=0, params={"scaling": 1.0},
                    data_key="other"))  # fmt: skip
    entries = {e.name: e for e in build_report(rows, tmp_path)["entries"]}
    assert entries["ties"].n == 2 and entries["ties"].mean["average"] == pytest.approx(0.65)
    assert entries["tsv"].n == 2 and entries["tsv"].label == "tsv (best of 2 on validation)"
    assert entries["ties [2]"].n == 1 and entries["ties [2]"].mean["average"] == 0.9


HOSTILE = [
    "x\n## Verdict: merging wins",
    "<img src=x onerror=alert(1)>",
    "a | b",
    "[c](javascript:1)",
]


def test_names_are_escaped_in_report_md(tmp_path):
    """A model, task or experiment name never becomes a heading, raw HTML, a link or a cell."""
    rows = [row("base", 0.5, kind="base", name="base")]
    rows += [row(f"m{i}", 0.6, name=n) for i, n in enumerate(HOSTILE)]
    rows.append(row("mix", 0.55, kind="mixture", name="mix\r\n# merging wins <script>"))
    rep = build_report(rows, tmp_path, experiment="exp\n## Verdict: mixing wins")
    md = rep["markdown"]
    assert not re.search(r"^#+ Verdict", md, re.M)
    assert not re.search(r"^# merging wins", md, re.M)
    assert "<img" not in md and "<script" not in md
    assert not re.search(r"(?<!\\)\]\(javascript", md)  # \[c\](...) is literal text, no link
    assert "&lt;img src=x onerror=alert(1)&gt;" in md  # shown, as text
    # every main-table row still has its six cells (no '|' from a name splits one)
    main = md.split("## Main table")[1].split("\n## ")[0]
    for line in main.splitlines():
        if line.startswith("| ") and not line.startswith("| *"):
            assert len(re.split(r"(?<!\\)\|", line.strip())) - 2 == 6, line


def test_cli_report_on_an_invalid_store_exits_2_naming_the_line(tmp_path):
    """One line on stderr, exit status 2, no traceback, no report written: before the data
    stage (nothing else under the root)."""
    store = store_with(tmp_path, json.dumps(row("b", helpful=True)))
    out = run_cli("stage=report", f"root={tmp_path}", "logger=none", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    first = out.stderr.splitlines()[0]
    assert first.startswith("hhh-bench: error: ") and f"{store}, line 2:" in first
    assert "helpful = True" in first
    assert {p.name for p in tmp_path.iterdir()} <= {"results.jsonl", "hydra"}  # hydra: its log


def test_one_store_holds_one_experiment(tmp_path):
    """Battery 8: `stage=eval name=B` into a root of experiment 'good' pooled B's base into
    good's report (an unexplained `base [2]`), and `stage=report name=other` titled good's rows
    'other' and replaced good's report. A second name in a root's store is refused by name,
    before any stage."""
    path = tmp_path / "results.jsonl"
    append_result(path, row("a", experiment="good"))
    for stage in ("report", "eval"):
        out = run_cli(f"stage={stage}", "name=other", f"root={tmp_path}", "logger=none",
                      cwd=tmp_path)  # fmt: skip
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert (
            f"{path} holds the results of experiment 'good'; name=other would pool its rows "
            "with them in one report, and replace that report: run it under a root of its own "
            "(root=...), or keep name=good"
        ) in out.stderr
    assert not (tmp_path / "data").exists()  # refused before any stage


def test_a_report_refuses_scoring_or_choosing_other_than_the_rows_were(tmp_path):
    """Battery 8: `stage=report eval.dimensions.helpful.known_qa=5.0` (or eval.metric=soft)
    reused the stored scores unchanged, and `stage=report eval.select_by=min` called choices
    made by the average 'chosen by min'. Refused, naming the first difference."""
    from conftest import compose
    from hhh_bench.core.scoring import suite_tasks
    from hhh_bench.stages.common import to_dict
    from hhh_bench.stages.report import check_scored_as_configured

    ecfg = to_dict(compose().eval)
    specs = [{"name": t.name, "dimension": t.dimension, "weight": t.weight, "metric": t.metric}
             for t in suite_tasks(ecfg, "test")]  # fmt: skip
    stored = [row("ties", suite="toy3h", task_specs=specs, extra={"selected_by": "average"})]
    check_scored_as_configured(stored, ecfg)  # as configured: fine
    weights = to_dict(compose(["eval.dimensions.helpful.known_qa=5.0"]).eval)
    with pytest.raises(ValueError, match=r"no row of the store \(test\) was scored as this "
                       r"config scores .*helpful.toy3h_known_qa_test=5 .*row 'ties', for one, "
                       r"was scored with .*first difference: task toy3h_known_qa_test\).*stage=all"):  # fmt: skip
        check_scored_as_configured(stored, weights)
    with pytest.raises(ValueError, match=r"config scores .*\(soft\).*scored with .*\(acc\)"):
        check_scored_as_configured(stored, to_dict(compose(["eval.metric=soft"]).eval))
    # rows of both scorings (docs/extending.md adds a task mid-experiment): each setup is a table
    # of its own, and the configured one exists, so the report goes on
    respecs = [{"name": t.name, "dimension": t.dimension, "weight": t.weight, "metric": t.metric}
               for t in suite_tasks(weights, "test")]  # fmt: skip
    both = [*stored, row("ties2", suite="toy3h", task_specs=respecs)]
    check_scored_as_configured(both, weights)
    check_scored_as_configured(both, ecfg)
    with pytest.raises(ValueError, match=r"eval.select_by=min, but the pipeline chose each "
                       r"family's configuration by average"):  # fmt: skip
        check_scored_as_configured(stored, to_dict(compose(["eval.select_by=min"]).eval))
    chosen = [row("ties", suite="toy3h", task_specs=specs, extra={"selected_on": "validation"})]
    with pytest.raises(ValueError, match=r"eval.select_split=test, but the pipeline chose each "
                       r"family's configuration on validation"):  # fmt: skip
        check_scored_as_configured(chosen, to_dict(compose(["eval.select_split=test"]).eval))
    other_suite = [{**stored[0], "suite": "harness_3h"}]  # another suite's rows: not compared
    check_scored_as_configured(other_suite, weights)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("params", "x", r"params = 'x' is not a JSON object"),
        ("extra", [1], r"extra = \[1\] is not a JSON object"),
        ("extra", {"n_configs": "four"}, r"extra.n_configs = 'four' is not a count"),
        ("task_specs", ["t"], r"task_specs = \['t'\] is not a list of objects"),
    ],
)
def test_hand_edited_structured_fields_are_named_with_their_line(tmp_path, field, value, says):
    """Battery 8: `params="x"` or `extra=[1]` in a row crashed the report with a traceback
    (entries.py), `extra.n_configs="four"` said only "invalid literal for int()"."""
    path = store_with(tmp_path, json.dumps(row("b", **{field: value})))
    with pytest.raises(
        store_mod.StoreError, match=rf"results.jsonl, line 2: result row 'b': {says}"
    ):
        read_results(path)


def test_stage_all_says_which_stored_rows_it_did_not_make(tmp_path, capsys):
    """Battery 8: after `stage=all pipeline.mixtures=[uniform]` on a root of an earlier run with
    four mixtures, the answer chose among the four with no word that three were not this run's.
    The run now says which stored rows it did not make."""
    from conftest import compose
    from hhh_bench.pipeline import _say_rows_of_other_runs
    from hhh_bench.stages.eval import ROWS_OF_THIS_RUN

    cfg = compose([f"root={tmp_path}"])
    append_result(tmp_path / "results.jsonl", row("a", experiment="default"))
    append_result(tmp_path / "results.jsonl", row("mix reward_select", experiment="default"))
    ROWS_OF_THIS_RUN.clear()
    ROWS_OF_THIS_RUN.add("a")
    try:
        _say_rows_of_other_runs(cfg)
        said = capsys.readouterr().out
        assert "note: 1 row(s) of" in said and "(e.g. mix reward_select (seed 0))" in said
        ROWS_OF_THIS_RUN.add("mix reward_select")
        _say_rows_of_other_runs(cfg)
        assert "note:" not in capsys.readouterr().out  # every row this run's: nothing said
    finally:
        ROWS_OF_THIS_RUN.clear()


def test_a_report_never_deletes_files_it_did_not_write(tmp_path):
    """Battery 9 (data loss): notes and a figure a user kept in <root>/report/ were deleted with
    the folder when the report was rebuilt. Refused by name; the user's files stay."""
    from hhh_bench.core.content import write_manifest
    from hhh_bench.stages.report import _check_only_report_files

    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("# report")
    write_manifest(out, None)
    _check_only_report_files(out)  # only what the report wrote: replaced
    (out / "my_notes.md").write_text("mine")
    with pytest.raises(FileExistsError, match=r"holds file\(s\) the report did not write "
                       r"\(my_notes.md\).*move them aside"):  # fmt: skip
        _check_only_report_files(out)
    assert (out / "my_notes.md").read_text() == "mine"


def test_battery9_a_row_of_an_unknown_split_is_named(tmp_path):
    """A hand-edited split ('tset') dropped the row from every table, and its deltas with it."""
    path = store_with(tmp_path, json.dumps(row("b", split="tset")))
    with pytest.raises(store_mod.StoreError, match=r"line 2: result row 'b': split 'tset' is not "
                       r"validation or test"):  # fmt: skip
        read_results(path)


def test_battery9_export_refuses_an_extension_of_the_other_format(tmp_path):
    """`export ROOT --out x.parquet` wrote JSON lines (and --format parquet --out y.jsonl
    Parquet); `export ROOT/eval` blamed an --out the user never gave."""
    root = tmp_path / "run"
    (root / "eval").mkdir(parents=True)
    append_result(root / "results.jsonl", row("a"))
    out = run_cli("export", str(root / "eval"), cwd=tmp_path)
    assert out.returncode == 2 and "holds no results.jsonl: not a run's root" in out.stderr
    for args, says in (
        (["--out", str(tmp_path / "x.parquet")], "ends in .parquet but --format is jsonl"),
        (["--format", "parquet", "--out", str(tmp_path / "y.jsonl")],
         "ends in .jsonl but --format is parquet"),
    ):  # fmt: skip
        out = run_cli("export", str(root), *args, cwd=tmp_path)
        assert out.returncode == 2 and says in out.stderr, out.stderr
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "y.jsonl").exists()


def test_battery9_a_report_of_fewer_seeds_than_the_store_holds_is_refused(tmp_path):
    """Battery 9 (10): `stage=report seeds=[0]` on a store of seeds 0 and 1 reported both,
    unsaid. Refused before any work (pipeline.run, once the store is read), naming the seeds
    left out; all of them: fine."""
    from conftest import compose
    from hhh_bench.pipeline import _check_report_seeds

    rows = [row("a"), row("b", seed=1)]
    with pytest.raises(ValueError, match=r"stage=report reports every seed of the results store "
                       r"\(0, 1\), but seeds=\[0\] leaves out 1"):  # fmt: skip
        _check_report_seeds(compose(["stage=report", "seeds=[0]"]), rows)
    _check_report_seeds(compose(["seeds=[0,1]"]), rows)
    _check_report_seeds(compose([]), rows)  # seeds unset: every seed, as always
    # battery 14, F2: a seed the store lacks (a run that failed or never ran) is named too
    with pytest.raises(ValueError, match=r"seeds=\[0, 1, 3\] names seed\(s\) 3, which have no "
                       r"row in the results store \(it holds seeds 0, 1\)"):  # fmt: skip
        _check_report_seeds(compose(["stage=report", "seeds=[0,1,3]"]), rows)


def test_battery9_a_digestless_row_contradicting_its_task_scores_is_named(tmp_path):
    """Battery 9 (13): a row without a digest whose helpful (0.9) is not its one helpful
    task's acc (0.5) was read as it stood. Its dimension scores must be the weighted means of
    its tasks' primary metrics; a row that agrees reads fine."""
    specs = [{"name": t, "dimension": d, "weight": 1.0, "metric": "acc"}
             for t, d in (("h", "helpful"), ("o", "honest"), ("s", "harmless"))]  # fmt: skip
    tasks = {t: {"acc": 0.5, "n": 10} for t in "hos"}
    good = row("good", task_specs=specs, tasks=tasks)
    bad = row("bad", task_specs=specs, tasks=tasks, helpful=0.9, average=(0.9 + 1.0) / 3)
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (good, bad)) + "\n")
    with pytest.raises(store_mod.StoreError, match=r"line 2: result row 'bad': helpful = 0.9 is "
                       r"not the weighted mean of its tasks' helpful scores \(0.5"):  # fmt: skip
        read_results(path)
    path.write_text(json.dumps(good) + "\n")
    assert [r["row_key"] for r in read_results(path)] == ["good"]


def test_battery9_export_of_a_copied_root_never_reads_the_originals_eval_folders(tmp_path):
    """Battery 9 (U4): a root copied without its eval folders exported the original root's
    items (its rows' absolute paths), unsaid. Named instead; the original exports."""
    from hhh_bench.core.items import ITEMS_FILE, write_jsonl
    from hhh_bench.exporting import export_items

    a, b = tmp_path / "a", tmp_path / "b"
    eval_dir = a / "eval" / "k1"
    eval_dir.mkdir(parents=True)
    write_jsonl(eval_dir / ITEMS_FILE, {"t": [{"doc_id": 0, "acc": 1.0}]})
    append_result(a / "results.jsonl", row("r", artifacts={"eval_dir": str(eval_dir)}))
    assert [r["doc_id"] for r in export_items(a)] == [0]
    b.mkdir()
    (b / "results.jsonl").write_bytes((a / "results.jsonl").read_bytes())
    with pytest.raises(ValueError, match=rf"row 'r' \(r, test\): its eval output "
                       rf"{b / 'eval' / 'k1'} is missing from this root"):  # fmt: skip
        list(export_items(b))
