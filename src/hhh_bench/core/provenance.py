"""Provenance and crash-safety helpers shared by every stage.

Every stage writes ``provenance.json`` (resolved config, seed, package versions, git revision,
timestamps, the machine and torch's build: ``hhh_bench.core.environment``) next to its output, and
builds that output inside a temporary folder that is renamed into place only when complete, so an
output directory is either complete or absent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hhh_bench.core.environment import describe_environment, installed_version
from hhh_bench.core.hubref import resolved_revisions

TRACKED_PACKAGES = (
    "hhh-bench",
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "accelerate",
    "hydra-core",
    "omegaconf",
    "lm_eval",
    "wandb",
    "safetensors",
    "tokenizers",
    "numpy",
)

_SECRET_HINTS = ("token", "secret", "password", "api_key", "apikey")


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that decide our numbers (missing ones are omitted)."""
    versions = {n: installed_version(n) for n in names}
    return {n: v for n, v in versions.items() if v is not None}


def git_revision(path: str | Path | None = None) -> str | None:
    """The git commit of the project checkout (with ``-dirty`` if it has changes), or None."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def redact(obj: Any) -> Any:
    """Copy of a config with values of secret-looking keys (token, api_key, ...) replaced."""
    if isinstance(obj, Mapping):
        return {
            k: ("***" if any(h in str(k).lower() for h in _SECRET_HINTS) and v else redact(v))
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return obj


def stable_json(obj: Any) -> str:
    """Canonical JSON (sorted keys, no whitespace) used for hashing configs."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(obj: Any, length: int = 12) -> str:
    """Content hash of a JSON-able object (a resolved config, a list of input keys, ...)."""
    return hashlib.sha256(stable_json(obj).encode()).hexdigest()[:length]


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(seed % (2**32))
    with contextlib.suppress(ImportError):
        import torch

        torch.manual_seed(seed)


def write_provenance(
    out_dir: str | Path,
    config: Mapping[str, Any] | None = None,
    seed: int | None = None,
    stage: str | None = None,
    extra: Mapping[str, Any] | None = None,
    filename: str = "provenance.json",
) -> Path:
    """Write ``provenance.json`` (config with secrets redacted, seed, versions, git revision,
    ``environment``: CPU model, torch's build and thread count, Python, the lock file's sha256 and
    a 12-hex fingerprint over them and the versions; ``environment.describe_environment``; and,
    for a hub id of the config at a moving revision (``allow_unpinned=true``),
    ``resolved_revisions``: the commit the local HF cache resolved it to)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    versions = package_versions()
    record = {
        "stage": stage,
        "seed": seed,
        "config": redact(dict(config)) if config is not None else None,
        "versions": versions,
        "environment": describe_environment(versions),
        "git_revision": git_revision(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    moving = resolved_revisions(config) if config is not None else {}
    if moving:  # allow_unpinned=true: the commit each moving revision resolved to here
        record["resolved_revisions"] = moving
    if extra:
        record.update(redact(dict(extra)))
    path = out / filename
    path.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


_STALE = re.compile(r"^\..+\.(?:tmp-(\d+)-\d+(?:@([A-Za-z0-9_.-]+))?|old-\d+)$")
# A temporary folder of another machine (a cluster job on a shared filesystem) cannot be checked
# for a live process; it is removed only once it is older than any job's time limit.
FOREIGN_STALE_S = 7 * 24 * 3600


def _host() -> str:
    """This machine's name, as it goes into temporary folder names."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "localhost"


def stale_temporaries(parent: str | Path) -> list[Path]:
    """The temporary folders a killed process left in ``parent`` (``.<name>.tmp-<pid>-*`` whose
    process is gone, and ``.<name>.old-*`` backups), sorted.

    Folders of live processes (a concurrent run writing beside us) are left out, and so are
    those another machine is writing (``...@<host>``, e.g. a SLURM job on another node of a
    shared filesystem, whose process cannot be checked from here) until they are
    :data:`FOREIGN_STALE_S` old.
    """
    out = []
    parent = Path(parent)
    if not parent.is_dir():
        return out
    for entry in sorted(parent.iterdir()):
        m = _STALE.match(entry.name)
        if not m or not entry.is_dir():
            continue
        if m.group(2) is not None and m.group(2) != _host():
            if entry.stat().st_mtime > time.time() - FOREIGN_STALE_S:
                continue
        elif m.group(1) is not None and _pid_alive(int(m.group(1))):
            continue
        if m.group(1) is None and entry.stat().st_mtime > time.time() - 60:
            continue  # a backup a live rename may still be using
        out.append(entry)
    return out


def sweep_stale_temporaries(parent: str | Path) -> list[Path]:
    """Remove :func:`stale_temporaries` of ``parent``; returns what was removed.

    A SIGKILL cannot run ``atomic_dir``'s clean-up, so the next run writing in that folder does
    it (and ``hhh-bench cache gc --yes`` in every stage folder of a root).
    """
    removed = stale_temporaries(parent)
    for entry in removed:
        shutil.rmtree(entry, ignore_errors=True)
    return removed


@contextlib.contextmanager
def atomic_dir(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to ``final`` only if the block succeeds.

    On any exception the temporary folder is removed and ``final`` is untouched, so a crash
    never leaves a half-written output where a complete one is expected.

    Raises:
        FileExistsError: ``final`` exists and ``overwrite`` is False.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (pass overwrite=true to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(final.parent)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{time.time_ns()}@{_host()}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        backup = final.with_name(f".{final.name}.old-{time.time_ns()}")
        final.rename(backup)
        tmp.rename(final)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        tmp.rename(final)
