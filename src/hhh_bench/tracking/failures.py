"""Judged scores that count their failures, in the report (issue 27).

A judged task's results row carries ``n`` (items), ``n_empty`` (empty answers) and
``n_unparsed`` (answers of its judge that were neither label) under ``tasks.<task>``
(:mod:`hhh_bench.evaluation.judged`, which also says what an empty or unparsed answer scores).
When the share of a task's items that failed, ``(n_empty + n_unparsed) / n``, is above
``report.judge_failure_threshold`` (default :data:`THRESHOLD`) in any seed of a main-table entry,
:func:`failure_marks` marks with :data:`MARK` each cell that task feeds: its dimension's column
(a scored task) or its extra column (over-refusal); :func:`failure_note` is the footnote under
the table that gives the counts. The marks join the paired tests' ``≈`` after the value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hhh_bench.tracking.entries import Entry
from hhh_bench.tracking.markdown import md_text

THRESHOLD = 0.05
"""Default ``report.judge_failure_threshold``: more than 5% of a task's answers empty or unparsed."""

MARK = "‡"
"""A cell whose judged task had too many empty or unparsed answers (``†`` is the paired tests')."""


def _columns(row: Mapping[str, Any], task: str) -> list[str]:
    """The main-table columns a task of ``row`` feeds: its dimension, and its extra columns."""
    cols = [str(s["dimension"]) for s in row.get("task_specs") or [] if s.get("name") == task]
    cols += [c for c, spec in (row.get("extra_columns") or {}).items() if spec.get("task") == task]
    return cols


def failures(row: Mapping[str, Any], threshold: float) -> list[dict[str, Any]]:
    """The tasks of ``row`` whose failed share is above ``threshold``: ``{"task", "n",
    "n_empty", "n_unparsed", "columns"}`` each, in task order."""
    out = []
    for task, m in (row.get("tasks") or {}).items():
        n, empty, unparsed = m.get("n"), m.get("n_empty") or 0, m.get("n_unparsed") or 0
        if not n or (empty + unparsed) / n <= threshold:
            continue
        out.append({"task": task, "n": n, "n_empty": empty, "n_unparsed": unparsed,
                    "columns": _columns(row, task)})  # fmt: skip
    return out


def failure_marks(
    entries: Sequence[Entry], threshold: float = THRESHOLD
) -> dict[tuple[str, str], dict[str, str]]:
    """``{(kind, name): {column: MARK}}`` for every cell fed by a task above ``threshold`` in
    any of the entry's seeds (:func:`failures`)."""
    marks: dict[tuple[str, str], dict[str, str]] = {}
    for e in entries:
        for r in e.rows:
            for f in failures(r, threshold):
                for col in f["columns"]:
                    marks.setdefault((e.kind, e.name), {})[col] = MARK
    return marks


def with_failure_marks(
    marks: Mapping[tuple[str, str], Mapping[str, str]],
    more: Mapping[tuple[str, str], Mapping[str, str]],
) -> dict[tuple[str, str], dict[str, str]]:
    """``marks`` (the paired tests') with ``more`` appended after the value of each cell."""
    out = {k: dict(v) for k, v in marks.items()}
    for key, cols in more.items():
        mine = out.setdefault(key, {})
        for col, mark in cols.items():
            mine[col] = mine.get(col, "") + mark
    return out


def failure_note(entries: Sequence[Entry], threshold: float = THRESHOLD) -> list[str]:
    """The footnote under the main table: for every marked entry, seed and task, how many of
    its answers were empty and how many its judge's answers were unparsed; none when no cell is
    marked."""
    parts = []
    for e in entries:
        for r in e.rows:
            for f in failures(r, threshold):
                seed = f" (seed {r['seed']})" if len(e.rows) > 1 and "seed" in r else ""
                parts.append(
                    f"{e.label}{seed}: {f['task']} {f['n_empty']}/{f['n']} empty, "
                    f"{f['n_unparsed']}/{f['n']} unparsed"
                )
    if not parts:
        return []
    return [
        f"{MARK}: more than {threshold * 100:g}% of a judged task's answers were empty or not "
        "parsed by its judge (report.judge_failure_threshold); an empty answer earns nothing "
        "and an unparsed one gets its judge's on_unparsed verdict: "
        + md_text("; ".join(parts))
        + ".",
        "",
    ]
