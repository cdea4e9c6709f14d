"""One cached-stage helper for every stage: content key, output folder, atomic rename, result
file, provenance, the verified manifest and the run's cache accounting.

Every stage is a function of its inputs' content, its resolved config and its code.
:func:`cached_stage` owns the whole life of a stage's output folder ``<root>/<stage>/<key>/``:
reuse it when complete *and* its files match its ``checksums.json``
(:func:`hhh_bench.core.content.verify`; a mismatch is an error naming the folder and the file, or a
recompute under ``cache.on_mismatch=recompute``), else compute into a temporary sibling, write
the result file, ``key.json`` (what the key was computed from), ``provenance.json`` (resolved
config, seed, versions, git revision) and, last, ``checksums.json``, and rename it into place, so
a folder is either complete or absent and a killed run resumes where it stopped. Stages keep only
their own work. What each stage's key holds: docs/caching.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hhh_bench.core import console
from hhh_bench.core.content import (
    KEY_FILE,
    ContentMismatch,
    mismatch_error,
    register_root,
    verify,
    write_manifest,
)
from hhh_bench.core.provenance import atomic_dir, config_hash, write_provenance

log = logging.getLogger("hhh_bench")

# Bump when a stage's output format or semantics change, so old cache entries are not reused.
# Version 3/2 (issue 26): keys hold their inputs' content identities and code; every output a
# verified manifest.
STAGE_VERSIONS = {
    "data": 3,
    "base": 2,
    "train": 2,
    "stats": 1,
    "merge": 3,
    "eval": 2,
    "diagnose": 2,
}
"""Every stage that writes ``<root>/<stage>/<key>/``, with the version in its keys (what
``cache verify`` and ``gc`` walk: battery 20, F1, the stats stage was missing)."""
ON_MISMATCH = ("error", "recompute")


RUNS_DIR = ".runs"
"""``<root>/.runs/<pid>``: a file each running pipeline holds a shared lock on."""


@contextmanager
def run_marker(root: str | Path) -> Iterator[None]:
    """Mark ``root`` as used by this process while the block runs (a shared ``flock`` on
    ``<root>/.runs/<pid>``; the kernel drops it if the process dies), so that ``hhh-bench
    cache gc --yes`` never removes the outputs of a run still going (:func:`runs_using`)."""
    import fcntl

    folder = Path(root) / RUNS_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / str(os.getpid()), "w")  # noqa: SIM115 - held for the block
    except OSError:  # a root this process cannot write: the run itself will say so
        yield
        return
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)
        yield
    finally:
        f.close()
        with suppress(OSError):
            (folder / str(os.getpid())).unlink()
        with suppress(OSError):  # the last run out leaves no trace in the root
            folder.rmdir()


def runs_using(root: str | Path) -> list[int]:
    """The processes whose run holds ``root`` (:func:`run_marker`); stale markers (their process
    gone: the lock is free) are removed."""
    import fcntl

    out = []
    for marker in sorted((Path(root) / RUNS_DIR).glob("*")):
        try:
            with open(marker) as f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    out.append(int(marker.name) if marker.name.isdigit() else -1)
                    continue
            marker.unlink()
        except OSError:
            continue
    return out


def held_by_a_run(path: str | Path) -> str | None:
    """Why ``path`` must not be written by a run, a merge or an export, else None: it is or
    lies inside a finished stage output (writing there would change an output its checksums
    vouch for, which its next reuse then refuses), or inside a stage folder of a run root (its
    files would be mixed with that run's outputs)."""
    from hhh_bench.core.content import output_above

    held = output_above(path)
    if held is not None:
        return f"lies inside {str(held)!r}, a finished stage output"
    p = Path(path).resolve()
    for folder in (p, *p.parents):
        run_root = folder.parent
        if folder.name in STAGE_VERSIONS and (
            (run_root / "results.jsonl").exists() or (run_root / "hydra").is_dir()
        ):
            return (
                f"lies inside {str(folder)!r}, the {folder.name} stage folder of the run root "
                f"{str(run_root)!r}"
            )
    return None


def stage_key(stage: str, payload: Any) -> str:
    """The content key of a stage run: its version, its resolved config and its inputs' keys."""
    return config_hash(
        {"stage": stage, "version": STAGE_VERSIONS.get(stage, 1), "payload": payload}
    )


def is_done(path: Path) -> bool:
    """A stage folder is complete iff it exists: it is renamed into place only when complete
    (whether its files are still those written is :func:`hhh_bench.core.content.verify`'s job)."""
    return path.is_dir()


@dataclass
class CacheCounter:
    """Stages of one run: computed, or reused from an earlier run (each key counted once)."""

    computed: dict[str, set[str]] = field(default_factory=dict)
    reused: dict[str, set[str]] = field(default_factory=dict)
    asked: str = ""
    """The stage the user asked for (``stage=merge``), set by the pipeline."""
    upstream: frozenset[str] = frozenset()
    """Earlier stages whose missing outputs the asked stage computes first: each says so."""
    on_mismatch: str = "error"
    """``cache.on_mismatch``: a cached output whose files differ from its manifest is an error
    (``error``) or is computed again (``recompute``); set by the pipeline."""
    recomputed: dict[str, set[str]] = field(default_factory=dict)
    dry_run: bool = False
    """``hhh-bench plan``: an output that is missing raises :class:`NotCached` instead of being
    computed (nothing is written)."""

    memo: dict[str, Any] = field(default_factory=dict)
    """Lookups a stage repeats within one run, by the stage's own key (the diagnose stage's:
    :func:`hhh_bench.stages.diagnose.run_diagnose`); cleared with the run."""

    def reset(self) -> None:
        self.memo.clear()
        self.computed.clear()
        self.reused.clear()
        self.recomputed.clear()
        self.asked, self.upstream = "", frozenset()
        self.on_mismatch = "error"

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


class NotCached(Exception):
    """A dry run (:attr:`CacheCounter.dry_run`) reached a stage output that is not cached."""

    def __init__(self, stage: str, key: str, out: Path) -> None:
        super().__init__(f"{stage} {key}: not cached ({out})")
        self.stage, self.key, self.out = stage, key, out


@dataclass
class StageRun:
    """A stage's outcome: its key and folder, whether it came from the cache, and its result."""

    stage: str
    key: str
    dir: Path
    cached: bool
    info: dict[str, Any]
    identity: str = ""
    """The content identity of the output's artifacts (:meth:`hhh_bench.core.content.Manifest.identity`):
    what later stages' keys hold (empty for a rank that writes nothing)."""


@contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hhh-scratch-") as d:
        yield Path(d)


@contextmanager
def _named_write_errors(out: Path) -> Iterator[None]:
    """An ``OSError`` that names no file (a full disk: ``write`` and ``os.pwrite`` name none)
    raised while a stage output is written names the output folder (``out``; nothing of it is
    kept)."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None or isinstance(e, BrokenPipeError):
            raise
        raise OSError(e.errno, f"{e.strerror} (writing a stage output)", str(out)) from e
    except Exception as e:  # a library's own error around an OS error (safetensors' save_file)
        m = re.search(r"\(os error (\d+)\)", str(e))
        if m is None:
            raise
        code = int(m.group(1))
        raise OSError(code, f"{os.strerror(code)} (writing a stage output)", str(out)) from e


def _read_result(path: Path) -> tuple[dict[str, Any], str]:
    """A stage output's result file (``manifest.json``, ``train_info.json``, ...) as a dict,
    and "" ; or ``{}`` and why it cannot be read back as a JSON object."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # a UnicodeDecodeError is a ValueError
        return {}, f"its {path.name} is unreadable or truncated ({e})"
    return (info, "") if isinstance(info, dict) else ({}, f"its {path.name} is not a JSON object")


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
    inputs: Sequence[str | Path] = (),
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
        inputs: the folders (stage outputs or others) the stage reads, recorded in ``key.json``
            (relative to ``root`` where inside it): what ``hhh-bench cache gc`` follows.
    """
    key = stage_key(stage, payload)
    out = Path(root) / stage / key
    what = f"{stage} {label}".strip()
    if out.parent.exists() and not out.parent.is_dir():  # battery 18, U11: "[Errno 17]"
        raise NotADirectoryError(
            f"{out.parent} is a file, not a folder: the {stage} stage keeps its outputs in "
            f"<root>/{stage}/; move that file away (or give another root=)"
        )
    register_root(root)
    replace = False
    if is_done(out):
        misplaced_why = misplaced(out, stage, key)
        if misplaced_why:  # a folder moved, copied or linked here from another key: never reused
            if CACHE.on_mismatch != "recompute" or CACHE.dry_run:
                raise ContentMismatch(
                    f"cached output {out}: {misplaced_why}. Delete the folder to recompute it, or "
                    "set cache.on_mismatch=recompute."
                )
            console.say(
                f"{what} ({out}): {misplaced_why}: recomputing (cache.on_mismatch=recompute)"
            )
            CACHE.recomputed.setdefault(stage, set()).add(key)
            if out.is_symlink():
                out.unlink()  # the link only: what it points to is not this stage's to delete
            else:
                replace = True
    if is_done(out) and not replace:
        checked = verify(out)
        info, unreadable = ({}, "") if checked.problems else _read_result(out / result_file)
        if not checked.problems and not unreadable:
            CACHE.hit(stage, key)
            log.info("%s: cached %s (%d file(s) re-hashed)", what, out, checked.rehashed)
            console.step_done(what, cached=True, where=out)
            return StageRun(stage, key, out, True, info, checked.manifest.identity())
        if CACHE.on_mismatch != "recompute" or CACHE.dry_run:
            if unreadable:  # its checksums match: it was written so (e.g. a full disk)
                raise ContentMismatch(
                    f"cached output {out}: {unreadable}. Delete the folder to recompute it, or "
                    "set cache.on_mismatch=recompute."
                )
            raise mismatch_error(out, checked.problems)
        if checked.added:  # battery 18, L1: a user's notes went with the replaced folder
            more = f" and {len(checked.added) - 3} more" if len(checked.added) > 3 else ""
            raise ContentMismatch(
                f"cached output {out} holds file(s) its stage did not write: "
                f"{', '.join(checked.added[:3])}{more}; recomputing would replace the folder "
                "and delete them: move them out of it, then rerun"
            )
        problem = unreadable or checked.problems[0]
        console.say(f"{what} ({out}): {problem}: recomputing (cache.on_mismatch=recompute)")
        CACHE.recomputed.setdefault(stage, set()).add(key)
        replace = True
    if CACHE.dry_run:
        raise NotCached(stage, key, out)
    t0 = time.time()
    if stage in CACHE.upstream:  # not asked for: say why it runs, before it starts
        console.say(
            f"{what}: missing (stage={CACHE.asked} needs it; {Path(root) / stage} has none for "
            f"this config): running stage={stage} first, unasked"
        )
    console.step_started(what)
    ctx = atomic_dir(out, overwrite=replace) if write else _scratch()
    identity = ""
    with _named_write_errors(out), ctx as tmp:
        info = dict(compute(tmp))
        if write:
            (tmp / result_file).write_text(
                json.dumps(info, indent=2, sort_keys=True, default=str) + "\n"
            )
            record = {"stage": stage, "version": STAGE_VERSIONS.get(stage, 1), "key": key,
                      "payload": payload, "inputs": [_rel(root, p) for p in inputs]}  # fmt: skip
            (tmp / KEY_FILE).write_text(
                json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"
            )
            write_provenance(
                tmp,
                provenance if provenance is not None else payload,
                seed=seed,
                stage=stage,
                extra=extra,
            )
            identity = write_manifest(tmp, result_file).identity()  # last: lists every file
    CACHE.miss(stage, key)
    if write:
        log.info("%s: wrote %s", what, out)
    else:
        log.info("%s: done (this rank writes nothing)", what)
    console.step_done(what, cached=False, seconds=time.time() - t0, where=out if write else None)
    return StageRun(stage, key, out, False, info, identity)


def misplaced(out: Path, stage: str, key: str) -> str:
    """Why the folder at ``<root>/<stage>/<key>`` is not that key's output ("" when it is): a
    symbolic link, or a ``key.json`` naming another stage or key (a folder moved or copied over
    from another configuration; its own checksums would match)."""
    if out.is_symlink():
        return f"it is a symbolic link (to {out.resolve()}), not an output this cache wrote"
    try:
        record = json.loads((out / KEY_FILE).read_text())
    except (OSError, ValueError) as e:
        return f"its {KEY_FILE} is missing or unreadable ({e})"
    if not isinstance(record, dict):
        return f"its {KEY_FILE} is not a JSON object"
    if record.get("stage") != stage or record.get("key") != key:
        return (
            f"its {KEY_FILE} is that of another output (stage {record.get('stage')!r}, key "
            f"{record.get('key')!r}): a folder moved or copied here"
        )
    return ""


def output_root(path: str | Path) -> Path | None:
    """The root a path inside a stage output (``<root>/<stage>/<key>/…``) lies under; None for
    a path in no stage output."""
    parts = Path(path).parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in STAGE_VERSIONS:
            return Path(*parts[:i]) if i else Path()
    return None


def relocated(path: str | Path, root: str | Path, origin: str | Path | None = None) -> str:
    """A path recorded inside a stage output (``…/<stage>/<key>/…``) as it is under ``root``: a
    store's rows keep absolute paths, and a moved or copied root reads its own outputs, never
    the old root's.

    ``origin``: the root the path was recorded in (a row's own eval folder's root,
    :func:`output_root`). A path under it is always ``root``'s, even where ``root`` lacks that
    output (a root copied without it: the output is missing here, as a deleted one is, and is
    never read from the original root). A path under another root (a reference given by
    folder) is ``root``'s output when ``root`` has it (same key, same content), else as it is;
    so is any path in no stage output."""
    parts = Path(path).parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in STAGE_VERSIONS:
            here = Path(root, *parts[i:])
            mine = origin is not None and output_root(path) == Path(origin)
            if mine or (Path(root) / parts[i] / parts[i + 1]).is_dir():
                return str(here)
            break
    return str(path)


def _rel(root: str | Path, path: str | Path) -> str:
    """``path`` relative to ``root`` when inside it (a moved root keeps its references)."""
    p, r = Path(path).resolve(), Path(root).resolve()
    return p.relative_to(r).as_posix() if r in p.parents else str(path)
