"""Issue 27, bad local source files: each fails naming the source, the file and (where there is
one) the line, before ``datasets`` reads it; a pair repeated in the raw file is dropped and
counted (``dropped_duplicates`` in the source's stats and the data manifest)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from hhh_bench.data.sources import (
    SourceConfigError,
    build_preference_sets,
    load_source,
    load_source_config,
)

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "sources"
GOOD = (ASSETS / "hh_rlhf_helpful_base.jsonl").read_bytes()
FIRST = GOOD.splitlines()[0]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def load(path: Path, tmp_path: Path):
    cfg = {**load_source_config("hh_rlhf_helpful"), "path": str(path)}
    return load_source(cfg, tmp_path / "cache")


def truncated_gz(data: bytes) -> bytes:
    whole = gzip.compress(data)
    return whole[: len(whole) // 2]


# name: (file name, bytes, what the message says)
BAD_FILES = {
    "empty": ("raw.jsonl", b"", r"is empty \(0 bytes\)"),
    "array line": ("raw.jsonl", FIRST + b"\n[1, 2]\n", r", line 2: a JSON array"),
    "string line": ("raw.jsonl", FIRST + b'\n"text"\n', r", line 2: a JSON string"),
    "non-UTF-8": ("raw.jsonl", FIRST + b'\n{"chosen": "caf\xe9"}\n', r", line 2: not UTF-8 \(byte 0xe9"),
    "broken JSON": ("raw.jsonl", FIRST + b'\n{"chosen": \n', r", line 2: not valid JSON"),
    "truncated gz": ("raw.jsonl.gz", truncated_gz(GOOD * 20), r"cannot be decompressed .*truncated"),
    "white space only": ("raw.jsonl", b"\n \n", r"holds no data"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_source_file_names_the_source_file_and_line(tmp_path, case):
    name, data, what = BAD_FILES[case]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(SourceConfigError, match=what) as err:
        load(path, tmp_path)
    assert "source 'hh_rlhf_helpful'" in str(err.value) and str(path) in str(err.value)


def test_a_good_gz_and_a_json_array_document_still_load(tmp_path):
    gz = tmp_path / "raw.jsonl.gz"
    gz.write_bytes(gzip.compress(GOOD))
    plain, _ = load(ASSETS / "hh_rlhf_helpful_base.jsonl", tmp_path)
    assert load(gz, tmp_path)[0] == plain
    doc = tmp_path / "raw.json"  # one JSON document: a list of records
    doc.write_text(json.dumps([json.loads(line) for line in GOOD.splitlines()]))
    assert len(load(doc, tmp_path)[0]) == len(plain)


def test_a_repeated_row_is_dropped_with_a_count(tmp_path, caplog):
    """The same row 22 times: one pair, 21 dropped and counted, in the source's stats and the
    data manifest (it used to end in `no preference pairs to train on`)."""
    path = tmp_path / "raw.jsonl"
    path.write_bytes(FIRST + b"\n" + (FIRST + b"\n") * 21)
    rows, stats = load(path, tmp_path)
    assert len(rows) == 1 and stats["dropped_duplicates"] == 21 and stats["rows_kept"] == 1
    # the file named, and of how many pairs (battery 9, 16)
    assert f"source 'hh_rlhf_helpful' ({path}): dropped 21 repeated pair(s) of 22" in caplog.text
    cfg = {"kind": "sources", "dimensions": ["helpful"], "cache_dir": str(tmp_path / "c"),
           "sources": {"helpful": [{"name": "hh_rlhf_helpful", "path": str(path)}]}}  # fmt: skip
    sets, manifest = build_preference_sets(cfg)
    assert len(sets["helpful"]) == 1
    assert manifest["dropped_duplicates"] == 21
    assert manifest["sources"]["hh_rlhf_helpful"]["dropped_duplicates"] == 21
