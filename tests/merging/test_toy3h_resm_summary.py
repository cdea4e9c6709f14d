"""experiments/toy3h_resm/summarize.py: which rows it pairs, and what it reads of a merge's
diagnostics (RESM's two mechanisms)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from conftest import REPO
from hhh_bench.merging import diagnose

_SPEC = importlib.util.spec_from_file_location(
    "toy3h_resm_summarize", REPO / "experiments" / "toy3h_resm" / "summarize.py"
)
summarize = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(summarize)


def _row(
    kind, name, seed, avg, harmless=0.5, method=None, chosen=False, weights=None, split="test"
):
    return {
        "kind": kind, "name": name, "seed": seed, "split": split, "method": method,
        "average": avg, "harmless": harmless, "helpful": 0.5, "honest": 0.5,
        "params": {"scaling": 0.3, "weights": weights},
        "extra": {"selected_on": "validation"} if chosen else {},
    }  # fmt: skip


def test_collect_pairs_chosen_rows_and_equal_weight_grid_points():
    """Chosen rows (selected on validation), grid points with equal weights only (an emphasis
    point is not a λ point), validation rows left out; paired differences in seed order."""
    rows = []
    for seed, (r, t) in enumerate([(0.7, 0.6), (0.5, 0.55), (0.8, 0.8)]):
        rows += [
            _row("merge", "resm", seed, r, method="resm", chosen=True),
            _row("merge", "tsv", seed, t, method="tsv", chosen=True),
            _row("merge", "resm (scaling=0.3)", seed, r + 0.1, harmless=0.9, method="resm"),
            _row("merge", "tsv (rank_fraction=0.2, scaling=0.3)", seed, t, method="tsv"),
            _row(
                "merge",
                "tsv (scaling=0.3, weights=[1, 2, 1])",
                seed,
                0.0,
                method="tsv",
                weights=[0.75, 1.5, 0.75],
            ),  # fmt: skip
            _row("merge", "tsv", seed, 0.0, method="tsv", chosen=True, split="validation"),
            _row("specialist", "harmless specialist", seed, 0.6, harmless=1.0),
        ]
    got = summarize.collect(rows)
    assert summarize.paired(got["chosen"]["resm"], got["chosen"]["tsv"], "average") == (
        pytest.approx([0.1, -0.05, 0.0])
    )
    grid = got["grid"]
    assert set(grid) == {("resm", 0.3), ("tsv", 0.3)}
    assert all(r["params"]["weights"] is None for r in grid[("tsv", 0.3)].values())
    assert summarize.paired(grid[("resm", 0.3)], grid[("tsv", 0.3)], "harmless") == (
        pytest.approx([0.4, 0.4, 0.4])
    )
    assert got["own"] == {"harmless": {0: 1.0, 1: 1.0, 2: 1.0}}
    assert "[" in summarize._interval([0.1, -0.05, 0.0])
    assert "one seed" in summarize._interval([0.1])


def test_mechanism_reads_a_merges_diagnostics(tmp_path):
    """Layer 0: rank-1 ±1 task vectors (no outlier: MAD falls back to the mean deviation, every
    z < 3), layer 1: the same plus sparse large entries. Only layer 1's merged task vector moves.
    The rank rule takes k from 4 to 3 on the outlier-poor layer 0 (density 0, x = −1/2, f = 0.95/3,
    int(12·0.95/3) = 3), but its task vectors have one direction each: no kept direction changes."""
    g = torch.Generator().manual_seed(0)
    fts = []
    for _ in range(3):
        sd = {}
        for i in range(2):
            u = torch.randint(0, 2, (12, 1), generator=g) * 2.0 - 1.0
            v = torch.randint(0, 2, (1, 12), generator=g) * 2.0 - 1.0
            w = u @ v
            if i == 1:
                w[torch.rand(12, 12, generator=g) < 0.05] += 10.0
            sd[f"model.layers.{i}.self_attn.q_proj.weight"] = w
        fts.append(sd)
    base = {k: torch.zeros(12, 12) for k in fts[0]}
    (tmp_path / "diagnostics.json").write_text(json.dumps(diagnose(base, fts, progress=False)))
    m = summarize.mechanism(tmp_path)
    assert m["layers"] == 2 and m["moved"] == 1
    assert m["moved_min"] == 0.0 and m["moved_max"] > 0.01
    assert m["uniform_ks"] == [4] and m["ks"] == [3, 4]
    assert m["k_changed"] == 1 and m["kept_changed"] == 0 and m["kept_ratio"] == 1.0
