"""The report renders from a fixture results file; the W&B offline run holds the table.

Fixture (tests/assets/eval/results_fixture.jsonl, test split; helpful / honest / harmless):
base (.60 .50 .40); oracle (.95 .95 .95); specialists helpful (.90 .40 .20), honest
(.50 .80 .45), harmless (.45 .55 .90); mixture "mix uniform" seeds 0/1 (.70 .70 .70) and
(.72 .68 .74); merges "ties d=0.2" (.75 .60 .60) x2 seeds with validation average .80,
"ties d=0.5" (.80 .70 .65) with validation average .60, "tsv" (.68 .75 .78).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from hhh_bench.tracking.entries import conflict_matrix, pareto_front
from hhh_bench.tracking.report import build_report
from hhh_bench.tracking.store import read_results

FIXTURE = Path(__file__).resolve().parents[1] / "assets" / "eval" / "results_fixture.jsonl"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return build_report(read_results(FIXTURE), out, experiment="fixture")


def table_rows(markdown: str) -> dict[str, list[str]]:
    """Main-table rows by label -> cells (Helpful, Honest, Harmless, Avg, Min)."""
    main = markdown.split("## Main table")[1].split("\n## ")[0]
    rows = {}
    for line in main.splitlines():
        if line.startswith("| ") and not line.startswith("| Method") and not line.startswith("| *"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_main_table_groups_selection_seeds_deltas_and_bold(report):
    md = report["report_md"].read_text()
    rows = table_rows(md)
    # grouped in paper order, one row per family
    groups = re.findall(r"^\| \*(.+?)\* \|", md.split("## All evaluated models")[0], re.M)
    assert groups == ["Base", "Oracle", "Specialists", "Data mixture", "Model merging"]
    # rows over 1 and 2 seeds side by side: each label says its count (battery 9, 3)
    assert list(rows) == [
        "base (1 seed)",
        "oracle (dpo on all) (1 seed)",
        "dpo_helpful (1 seed)",
        "dpo_honest (1 seed)",
        "dpo_harmless (1 seed)",
        "mix uniform (2 seeds)",
        "ties d=0.2 (best of 2 on validation) (2 seeds)",  # chosen on validation (.80 > .60)
        "tsv (1 seed)",
    ]
    rows = {k.rsplit(" (", 1)[0]: v for k, v in rows.items()}
    # two seeds against the base's one (seed 0): § on the delta, said under the table
    assert rows["ties d=0.2 (best of 2 on validation)"][0] == "0.750 ± 0.000 n=2 (+0.150§)"
    assert "§: the change from the base compares different seed sets" in md
    # mean ± std over seeds, delta vs base: helpful mean .71 (std .0141), delta +.11
    assert rows["mix uniform"][0] == "0.710 ± 0.014 n=2 (+0.110§)"
    # bold: best per column among everything but the oracle (.95 everywhere, never bold)
    assert rows["dpo_helpful"][0] == "**0.900** n=36 (+0.300)"  # one seed: n = items
    assert rows["dpo_honest"][1] == "**0.800** (+0.300)"
    assert rows["dpo_harmless"][2] == "**0.900** (+0.500)"
    assert rows["tsv"][3] == "**0.737** (+0.237)"  # avg (.68+.75+.78)/3 vs base .5
    assert rows["mix uniform"][4] == "**0.690 ± 0.014** n=2 (+0.290§)"  # min per seed .70, .68
    assert not any("**" in c for c in rows["oracle (dpo on all)"])
    # n: the helpful task's items; the row's specs name no honest or harmless task, so neither
    # they nor Avg and Min over them say an n
    assert rows["base"] == ["0.600 n=36", "0.500", "0.400", "0.500", "0.400"]
    bold = sum(c.count("**") // 2 for cells in rows.values() for c in cells)
    assert bold == 5
    # every configuration, the unselected one included, in the full table
    assert "| Model merging | ties d=0.5 | density=0.5 | 1 |" in md


def test_conflict_matrix_is_specialists_minus_base():
    m = conflict_matrix(read_results(FIXTURE))
    expected = [[0.30, -0.10, -0.20], [-0.10, 0.30, 0.05], [-0.15, 0.05, 0.50]]
    for row, exp in zip(m, expected, strict=True):
        assert row == pytest.approx(exp)


def test_pareto_front():
    assert pareto_front([(0.1, 0.9), (0.5, 0.5), (0.4, 0.4), (0.9, 0.1)]) == [
        (0.1, 0.9),
        (0.5, 0.5),
        (0.9, 0.1),
    ]


def test_pngs_exist_and_are_images(report):
    for key in ("radar", "pareto", "conflict"):
        data = Path(report[key]).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, key


def test_report_stage_and_offline_wandb_table(tmp_path, monkeypatch):
    """run_report reads <root>/results.jsonl, writes <root>/report/ and an offline W&B run whose
    files hold the results table."""
    from omegaconf import OmegaConf

    from hhh_bench.stages.report import run_report

    monkeypatch.delenv("WANDB_DIR", raising=False)
    shutil.copy(FIXTURE, tmp_path / "results.jsonl")
    cfg = OmegaConf.create(
        {
            "name": "fixture",
            "root": str(tmp_path),
            "eval": {"report_split": "test", "select_split": "validation", "select_by": "average"},
            "logger": {
                "name": "wandb",
                "project": "hhh-bench-test",
                "entity": None,
                "mode": "offline",
            },
        }
    )
    out = run_report(cfg)
    for key in ("report_md", "radar", "pareto", "conflict"):
        assert Path(out[key]).is_file() and Path(out[key]).parent == tmp_path / "report"
    run_dir = Path(out["wandb_dir"])
    assert run_dir.parent == tmp_path / "wandb" / "wandb" and run_dir.name.startswith(
        "offline-run-"
    )
    # a rerun resumes the same report run (same id), under $WANDB_DIR when the user set one
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    again = Path(run_report(cfg)["wandb_dir"])
    assert again.parent == tmp_path / "elsewhere" / "wandb"
    assert again.name.split("-")[-1] == run_dir.name.split("-")[-1]  # offline-run-<time>-<id>
    monkeypatch.delenv("WANDB_DIR")
    tables = list(run_dir.glob("files/media/table/results_*.table.json"))
    assert len(tables) == 1
    import json

    table = json.loads(tables[0].read_text())
    assert len(table["data"]) == 14 and "average" in table["columns"]
    # the fixture's ties is swept over density on validation: its figure and W&B table (issue 31)
    assert sorted(out["sweep_figures"]) == ["ties"] and Path(out["sweep_figures"]["ties"]).is_file()
    (sweeps,) = run_dir.glob("files/media/table/sweeps_*.table.json")
    sweep = json.loads(sweeps.read_text())
    assert sweep["columns"][:2] == ["method", "knobs"]
    assert sorted(json.loads(r[1])["density"] for r in sweep["data"]) == [0.2, 0.5]
    assert "params.density" in table["columns"]
    # logger=none: nothing is logged
    cfg.logger = {"name": "none"}
    shutil.rmtree(tmp_path / "wandb")
    assert run_report(cfg)["wandb_dir"] is None
    assert not (tmp_path / "wandb").exists()


def test_two_evaluation_setups_render_apart_never_averaged(tmp_path):
    """Adding a task to an existing root gives the same models rows of a second setup: the
    report shows the latest setup's table and the older one apart, never a ± across them."""
    old = read_results(FIXTURE)
    new = []
    for r in old:
        if r["split"] != "test" or r["seed"] != 0:
            continue
        r2 = {**r, "row_key": r["row_key"] + "-new", "helpful": round(r["helpful"] + 0.1, 4)}
        r2["task_specs"] = [*r["task_specs"], {**r["task_specs"][0], "name": "extra_task"}]
        new.append(r2)
    out = build_report([*old, *new], tmp_path, experiment="two setups")
    md = out["report_md"].read_text()
    rows = table_rows(md)
    assert rows["base"][0] == "0.700"  # the new setup's base alone: no "± " over setups
    assert "## Other evaluation setups in this store" in md
    other = md.split("## Other evaluation setups in this store")[1].split("## All evaluated")[0]
    assert re.search(r"^\| base \(1 seed\) \| 0\.600 n=\d+ \|", other, re.M)  # the old setup's own
    assert "extra_task" in md.split("## Other evaluation setups")[1].split("###")[0]
    assert all(e.n == 1 for e in out["entries"])  # no entry mixes rows of two setups
    # one setup: no such section
    assert "Other evaluation setups" not in build_report(old, tmp_path / "one")["markdown"]
    assert "holds 1 row" not in md  # the newest setup as large as the older one: no warning
    # battery 9 (U1): one stray evaluation of another setup took the main table, unsaid
    from hhh_bench.tracking.entries import by_setup
    from hhh_bench.tracking.sections import setup_note

    stray = [{**new[0], "row_key": "stray", "name": "stray"}]
    current, *others = by_setup([r for r in [*old, *stray] if r["split"] == "test"])
    assert current == stray  # the newest setup is the main table's, as before ...
    assert setup_note(current, others)[0].startswith(  # ... but now said above it
        "**The tables below are the newest evaluation setup, which holds 1 row(s) (stray); an "
        "older setup of this store holds 11**"
    )


def test_budget_note_says_whether_mixtures_are_budget_matched():
    from hhh_bench.tracking.sections import budget_note

    def row(kind, name, n, seed=0):
        return {"kind": kind, "name": name, "seed": seed, "extra": {"train_pairs": n}}

    rows = [row("specialist", f"{d} specialist", 400) for d in ("helpful", "honest", "harmless")]
    assert budget_note([{"kind": "base", "name": "base"}]) == ""
    note = budget_note(
        [*rows, row("mixture", "mix: uniform", 1200), row("mixture", "mix: x", 1200)]
    )
    assert note == (
        "Preference pairs per seed: the specialists 400 + 400 + 400 = 1,200 (merged); "
        "each mixture 1,200 (budget-matched)."
    )
    note = budget_note([*rows, row("mixture", "mix: uniform", 400), row("oracle", "oracle", 1200)])
    assert "the mixture 400 (0.33× the specialists' total)" in note
    assert "the oracle 1,200 (upper reference" in note


def test_items_note_counts_each_tasks_items_per_dimension():
    from hhh_bench.tracking.sections import items_note

    def row(n_known, n_harm):
        specs = [{"name": "known_qa", "dimension": "helpful"},
                 {"name": "harmful_request", "dimension": "harmless"}]  # fmt: skip
        return {"task_specs": specs, "tasks": {"known_qa": {"n": n_known},
                                               "harmful_request": {"n": n_harm}}}  # fmt: skip

    assert items_note([{"kind": "base"}]) == ""
    assert items_note([row(60, 60), row(60, 60)]) == (
        "Items per task and seed: helpful known_qa 60; harmless harmful_request 60."
    )
    # a task whose count differs between rows shows every count
    assert "harmful_request 36/60" in items_note([row(60, 60), row(60, 36)])
