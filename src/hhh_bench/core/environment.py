"""The machine and build behind a stage's floats, for its ``provenance.json``.

Two runs of the same commit differ in their last digits, and sometimes in a verdict, when the CPU,
torch's intra-op thread count, torch's build or a package differs. :func:`describe_environment`
records those (the lock file's sha256 stands for every locked package; the tracked package
versions are copied in too, so that the fingerprint can be recomputed from the record alone) and a
short fingerprint over them, so two stores can be told apart, or matched, at a glance.

This module imports nothing else of hhh_bench, and torch only when called.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LOCK_NAME = "requirements.lock"
FINGERPRINT_LENGTH = 12
# What the fingerprint covers: what changes floats. The CPU count and the OS are recorded beside
# it, not in it (the thread count is what the CPU count acts through).
FINGERPRINTED = ("cpu", "torch", "python", "lock_sha256", "packages")


@functools.cache
def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (None when it is not installed), read from
    its metadata once per process: a stage's provenance and key ask for the same dozen packages
    about 50 times per evaluated model otherwise (``importlib.metadata`` parses each METADATA
    file anew: 3-4 s of a toy seed's ~130 s). What is installed under a running process does
    not change the modules it has imported, which are what computes its numbers."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, with its family and model numbers where given
    (a virtual machine may report only "AMD EPYC"); else platform's processor or machine."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), " ".join(value.split()))
    except OSError:
        pass
    name = fields.get("model name") or fields.get("Model") or fields.get("cpu model")
    if not name:
        return platform.processor() or platform.machine() or "unknown"
    ids = [f"{k} {fields[k]}" for k in ("cpu family", "model") if fields.get(k)]
    return f"{name} ({', '.join(ids)})" if ids else name


def lock_file(start: str | Path | None = None) -> Path | None:
    """The lock file of the checkout this package runs from (``requirements.lock`` beside
    ``pyproject.toml`` two levels above ``src/hhh_bench``), or None (an installed wheel)."""
    root = Path(start) if start is not None else Path(__file__).resolve().parents[3]
    lock = root / LOCK_NAME
    if lock.is_file() and (root / "pyproject.toml").is_file():
        return lock
    return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def torch_build() -> dict[str, Any]:
    """torch's version, CUDA version (None for a CPU build), whether CUDA is usable, the CPU
    kernels it dispatches to (``AVX2``, ``AVX512``, ...: they round differently) and its intra-op
    thread count now."""
    import torch

    return {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": bool(torch.cuda.is_available()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


def fingerprint(env: Mapping[str, Any], length: int = FINGERPRINT_LENGTH) -> str:
    """A short hash of the parts of ``env`` that change floats (:data:`FINGERPRINTED`)."""
    core = {k: env.get(k) for k in FINGERPRINTED}
    blob = json.dumps(core, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def describe_environment(
    packages: Mapping[str, str] | None = None, lock: str | Path | None = None
) -> dict[str, Any]:
    """The ``environment`` record: CPU model, torch's build and thread count, Python, the lock
    file's sha256 (None when no lock is found beside the checkout), the given package versions,
    and a :func:`fingerprint` over them.

    Args:
        packages: installed versions to include (``provenance.package_versions()``).
        lock: the lock file to hash; by default :func:`lock_file`'s.
    """
    lock_path = Path(lock) if lock is not None else lock_file()
    env: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.system(),
        "torch": torch_build(),
        "python": platform.python_version(),
        "lock_sha256": _sha256(lock_path)
        if lock_path is not None and lock_path.is_file()
        else None,
        "packages": dict(sorted(packages.items())) if packages else {},
    }
    env["fingerprint"] = fingerprint(env)
    return env
