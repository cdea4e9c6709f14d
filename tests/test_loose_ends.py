"""The loose ends of the middle-layer review (issue 16), each with a test that failed before."""

from __future__ import annotations

import math

import pytest


def _row(**scores):
    base = {"helpful": 0.5, "honest": 0.5, "harmless": 0.5, "average": 0.5, "min": 0.5}
    return {"row_key": "r", "experiment": "x", "split": "test", "suite": "toy3h", "metric": "acc",
            "name": "base", "kind": "base", "seed": 0, **base, **scores}  # fmt: skip


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, True, "0.5"])
def test_store_refuses_non_finite_or_boolean_scores(tmp_path, bad):
    from hhh_bench.tracking.store import append_result

    with pytest.raises(ValueError, match=r"helpful = .* is not a finite number"):
        append_result(tmp_path / "results.jsonl", _row(helpful=bad))
    assert not (tmp_path / "results.jsonl").exists()


def test_write_jsonl_leaves_nothing_behind_when_it_fails(tmp_path):
    from hhh_bench.core.schema import write_jsonl

    def rows():
        yield {"a": 1}
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_jsonl(tmp_path / "out.jsonl", rows())
    assert list(tmp_path.iterdir()) == []
    assert write_jsonl(tmp_path / "out.jsonl", [{"a": 1}, {"b": 2}]) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


@pytest.mark.parametrize(
    ("chosen", "rejected"),
    [
        ("Paris is the capital.", "Paris\u00a0is the capital."),  # no-break space
        ("Paris is the capital.", "Paris is\u200b the capital."),  # zero-width space
        (
            "Paris is the capital.",
            "Paris  is the\tcapital.\u2060",
        ),  # runs of white space, word joiner
        ("ﬁne", "fine"),  # NFKC: the ligature reads the same
    ],
)
def test_chosen_and_rejected_that_read_the_same_are_refused(chosen, rejected):
    from hhh_bench.core.schema import SchemaError, validate_row

    row = {
        "id": "x1", "source": "t", "dimension": "helpful",
        "prompt": [{"role": "user", "content": "Capital of France?"}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }  # fmt: skip
    with pytest.raises(SchemaError, match="identical to rejected"):
        validate_row(row)
    row["rejected"][0]["content"] = "Lyon is the capital."
    validate_row(row)
