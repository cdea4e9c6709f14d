"""One cached-stage helper for every stage: content key, output folder, atomic rename, result
file, provenance and the run's cache accounting.

Every stage is a function of its resolved config and its inputs' keys. :func:`cached_stage` owns
the whole life of a stage's output folder ``<root>/<stage>/<key>/``: reuse it when complete, else
compute into a temporary sibling, write the result file and ``provenance.json`` (resolved config,
seed, versions, git revision) and rename it into place, so a folder is either complete or absent
and a killed run resumes where it stopped. Stages keep only their own work.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hhh_bench.provenance import atomic_dir, config_hash, write_provenance

log = logging.getLogger("hhh_bench")

# Bump when a stage's output format or semantics change, so old cache entries are not reused.
STAGE_VERSIONS = {"data": 2, "base": 1, "train": 1, "merge": 2, "eval": 1, "diagnose": 1}


def stage_key(stage: str, payload: Any) -> str:
    """The content key of a stage run: its version, its resolved config and its inputs' keys."""
    return config_hash(
        {"stage": stage, "version": STAGE_VERSIONS.get(stage, 1), "payload": payload}
    )


def is_done(path: Path) -> bool:
    """A stage folder is complete iff it holds its provenance (renamed into place when done)."""
    return (path / "provenance.json").is_file()


@dataclass
class CacheCounter:
    """Stages of one run: computed, or reused from an earlier run (each key counted once)."""

    computed: dict[str, set[str]] = field(default_factory=dict)
    reused: dict[str, set[str]] = field(default_factory=dict)
    lines: int = 0
    asked: str = ""
    """The stage the user asked for (``stage=merge``), set by the pipeline."""
    upstream: frozenset[str] = frozenset()
    """Earlier stages whose missing outputs the asked stage computes first: each says so."""

    def reset(self) -> None:
        self.computed.clear()
        self.reused.clear()
        self.lines = 0
        self.asked, self.upstream = "", frozenset()

    def hit(self, stage: str, key: str = "") -> None:
        if key not in self.computed.get(stage, set()):
            self.reused.setdefault(stage, set()).add(key)

    def miss(self, stage: str, key: str = "") -> None:
        self.computed.setdefault(stage, set()).add(key)

    @property
    def hits(self) -> dict[str, int]:
        return {s: len(k) for s, k in self.reused.items()}

    @property
    def misses(self) -> dict[str, int]:
        return {s: len(k) for s, k in self.computed.items()}

    def summary(self) -> str:
        h, m = sum(self.hits.values()), sum(self.misses.values())
        return f"{m} stage run(s) computed, {h} reused from earlier runs"


CACHE = CacheCounter()


@dataclass
class StageRun:
    """A stage's outcome: its key and folder, whether it came from the cache, and its result."""

    stage: str
    key: str
    dir: Path
    cached: bool
    info: dict[str, Any]


@contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hhh-scratch-") as d:
        yield Path(d)


def cached_stage(
    root: str | Path,
    stage: str,
    payload: Any,
    compute: Callable[[Path], Mapping[str, Any]],
    *,
    result_file: str,
    provenance: Mapping[str, Any] | None = None,
    seed: int | None = None,
    extra: Mapping[str, Any] | None = None,
    write: bool = True,
    label: str = "",
) -> StageRun:
    """Reuse ``<root>/<stage>/<key>/`` when complete; else run ``compute(tmp)`` (it writes its
    artifacts into ``tmp`` and returns the result dict), write ``result_file`` and
    ``provenance.json`` and rename the folder into place.

    Args:
        root: the run's root folder.
        stage: the stage's name (also the folder under ``root``).
        payload: everything the output depends on (resolved config, inputs' keys, seed).
        compute: the stage's own work.
        result_file: the JSON file holding the result dict (read back on a cache hit).
        provenance: the config recorded in ``provenance.json`` (default: the payload).
        seed: the seed recorded in ``provenance.json``.
        extra: more provenance fields (input keys, paths).
        write: False on non-main ranks of a distributed run: compute in a throwaway folder and
            write nothing.
        label: what the log lines call this run.
    """
    key = stage_key(stage, payload)
    out = Path(root) / stage / key
    what = f"{stage} {label}".strip()
    if is_done(out):
        CACHE.hit(stage, key)
        log.info("%s: cached %s", what, out)
        console_line(f"{what}: reused {out}")
        return StageRun(stage, key, out, True, json.loads((out / result_file).read_text()))
    t0 = time.time()
    if stage in CACHE.upstream:  # not asked for: say why it runs, before it starts
        console_line(
            f"{what}: missing (stage={CACHE.asked} needs it; {Path(root) / stage} has none for "
            f"this config): running stage={stage} first, unasked"
        )
    console_line(f"{what}: running ...")
    ctx = atomic_dir(out) if write else _scratch()
    with ctx as tmp:
        info = dict(compute(tmp))
        if write:
            (tmp / result_file).write_text(
                json.dumps(info, indent=2, sort_keys=True, default=str) + "\n"
            )
            write_provenance(
                tmp,
                provenance if provenance is not None else payload,
                seed=seed,
                stage=stage,
                extra=extra,
            )
    CACHE.miss(stage, key)
    if write:
        log.info("%s: wrote %s", what, out)
    else:
        log.info("%s: done (this rank writes nothing)", what)
    console_line(f"{what}: done in {time.time() - t0:.1f} s")
    return StageRun(stage, key, out, False, info)


def console_line(line: str) -> None:
    """One line per stage run on the console, numbered within the run ("[7] eval base: ...")."""
    CACHE.lines += 1
    print(f"[{CACHE.lines}] {line}", flush=True)
