"""notebooks/analysis.ipynb runs top to bottom (every code cell, in order, in one namespace) on a
small results store written with the package's own store functions: two seeds, both splits, every
kind of row, a merge family with two configurations of which the pipeline chose one (on
validation: d=0.2's average 0.6733 > d=0.5's 0.6533), as the pipeline records it."""

from __future__ import annotations

import json

import pytest

from conftest import REPO

NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"


def _write_store(path):
    """Rows whose scores are simple arithmetic of (model, seed, split), via append_result."""
    from hhh_bench.tracking.store import append_result

    models = [  # kind, name, extra fields, (helpful, honest, harmless) at seed 0 on test
        ("base", "base", {}, (0.60, 0.50, 0.40)),
        ("oracle", "oracle", {"method": "dpo"}, (0.95, 0.90, 0.92)),
        ("specialist", "helpful specialist", {"train_dimensions": ["helpful"]}, (0.90, 0.45, 0.30)),
        ("specialist", "honest specialist", {"train_dimensions": ["honest"]}, (0.55, 0.80, 0.40)),
        ("specialist", "harmless specialist", {"train_dimensions": ["harmless"]}, (0.40, 0.50, 0.90)),
        ("mixture", "mix: uniform", {"mix_strategy": "uniform"}, (0.70, 0.60, 0.70)),
        ("merge", "ties d=0.2", {"method": "ties", "params": {"density": 0.2}}, (0.72, 0.66, 0.64)),
        ("merge", "ties d=0.5", {"method": "ties", "params": {"density": 0.5}}, (0.74, 0.62, 0.60)),
    ]  # fmt: skip
    for seed in (0, 1):
        for split in ("validation", "test"):
            shift = 0.02 * seed - (0.01 if split == "validation" else 0.0)
            for kind, name, extra, dims in models:
                h, o, a = (round(v + shift, 4) for v in dims)
                if name == "ties d=0.2" and split == "test":  # the pipeline's recorded choice
                    extra = {**extra, "extra": {"selected_on": "validation", "n_configs": 2}}
                append_result(
                    path,
                    {
                        "row_key": f"{name}-{seed}-{split}",
                        "experiment": "nb",
                        "split": split,
                        "suite": "toy3h",
                        "metric": "acc",
                        "name": name,
                        "kind": kind,
                        "seed": seed,
                        "helpful": h,
                        "honest": o,
                        "harmless": a,
                        "average": (h + o + a) / 3,
                        "min": min(h, o, a),
                        "tasks": {f"toy3h_known_qa_{split[:4]}": {"acc": h, "n": 12}},
                        **extra,
                    },
                )


def _write_old_setup(path):
    """Base rows of another setup (metric acc_norm) at both seeds, far from the others' scores:
    averaged in with them they would move every base mean and std."""
    from hhh_bench.tracking.store import append_result

    for seed in (0, 1):
        append_result(
            path,
            {
                "row_key": f"old-base-{seed}", "experiment": "nb", "split": "test",
                "suite": "toy3h", "metric": "acc_norm", "name": "base", "kind": "base",
                "seed": seed, "helpful": 0.1, "honest": 0.1, "harmless": 0.1, "average": 0.1,
                "min": 0.1, "tasks": {"toy3h_known_qa_test": {"acc_norm": 0.1, "n": 12}},
            },
        )  # fmt: skip


def test_analysis_notebook_runs_top_to_bottom_on_a_store(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    store = tmp_path / "runs" / "nb" / "results.jsonl"
    _write_old_setup(store)  # an earlier evaluation setup of the same base, written first
    _write_store(store)
    monkeypatch.setenv("HHH_RESULTS", str(store))
    monkeypatch.chdir(tmp_path)

    nb = json.loads(NOTEBOOK.read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert 'RESULTS = os.environ.get("HHH_RESULTS", "runs/toy3h/results.jsonl")' in cells[0]
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), (
        "commit the notebook without outputs"
    )
    ns: dict = {"__name__": "__main__"}
    for i, src in enumerate(cells):
        try:
            exec(compile(src, f"{NOTEBOOK.name}[code cell {i}]", "exec"), ns)
        except Exception as e:  # name the cell that broke
            raise AssertionError(f"code cell {i} of {NOTEBOOK} failed: {e!r}\n{src}") from e

    assert ns["RESULTS"] == str(store)
    # main table: one row per family; ties chosen on validation (d=0.2: average 0.6733 > 0.6533)
    table = ns["table"]
    assert list(table["group"]) == [
        "base", "oracle", "specialist", "specialist", "specialist", "mixture", "merge",
    ]  # fmt: skip
    ties = table[table["group"] == "merge"].iloc[0]
    assert ties["method"] == "ties d=0.2 (best of 2 on validation)"
    assert ties["seeds"] == 2
    # mean over seeds 0 and 1 of 0.72 and 0.74 on test; change from the base's 0.61
    assert ties["helpful"] == pytest.approx(0.73)
    assert ties["delta_helpful"] == pytest.approx(0.73 - 0.61)
    # seeds table: std of (x, x + 0.02) is 0.02 / sqrt(2)
    seeds = ns["seeds"].droplevel("setup_key")
    assert seeds is not None and seeds.loc[("merge", "ties d=0.5"), ("helpful", "count")] == 2
    # the base of each setup apart: two rows, each over its own 2 seeds
    base = seeds.loc[("base", "base")]
    assert list(base[("honest", "count")]) == [2, 2]
    assert sorted(base[("honest", "std")]) == pytest.approx([0.0, 0.014], abs=1e-3)
    assert table[table["group"] == "base"].iloc[0]["helpful"] == pytest.approx(0.61)
    for name in ("radar", "pareto", "conflict"):
        png = ns["rep"][name]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert png.parent == store.parent / "notebook"
