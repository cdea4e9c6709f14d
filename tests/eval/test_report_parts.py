"""Each part of the report, alone, on one small store (issue 35): the statistics
(``tracking.entries``), the tables (``tracking.tables``), the Markdown sections
(``tracking.sections``), the answer (``tracking.answer``), the figures (``tracking.plots``) and
the W&B logging (``tracking.wandb_log``, with a stand-in for ``wandb``); then ``build_report``
as the sum of its parts.

The store, written with the store's own writers (``append_result``, ``append_diagnostics``):
three tasks h, o, s of N = 10 items (one per dimension; acc, weight 1, so the average is
(h + o + s) / 3), two seeds, every task's first ``right`` items right:

    base             4 4 4 in both seeds            -> 0.4 everywhere
    dpo_helpful      h 8, o 4, s 3 in both seeds    -> helpful .8, honest .4, harmless .3
    mix uniform      5 5 5 in both seeds            -> 0.5
    ties             9 9 9 (seed 0), 10 10 10 (1)   -> 0.95 ± 0.0707 (sqrt(2 * 0.05²))
    task_arithmetic  6 6 6 in both seeds            -> 0.6

and one diagnostics row: one parameter in each of layers 0 and 1 (type mlp.up_proj, norm 1
and 3, sign conflict 0.2 and 0.4) and the embeddings (no layer).
"""

from __future__ import annotations

import ast
import json
import math
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from hhh_bench.core.items import ITEMS_FILE, write_jsonl
from hhh_bench.tracking import answer, entries, plots, sections, tables
from hhh_bench.tracking.diagnostics_view import diagnostics_table, layer_axes
from hhh_bench.tracking.report import build_report
from hhh_bench.tracking.store import (
    SkippedLine,
    append_diagnostics,
    append_result,
    read_diagnostics,
    read_results,
)
from hhh_bench.tracking.wandb_log import log_experiment, rows_to_table_data

N = 10
SPECS = [
    {"name": t, "dimension": d, "weight": 1.0, "metric": "acc"}
    for t, d in (("h", "helpful"), ("o", "honest"), ("s", "harmless"))
]
MODELS: list[tuple[str, str, dict[str, Any], tuple[tuple[int, int, int], ...]]] = [
    # kind, name, fields, right answers (h, o, s) per seed
    ("base", "base", {}, ((4, 4, 4), (4, 4, 4))),
    ("specialist", "dpo_helpful", {"train_dimensions": ["helpful"]}, ((8, 4, 3), (8, 4, 3))),
    ("mixture", "mix uniform", {"mix_strategy": "uniform"}, ((5, 5, 5), (5, 5, 5))),
    ("merge", "ties", {"method": "ties", "params": {"density": 0.2}}, ((9, 9, 9), (10, 10, 10))),
    ("merge", "task_arithmetic", {"method": "task_arithmetic"}, ((6, 6, 6), (6, 6, 6))),
]
DIAGNOSTICS = {
    "row_key": "diag-0",
    "label": "3 specialists",
    "num_models": 3,
    "model": {
        "pooled": {"norm": [1.0, 3.0], "tail_share_3": [0.01, 0.03], "sign_conflict": 0.25},
        "kurtosis": {"median": 3.5},
    },
    "layer_types": {"mlp.up_proj": {"n_params": 2, "norm": {"mean": 2.0}}},
    "params": [
        {"name": "layers.0.mlp.up_proj", "layer": 0, "type": "mlp.up_proj", "norm": 1.0,
         "sign_conflict": 0.2},
        {"name": "layers.1.mlp.up_proj", "layer": 1, "type": "mlp.up_proj", "norm": 3.0,
         "sign_conflict": 0.4},
        {"name": "embed_tokens", "layer": None, "type": "embed_tokens", "norm": 5.0},
    ],
    "statistics": {"norm": "Frobenius norm of the task vector", "sign_conflict": "sign share"},
}  # fmt: skip


def write_store(root: Path) -> Path:
    """The module docstring's store under ``root`` (``results.jsonl``, ``diagnostics.jsonl``,
    each row's ``items.jsonl``)."""
    for kind, name, fields, per_seed in MODELS:
        for seed, right in enumerate(per_seed):
            eval_dir = root / "evals" / f"{name}-{seed}"
            eval_dir.mkdir(parents=True)
            values = {s["name"]: [1.0] * r + [0.0] * (N - r) for s, r in zip(SPECS, right, strict=True)}  # fmt: skip
            items = {t: [{"doc_id": i, "acc": v} for i, v in enumerate(xs)] for t, xs in values.items()}  # fmt: skip
            write_jsonl(eval_dir / ITEMS_FILE, items)
            dims = dict(zip(("helpful", "honest", "harmless"), (r / N for r in right), strict=True))
            append_result(root / "results.jsonl", {
                "row_key": f"{name}-{seed}-test", "name": name, "kind": kind, "seed": seed,
                "split": "test", "suite": "hand", "metric": "acc", "task_specs": SPECS,
                "tasks": {s["name"]: {"acc": r / N, "n": N} for s, r in zip(SPECS, right, strict=True)},
                **dims, "average": sum(dims.values()) / 3, "min": min(dims.values()),
                "artifacts": {"eval_dir": str(eval_dir)}, **fields,
            })  # fmt: skip
    append_diagnostics(root / "diagnostics.jsonl", DIAGNOSTICS)
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, Any]:
    root = write_store(tmp_path_factory.mktemp("store"))
    rows = read_results(root / "results.jsonl")
    return {
        "root": root,
        "rows": rows,
        "entries": entries.table_entries(rows),
        "diagnostics": read_diagnostics(root / "diagnostics.jsonl"),
    }


def by_name(es: list[entries.Entry]) -> dict[str, entries.Entry]:
    return {e.name: e for e in es}


# ----------------------------------------------------------------------------------- entries


def test_a_run_evaluated_again_supersedes_its_older_rows_and_the_report_says_so(store):
    """The same configuration, seed, data and run config written again later (its model
    recomputed after a code edit): the latest row is used, the older one dropped and counted,
    not shown as ``ties [2]``; a row of another config hash or seed stays."""
    from hhh_bench.tracking.sections import superseded_note

    ties = [dict(r) for r in store["rows"] if r["name"] == "ties"]
    old = {**ties[0], "row_key": "old", "config_hash": "c1", "created_at": "2026-01-01T00:00:00"}
    new = {**ties[0], "row_key": "new", "config_hash": "c1", "created_at": "2026-01-02T00:00:00",
           "helpful": 0.5}  # fmt: skip
    other = {**old, "row_key": "other", "config_hash": "c2"}
    kept, dropped = entries.superseded([new, old, other, *ties[1:]])
    assert [r["row_key"] for r in dropped] == ["old"]
    assert [r["row_key"] for r in kept] == ["new", "other", *[r["row_key"] for r in ties[1:]]]
    assert "1 older row of the results store not shown" in superseded_note(dropped)[0]
    assert entries.superseded(ties) == (ties, [])  # rows without a config hash: all kept


def test_entries_pool_seeds_per_configuration_with_means_stds_and_deltas(store):
    es = store["entries"]
    # table order: the groups' order, then first seen
    assert [(e.kind, e.name) for e in es] == [(k, n) for k, n, _, _ in MODELS]
    assert all(e.n == 2 for e in es)  # two seeds each, never a seed twice
    ties = by_name(es)["ties"]
    assert ties.family == "Merge: ties" and ties.label == "ties"
    assert ties.mean["average"] == pytest.approx(0.95)
    assert ties.std["average"] == pytest.approx(math.sqrt(2 * 0.05**2))  # (.9, 1.0): n − 1 = 1
    assert ties.delta["average"] == pytest.approx(0.95 - 0.4)
    assert ties.se == {}  # several seeds: the spread is the std, not an item stderr
    spec = by_name(es)["dpo_helpful"]
    assert spec.family == "Specialist: helpful"
    assert spec.delta["max_drop"] == pytest.approx(0.1)  # harmless .3 below the base's .4
    assert by_name(es)["base"].delta["average"] is None
    assert entries.base_means(store["rows"]) == pytest.approx(dict.fromkeys(
        ("helpful", "honest", "harmless", "average", "min"), 0.4))  # fmt: skip
    assert entries.extra_columns(store["rows"]) == {}
    assert [len(s) for s in entries.by_setup(store["rows"])] == [len(store["rows"])]


def test_conflict_matrix_and_pareto_front(store):
    m = entries.conflict_matrix(store["rows"])
    assert m[0] == pytest.approx([0.8 - 0.4, 0.4 - 0.4, 0.3 - 0.4])  # trained on helpful
    assert m[1] == [None, None, None] and m[2] == [None, None, None]  # no such specialist
    points = [(r["helpful"], r["harmless"]) for r in store["rows"]]
    assert entries.pareto_front(points) == [(1.0, 1.0)]  # ties seed 1 dominates every row


def test_paired_marks_test_each_row_against_the_base_and_the_best(store):
    marks, tests = entries.paired_marks(store["entries"])
    # ties is the best of every column: tested against the base, never against itself
    assert ("ties", "average") in tests["base"] and ("ties", "average") not in tests["best"]
    t = tests["best"][("mix uniform", "average")]
    assert t.diff == pytest.approx(0.5 - 0.95) and t.resolved  # 4–5 of 10 items per task
    assert "average" not in marks[("mixture", "mix uniform")]  # resolved: no ≈
    # the specialist's honest items are the base's very items: its change (0) is not resolved
    spec = marks[("specialist", "dpo_helpful")]
    assert spec["delta_honest"] == "†" and "delta_helpful" not in spec  # 4 of 10 items apart


def test_summary_metrics(store):
    res = {"diff": 0.45, "ci_low": 0.3, "ci_high": 0.6, "verdict": "merging wins"}
    s = entries.summary_metrics(store["entries"], "average", res)
    assert s["Merge: ties/average"] == pytest.approx(0.95)
    assert (s["best/family"], s["best/name"]) == ("Merge: ties", "ties")
    assert s["mix_or_merge/verdict"] == "merging wins"
    assert "mix_or_merge/diff" not in entries.summary_metrics(store["entries"], "average", None)


# ------------------------------------------------------------------------------------ tables


def test_main_table_cells_bold_and_groups(store):
    table = tables.main_table(store["entries"])
    lines = table.splitlines()
    assert lines[0] == "| Method | Helpful | Honest | Harmless | Avg | Min |"
    assert [ln for ln in lines if ln.startswith("| *")] == [
        f"| *{g}* | | | | | |" for g in ("Base", "Specialists", "Data mixture", "Model merging")
    ]
    # issue 32: every cell with a ± says what it is over (here: two seeds each)
    assert "| base | 0.400 ± 0.000 n=2 | 0.400 ± 0.000 n=2 | 0.400 ± 0.000 n=2 |" in table
    assert "| ties | **0.950 ± 0.071** n=2 (+0.550) | " in table
    assert "| dpo_helpful | 0.800 ± 0.000 n=2 (+0.400) | 0.400 ± 0.000 n=2 (+0.000) | 0.300 ± 0.000 n=2 (-0.100) |" in table  # fmt: skip


def test_probe_columns_go_to_the_diagnostics_table_and_every_cell_says_its_n(tmp_path):
    """Issue 32: a column with ``table: diagnostics`` is shown in its own table, never in the
    main one; a one-seed cell says how many items its value is over, a one-item cell too
    (no ±: no spread over one item), and a column over no item shows ``- n=0``, no number."""
    columns = {
        "lc": {"task": "h", "metric": "acc", "higher_is_better": True},  # no table: main
        "probe": {"task": "p", "metric": "acc", "higher_is_better": True, "table": "diagnostics"},
        "group": {"task": "g", "metric": "acc", "higher_is_better": True, "table": "diagnostics"},
    }
    rows = []
    for kind, name, right in (("base", "base", 4), ("merge", "ties", 7)):
        tasks = {s["name"]: {"acc": right / N, "acc_stderr": 0.1, "n": N} for s in SPECS}
        tasks["p"] = {"acc": 1.0, "n": 1}
        tasks["g"] = {"acc": 0.0, "acc_stderr": 0.0, "n": 0}
        rows.append({
            "row_key": f"{name}-0-test", "name": name, "kind": kind, "seed": 0, "split": "test",
            "suite": "hand", "metric": "acc", "task_specs": SPECS, "tasks": tasks,
            **{d: right / N for d in ("helpful", "honest", "harmless", "average", "min")},
            **{f"{d}_stderr": 0.1 for d in ("helpful", "honest", "harmless", "average")},
            "lc": right / N, "lc_stderr": 0.1, "probe": 1.0, "probe_stderr": None,
            "group": 0.0, "group_stderr": 0.0, "extra_columns": columns,
        })  # fmt: skip
    assert list(entries.extra_columns(rows, "main")) == ["lc"]
    assert list(entries.extra_columns(rows, "diagnostics")) == ["probe", "group"]
    md = build_report(rows, tmp_path, experiment="hand")["markdown"]
    main = md.split("## Main table")[1].split("\n## ")[0]
    probes = md.split("## Diagnostics (outside the 3H scores)")[1].split("\n## ")[0]
    assert "| Method | Helpful | Honest | Harmless | Avg | Min | Lc |" in main
    assert "Probe" not in main and "Group" not in main
    assert "| Method | Probe | Group |" in probes and "Helpful" not in probes
    assert "| ties | **0.700 ± 0.100** n=10 (+0.300)" in main  # a dimension: its task's items
    assert "| base | **1.000** n=1 | - n=0 |" in probes  # one item: no ±; none: no number


def test_a_cell_whose_paired_test_could_not_run_is_marked_not_left_blank(store, tmp_path):
    """Battery 12 (F11): with a row's eval folder gone, its cells lost their † and ≈ and so
    read as resolved. They are marked ``?`` and the table's note says what it means."""
    import copy

    rows = copy.deepcopy(store["rows"])
    for r in rows:
        if r["name"] == "dpo_helpful":
            r["artifacts"]["eval_dir"] = str(tmp_path / "gone" / str(r["seed"]))
    es = entries.table_entries(rows)
    marks, tests = entries.paired_marks(es)
    spec = marks[("specialist", "dpo_helpful")]
    assert spec["delta_honest"] == entries.NO_TEST  # † when the folder was there
    assert spec["honest"] == f" {entries.NO_TEST}"
    assert ("dpo_helpful", "honest") not in tests["base"]
    rep = build_report(rows, tmp_path / "out", experiment="hand")
    assert rep["untested_cells"] is True  # what the console's line about `?` reads
    assert (
        build_report(store["rows"], tmp_path / "o2", experiment="hand")["untested_cells"] is False
    )
    main = rep["markdown"].split("## Main table")[1].split("\n## ")[0]
    assert "?: no paired test, a row's per-item values are missing" in main
    line = next(x for x in main.splitlines() if x.startswith("| dpo_helpful"))
    assert "?)" in line and "†" not in line
    assert "?" not in next(x for x in main.splitlines() if x.startswith("| ties"))


def test_deltas_over_other_seeds_and_rows_of_fewer_seeds_are_marked(store):
    """Battery 9 (3): without the base's seed-1 row and the mixture's, the merges' deltas
    compare a mean over seeds 0, 1 with the base's seed 0 (§, said under the table), and the
    one-seed mixture's value beside two-seed means says its count; the mixture's delta (seed 0
    against seed 0) is unmarked. With every seed present (the store), nothing is marked."""
    rows = [r for r in store["rows"] if not (r["kind"] in ("base", "mixture") and r["seed"] == 1)]
    es = entries.table_entries(rows)
    table = tables.main_table(es)
    assert "| ties (2 seeds) | **0.950 ± 0.071** n=2 (+0.550§) |" in table
    # one seed, no item-level ±: the value and what it is over (the task's 10 items)
    assert "| mix uniform (1 seed) | 0.500 n=10 (+0.100) |" in table
    note = sections.seeds_note(es)
    assert "the base's seeds 0; the rows' seeds: dpo_helpful 0, 1; ties 0, 1;" in note
    assert "each label says its count" in note
    assert "| ties | density=0.2 | 2 | 0.950 ± 0.071 (+0.550§) |" in tables.all_models_table(rows)
    assert "§" not in tables.main_table(store["entries"]) + sections.seeds_note(store["entries"])
    assert "seed)" not in tables.main_table(store["entries"])


def test_a_numbered_name_says_what_tells_it_apart(store):
    """Battery 9 (9): ``ties [2]`` was unexplained. ties evaluated again on another world and,
    for the same seeds, on other data: each numbered row says how it differs from the first."""
    ties = [r for r in store["rows"] if r["name"] == "ties"]
    rows = [*store["rows"], *({**r, "row_key": f"{r['row_key']}w", "world_key": "w7"} for r in ties),
            *({**r, "row_key": f"{r['row_key']}d", "data_key": "d2"} for r in ties)]  # fmt: skip
    es = by_name(entries.table_entries(rows))
    assert es["ties [2]"].numbered == (
        "differs from the first ties in data (data_key: another data stage, another world or "
        "item set)"
    )
    assert es["ties [3]"].numbered == "differs from the first ties in world (world_key)"
    assert es["ties"].numbered is None
    said = (r"ties \[2\] differs from the first ties in data (data_key: another data stage, "
            r"another world or item set); ties \[3\] differs")  # fmt: skip
    assert said in sections.seeds_note(list(es.values()))
    assert said in sections.all_models_section(rows)[-2]
    assert "[n]" not in sections.seeds_note(store["entries"])


def test_changes_from_the_base_are_against_the_base_of_the_same_data(store):
    """Battery 12 (F14): a second world's base row in the store moved every change from the
    base to the mean of both worlds' bases. Each row's change is against its own data's base;
    the paired test against the base too."""
    rows = [{**r, "data_key": "dA"} for r in store["rows"]]
    other = [{**r, "row_key": f"{r['row_key']}B", "data_key": "dB",
              **{c: 0.9 for c in ("helpful", "honest", "harmless", "average", "min")}}
             for r in rows if r["kind"] == "base"]  # fmt: skip
    es = by_name(entries.table_entries([*rows, *other]))
    alone = by_name(entries.table_entries(rows))
    assert set(es) >= {"base", "base [2]"}
    for name in ("ties", "dpo_helpful", "mix uniform"):
        assert es[name].delta == alone[name].delta  # the base of data dA, not the mean with dB
    marks, tests = entries.paired_marks(list(es.values()))
    assert marks[("specialist", "dpo_helpful")] == entries.paired_marks(list(alone.values()))[0][
        ("specialist", "dpo_helpful")]  # fmt: skip


def test_a_repeated_evaluation_names_the_setting_it_differs_in(tmp_path):
    """Battery 12 (F3): the same model evaluated with another eval.batch_size was a ``[2]``
    row explained as differing "in config_hash"; it names the setting now."""
    import copy

    base = {"row_key": "m-0", "name": "m", "kind": "merge", "method": "ties", "seed": 0,
            "split": "test", "suite": "s", "metric": "acc", "config_hash": "c1",
            **{c: 0.5 for c in ("helpful", "honest", "harmless", "average", "min")}}  # fmt: skip
    rows = []
    for i, bs in enumerate((64, "auto")):
        d = tmp_path / f"e{i}"
        d.mkdir()
        (d / "provenance.json").write_text(
            json.dumps({"config": {"batch_size": bs, "limit": None}})
        )
        rows.append({**copy.deepcopy(base), "row_key": f"m-0-{i}", "config_hash": f"c{i}",
                     "artifacts": {"eval_dir": str(d)}})  # fmt: skip
    es = by_name(entries.aggregate(rows))
    assert es["m [2]"].numbered == (
        "differs from the first m in the evaluation's settings: eval.batch_size 64 vs 'auto'"
    )


def test_all_models_per_task_and_paired_tables(store):
    everything = tables.all_models_table(store["rows"])
    assert "| Model merging | ties | density=0.2 | 2 | **" not in everything  # no bold here
    assert "| Model merging | ties | density=0.2 | 2 | 0.950 ± 0.071 (+0.550) |" in everything
    assert everything.rstrip().endswith("| 0.000 |")  # ties (sorted last): no drop below the base
    per_task = tables.per_task_table(store["entries"])
    assert per_task.splitlines()[0] == "| Method | h (acc) | o (acc) | s (acc) |"
    assert "| ties | 0.950 | 0.950 | 0.950 |" in per_task
    _, tests = entries.paired_marks(store["entries"])
    paired = tables.paired_table(store["entries"], tests["best"], ["average"], ["Avg"])
    assert paired.splitlines()[:2] == ["| Method | Avg |", "|---|---:|"]
    assert "| mix uniform | -0.450 ± " in paired and "| ties |" not in paired


# ---------------------------------------------------------------------------------- sections


def test_title_and_main_section(store, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt: "2026-01-02 03:04")
    assert sections.title_section(store["rows"], experiment="hand <b>", split="test") == [
        "# hhh-bench report: hand &lt;b&gt;",
        "",
        "Split **test**, primary metric acc (tasks naming their own: see *Evaluation setup*), "
        "10 evaluated model(s); generated 2026-01-02 03:04.",
        "",
    ]
    marks, tests = entries.paired_marks(store["entries"])
    md = sections.main_section(store["entries"], store["rows"], {}, marks, tests,
                               select_by="average", select_split="validation", alpha=0.05)  # fmt: skip
    assert md[:2] == ["## Main table", ""] and md[-1] == ""
    assert md[-2] == tables.main_table(store["entries"], {}, marks)
    assert "Cells: mean ± std over seeds, n = the seeds. " in md[2]
    assert "In parentheses: change from the base. " in md[2]


def test_notes_setup_paired_figures_and_diagnostics_sections(store):
    skipped = [SkippedLine(line=3, reason="result row 'x': kind 'robot' is not one of ..."),
               SkippedLine(line=4, reason="result row 'y': kind 'robot' is not one of ...")]  # fmt: skip
    note = sections.skipped_note(skipped)
    assert note[0].startswith("**Skipped 2 invalid rows of the results store**")
    assert "lines 3–4: kind 'robot'" in note[0]
    assert sections.counts_note(store["rows"]) == [
        "Items per task and seed: helpful h 10; honest o 10; harmless s 10.",
        "",
    ]
    assert sections.other_setups_section([], store["rows"]) == []
    assert sections.setup_section(store["rows"])[4].startswith("| h | helpful | acc | argmax")
    _, tests = entries.paired_marks(store["entries"])
    paired = sections.paired_section(store["entries"], tests)
    assert [ln for ln in paired if ln.startswith("#")] == [
        "## Paired tests over items", "### Against the base", "### Against each column's best row"
    ]  # fmt: skip
    assert "![3H radar](radar.png)" in sections.figures_section()
    diag = sections.diagnostics_section(store["diagnostics"], {"norm": Path("diag_norm.png")})
    assert diag[0] == "## Task-vector diagnostics"
    assert "### 3 specialists" in diag and "### Per-layer heatmaps" in diag
    assert diag[-2:] == ["![norm per layer](diag_norm.png)", ""]


def test_diagnostics_table_and_axes(store):
    rows = store["diagnostics"]
    assert layer_axes(rows) == ([0, 1], ["mlp.up_proj"])  # the embeddings have no layer
    line = diagnostics_table(rows).splitlines()[2]
    # mean norm (1 + 3) / 2, median kurtosis, pooled tail share (.01 + .03) / 2, sign conflict
    assert line.startswith("| 3 specialists | 3 | 2.000 | 3.500 | 0.020 | - | 0.250 |")
    assert plots.diagnostics_grid(rows[0], "norm", [0, 1], ["mlp.up_proj"]) == [[1.0], [3.0]]


# ------------------------------------------------------------------------------------ answer


def test_answer_compares_the_best_mixture_and_merge_over_seeds(store):
    """merge − mix: seed 0 (9 − 5) / 10 = 0.4 in every task, seed 1 0.5: 0.45 on average. Two
    seeds: SE 0.05 (SD 0.0707 / √2), t(0.975, 1 df) = 12.706: 0.45 ± 0.635 covers 0."""
    md, res, line = answer.answer_section(store["entries"])
    assert (res["merge"], res["mixture"]) == ("ties", "mix uniform")
    assert res["diff"] == pytest.approx(0.45) and res["n_seeds"] == 2
    assert res["items_per_task"] == {"h": N, "o": N, "s": N}
    assert (res["ci_low"], res["ci_high"]) == pytest.approx(
        (0.45 - 0.6353, 0.45 + 0.6353), abs=1e-3
    )
    assert res["verdict"] == "inconclusive" and res["seeds_needed"] > 2
    assert md[0] == "## Mix or merge?" and md[-1] == line == answer.answer_line(res)
    assert "| h | 0.333 | 10 |" in md


# ------------------------------------------------------------------------------------- plots


def test_plots_are_written_as_png_files(store, tmp_path):
    png = b"\x89PNG\r\n\x1a\n"
    es = store["entries"]
    written = [
        plots.radar_plot(es, tmp_path / "radar.png"),
        plots.pareto_plot(store["rows"], tmp_path / "pareto.png", highlight=es),
        plots.conflict_plot(entries.conflict_matrix(store["rows"]), tmp_path / "conflict.png"),
    ]
    heatmaps = plots.diagnostics_heatmaps(store["diagnostics"], tmp_path)
    assert list(heatmaps) == ["norm", "sign_conflict"]  # those the rows have, in table order
    for p in [*written, *heatmaps.values()]:
        assert p.parent == tmp_path and p.read_bytes()[:8] == png, p
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(
        ["radar.png", "pareto.png", "conflict.png", "diag_norm.png", "diag_sign_conflict.png"]
    )
    no_layers = [{**store["diagnostics"][0], "params": [DIAGNOSTICS["params"][2]]}]
    assert plots.diagnostics_heatmaps(no_layers, tmp_path / "none") == {}


# ------------------------------------------------------------------------------------- W&B


class FakeRun:
    def __init__(self, **kw: Any) -> None:
        self.init = kw
        self.logged: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.dir = str(Path(kw["dir"]) / "wandb" / "offline-run-x" / "files")
        self.finished = False

    def log(self, payload: dict[str, Any]) -> None:
        self.logged.append(payload)

    def finish(self) -> None:
        self.finished = True


def fake_wandb(runs: list[FakeRun]) -> types.ModuleType:
    """A stand-in for ``wandb``: ``init`` returns a :class:`FakeRun`; tables and images are
    kept as what they were made from."""
    mod = types.ModuleType("wandb")

    def init(**kw: Any) -> FakeRun:
        runs.append(FakeRun(**kw))
        return runs[-1]

    mod.init = init  # type: ignore[attr-defined]
    mod.Table = lambda columns, data: ("table", columns, data)  # type: ignore[attr-defined]
    mod.Image = lambda path: ("image", path)  # type: ignore[attr-defined]
    mod.Settings = dict  # type: ignore[attr-defined]
    return mod


def test_wandb_logging_is_off_with_logger_none(store, tmp_path):
    assert (
        log_experiment(store["rows"], logger_cfg={"name": "none"}, root=tmp_path, name="x") is None
    )
    assert not any(tmp_path.iterdir())


def test_wandb_logs_the_results_table_figures_and_summary(store, tmp_path, monkeypatch):
    runs: list[FakeRun] = []
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(runs))
    monkeypatch.delenv("WANDB_DIR", raising=False)
    radar = plots.radar_plot(store["entries"], tmp_path / "radar.png")
    summary = entries.summary_metrics(store["entries"], "average", None)
    run_dir = log_experiment(
        store["rows"], logger_cfg={"name": "wandb", "mode": "offline"}, root=tmp_path,
        name="hand", summary=summary, files=[radar, tmp_path / "missing.png"],
    )  # fmt: skip
    (run,) = runs
    assert run.init["mode"] == "offline" and run.init["job_type"] == "report"
    assert run_dir == tmp_path / "wandb" / "wandb" / "offline-run-x"
    (payload,) = run.logged
    assert payload["results"] == ("table", *rows_to_table_data(store["rows"]))
    assert payload["report/radar"] == ("image", str(radar))
    assert "report/missing" not in payload  # only files that exist
    assert run.summary == summary and run.finished


# ------------------------------------------------------------------------- the whole report


def test_build_report_is_its_parts_in_order(store, tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt: "2026-01-02 03:04")
    rows, es = store["rows"], store["entries"]
    rep = build_report(rows, tmp_path, experiment="hand", diagnostics=store["diagnostics"])
    marks, tests = entries.paired_marks(es)
    parts = [
        sections.title_section(rows, experiment="hand", split="test"),
        sections.main_section(es, rows, {}, marks, tests, select_by="average",
                              select_split="validation", alpha=0.05),
        sections.counts_note(rows),
        sections.all_models_section(rows),
        sections.per_task_section(es),
        sections.setup_section(rows),
        sections.paired_section(es, tests),
        sections.figures_section(),
        sections.diagnostics_section(store["diagnostics"], rep["diagnostics_figures"]),
        answer.answer_section(es, select_split="validation")[0],
    ]  # fmt: skip
    assert rep["markdown"] == "\n".join(line for part in parts for line in part) + "\n"
    assert rep["report_md"].read_text() == rep["markdown"]
    assert rep["summary"] == entries.summary_metrics(es, "average", rep["answer"])
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(
        ["report.md", "radar.png", "pareto.png", "conflict.png", "diag_norm.png",
         "diag_sign_conflict.png"]
    )  # fmt: skip


def test_the_parts_import_downward_only():
    """Within tracking/, the report imports its parts and no part imports the report; the
    import graph of the parts has no circle (answer.py once imported report.py's Entry)."""
    pkg = Path(entries.__file__).parent
    graph: dict[str, set[str]] = {}
    for f in pkg.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "hhh_bench.tracking."
            ):
                deps.add(node.module.split(".")[2])
        graph[f.stem] = deps
    assert not any("report" in deps for deps in graph.values())
    assert {"answer", "entries", "plots", "sections", "tables"} <= graph["report"]

    def reaches(a: str, b: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(d == b or (d not in seen and reaches(d, b, seen | {d})) for d in graph[a])

    assert not [m for m in graph if reaches(m, m)]


def test_a_wandb_dir_that_is_a_file_is_named(tmp_path, monkeypatch):
    """Outside the pipeline's preflight (a notebook calling the report or a trainer's setup),
    a $WANDB_DIR below a regular file was FileExistsError from mkdir (issue 27): now its name
    and what to do."""
    from hhh_bench.tracking.wandb_log import wandb_dir

    (tmp_path / "f").write_text("")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "f" / "wandb"))
    with pytest.raises(NotADirectoryError, match=r"\$WANDB_DIR .*/f/wandb is not a folder"):
        wandb_dir(tmp_path)
    monkeypatch.delenv("WANDB_DIR")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "wandb").write_text("")
    with pytest.raises(NotADirectoryError, match=r"the W&B folder <root>/wandb .* is not a"):
        wandb_dir(tmp_path / "root")
    assert wandb_dir(tmp_path / "other") == (tmp_path / "other" / "wandb").resolve()
