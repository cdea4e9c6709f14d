"""The verified stage cache (issue 26): every reuse is checked against the output's manifest,
keys hold content and code (never a location), and a merge checks what it read.

One row per case of the issue's table, each on its own copy of one small pipeline root (θ0 with
a short SFT, three specialists, a task-arithmetic merge, θ0's evaluation), so that a test's
tampering never reaches another test. Each of these failed on edaba64 (a reuse, or no error).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMALL_WORLD, compose

pytestmark = pytest.mark.e2e

QUICK = [w for w in SMALL_WORLD if not w.startswith("model.base_sft.epochs")] + [
    "model.base_sft.epochs=2",  # θ0 need not know its facts here: 2 epochs, ~2 s
    "logger=none",
    "threads=1",
    # a path setting inside the root, as conf/data/paper_3h.yaml has (edaba64 keyed data by it)
    "++data.cache_dir=${root}/.cache/hf_datasets",
]


def _cfg(root: Path, *more: str):
    return compose([f"root={root}", *QUICK, *more])


def _run(root: Path, *more: str) -> dict:
    from hhh_bench.pipeline import run

    return run(_cfg(root, *more))


def _counts() -> tuple[dict, dict]:
    from hhh_bench.core.stagecache import CACHE

    return dict(CACHE.misses), dict(CACHE.hits)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A finished small root: data, θ0, three specialists, a TA merge, θ0 evaluated."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pristine") / "root"
    _run(root, "stage=merge", "merge=task_arithmetic")
    _run(root, "stage=eval")
    return root


@pytest.fixture
def root(pristine, tmp_path) -> Path:
    """A private copy of the pristine root (copied files: new inodes and mtimes, so the first
    reuse re-hashes them, as after copying a root to another machine)."""
    dst = tmp_path / "copy"
    shutil.copytree(pristine, dst, symlinks=True)
    return dst


def _one(root: Path, stage: str) -> Path:
    (out,) = [p for p in (root / stage).iterdir() if not p.name.startswith(".")]
    return out


def _scale_first_tensor(path: Path, factor: float = 2.0, every: bool = False) -> None:
    from safetensors.torch import load_file, save_file

    sd = load_file(str(path))
    for k in sorted(sd) if every else sorted(sd)[:1]:
        sd[k] = sd[k] * factor
    save_file(sd, str(path), metadata={"format": "pt"})


def _specialists(root: Path) -> dict[str, Path]:
    out = {}
    for d in (root / "train").iterdir():
        if not d.name.startswith("."):
            info = json.loads((d / "train_info.json").read_text())
            out[info["dimensions"][0]] = d
    return out


# ---------------------------------------------------------------------------------------------
# Row 1: a tampered θ0 is never reused (train on it, or its eval row)


def test_row1_a_scaled_tensor_of_theta0_is_named_before_training(root):
    base = _one(root, "base")
    _scale_first_tensor(base / "model.safetensors")
    with pytest.raises(ValueError, match=rf"{re.escape(str(base))}.*model\.safetensors"):
        _run(root, "stage=train", "data.dimensions=[honest]")
    with pytest.raises(ValueError, match="model.safetensors"):
        _run(root, "stage=eval")  # θ0's cached evaluation is not served either


def test_row1_recompute_replaces_the_tampered_output_and_what_depends_on_its_content(
    root, pristine, capsys
):
    from hhh_bench.core.content import verify

    base = _one(root, "base")
    _scale_first_tensor(base / "model.safetensors")
    _run(root, "stage=train", "data.dimensions=[honest]", "cache.on_mismatch=recompute")
    # one line naming the stage, the folder (which seed's, among several) and the file
    assert re.search(rf"base.* \({re.escape(str(base))}\): model\.safetensors differs.*"
                     r"recomputing \(cache.on_mismatch=recompute\)", capsys.readouterr().out)  # fmt: skip
    assert not verify(base).problems  # replaced by a fresh θ0 under the same key
    misses, _ = _counts()
    assert misses.get("base") == 1
    # same config and seed: the recomputed θ0 has the pristine θ0's bytes and identity (no
    # wall-clock value among its artifacts), so the specialist trained on it is reused
    fresh, pristine_base = verify(base).manifest, verify(_one(pristine, "base")).manifest
    assert (base / "model.safetensors").read_bytes() == (
        _one(pristine, "base") / "model.safetensors"
    ).read_bytes()
    assert fresh.identity() == pristine_base.identity()
    assert misses.get("train", 0) == 0


# ---------------------------------------------------------------------------------------------
# Row 2: swapped specialists


def test_row2_swapped_specialist_weights_are_refused(root):
    sp = _specialists(root)
    a, b = sp["helpful"] / "model.safetensors", sp["honest"] / "model.safetensors"
    tmp = a.with_name("swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    with pytest.raises(ValueError, match="model.safetensors differs"):
        _run(root, "stage=train", "data.dimensions=[honest]")
    with pytest.raises(ValueError):
        _run(root, "stage=merge", "merge=task_arithmetic")


def test_row2_recompute_retrains_a_tampered_specialist_and_the_merge_is_reused(root, capsys):
    # same config and seed: the retrained specialist has the first one's bytes and identity
    # (its loss_curve.jsonl holds no wall-clock value), so the merge keyed by it is reused
    honest = _specialists(root)["honest"]
    before = (honest / "model.safetensors").read_bytes()
    _scale_first_tensor(honest / "model.safetensors")
    _run(root, "stage=merge", "merge=task_arithmetic", "cache.on_mismatch=recompute")
    assert "recomputing (cache.on_mismatch=recompute)" in capsys.readouterr().out
    misses, hits = _counts()
    assert misses.get("train") == 1 and (honest / "model.safetensors").read_bytes() == before
    assert misses.get("merge", 0) == 0 and hits.get("merge") == 1
    assert "_runtime" not in (honest / "loss_curve.jsonl").read_text()


# ---------------------------------------------------------------------------------------------
# Row 3: a merge corrupted in place


def test_row3_a_corrupted_merge_and_its_evaluation_are_not_reused(root):
    merged = _one(root, "merge")
    f = merged / "model" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte, size unchanged
    f.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model/model\.safetensors differs"):
        _run(root, "stage=merge", "merge=task_arithmetic")
    with pytest.raises(ValueError, match="model.safetensors"):
        _run(root, "stage=eval", f"+eval.model={merged / 'model'}")


def test_whole_folders_moved_or_linked_under_another_key_are_refused(root):
    """A whole specialist folder moved over another's (its own checksums match) or a symbolic
    link in place of an output: key.json names another key, or no cache wrote it."""
    sp = _specialists(root)
    helpful, honest = sp["helpful"], sp["honest"]
    shutil.rmtree(honest)
    shutil.copytree(helpful, honest)
    with pytest.raises(ValueError, match=rf"{re.escape(str(honest))}: its key.json is that of "
                       r"another output .*a folder moved or copied here"):  # fmt: skip
        _run(root, "stage=train", "data.dimensions=[honest]")
    shutil.rmtree(honest)
    honest.symlink_to(helpful, target_is_directory=True)
    with pytest.raises(ValueError, match=r"it is a symbolic link"):
        _run(root, "stage=merge", "merge=task_arithmetic")
    _run(root, "stage=train", "data.dimensions=[honest]", "cache.on_mismatch=recompute")
    assert not honest.is_symlink() and helpful.is_dir()  # the link replaced, its target kept
    assert json.loads((honest / "train_info.json").read_text())["dimensions"] == ["honest"]


def test_eval_items_read_by_the_report_are_verified_and_found_under_the_moved_root(root, tmp_path):
    """The second review: the report read an eval's items.jsonl unverified (the paired marks
    changed with an edit), and a moved or copied root read them at the old root's paths."""
    from hhh_bench.tracking.paired import row_context
    from hhh_bench.tracking.store import read_results

    moved = tmp_path / "moved"
    shutil.copytree(root, moved, symlinks=True)
    items = _one(root, "eval") / "items.jsonl"
    items.write_text(items.read_text().replace('"acc": 0.0', '"acc": 1.0'))
    (row,) = read_results(moved / "results.jsonl")
    assert row["artifacts"]["eval_dir"] == str(_one(moved, "eval"))  # its own folder
    assert row_context(row, memo=False)["items"]  # untouched there: read
    (row,) = read_results(root / "results.jsonl")
    with pytest.raises(ValueError, match=rf"{re.escape(str(items.parent))}.*items.jsonl"):
        row_context(row, memo=False)


def test_truncated_or_missing_files_and_added_files_are_named(root):
    from hhh_bench.core.content import MANIFEST, verify

    data = _one(root, "data")
    first = sorted((data / "prefs").iterdir())[0]
    first.write_bytes(first.read_bytes()[:-10])
    (data / "vocab.txt").unlink()
    (data / "extra.jsonl").write_text("{}\n")
    problems = verify(data).problems
    assert any(f"prefs/{first.name} has" in p and "truncated" in p for p in problems), problems
    assert any("vocab.txt is missing" in p for p in problems), problems
    assert any("extra.jsonl is not in its" in p for p in problems), problems
    base = _one(root, "base")
    (base / MANIFEST).write_text((base / MANIFEST).read_text()[:100])
    assert "unreadable or truncated manifest" in verify(base).problems[0]


# ---------------------------------------------------------------------------------------------
# Row 4: code in the key (plugins included); the report and the CLI are not


PLUGIN = """
from hhh_bench.merging import merge_function


@merge_function("scaled_tv_{tag}", summary="a plugin method")
def scaled_tv(taus, weights, params):
    return {factor} * (weights * taus).sum(dim=0)
"""


def test_row4_editing_a_plugin_method_recomputes_the_merge(root, tmp_path, monkeypatch):
    from hhh_bench.merging.base import METHODS

    plug = tmp_path / "plug"
    plug.mkdir()
    mod = plug / "hhh_plug_row4.py"
    mod.write_text(PLUGIN.format(tag="row4", factor="1.0"))
    monkeypatch.syspath_prepend(str(plug))
    args = ["stage=merge", "merge=task_arithmetic", "merge.method=scaled_tv_row4",
            "plugins=[hhh_plug_row4]"]  # fmt: skip
    try:
        first = _run(root, *args)["merge"]
        assert _run(root, *args)["merge"]["cached"]  # unchanged code: reused
        mod.write_text(PLUGIN.format(tag="row4", factor="0.5"))  # the user edits the method
        again = _run(root, *args)["merge"]
        assert not again["cached"] and again["key"] != first["key"]
        files = json.loads((Path(again["out_dir"]).parent / "key.json").read_text())
        assert "hhh_plug_row4.py" in files["payload"]["code"]["files"]
    finally:
        METHODS.remove("scaled_tv_row4")
        sys.modules.pop("hhh_plug_row4", None)


def test_row4_a_plugins_helper_modules_installed_plugins_and_task_yamls_are_in_the_key(
    tmp_path, monkeypatch
):
    """What the independent review found outside the keys: a helper module a plugin imports,
    a plugin installed in site-packages, the built-in eval tasks' YAMLs, and models/loading.py
    (how training loads θ0)."""
    import importlib

    from hhh_bench.core.codeid import code_identity
    from hhh_bench.stages.eval import EVAL_CODE
    from hhh_bench.stages.train import train_code

    local = tmp_path / "plug"
    local.mkdir()
    (local / "hhh_helper_k.py").write_text("FACTOR = 1.0\n")
    (local / "hhh_lazy_k.py").write_text("SHIFT = 0.0\n")
    (local / "hhh_plug_k.py").write_text(
        "import json\nfrom hhh_helper_k import FACTOR\n\ndef fn(x):\n"
        "    from hhh_lazy_k import SHIFT  # imported when called: not yet in sys.modules\n"
        "    return FACTOR * x + SHIFT\n"
    )
    site = tmp_path / "lib" / "site-packages"
    (site / "hhh_installed_k" / "ops").mkdir(parents=True)
    (site / "hhh_installed_k" / "__init__.py").write_text("from .ops.scale import scale\n")
    (site / "hhh_installed_k" / "ops" / "__init__.py").write_text("")
    (site / "hhh_installed_k" / "ops" / "scale.py").write_text("def scale(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(local))
    monkeypatch.syspath_prepend(str(site))
    names = ("hhh_plug_k", "hhh_helper_k", "hhh_lazy_k", "hhh_installed_k", "hhh_installed_k.ops",
             "hhh_installed_k.ops.scale")  # fmt: skip
    try:
        plug = importlib.import_module("hhh_plug_k")
        files = code_identity(plug.fn)["files"]
        assert set(files) == {"hhh_plug_k.py", "hhh_helper_k.py", "hhh_lazy_k.py"}, files
        assert "hhh_lazy_k" not in sys.modules  # found, never imported by the key
        installed = importlib.import_module("hhh_installed_k")
        files = code_identity(installed.scale)["files"]
        assert "hhh_installed_k/ops/scale.py" in files
        assert "hhh_installed_k/__init__.py" in files
        assert not any("json" in f for f in files)  # the standard library: never hashed
    finally:
        for n in names:
            sys.modules.pop(n, None)
    eval_files = code_identity(*EVAL_CODE)["files"]
    assert "hhh_bench/evaluation/tasks/toy3h/toy3h_honest_test.yaml" in eval_files
    assert "hhh_bench/evaluation/tasks/toy3h/_toy3h_template.yaml" in eval_files
    assert "hhh_bench/models/loading.py" in train_code(None)["files"]


def test_row4_every_key_holds_its_code_and_never_the_report_or_cli(pristine):
    from hhh_bench.core.content import KEY_FILE

    seen = set()
    for key_file in pristine.glob(f"*/*/{KEY_FILE}"):
        record = json.loads(key_file.read_text())
        code = record["payload"]["code"]
        core = {"torch", "transformers", "trl", "peft", "lm_eval"}
        # the data stage's text normalisation also depends on the data these two ship
        extra = (
            {"confusable-homoglyphs", "pyahocorasick"} if record.get("stage") == "data" else set()
        )
        assert set(code["versions"]) - extra == core, key_file
        assert set(code["versions"]) >= core
        assert code["hhh_bench"]
        assert code["files"], key_file
        assert not any(
            f.startswith(("hhh_bench/tracking/", "hhh_bench/cli")) for f in code["files"]
        )
        seen.add(record["stage"])
    assert seen == {"data", "base", "train", "merge", "eval", "diagnose"}
    merge = json.loads((_one(pristine, "merge") / KEY_FILE).read_text())
    assert "hhh_bench/merging/methods/task_arithmetic.py" in merge["payload"]["code"]["files"]
    assert "hhh_bench/merging/engine.py" in merge["payload"]["code"]["files"]


def test_row4_a_mixing_strategy_is_in_the_training_key():
    from hhh_bench.stages.train import train_code

    code = train_code({"name": "uniform"})["files"]
    assert "hhh_bench/data/mixing/uniform.py" in code
    assert "hhh_bench/data/mixing/sequential.py" not in code
    assert not any("mixing" in f for f in train_code(None)["files"])


# ---------------------------------------------------------------------------------------------
# Row 5: a model given by path is keyed by its content


def test_row5_new_weights_at_the_same_path_are_evaluated_again(root, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(_one(root, "merge") / "model", out)
    first = _run(root, "stage=eval", f"+eval.model={out}")["eval"]
    assert _run(root, "stage=eval", f"+eval.model={out}")["eval"]["cached"]
    shutil.copy(_one(root, "base") / "model.safetensors", out / "model.safetensors")
    second = _run(root, "stage=eval", f"+eval.model={out}")["eval"]
    assert not second["cached"] and second["key"] != first["key"]
    # and the same weights at another path are the same evaluation
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(out, elsewhere)
    third = _run(root, "stage=eval", f"+eval.model={elsewhere}")["eval"]
    assert third["cached"] and third["key"] == second["key"]


# ---------------------------------------------------------------------------------------------
# Row 6: a moved root reuses everything


def test_row6_a_moved_root_reruns_with_every_stage_reused(root, tmp_path):
    moved = tmp_path / "somewhere" / "else"
    moved.parent.mkdir()
    root.rename(moved)
    _run(moved, "stage=merge", "merge=task_arithmetic")
    misses, hits = _counts()
    assert misses == {} and hits == {"data": 1, "base": 1, "train": 3, "merge": 1, "diagnose": 1}
    _run(moved, "stage=eval")
    misses, hits = _counts()
    assert misses == {} and hits.get("eval") == 1


def test_row6_a_merge_recomputed_in_a_moved_root_is_the_same_model(root, tmp_path):
    """Its record ``merge_info.json`` names the inputs by their new paths, but the weights are
    the same: the merged model's identity (what its evaluations are keyed by) must not move."""
    from hhh_bench.core.content import folder_identity

    before = folder_identity(_one(root, "merge") / "model")
    moved = tmp_path / "elsewhere"
    root.rename(moved)
    shutil.rmtree(_one(moved, "merge"))
    _run(moved, "stage=merge", "merge=task_arithmetic")
    merged = _one(moved, "merge") / "model"
    assert str(moved) in (merged / "merge_info.json").read_text()  # the record did change
    assert folder_identity(merged) == before


def test_row6_path_settings_and_paths_in_configs_are_keyed_by_content(tmp_path):
    from hhh_bench.stages.common import keyed

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "rows.jsonl").write_text('{"x": 1}\n')
    one = keyed({"cache_dir": str(a), "sources": [{"path": str(a / "rows.jsonl")}], "n": 3})
    two = keyed({"cache_dir": str(b), "sources": [{"path": str(b / "rows.jsonl")}], "n": 3})
    assert one == two and "cache_dir" not in one
    (b / "rows.jsonl").write_text('{"x": 2}\n')
    assert keyed({"sources": [{"path": str(b / "rows.jsonl")}]}) != keyed(
        {"sources": [{"path": str(a / "rows.jsonl")}]}
    )


# ---------------------------------------------------------------------------------------------
# Row 7: an input changed while a merge reads it


@pytest.mark.parametrize("how", ["renamed over", "overwritten in place"])
def test_row7_a_specialist_replaced_during_the_merge_fails_it_and_leaves_nothing(
    root, tmp_path, monkeypatch, how
):
    """The new bytes arrive as an atomic writer leaves them (a new file renamed over the old)
    or written over the old bytes in place. Not by truncating the file: tensors already read
    are private maps of it, and a truncated mapped file faults (SIGBUS) in any reader that maps
    safetensors (``safe_open`` too); docs/caching.md says so."""
    import hhh_bench.merging.sources as sources
    from hhh_bench.merging.engine import merge_models

    sp = _specialists(root)
    victim = sp["honest"] / "model.safetensors"
    replacement = tmp_path / "replacement.safetensors"
    shutil.copy(victim, replacement)
    _scale_first_tensor(replacement, 3.0, every=True)  # other bytes for every tensor
    real = sources.read_bytes
    calls = {"n": 0}

    def read_then_replace(path, offset, nbytes):
        calls["n"] += 1
        if calls["n"] == 8 and how == "renamed over":  # mid-merge, under the reader
            staged = victim.with_name(".incoming.safetensors")
            shutil.copy(replacement, staged)
            os.replace(staged, victim)
        elif calls["n"] == 8:
            with victim.open("r+b") as fh:  # same size: no page of a live map goes away
                fh.write(replacement.read_bytes())
        return real(path, offset, nbytes)

    monkeypatch.setattr(sources, "read_bytes", read_then_replace)
    out = tmp_path / "merged"
    with pytest.raises(ValueError, match=r"changed or replaced during the merge"):
        merge_models("task_arithmetic", _one(root, "base"), [sp[d] for d in sorted(sp)], out,
                     progress=False)  # fmt: skip
    assert not out.exists() and not list(tmp_path.glob(".merged*"))


def test_row7_a_tokenizer_rewritten_during_the_merge_fails_it(root, tmp_path, monkeypatch):
    """The second review: θ0's tokenizer.json rewritten while the merge read tensors was copied
    into the output (rc 0, filed under the old key). The inputs' identities are checked again
    after the output's other files are copied."""
    import hhh_bench.merging.sources as sources
    from hhh_bench.merging.engine import merge_models

    base, sp = _one(root, "base"), _specialists(root)
    tok = base / "tokenizer.json"
    real = sources.read_bytes
    calls = {"n": 0}

    def read_then_edit(path, offset, nbytes):
        calls["n"] += 1
        if calls["n"] == 3:
            tok.write_text(tok.read_text().replace("<unk>", "<UNK>", 1))
        return real(path, offset, nbytes)

    monkeypatch.setattr(sources, "read_bytes", read_then_edit)
    out = tmp_path / "merged"
    with pytest.raises(ValueError, match=r"the base .*its files changed during the merge"):
        merge_models("task_arithmetic", base, [sp[d] for d in sorted(sp)], out, progress=False)
    assert calls["n"] > 3 and not out.exists()


def test_row7_the_merge_records_the_identities_it_read(pristine):
    from hhh_bench.core.content import folder_identity

    info = json.loads((_one(pristine, "merge") / "model" / "merge_info.json").read_text())
    read = info["inputs_read"]
    assert read["the base"] == folder_identity(_one(pristine, "base"))
    assert len(read) == 4


# ---------------------------------------------------------------------------------------------
# hhh-bench cache verify | gc


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hhh_bench", *args], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def _cache(capsys, *args: str) -> tuple[int, str]:
    """``hhh-bench cache ARGS`` in this process (the one dispatcher's entry point)."""
    from hhh_bench import cli

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["hhh-bench", "cache", *args])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
    out = capsys.readouterr()
    return int(exit_.value.code or 0), out.out + out.err


def test_cache_verify_and_gc_from_the_command_line(root, capsys):
    ok = _cli("cache", "verify", str(root))  # the console script, once
    assert ok.returncode == 0 and " 0 differ" in ok.stdout, ok.stdout + ok.stderr
    merged = _one(root, "merge")
    # the merge is referenced by no store row and no later stage: gc lists it, --yes removes it
    code, listed = _cache(capsys, "gc", str(root))
    assert code == 0 and f"unreferenced {merged}" in listed, listed
    assert f"unreferenced {_one(root, 'base')}" not in listed  # the trainings read it
    # a diagnostics.jsonl row names its diagnose output (row_key, artifacts): kept
    assert (root / "diagnostics.jsonl").is_file()
    assert f"unreferenced {_one(root, 'diagnose')}" not in listed, listed
    base_weights = _one(root, "base") / "model.safetensors"
    _scale_first_tensor(base_weights)
    code, bad = _cache(capsys, "verify", str(root))
    assert (
        code == 1 and f"MISMATCH {_one(root, 'base')}" in bad and "model.safetensors differs" in bad
    ), bad
    assert bad.rstrip().endswith("1 differ"), bad
    # --quick re-hashes only what changed on disk since its record: the rewrite is found too
    code, quick = _cache(capsys, "verify", "--quick", str(root))
    assert code == 1 and "model.safetensors differs" in quick and "stat records checked" in quick
    code, gone = _cache(capsys, "gc", str(root), "--yes")
    assert code == 0 and f"removed {merged}" in gone and not merged.exists()
    assert _one(root, "base").exists()  # referenced: kept
    code, missing = _cache(capsys, "verify", str(root / "no-such-root"))
    assert code == 2 and "is not a folder" in missing


def test_cache_verify_names_misplaced_outputs_and_edited_store_rows(root, capsys):
    """What the pipeline refuses, verify lists too (the second review: "0 differ"): an output
    copied over another key's, a symbolic link in place of one, and an edited store row."""
    sp = _specialists(root)
    shutil.rmtree(sp["honest"])
    shutil.copytree(sp["helpful"], sp["honest"])
    merged = _one(root, "merge")
    shutil.rmtree(merged)
    merged.symlink_to(sp["helpful"], target_is_directory=True)
    store = root / "results.jsonl"
    lines = store.read_text().splitlines()
    row = json.loads(lines[0])
    row["name"] = "edited by hand"  # a valid row, but not the one hhh-bench wrote
    store.write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    code, out = _cache(capsys, "verify", "--quick", str(root))
    assert code == 1, out
    assert f"MISMATCH {sp['honest']}: its key.json is that of another output" in out
    assert f"MISMATCH {merged}: it is a symbolic link" in out
    assert re.search(r"MISMATCH .*results.jsonl, line 1: result row .* was changed", out), out


# ---------------------------------------------------------------------------------------------
# docs/caching.md states exactly what each key holds


def _documented_fields() -> dict[str, tuple[set[str], set[str]]]:
    """``{stage: (required fields, optional fields)}`` from docs/caching.md's key table."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "caching.md").read_text()
    section = text.split("## What each stage's key holds", 1)[1].split("\n## ", 1)[0]
    out: dict[str, tuple[set[str], set[str]]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("stage", "---"):
            continue
        stage, fields, _, when = cells
        req, opt = out.setdefault(stage, (set(), set()))
        (opt if when else req).update(re.findall(r"`([^`]+)`", fields))
    return out


def test_documented_key_fields_are_the_real_ones(pristine):
    import dataclasses

    from hhh_bench.core.config import DataConfig
    from hhh_bench.core.content import KEY_FILE

    docs = _documented_fields()
    assert set(docs) == {"data", "base", "train", "merge", "diagnose", "eval", "stats"}
    data_group = {f.name for f in dataclasses.fields(DataConfig)} - {"noise", "dimensions",
                                                                     "cache_dir"}  # fmt: skip
    checked = set()
    for key_file in pristine.glob(f"*/*/{KEY_FILE}"):
        record = json.loads(key_file.read_text())
        req, opt = docs[record["stage"]]
        fields = set(record["payload"])
        if "<data group>" in req:
            assert fields - req - opt <= data_group, fields
            fields &= req | opt
            req = req - {"<data group>"}
        assert req <= fields <= req | opt, (record["stage"], sorted(fields), sorted(req | opt))
        checked.add(record["stage"])
    # the pristine run merges nothing that reads statistics: the stats stage's fields are
    # checked in tests/merging/test_stats_stage.py
    assert checked == set(docs) - {"stats"}


def test_a_merge_output_evaluated_by_folder_is_a_merge_row_with_its_method(root):
    """Battery 16, B1: ``stage=eval +eval.model=<root>/merge/<key>/model`` (what the tool
    advises after ``stage=eval merge=...``) evaluated, then stopped: "a merge row without its
    merge method: a row edited by hand". The row takes the method and knobs the merge's key
    records."""
    from hhh_bench.tracking.store import read_results

    merged = _one(root, "merge")
    _run(root, "stage=eval", f"+eval.model={merged / 'model'}")
    row = [r for r in read_results(root / "results.jsonl") if r["kind"] == "merge"][-1]
    assert row["method"] == "task_arithmetic" and row["name"] == str(merged / "model")
    assert row["params"]["scaling"] == compose(["merge=task_arithmetic"]).merge.params.scaling


def test_specialists_listed_out_of_the_dimensions_order_are_refused(root):
    """Battery 16, B2: ``merge=fisher merge.models=[honest, helpful, harmless]`` computed the
    honest specialist's Fisher on the helpful data (matched by position), with exit 0."""
    sp = _specialists(root)
    swapped = f"merge.models=[{sp['honest']},{sp['helpful']},{sp['harmless']}]"
    with pytest.raises(ValueError, match=r"merge.models\[0\]='.*' is the honest specialist \(its "
                       r"key.json\), but merge.models are matched to data.dimensions=\['helpful', "
                       r"'honest', 'harmless'\] by position"):  # fmt: skip
        _run(root, "stage=merge", "merge=fisher", swapped)
    assert not list((root / "merge").glob("*/stats")), "nothing computed"
