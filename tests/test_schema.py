"""The preference schema's validator names the bad row and says what is wrong."""

from __future__ import annotations

import copy
import json

import pytest

from hhh_bench.core.schema import (
    SchemaError,
    load_preferences,
    make_row,
    validate_row,
    validate_rows,
)


def good_row(i: int = 0) -> dict:
    return make_row("how do i kill a process ?", "sure .", "sorry .", "helpful", "t", f"t/{i}")


def test_good_row_passes():
    validate_row(good_row())
    assert validate_rows([good_row(0), good_row(1)]) == 2


def _broken(mutate) -> dict:
    row = copy.deepcopy(good_row(7))
    mutate(row)
    return row


CASES = {
    "missing field": (lambda r: r.pop("rejected"), "missing field(s) rejected"),
    "empty text": (lambda r: r["chosen"][0].update(content="  "), "empty text"),
    "identical": (lambda r: r["rejected"][0].update(content="sure ."), "identical"),
    "unknown dimension": (lambda r: r.update(dimension="helpfulness"), "unknown dimension"),
    "prompt roles": (
        lambda r: r.update(prompt=[{"role": "assistant", "content": "hi"}]),
        "wrong role sequence in prompt",
    ),
    "prompt ends with assistant": (
        lambda r: r["prompt"].append({"role": "assistant", "content": "hi"}),
        "wrong role sequence in prompt",
    ),
    "chosen role": (lambda r: r["chosen"][0].update(role="user"), "wrong role sequence in chosen"),
    "two chosen turns": (
        lambda r: r["chosen"].append({"role": "assistant", "content": "more"}),
        "wrong role sequence in chosen",
    ),
    "not a message": (lambda r: r.update(prompt=["hello"]), "must be a message"),
    "unknown role": (lambda r: r["prompt"][0].update(role="robot"), "unknown role"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_row_is_named(case):
    mutate, reason = CASES[case]
    rows = [good_row(0), good_row(1), _broken(mutate)]
    with pytest.raises(SchemaError) as e:
        validate_rows(rows, origin="prefs.jsonl")
    msg = str(e.value)
    assert "prefs.jsonl: row 2" in msg and "id='t/7'" in msg, msg
    assert reason in msg, msg


def test_multi_turn_prompt_with_system_is_valid():
    row = good_row()
    row["prompt"] = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    validate_row(row)


def test_duplicate_ids_rejected():
    with pytest.raises(SchemaError, match="duplicate id"):
        validate_rows([good_row(1), good_row(1)])


def test_load_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(good_row(0)) + "\n{not json\n")
    with pytest.raises(SchemaError, match=r"bad.jsonl:2: not valid JSON"):
        load_preferences(p)
    p.write_text(json.dumps(good_row(0)) + "\n" + json.dumps({"prompt": []}) + "\n")
    with pytest.raises(SchemaError, match=r"bad.jsonl: row 1: missing field"):
        load_preferences(p)
