"""The sweep cache: a method's ``precompute`` results on disk, reused across sweeps of λ, weights
and the other knobs that ``compose`` alone depends on.

One safetensors file per (inputs, method, knobs, tensor, plan entry). Each file carries, in its
metadata, its own key and a SHA-256 over (key, tensor names, dtypes, shapes, bytes): an entry
that is truncated, corrupted, or another entry's file copied into its place is detected on
read, deleted with a warning and recomputed, never used. Least-recently-used entries are evicted
beyond ``max_bytes``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

_HEX = re.compile(r"[0-9a-f]{16,128}")
"""An entry's key (:meth:`SweepCache.path`): a hex digest."""


def content_digest(key: str, tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 over the key and every tensor's name, dtype, shape and bytes (sorted by name)."""
    h = hashlib.sha256(key.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"\x00{name}\x00{t.dtype}\x00{tuple(t.shape)}\x00".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


class SweepCache:
    """``precompute`` results on disk (see the module docstring)."""

    def __init__(self, folder: str | Path, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.rejected = 0
        self.written: list[Path] = []

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, Tensor] | None:
        """The entry of ``key``, or None (absent, or failed its checksum: then deleted)."""
        p = self.path(key)
        if not p.is_file():
            self.misses += 1
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt") as h:
                meta = h.metadata() or {}
                tensors = {k: h.get_tensor(k) for k in h.keys()}  # noqa: SIM118
            ok = meta.get("key") == key and meta.get("sha256") == content_digest(key, tensors)
        except Exception as e:  # noqa: BLE001 - any unreadable entry is recomputed
            ok, tensors = False, {}
            log.debug("sweep cache entry %s unreadable: %s", p, e)
        if not ok:
            log.warning(
                "sweep cache entry %s failed its checksum (corrupted or replaced); recomputing it",
                p,
            )
            p.unlink(missing_ok=True)
            self.rejected += 1
            self.misses += 1
            return None
        os.utime(p)  # LRU: touch on use
        self.hits += 1
        return tensors

    def put(self, key: str, tensors: Mapping[str, Tensor]) -> None:
        from safetensors.torch import save_file

        cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        try:
            save_file(cpu, str(tmp), metadata={"key": key, "sha256": content_digest(key, cpu)})
            tmp.replace(p)
        except Exception as e:  # a full disk (safetensors' SafetensorError or an OSError): the
            tmp.unlink(missing_ok=True)  # entry named, which neither names
            if not isinstance(e, OSError) and type(e).__name__ != "SafetensorError":
                raise
            raise OSError(
                getattr(e, "errno", None) or 28,
                f"{getattr(e, 'strerror', None) or e} (writing a sweep cache entry; free space "
                "there, or merge_engine.cache_dir=null turns the cache off)",
                str(p),
            ) from e
        self.written.append(p)

    def discard_written(self) -> None:
        """Remove the entries this cache object wrote: what a failed merge calls, so that it
        leaves nothing behind (the entries were correct, but nothing asked for them)."""
        for p in self.written:
            p.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # its two-letter folder, when now empty
                p.parent.rmdir()
        self.written.clear()

    def entries(self) -> list[Path]:
        """The files of this cache: ``<2 hex>/<hex key>.safetensors`` whose key starts with its
        folder's name and whose metadata carries that key. Any other file under the folder (a
        model a user keeps there, a merge written into it) is not an entry and never evicted
        (battery 20, F4: every ``*/*.safetensors`` was)."""
        from safetensors import safe_open

        out = []
        for f in self.folder.glob("*/*.safetensors"):
            name, parent = f.stem, f.parent.name
            if not (_HEX.fullmatch(name) and len(parent) == 2 and name.startswith(parent)):
                continue
            try:
                with safe_open(str(f), framework="pt") as h:
                    if (h.metadata() or {}).get("key") != name:
                        continue
            except Exception:  # noqa: BLE001, S112 - unreadable: not provably ours, kept
                continue
            out.append(f)
        return out

    def evict(self) -> None:
        """Delete the least recently used entries (:meth:`entries`) beyond ``max_bytes``."""
        files = sorted(self.entries(), key=lambda f: f.stat().st_mtime)
        total = sum(f.stat().st_size for f in files)
        while files and total > self.max_bytes:
            f = files.pop(0)
            total -= f.stat().st_size
            f.unlink(missing_ok=True)
