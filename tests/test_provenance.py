"""Atomic output folders: nothing half-written survives an exception or a killed process. And
``provenance.json``'s environment record."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

import hhh_bench
from conftest import REPO
from hhh_bench.core.environment import describe_environment, fingerprint, lock_file
from hhh_bench.core.provenance import atomic_dir, sweep_stale_temporaries, write_provenance


def test_exception_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_success_renames_and_refuses_existing(tmp_path):
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "weights").write_text("done")
    assert (tmp_path / "out" / "weights").read_text() == "done"
    with pytest.raises(FileExistsError, match="overwrite"), atomic_dir(tmp_path / "out"):
        pass


def test_a_killed_writers_folder_is_swept_by_the_next_run(tmp_path):
    # a process that exits without cleaning up stands in for a SIGKILLed one
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".abc.tmp-{dead_pid}-123"
    stale.mkdir()
    live = tmp_path / f".def.tmp-{os.getpid()}-456"  # ours: alive, must stay
    live.mkdir()
    unrelated = tmp_path / "abc"
    unrelated.mkdir()
    with atomic_dir(tmp_path / "other") as tmp:
        (tmp / "x").write_text("1")
    assert not stale.exists()
    assert live.exists() and unrelated.exists() and (tmp_path / "other" / "x").exists()
    assert sweep_stale_temporaries(tmp_path) == []


def test_provenance_records_the_environment(tmp_path):
    """CPU model, torch's build and thread count, Python, the lock's sha256, a 12-hex fingerprint
    over them and the package versions; the fingerprint moves with what changes floats only."""
    import torch

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        record = json.loads(write_provenance(tmp_path, {"a": 1}, seed=0, stage="x").read_text())
    finally:
        torch.set_num_threads(threads)
    env = record["environment"]
    assert isinstance(env["cpu"], str) and env["cpu"] and env["cpu_count"] >= 1
    assert env["torch"] == {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": 1,
    }
    assert env["python"] == platform.python_version()
    assert env["packages"] == record["versions"] and env["packages"]["torch"]
    assert re.fullmatch(r"[0-9a-f]{12}", env["fingerprint"]) and env["fingerprint"] == fingerprint(
        env
    )
    if Path(hhh_bench.__file__).resolve().is_relative_to(REPO / "src"):  # run from the checkout
        lock = REPO / "requirements.lock"
        assert lock_file() == lock
        assert env["lock_sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()
    assert lock_file(tmp_path) is None  # no lock beside a pyproject.toml there
    changed = [
        {**env, "torch": {**env["torch"], "threads": 2}},
        {**env, "cpu": env["cpu"] + " (another)"},
        {**env, "lock_sha256": "0" * 64},
        {**env, "packages": {**env["packages"], "torch": "0.0"}},
    ]
    assert all(fingerprint(e) != env["fingerprint"] for e in changed)
    assert fingerprint({**env, "cpu_count": 999, "written": "now"}) == env["fingerprint"]
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "requirements.lock").write_text("x==1\n")
    assert lock_file(tmp_path) == tmp_path / "requirements.lock"
    other = describe_environment({}, lock=tmp_path / "requirements.lock")
    assert other["lock_sha256"] == hashlib.sha256(b"x==1\n").hexdigest()
    assert other["fingerprint"] != env["fingerprint"]


def test_the_environment_module_imports_no_torch():
    code = "import sys, hhh_bench.core.environment; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
