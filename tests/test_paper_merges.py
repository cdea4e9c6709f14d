"""The paper experiments' merges (issue 31): experiments/paper_llama3/README.md's table says which
of them the paper certainly compares and which are inferred; the table, the two experiments'
merge grids and the method registry must name the same methods."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import compose

README = Path(__file__).resolve().parents[1] / "experiments" / "paper_llama3" / "README.md"


def _table() -> dict[str, str]:
    text = README.read_text()
    section = text.split("## The paper's merges", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (certain|inferred) \|", section, flags=re.M)
    return dict(rows)


def test_the_table_says_certain_only_for_what_the_description_names():
    table = _table()
    assert {m for m, s in table.items() if s == "certain"} == {"tsv", "resm"}
    assert len(table) >= 13  # at least the paper's 12 training-free merges and its own method


@pytest.mark.parametrize("experiment", ["paper_llama3", "paper_mistral"])
def test_each_paper_experiment_runs_exactly_the_tables_merges(experiment):
    from hhh_bench.merging import list_methods

    grid = compose([f"experiment={experiment}"]).pipeline.merge_grid
    table = _table()
    assert set(grid) == set(table), "README table and conf/pipeline/paper.yaml disagree"
    assert set(table) <= set(list_methods())
