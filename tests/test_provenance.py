"""Atomic output folders: nothing half-written survives an exception or a killed process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hhh_bench.provenance import atomic_dir, sweep_stale_temporaries


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
