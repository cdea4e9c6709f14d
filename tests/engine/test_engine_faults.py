"""The engine under bad inputs and faults (issue 15): nothing lost, nothing wrong, clear and early
errors. Each test names the failure it guards against."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hhh_bench.merging.engine import merge_models, parse_size
from hhh_bench.models import TinyModelSpec, build_tiny_model, build_word_tokenizer

WORDS = [chr(c) for c in range(ord("a"), ord("q"))]
SPEC = TinyModelSpec(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=2, max_position_embeddings=16)  # fmt: skip


@pytest.fixture()
def models(tmp_path):
    tok = build_word_tokenizer(WORDS)
    build_tiny_model(SPEC, tok, seed=0).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    g = torch.Generator().manual_seed(1)
    fts = []
    for i in range(2):
        m = build_tiny_model(SPEC, tok, seed=0)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        m.save_pretrained(tmp_path / f"ft{i}")
        fts.append(tmp_path / f"ft{i}")
    return tmp_path / "base", fts


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _sd(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


# -- nothing lost --------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["base", "ft", "inside", "parent"])
def test_out_dir_never_touches_an_input_even_with_overwrite(models, which):
    base, fts = models
    target = {
        "base": base,
        "ft": fts[1],
        "inside": fts[0] / "merged",
        "parent": base.parent,
    }[which]
    before = {p: digest(p) for p in (base, *fts)}
    with pytest.raises(ValueError, match="would overwrite an input model"):
        merge_models("task_arithmetic", base, fts, target, overwrite=True, progress=False)
    assert {p: digest(p) for p in (base, *fts)} == before


def test_out_dir_never_the_cache(models, tmp_path):
    base, fts = models
    with pytest.raises(ValueError, match="would overwrite the sweep cache"):
        merge_models(
            "tsv", base, fts, tmp_path / "c" / "out", cache_dir=tmp_path / "c", progress=False
        )


def test_overwrite_replaces_only_an_earlier_merge(models, tmp_path):
    base, fts = models
    other = tmp_path / "my_notes"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not the output of an hhh-bench merge"):
        merge_models("task_arithmetic", base, fts, other, overwrite=True, progress=False)
    assert (other / "thesis.tex").read_text() == "precious"
    out = tmp_path / "merged"
    merge_models("task_arithmetic", base, fts, out, progress=False)
    merge_models("task_arithmetic", base, fts, out, overwrite=True, scaling=0.5, progress=False)
    assert json.loads((out / "merge_info.json").read_text())["params"]["scaling"] == 0.5


def test_a_second_merge_into_a_claimed_out_dir_fails_at_once(models, tmp_path):
    """The lock of a live merge (here: this process's own pid) makes a second merge fail before
    any work; the folder and the lock are left to their owner."""
    base, fts = models
    out = tmp_path / "out"
    lock = tmp_path / ".out.lock"
    lock.write_text(f"{os.getpid()}@{__import__('socket').gethostname()}")
    t0 = time.time()
    with pytest.raises(FileExistsError, match="another merge .* is writing"):
        merge_models("task_arithmetic", base, fts, out, progress=False)
    assert time.time() - t0 < 30 and not out.exists() and lock.is_file()


SLOW_MERGE = textwrap.dedent(
    """
    import sys, time
    from hhh_bench.merging import merge_function
    from hhh_bench.merging.engine import merge_models

    @merge_function("slow_sum")
    def slow_sum(taus, weights, params):
        time.sleep(0.5)
        return (weights * taus).sum(0)

    merge_models("slow_sum", sys.argv[1], sys.argv[2:4], sys.argv[4], progress=False)
    """
)


def test_sigkill_mid_merge_is_detected_and_cleaned(models, tmp_path):
    """A merge killed with SIGKILL leaves its lock and temporary folder; the next merge into the
    same out_dir removes both and completes (the killed one never wrote out_dir)."""
    base, fts = models
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_MERGE, str(base), *map(str, fts), str(out)],
    )
    lock = tmp_path / ".out.lock"
    deadline = time.time() + 120
    while not list(tmp_path.glob(".out.tmp-*")) and time.time() < deadline:
        assert proc.poll() is None, "the slow merge exited early"
        time.sleep(0.1)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lock.is_file() and list(tmp_path.glob(".out.tmp-*")) and not out.exists()
    merge_models("task_arithmetic", base, fts, out, progress=False)
    assert (out / "merge_info.json").is_file()
    assert not lock.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_dangling_symlink_out_dir_fails_before_any_work(models, tmp_path):
    base, fts = models
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="is a symlink"):
        merge_models("task_arithmetic", base, fts, link, progress=False)
    assert not list(tmp_path.glob(".link*"))


# -- nothing wrong -------------------------------------------------------------------------------


def test_stray_safetensors_beside_the_model_is_not_read(models, tmp_path):
    base, fts = models
    want = merge_models("task_arithmetic", base, fts, tmp_path / "clean", progress=False)
    stray = {k: v + 100.0 for k, v in _sd(fts[0]).items()}
    save_file(stray, str(fts[0] / "optimizer_state.safetensors"))
    merge_models("task_arithmetic", base, fts, tmp_path / "with_stray", progress=False)
    a, b = _sd(tmp_path / "clean"), _sd(tmp_path / "with_stray")
    assert want.n_tensors == len(a) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_folder_without_model_safetensors_lists_its_candidates(models, tmp_path):
    base, fts = models
    odd = tmp_path / "odd"
    odd.mkdir()
    save_file(_sd(fts[0]), str(odd / "weights.safetensors"))
    (odd / "config.json").write_text((fts[0] / "config.json").read_text())
    with pytest.raises(
        ValueError, match=r"finetuned model 0 .*neither .*\['weights.safetensors'\]"
    ):
        merge_models("task_arithmetic", base, [odd], tmp_path / "o", progress=False)


def test_a_failed_background_write_fails_the_merge_and_leaves_nothing(
    models, tmp_path, monkeypatch
):
    """Tensors are written by a background thread: its error (a full disk) reaches the caller
    and the folder is discarded."""
    from hhh_bench.merging import engine

    base, fts = models
    calls = {"n": 0}
    real = os.pwrite

    def pwrite(fd, data, pos):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(fd, data, pos)

    monkeypatch.setattr(engine.os, "pwrite", pwrite)
    with pytest.raises(OSError, match=r"No space left on device \(writing '.*'\): '.*/\.o.*/model"):
        merge_models("ties", base, fts, tmp_path / "o", progress=False)  # the path named
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o*"))


@pytest.mark.parametrize("raised", ["OSError", "SafetensorError"])
def test_a_full_disk_in_the_sweep_cache_names_the_entry_and_leaves_nothing(
    models, tmp_path, monkeypatch, raised
):
    """safetensors' save_file names no file when the disk is full (issue 27; it raises its own
    SafetensorError, or an OSError): the error names the cache entry and how to turn the cache
    off; no output, no half-written entry."""
    import errno

    import safetensors.torch
    from safetensors import SafetensorError

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        if raised == "OSError":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise SafetensorError("Error while serializing: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    cache = tmp_path / "cache"
    with pytest.raises(
        OSError, match=rf"No space left on device.*\(writing a sweep cache entry; free space "
        rf"there, or merge_engine.cache_dir=null turns the cache off\): '{cache}/.*\.safetensors'"
    ):  # fmt: skip
        merge_models("ties", base := models[0], models[1], tmp_path / "o", cache_dir=cache,
                     progress=False)  # fmt: skip
    assert base.is_dir() and not (tmp_path / "o").exists() and not list(tmp_path.glob(".o*"))
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_a_density_that_keeps_nothing_fails_before_any_tensor_is_merged(models, tmp_path):
    """TIES at density 1e-9 keeps no entry of any tensor: an output equal to θ0 (issue 27).
    The engine refuses it from the shapes alone, naming the knob and the tensor; no output."""
    base, fts = models
    with pytest.raises(ValueError, match=r"'density' = 1e-09 keeps k = .* of tensor '.*norm"):
        merge_models("ties", base, fts, tmp_path / "o", density=1e-9, progress=False)
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o*"))


def test_overflow_to_inf_is_an_error_naming_the_tensor(models, tmp_path):
    base, fts = models
    with pytest.raises(
        ValueError,
        match=r"parameter '.*': the merged tensor in torch.float16 holds \d+ NaN/Inf value\(s\) "
        r"with merge parameter 'scaling' = 1e\+08",
    ):
        merge_models(
            "task_arithmetic",
            base,
            fts,
            tmp_path / "o",
            out_dtype="float16",
            scaling=1e8,
            progress=False,
        )
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))


def test_replaced_or_corrupted_cache_entries_are_recomputed(models, tmp_path, caplog):
    base, fts = models
    cache = tmp_path / "cache"
    first = merge_models("tsv", base, fts, tmp_path / "o1", cache_dir=cache, progress=False)
    entries = sorted(cache.glob("*/*.safetensors"))
    assert len(entries) >= 3
    shutil.copy(entries[1], entries[0])  # a valid file of another entry in its place
    entries[2].write_bytes(b"\x00garbage")  # a corrupted one
    with caplog.at_level("WARNING"):
        second = merge_models("tsv", base, fts, tmp_path / "o2", cache_dir=cache, progress=False)
    assert sum("failed its checksum" in r.message for r in caplog.records) == 2
    assert second.cache_misses == 2 and second.cache_hits == first.cache_misses - 2
    a, b = _sd(tmp_path / "o1"), _sd(tmp_path / "o2")
    assert all(torch.equal(a[k], b[k]) for k in a)
    third = merge_models("tsv", base, fts, tmp_path / "o3", cache_dir=cache, progress=False)
    assert third.cache_misses == 0  # the recomputed entries are good again


def test_different_model_type_with_equal_shapes_is_refused(models, tmp_path):
    base, fts = models
    other = tmp_path / "mistral_like"
    shutil.copytree(fts[0], other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "mistral"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type 'mistral' but the base has 'llama'"):
        merge_models("task_arithmetic", base, [other], tmp_path / "o", progress=False)
    merge_models(
        "task_arithmetic",
        base,
        [other],
        tmp_path / "o",
        allow_architecture_mismatch=True,
        progress=False,
    )


@pytest.mark.parametrize(("field", "value"), [("rope_theta", 1234.0), ("rms_norm_eps", 0.1),
                                             ("num_hidden_layers", 3)])  # fmt: skip
def test_another_variant_of_the_architecture_is_refused(models, tmp_path, field, value):
    """Battery 8: a finetuned model whose config.json says rope_theta=1234 (or another norm
    epsilon, or 3 layers) was merged without a word into the base's config."""
    base, fts = models
    other = tmp_path / "variant"
    shutil.copytree(fts[0], other)
    cfg = json.loads((other / "config.json").read_text())
    cfg[field] = value
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=rf"has {field}={value!r} in its config.json but the base "
                       r"has .*allow_architecture_mismatch=true"):  # fmt: skip
        merge_models("task_arithmetic", base, [other], tmp_path / "o", progress=False)
    merge_models("task_arithmetic", base, [other], tmp_path / "o",
                 allow_architecture_mismatch=True, progress=False)  # fmt: skip


def test_truncated_shard_is_named_before_any_work(models, tmp_path):
    base, fts = models
    bad = tmp_path / "truncated"
    shutil.copytree(fts[0], bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ValueError,
        match=r"finetuned model 0 \(.*truncated\): model.safetensors is not a readable safetensors file",
    ):
        merge_models("task_arithmetic", base, [bad], tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


def test_a_file_truncated_after_it_was_opened_is_named_when_read(models, tmp_path):
    from hhh_bench.merging.sources import SafetensorsModel

    folder = tmp_path / "shrinks"
    shutil.copytree(models[1][0], folder)
    src = SafetensorsModel(folder, "finetuned model 0")  # the header is read and checked here
    last = max(src.keys(), key=lambda k: src._spans[k][0])
    f = folder / "model.safetensors"
    os.truncate(f, f.stat().st_size - 4)
    with pytest.raises(ValueError, match=rf"finetuned model 0 .*{last!r}.*ends 4 bytes early"):
        src.get(last)  # an error, never a SIGBUS from a map past the file's end


def test_a_tensor_read_from_a_model_never_writes_through_to_its_file(models, tmp_path):
    from hhh_bench.merging.sources import SafetensorsModel, read_bytes

    folder = tmp_path / "kept"
    shutil.copytree(models[0], folder)
    before = digest(folder)
    src = SafetensorsModel(folder, "base")
    key = src.keys()[0]
    t = src.get(key)
    expected = load_file(str(folder / "model.safetensors"))[key]
    assert torch.equal(t, expected)
    t.add_(1.0)  # copy-on-write: the process's own page changes, the file does not
    assert torch.equal(src.get(key), expected)
    assert digest(folder) == before
    # bytes that do not start 8-aligned are read, not mapped, and are the same bytes
    f = folder / "model.safetensors"
    raw = f.read_bytes()
    for off in (8, 9, 4099):
        assert bytes(read_bytes(f, off, 100).numpy()) == raw[off : off + 100]


# -- clear and early -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [
        ("2GB", 2 * 10**9),
        ("2 GiB", 2 << 30),
        ("500MB", 500 * 10**6),
        ("1.5G", 1_500_000_000),
        ("64KiB", 64 << 10),
        (4096, 4096),
    ],
)
def test_shard_sizes_in_the_usual_forms(text, nbytes):
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("text", ["two gigs", "-1", 0, "GB", True])
def test_bad_shard_sizes_are_named(text):
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size(text)


def test_bad_arguments_fail_before_any_input_is_read(models, tmp_path, monkeypatch):
    base, fts = models
    import hhh_bench.merging.engine as engine

    def no_reads(*a, **k):
        raise AssertionError("an input was opened")

    monkeypatch.setattr(engine, "open_inputs", no_reads)
    cases = [
        ({"finetuned": str(fts[0])}, "finetuned must be a list"),
        ({"max_shard_size": "huge"}, "max_shard_size"),
        ({"out_dtype": "int8"}, "out_dtype"),
        ({"vocab_policy": "pad"}, "vocab_policy"),
        ({"density": 2.0, "method": "ties"}, "density"),
        ({"scaling": float("nan")}, "scaling"),
        ({"weights": [1.0]}, "weights"),
    ]
    for kw, match in cases:
        args = {
            "method": "task_arithmetic",
            "base": base,
            "finetuned": fts,
            "out_dir": tmp_path / "o",
            "progress": False,
            **kw,
        }
        with pytest.raises(ValueError, match=match):
            merge_models(**args)
