"""The results store: append, load as a DataFrame, dedupe by row_key, survive a torn line."""

from __future__ import annotations

import json
import threading

import pytest

from hhh_bench.tracking.store import append_result, load_results, read_results


def row(key: str, avg: float = 0.5, **kw):
    return {
        "row_key": key,
        "name": key,
        "kind": "merge",
        "method": "ties",
        "params": {"density": 0.2},
        "seed": 0,
        "split": "test",
        "tasks": {"t": {"acc": avg, "acc_stderr": 0.01, "n": 10}},
        "helpful": avg,
        "honest": avg,
        "harmless": avg,
        "average": avg,
        "min": avg,
        **kw,
    }


def test_append_load_dedupe_and_skip_unchanged(tmp_path):
    path = tmp_path / "sub" / "results.jsonl"
    assert load_results(path).empty
    assert append_result(path, row("a", 0.5))
    assert append_result(path, row("b", 0.6))
    assert not append_result(path, row("b", 0.6, timings={"eval_s": 9.0}))  # same content
    assert append_result(path, row("a", 0.7))  # a re-scored model supersedes its row
    assert len(path.read_text().splitlines()) == 3
    df = load_results(path)
    assert list(df["row_key"]) == ["a", "b"]
    assert df.set_index("row_key").loc["a", "average"] == 0.7
    assert df.loc[0, "params"] == {"density": 0.2}
    flat = load_results(path, flatten=True)
    assert flat.loc[0, "tasks.t.acc"] == 0.7 and flat.loc[0, "params.density"] == 0.2
    assert len(load_results(path, dedupe=False)) == 3


def test_a_store_read_between_appends_reads_as_a_fresh_parse(tmp_path):
    """The reader parses only the lines an append added (issue 29: the store is read once per
    evaluated model); what it returns is what a fresh process reads, line numbers included, and
    a line changed in place is parsed again, and refused when invalid."""
    from hhh_bench.tracking import store

    path = tmp_path / "results.jsonl"
    for i, key in enumerate("abcab"):
        append_result(path, row(key, 0.1 * (i + 1)))
        got = store.scan_results(path)
        store._PARSED.clear()
        fresh = store.scan_results(path)
        assert (got.rows, got.lines) == (fresh.rows, fresh.lines)
    assert [r["average"] for r in read_results(path)] == pytest.approx([0.4, 0.5, 0.3])
    # where: asked after dedupe, of the rows as stored; only those copied
    assert [r["row_key"] for r in read_results(path, where=lambda r: r["average"] > 0.35)] == [
        "a",
        "b",
    ]
    got = read_results(path, where=lambda r: r["row_key"] == "c")
    got[0]["params"]["density"] = 9.0  # a caller's copy: the memo is not changed
    assert read_results(path, where=lambda r: r["row_key"] == "c")[0]["params"]["density"] == 0.2
    text = path.read_text()
    path.write_text(text.replace('"helpful": 0.3', '"helpful": 3.0', 1))  # edited in place
    with pytest.raises(store.StoreError, match="line 3"):
        read_results(path)


def test_torn_last_line_is_ignored_with_a_warning_and_the_next_append_is_clean(tmp_path):
    path = tmp_path / "results.jsonl"
    append_result(path, row("a"))
    with open(path, "a") as f:  # a crash in the middle of a write
        f.write(json.dumps(row("b"))[:40])
    with pytest.warns(RuntimeWarning, match="ignoring its last line, cut short"):
        assert [r["row_key"] for r in read_results(path)] == ["a"]
    with pytest.warns(RuntimeWarning, match=r"last line was cut short .* moved to .*\.torn"):
        append_result(path, row("c"))
    # the fragment is kept beside the store, which reads clean (no warning)
    assert (tmp_path / "results.jsonl.torn").read_text() == json.dumps(row("b"))[:40] + "\n"
    assert [r["row_key"] for r in read_results(path)] == ["a", "c"]


def test_rows_are_validated_and_made_json_safe(tmp_path):
    path = tmp_path / "results.jsonl"
    with pytest.raises(ValueError, match="kind 'merged'"):
        append_result(path, row("a", kind="merged"))
    with pytest.raises(ValueError, match=r"lacks field\(s\) \['helpful'\]"):
        append_result(path, {k: v for k, v in row("a").items() if k != "helpful"})
    append_result(path, row("a", delta_min=float("nan"), artifacts={"model": tmp_path}))
    r = read_results(path)[0]
    assert r["delta_min"] is None and r["artifacts"]["model"] == str(tmp_path)
    assert "created_at" in r


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "results.jsonl"
    threads = [
        threading.Thread(
            target=lambda i=i: [append_result(path, row(f"{i}-{j}")) for j in range(20)]
        )
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(read_results(path)) == 80


def test_each_stored_row_is_identified_once_per_process(tmp_path, monkeypatch):
    """A pipeline reads its store once per evaluated model: hashing every row's configuration on
    every read made a cached rerun quadratic in its rows. A row's identity is computed once (the
    memo's rows are never changed), and a row appended since is read with its own."""
    from hhh_bench.tracking import store

    path = tmp_path / "results.jsonl"
    for k in "abc":
        append_result(path, row(k))
    calls = []
    real = store.row_identity
    monkeypatch.setattr(store, "row_identity", lambda r: calls.append(r["row_key"]) or real(r))
    store._IDENTITIES.clear()
    for _ in range(5):
        assert [r["row_key"] for r in read_results(path)] == ["a", "b", "c"]
    assert sorted(calls) == ["a", "b", "c"]
    append_result(path, row("a", 0.9))  # supersedes a: the latest row, under a's place
    got = read_results(path)
    assert [(r["row_key"], r["average"]) for r in got] == [("a", 0.9), ("b", 0.5), ("c", 0.5)]
