"""The report's Markdown tables, from the entries of :mod:`hhh_bench.tracking.entries`.

:func:`main_table` (paper-style: one row per family, grouped Base / Oracle / Specialists /
Data mixture / Model merging, bold best per column, the paired tests' ``≈`` / ``†`` marks),
:func:`all_models_table` (every evaluated configuration), :func:`per_task_table` (each task's
primary metric) and :func:`paired_table` (the paired tests behind the marks). A cell is a mean
over seeds with ``± std`` (several seeds) or ``± standard error`` over items (one seed), and the
change from the base in parentheses, to :data:`DIGITS` decimals; names are escaped
(:func:`hhh_bench.tracking.markdown.md_text`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hhh_bench.tracking.entries import (
    COLUMNS,
    GROUPS,
    Entry,
    aggregate,
    base_means,
    base_seeds,
    params_text,
    with_deltas,
)
from hhh_bench.tracking.markdown import md_text

DIGITS = 3

OTHER_SEEDS = "§"
"""The mark on a change from the base that compares a row's mean with a base mean over another
set of seeds (:attr:`hhh_bench.tracking.entries.Entry.other_seeds`)."""


def seeds_label(e: Entry, entries: Sequence[Entry]) -> str:
    """An entry's label, with how many seeds it is over when the table's rows are not all over
    as many (a one-seed value beside means over several is not their like)."""
    if len({x.n for x in entries}) < 2:
        return e.label
    return f"{e.label} ({e.n} seed{'s' if e.n != 1 else ''})"


def _fmt(value: float, std: float | None) -> str:
    return f"{value:.{DIGITS}f}" + (f" ± {std:.{DIGITS}f}" if std is not None else "")


def _spread(e: Entry, col: str) -> float | None:
    """What follows ± in a cell: the std over seeds (several seeds), else the row's standard
    error over items (one seed), else nothing."""
    return e.std.get(col) if e.std.get(col) is not None else e.se.get(col)


def cell_n(e: Entry, col: str, extra: Mapping[str, Mapping[str, Any]]) -> int | None:
    """What a cell's ± is over (issue 32: every cell says its n): the seeds when the entry has
    several (± their std), else the items of the column's tasks on its one seed (± the
    standard error over them: a dimension's tasks, every 3H task for Avg and Min, an extra
    column's task); None when the row does not say (then no n is shown)."""
    if len(e.rows) > 1:
        return len(e.rows)
    row = e.rows[0]
    specs = row.get("task_specs") or []
    dims = ("helpful", "honest", "harmless")
    if col in dims:
        names = [s["name"] for s in specs if s.get("dimension") == col]
    elif col in ("average", "min"):
        names = [s["name"] for s in specs if s.get("dimension") in dims]
        if not set(dims) <= {s.get("dimension") for s in specs}:  # a dimension without tasks
            return None
    elif col in extra:
        names = [str(extra[col].get("task"))]
    else:
        return None
    ns = [((row.get("tasks") or {}).get(n) or {}).get("n") for n in names]
    if not names or any(not isinstance(n, int) or isinstance(n, bool) for n in ns):
        return None
    return sum(ns)


def _fmt_opt(value: float | None) -> str:
    return "-" if value is None else f"{value:.{DIGITS}f}"


def _fmt_delta(delta: float | None) -> str:
    return "" if delta is None else f" ({delta:+.{DIGITS}f})"


def extra_head(name: str, spec: Mapping[str, Any]) -> str:
    higher = spec.get("higher_is_better", True)
    arrow = " ↓" if higher is False else " (·)" if higher is None else ""
    return name.replace("_", "-").capitalize() + arrow


def best_per_column(entries: Sequence[Entry]) -> dict[str, float]:
    """Best (highest) displayed mean per column among the compared rows (every kind but oracle)."""
    compared = [e for e in entries if e.kind != "oracle"]
    return {
        col: max(round(e.mean[col], DIGITS) for e in compared) for col, _ in COLUMNS if compared
    }


def _best_extra(
    entries: Sequence[Entry], extra: Mapping[str, Mapping[str, Any]]
) -> dict[str, float]:
    compared = [e for e in entries if e.kind != "oracle"]
    out = {}
    for col, spec in extra.items():
        vals = [round(e.mean[col], DIGITS) for e in compared if col in e.mean]
        if vals and spec.get("higher_is_better", True) is not None:
            out[col] = max(vals) if spec.get("higher_is_better", True) else min(vals)
    return out


def main_table(
    entries: Sequence[Entry],
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    marks: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
    *,
    scores: bool = True,
) -> str:
    """The paper-style Markdown table of the main table's entries
    (:func:`hhh_bench.tracking.entries.table_entries`).

    A cell is the value, ``± spread`` (:func:`_spread`) and ``n=`` what the spread is over
    (:func:`cell_n`; shown whenever the row says it); a value over no item (n = 0) is shown
    as missing (``- n=0``), never as a number.

    Args:
        entries: the rows, in table order.
        extra: extra columns after Min (:func:`~hhh_bench.tracking.entries.extra_columns`);
            bold marks their best value by direction.
        marks: per entry ``(kind, name)`` and column, a mark after the value (``≈``: not
            resolvably different from the column's best) or after the delta (``†``: change from
            the base not resolved), from :func:`~hhh_bench.tracking.entries.paired_marks`.
        scores: False: the extra columns alone, without the 3H ones (the diagnostics table).
    """
    extra = dict(extra or {})
    best = best_per_column(entries) if scores else {}
    best.update(_best_extra(entries, extra))
    cols = [*(COLUMNS if scores else ()), *((c, extra_head(c, v)) for c, v in extra.items())]
    head = "| Method | " + " | ".join(h for _, h in cols) + " |"
    lines = [head, "|" + "---|" + "---:|" * len(cols)]
    for kind, title in GROUPS:
        members = [e for e in entries if e.kind == kind]
        if not members:
            continue
        lines.append(f"| *{title}* |" + " |" * len(cols))
        for e in members:
            mk = (marks or {}).get((e.kind, e.name), {})
            cells = []
            for col, _ in cols:
                n = cell_n(e, col, extra) if col in e.mean else None
                if col not in e.mean or n == 0:
                    cells.append("-" if n is None else "- n=0")
                    continue
                text = _fmt(e.mean[col], _spread(e, col))
                if e.kind != "oracle" and round(e.mean[col], DIGITS) == best.get(col):
                    text = f"**{text}**"
                text += (f" n={n}" if n is not None else "") + mk.get(col, "")
                delta = _fmt_delta(e.delta.get(col))
                delta_mark = mk.get(f"delta_{col}", "") + (OTHER_SEEDS if e.other_seeds else "")
                if delta and delta_mark:
                    delta = delta[:-1] + delta_mark + ")"
                cells.append(text + delta)
            lines.append(f"| {md_text(seeds_label(e, entries))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def all_models_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Every evaluated configuration (means over seeds), in group order."""
    entries = aggregate(rows)
    with_deltas(
        entries, base_means(rows), base_seeds(rows), [r for r in rows if r["kind"] == "base"]
    )
    lines = [
        "| Group | Model | Params | Seeds | Helpful | Honest | Harmless | Avg | Min | Max drop |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, title in GROUPS:
        for e in sorted((e for e in entries if e.kind == kind), key=lambda e: e.name):
            mark = OTHER_SEEDS if e.other_seeds else ""
            cells = [
                _fmt(e.mean[c], _spread(e, c))
                + (_fmt_delta(e.delta[c])[:-1] + mark + ")" if e.delta[c] is not None else "")
                for c, _ in COLUMNS
            ]
            params = {params_text(r) for r in e.rows}
            shown = params.pop() if len(params) == 1 else "varies by seed"
            lines.append(
                f"| {title} | {md_text(e.name)} | {md_text(shown)} | {e.n} | "
                + " | ".join(cells)
                + f" | {_fmt_opt(e.delta['max_drop'])} |"
            )
    return "\n".join(lines)


def per_task_table(entries: Sequence[Entry]) -> str:
    """Per-task primary metrics (means over seeds) of the main-table rows."""
    specs: dict[str, str] = {}
    for e in entries:
        for r in e.rows:
            for s in r.get("task_specs") or []:
                specs.setdefault(s["name"], s["metric"])
            for c in (r.get("extra_columns") or {}).values():  # extra columns' tasks
                specs.setdefault(c["task"], c["metric"])
            for t in r.get("tasks") or {}:
                specs.setdefault(t, r.get("metric", "acc"))
    if not specs:
        return ""
    names = sorted(specs)
    lines = [
        "| Method | " + " | ".join(md_text(f"{t} ({specs[t]})") for t in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for e in entries:
        cells = []
        for t in names:
            vals = [
                float(r["tasks"][t][specs[t]])
                for r in e.rows
                if t in (r.get("tasks") or {}) and r["tasks"][t].get(specs[t]) is not None
            ]
            cells.append(f"{sum(vals) / len(vals):.{DIGITS}f}" if vals else "-")
        lines.append(f"| {md_text(e.label)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt_test(t: Any) -> str:
    mark = "" if t.resolved else " ≈"
    return f"{t.diff:+.{DIGITS}f} ± {t.stderr:.{DIGITS}f} (p={t.p_value:.2g}){mark}"


def paired_table(
    entries: Sequence[Entry],
    tests: Mapping[tuple[str, str], Any],
    cols: Sequence[str],
    heads: Sequence[str],
) -> str:
    """One table of paired tests (:func:`hhh_bench.tracking.entries.paired_marks`' ``base`` or
    ``best`` tests): a row per entry that has a test, a column per ``cols`` (titled ``heads``),
    each cell the difference ± standard error and p (``≈``: not resolved), ``-`` without one."""
    lines = ["| Method | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(cols)]
    for e in entries:
        cells = [_fmt_test(tests[(e.name, c)]) if (e.name, c) in tests else "-" for c in cols]
        if any(c != "-" for c in cells):
            lines.append(f"| {md_text(e.label)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
