"""Content identity (hhh_bench.core.content), checked against independent formulations: the file
digest is BLAKE3 of the bytes, a tensor's digest is XXH3-128 of its own bytes, a folder's
identity does not depend on where it lies, the hash cache never re-reads an unchanged file, and
a verified folder re-hashes nothing whose stat record matches."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import blake3
import pytest
import torch
import xxhash
from safetensors.torch import save_file

import hhh_bench.core.codeid as codeid
import hhh_bench.core.content as content


def _model(folder: Path) -> dict[str, torch.Tensor]:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    sd = {
        "w": torch.randn(300, 200, generator=g),
        "b": torch.randn(7, generator=g),
        "empty": torch.zeros(0),
        "h": torch.randn(1200, 500, generator=g).bfloat16(),  # spans several 1 MiB pieces
    }
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"model_type": "llama"}\n')
    (folder / "tokenizer.model").write_bytes(b"\x00\x01sentencepiece")
    return sd


def test_file_and_tensor_digests_match_an_independent_computation(tmp_path):
    sd = _model(tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    got = content.hash_file(f)
    assert got["blake3"] == blake3.blake3(f.read_bytes()).hexdigest()
    for k, v in sd.items():
        raw = v.contiguous().view(torch.uint8).numpy().tobytes()
        assert got["tensors"][k] == xxhash.xxh3_128_hexdigest(raw), k
    assert content.hash_file(f, tensors=False)["tensors"] is None
    other = content.hash_file(tmp_path / "m" / "config.json")
    assert (
        other["tensors"] is None
        and other["blake3"] == blake3.blake3(b'{"model_type": "llama"}\n').hexdigest()
    )


def test_folder_identity_is_by_content_not_location_and_sees_every_file(tmp_path):
    _model(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    cache = content.HashCache(tmp_path / "hashes")
    ida = content.folder_identity(tmp_path / "a", cache)
    assert ida == content.folder_identity(tmp_path / "b", cache)
    (tmp_path / "b" / "tokenizer.model").write_bytes(b"another tokenizer")  # not only weights
    assert content.folder_identity(tmp_path / "b", cache) != ida
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "merges.txt").write_text("a b\n")
    before = content.folder_identity(tmp_path / "c", cache)
    (tmp_path / "c" / "merges.txt").write_text("a c\n")
    assert content.folder_identity(tmp_path / "c", cache) != before


def test_the_hash_cache_reads_an_unchanged_file_once(tmp_path, monkeypatch):
    _model(tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    os.utime(f, ns=(10**18, 10**18))  # written long before it is hashed (not "racy")
    calls = []
    real = content.hash_file
    monkeypatch.setattr(content, "hash_file", lambda p, **kw: calls.append(p) or real(p, **kw))
    cache = content.HashCache(tmp_path / "hashes")
    first = cache.digests(f)
    assert content.HashCache(tmp_path / "hashes").digests(f) == first  # another process
    assert len(calls) == 1
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    os.utime(f, ns=(1, 1))  # another mtime, whatever the clock's resolution
    assert cache.digests(f)["blake3"] != first["blake3"] and len(calls) == 2
    # a file modified just now is not remembered: a same-size rewrite within the timestamp
    # tick would keep its stat record (racy), so it is hashed again next time
    f.write_bytes(bytes(data))
    cache.digests(f)
    cache.digests(f)
    assert len(calls) == 4


def test_verify_rehashes_only_files_whose_stat_changed(tmp_path, monkeypatch):
    _model(tmp_path / "out")
    content.write_manifest(tmp_path / "out", None)
    v = content.verify(tmp_path / "out")
    assert not v.problems and v.rehashed == 0
    os.utime(tmp_path / "out" / "config.json", ns=(5, 5))  # touched, same bytes
    v = content.verify(tmp_path / "out", cache=content.HashCache(tmp_path / "h"))
    assert not v.problems and v.rehashed == 1
    (tmp_path / "out" / "config.json").write_text('{"model_type": "llamb"}\n')  # same size
    v = content.verify(tmp_path / "out")
    assert v.problems == ["config.json differs from the bytes recorded when it was written"]


def test_identity_leaves_metadata_and_annotations_out(tmp_path):
    _model(tmp_path / "o" / "model")
    (tmp_path / "o" / "result.json").write_text('{"seconds": 1.0}')
    (tmp_path / "o" / "provenance.json").write_text("{}")
    # where the cache writes it: <root>/<stage>/<key>, its key.json naming both
    record = {"stage": tmp_path.name, "key": "o"}
    (tmp_path / "o" / content.KEY_FILE).write_text(json.dumps(record))
    m = content.write_manifest(tmp_path / "o", "result.json")
    (tmp_path / "o2").mkdir()
    shutil.copytree(tmp_path / "o" / "model", tmp_path / "o2" / "model")
    (tmp_path / "o2" / "result.json").write_text('{"seconds": 2.0}')  # other timings
    assert content.write_manifest(tmp_path / "o2", "result.json").identity() == m.identity()
    # a merged model's card is rewritten by hhh-bench later: not verified, not identity
    (tmp_path / "o" / "model" / "README.md").write_text("# scores")
    assert not content.verify(tmp_path / "o").problems
    assert content.folder_identity(tmp_path / "o" / "model") == m.identity("model")
    # a copy elsewhere (a user's folder): hashed as a folder, never checked as a cached output
    shutil.copytree(tmp_path / "o", tmp_path / "mine")
    (tmp_path / "mine" / "model" / "extra.txt").write_text("the user's own file")
    assert content.folder_identity(tmp_path / "mine" / "model") != m.identity("model")
    # a copy of the whole output (its records and manifest with it) has the output's identity
    # while its artifacts are byte-identical (battery 11, m19: a copy of θ0 as a merge's base);
    # its records may differ, its artifacts may not
    (tmp_path / "mine" / "model" / "extra.txt").unlink()
    (tmp_path / "mine" / "model" / "README.md").unlink()
    assert content.folder_identity(tmp_path / "mine") == m.identity()
    (tmp_path / "mine" / "result.json").write_text('{"seconds": 3.0}')
    (tmp_path / "mine" / content.KEY_FILE).write_text("{}")
    assert content.folder_identity(tmp_path / "mine") == m.identity()
    (tmp_path / "mine" / "model" / "config.json").write_text('{"model_type": "llamb"}\n')
    assert content.folder_identity(tmp_path / "mine") != m.identity()


def test_keyable_drops_cache_folders_and_keys_paths_by_content(tmp_path):
    (tmp_path / "f.jsonl").write_text("{}\n")
    got = content.keyable(
        {"cache_dir": "/x", "a": [str(tmp_path / "f.jsonl"), "./no/such/path", "plain"]},
        frozenset({"cache_dir"}),
    )
    assert got == {"a": [{"content": content.folder_identity(tmp_path / "f.jsonl")},
                         "./no/such/path", "plain"]}  # fmt: skip


def test_keyable_keys_relative_paths_under_path_keys_and_globs_by_content(tmp_path, monkeypatch):
    """The second review: a relative ``model.path=mymodel`` (no ``./``), a rehearsal's relative
    source file, and a glob source path were keyed by their strings, so an edit was reused."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymodel").mkdir()
    (tmp_path / "mymodel" / "w.bin").write_bytes(b"1")
    (tmp_path / "hh_a.jsonl").write_text("{}\n")
    (tmp_path / "hh_b.jsonl").write_text("{}\n")
    cfg = {"path": "mymodel", "source_paths": {"hh": "hh_a.jsonl"}, "name": "mymodel",
           "sources": [{"name": "hh", "path": "hh_*.jsonl"}]}  # fmt: skip
    first = content.keyable(cfg)
    assert first["name"] == "mymodel"  # not a path-valued key: kept as written
    assert first["path"] == {"content": content.folder_identity(tmp_path / "mymodel")}
    assert first["source_paths"]["hh"] == {
        "content": content.folder_identity(tmp_path / "hh_a.jsonl")
    }
    assert first["sources"][0]["path"]["glob"] == "hh_*.jsonl"
    (tmp_path / "mymodel" / "w.bin").write_bytes(b"2")
    (tmp_path / "hh_b.jsonl").write_text('{"x": 1}\n')
    again = content.keyable(cfg)
    assert again["path"] != first["path"] and again["sources"] != first["sources"]
    assert again["source_paths"] == first["source_paths"]


def test_a_missing_or_truncated_manifest_is_named(tmp_path):
    _model(tmp_path / "o")
    with pytest.raises(content.ContentMismatch, match="has no checksums.json"):
        content.read_manifest(tmp_path / "o")
    content.write_manifest(tmp_path / "o")
    p = tmp_path / "o" / content.MANIFEST
    p.write_text(p.read_text()[:50])
    with pytest.raises(content.ContentMismatch, match=rf"{p}: unreadable or truncated"):
        content.read_manifest(tmp_path / "o")


def test_code_identity_hashes_our_files_and_never_a_librarys(tmp_path):
    """A library is in a key through its version: its files were hashed when it was named by a
    module object or a module name (issue 27), never by a class or a function."""
    import torch.nn.functional

    import hhh_bench.core.sizes as ours

    for item in (torch.nn.functional, "torch.nn.functional", "safetensors", torch.nn.Linear):
        assert codeid.code_identity(item)["files"] == {}, item
    got = codeid.code_identity(ours, "hhh_bench.core.sizes", codeid.code_identity)["files"]
    assert set(got) == {"hhh_bench/core/sizes.py", "hhh_bench/core/codeid.py"}
    assert (
        got["hhh_bench/core/sizes.py"]
        == blake3.blake3(Path(ours.__file__).read_bytes()).hexdigest()
    )
    from hhh_bench.stages.merge import merge_code  # TSV-M's bases include typing.Generic

    assert all(f.startswith("hhh_bench/") for f in merge_code("tsv")["files"])  # was: typing.py
