"""The acceptance battery's harness (issue 27): ``hhh-bench`` run in-process on a bad input, and
the checks every case makes of its outcome (docs/testing.md, "The battery")."""

from __future__ import annotations

import contextlib
import io
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

STAGES = ("data", "base", "train", "merge", "eval", "diagnose", "report", "reports", "cache")
"""Folders under a root that hold what a run made (stage outputs, the report, the judge and
sweep caches): a refused run adds nothing to them. ``hydra/`` (the job's log) may appear."""


@dataclass
class Outcome:
    """What a user sees: the exit status and the two streams."""

    code: int | None
    out: str
    err: str

    @property
    def console(self) -> str:
        return self.out + self.err


LIMIT_S = 45
"""The longest a case may run: a refused input stops before the work (the slowest cases read a
source file or merge the prepared root's tiny models, a few seconds). A run still going after
this got past its check; it is stopped (a ``TimeoutError`` inside the run), and the case fails."""


class TooLong(TimeoutError):
    pass


def _alarm(signum, frame):
    raise TooLong(f"still running after {LIMIT_S} s: the input was not refused")


def hhh(*args: str) -> Outcome:
    """``hhh-bench ARGS`` as typed, in this process (``hhh_bench.cli.main``), its exit status
    and output captured; an exception escaping ``main`` is re-raised (a case then fails)."""
    from hhh_bench import cli

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["hhh-bench", *args]
    code: int | None = 0
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(LIMIT_S)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) or e.code is None else 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        sys.argv = argv
    return Outcome(code, out.getvalue(), err.getvalue())


def snapshot(root: Path) -> set[str]:
    """What a run may add or change under ``root``, relative: every file with its size (a row
    appended to ``results.jsonl`` or ``diagnostics.jsonl`` shows), and every folder inside a
    stage's folder (a stage output ``<stage>/<key>/``, a temporary one); not the Hydra log
    folder (a multirun's: `multirun/`), not the root's file-hash records (``.cache/hashes``: stat records of files already
    there, written when a reuse checks them) and not an empty ``<root>/<stage>/``."""
    if not root.exists():
        return set()
    out = set()
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if rel.parts[0] in ("hydra", "multirun", ".cache") or (p.is_dir() and len(rel.parts) < 2):
            continue
        size = f" ({p.stat().st_size} bytes)" if p.is_file() and not p.is_symlink() else ""
        out.add(rel.as_posix() + size)
    return out


def assert_refused(o: Outcome, before: set[str], root: Path, *says: str, code: int = 2) -> None:
    """The battery's four checks: exit status ``code``; each of ``says`` (regular expressions)
    on the console; no traceback; nothing added under ``root`` but ``hydra/``."""
    console = o.console
    assert o.code == code, f"exit status {o.code}, expected {code}:\n{console[-3000:]}"
    assert "Traceback" not in console, console[-3000:]
    for s in says:
        assert re.search(s, console, re.S), f"{s!r} not on the console:\n{console[-3000:]}"
    added = sorted(snapshot(root) - before)
    assert not added, f"partial output left (or a file changed) under {root}: {added[:10]}"


def pattern(*parts: str) -> str:
    """A regular expression matching ``parts`` literally, in this order, anything between."""
    return ".*".join(re.escape(p) for p in parts)
