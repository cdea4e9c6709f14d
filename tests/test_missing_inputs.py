"""A stage whose inputs do not exist says so before it computes them (issue 18): `stage=eval` in
a fresh root trains θ0 first, `stage=merge` trains the specialists first, each after a console
line naming what is missing, which stage needs it and which stage runs unasked. The training
itself is replaced by a stub that stops the run, so the test trains nothing."""

from __future__ import annotations

import re

import pytest

from conftest import SMALL_WORLD, compose


class Stop(Exception):
    """Raised where the training would start."""


def _stop(*args, **kwargs):
    raise Stop


def _lines(out: str) -> list[str]:
    """The console's lines, a job line's counter (``[3]``, ``[3/7]``) and timing (``| 0:01
    elapsed``) left out."""
    lines = [re.sub(r"^\[\s*\d+(/\d+)?\] ", "", x) for x in out.splitlines() if x.strip()]
    return [re.sub(r" \| \d+:\d\d elapsed.*$", "", x) for x in lines]


def test_eval_in_a_fresh_root_says_it_trains_the_base_first(tmp_path, monkeypatch, capsys):
    import hhh_bench.stages.base as base_stage
    from hhh_bench.pipeline import run

    monkeypatch.setattr(base_stage, "_build_or_load", _stop)
    cfg = compose([f"root={tmp_path}", "logger=none", "threads=1", "stage=eval", *SMALL_WORLD])
    with pytest.raises(Stop):
        run(cfg)
    lines = _lines(capsys.readouterr().out)
    assert lines[-1:] == [
        f"base: missing (stage=eval needs it; {tmp_path / 'base'} has none for this config): "
        "running stage=base first, unasked",
    ], lines
    assert not list((tmp_path / "base").glob("[!.]*"))  # stopped before anything was written


def test_merge_without_specialists_says_it_trains_them_first(tmp_path, monkeypatch, capsys):
    import hhh_bench.pipeline as pipeline
    import hhh_bench.train.run as train_run

    monkeypatch.setattr(
        pipeline, "_base", lambda cfg, data: {"path": str(tmp_path), "key": "b", "content": "b"}
    )
    monkeypatch.setattr(train_run, "train_model", _stop)
    cfg = compose([f"root={tmp_path}", "logger=none", "threads=1", "stage=merge", *SMALL_WORLD])
    with pytest.raises(Stop):
        pipeline.run(cfg)
    lines = _lines(capsys.readouterr().out)
    assert lines[-1:] == [
        f"train helpful-specialist: missing (stage=merge needs it; {tmp_path / 'train'} has "
        "none for this config): running stage=train first, unasked",
    ], lines


def test_only_missing_upstream_outputs_are_announced(tmp_path, capsys):
    """The line comes with a computed upstream stage, not with a reused one, not with the stage
    asked for, and not in stage=all (which asks for everything)."""
    from hhh_bench.core.stagecache import CACHE, cached_stage

    def once(stage: str) -> list[str]:
        cached_stage(tmp_path, stage, {"x": 1}, lambda tmp: {}, result_file="r.json")
        return [re.sub(r"ran \d+\.\d s", "ran X s", x) for x in _lines(capsys.readouterr().out)]

    def out(stage: str) -> str:
        return str(tmp_path / stage / cached_key(tmp_path, stage))

    CACHE.reset()
    CACHE.asked, CACHE.upstream = "merge", frozenset({"base", "train"})
    first = once("base")
    assert first[0].startswith("base: missing (stage=merge needs it;")
    assert first[1:] == [f"base: ran X s, {out('base')}"]  # one line when it is done
    assert once("base") == [f"base: cached, {out('base')}"]
    assert once("merge") == [f"merge: ran X s, {out('merge')}"]
    CACHE.reset()  # stage=all: nothing upstream
    assert once("train") == [f"train: ran X s, {out('train')}"]


def cached_key(root, stage: str) -> str:
    (folder,) = [p.name for p in (root / stage).iterdir() if not p.name.startswith(".")]
    return folder


def test_a_truncated_result_file_is_named_or_recomputed(tmp_path, capsys):
    """A stage output whose manifest.json was written truncated (its checksums.json then matches
    it: a full disk mid-write) used to end in a JSONDecodeError naming no file (issue 27): now an
    error naming the output and the file, or, with cache.on_mismatch=recompute, a new output."""
    from hhh_bench.core.content import ContentMismatch, write_manifest
    from hhh_bench.core.stagecache import CACHE, cached_stage

    def once() -> dict:
        run = cached_stage(tmp_path, "data", {"x": 1}, lambda tmp: {"rows": 3},
                           result_file="manifest.json")  # fmt: skip
        return run.info

    CACHE.reset()
    assert once() == {"rows": 3}
    out = tmp_path / "data" / cached_key(tmp_path, "data")
    (out / "manifest.json").write_text('{"rows": ')
    write_manifest(out, "manifest.json")
    with pytest.raises(ContentMismatch, match=rf"cached output {out}: its manifest.json is "
                       r"unreadable or truncated \(Expecting value"):  # fmt: skip
        once()
    (out / "manifest.json").write_text("[3]")
    write_manifest(out, "manifest.json")
    with pytest.raises(ContentMismatch, match=r"its manifest.json is not a JSON object"):
        once()
    try:
        CACHE.on_mismatch = "recompute"
        assert once() == {"rows": 3}
    finally:
        CACHE.reset()
    assert "its manifest.json is not a JSON object: recomputing" in capsys.readouterr().out


def test_a_full_disk_while_a_stage_writes_names_its_output_and_keeps_nothing(tmp_path):
    """``write`` names no file when the disk is full: the error names the stage output."""
    import errno

    from hhh_bench.core.stagecache import CACHE, cached_stage

    def compute(tmp):
        (tmp / "part.jsonl").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device")

    CACHE.reset()
    with pytest.raises(OSError, match=rf"\(writing a stage output\): '{tmp_path}/data/\w+'") as e:
        cached_stage(tmp_path, "data", {"x": 2}, compute, result_file="manifest.json")
    assert e.value.errno == errno.ENOSPC
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
