"""Paired tests between rows of the results store, over the items both models were scored on.

One call compares two evaluated models on a column::

    from hhh_bench.tracking import paired_test_rows, read_results
    rows = {r["name"]: r for r in read_results("runs/x/results.jsonl")}
    t = paired_test_rows(rows["ties"], rows["uniform mixture"], "harmless")
    t.diff, t.stderr, t.p_value, t.resolved   # a − b, its SE, two-sided p, p < 0.05

Each row's per-item values are read from its eval folder (``artifacts.eval_dir``:
``items.jsonl``, the lm-eval groups in ``results.json``; for ``win_rate`` also the reference
model's ``items.jsonl``, ``reference.eval_dir``), and the column is tested as the linear
combination of task means it is (:func:`hhh_bench.core.uncertainty.paired_column_test`;
the statistics and their source in :mod:`hhh_bench.core.stats`).

:func:`paired_test_groups` compares two *configurations* evaluated over several seeds: the rows
are paired by seed, each seed's paired difference is tested over items, and the seeds' results
are averaged (``diff = mean_k d_k``, ``SE = sqrt(Σ_k SE_k²) / K``). That is item-level
uncertainty only; the spread between seeds (the report's ``± std``) is another matter.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hhh_bench.core.content import read_checked
from hhh_bench.core.items import ITEMS_FILE, read_jsonl
from hhh_bench.core.scoring import TaskSpec
from hhh_bench.core.stats import ALPHA, PairedTest, z_test
from hhh_bench.core.uncertainty import paired_column_test

_CONTEXT_MEMO: dict[tuple[str, str | None], dict[str, Any] | None] = {}


def row_specs(row: Mapping[str, Any]) -> list[TaskSpec]:
    """The task specs (name, dimension, weight, metric) a store row was scored with."""
    return [
        TaskSpec(s["name"], s["dimension"], float(s["weight"]), s["metric"])
        for s in row.get("task_specs") or []
    ]


def _items(eval_dir: str | Path) -> dict[str, list[dict[str, Any]]] | None:
    """An eval folder's per-item values, its output checked against its manifest first."""
    path = Path(eval_dir) / ITEMS_FILE
    return read_jsonl(read_checked(path)) if path.is_file() else None


def eval_dir_missing(row: Mapping[str, Any]) -> bool:
    """Whether ``row`` names an eval folder that is not there (deleted, or a root copied
    without it)."""
    eval_dir = (row.get("artifacts") or {}).get("eval_dir")
    return bool(eval_dir) and not Path(str(eval_dir)).is_dir()


def no_items_reason(row: Mapping[str, Any]) -> str:
    """Why :func:`row_context` found no per-item values for ``row``, and what would fix it: the
    eval folder missing (deleted, or a copied root without it: battery 11, rl05), or evaluated
    without per-item records."""
    eval_dir = (row.get("artifacts") or {}).get("eval_dir")
    key = row.get("row_key")
    if not eval_dir:
        return f"row {key!r} has no per-item values (no eval folder recorded)"
    if eval_dir_missing(row):
        return (
            f"row {key!r} has no per-item values: its eval folder eval/{Path(eval_dir).name} is "
            f"missing from this root ({eval_dir}); run stage=eval again to rebuild it"
        )
    return (
        f"row {key!r} has no per-item values (no items.jsonl in {eval_dir}); evaluate it again "
        "with eval.log_samples=true"
    )


def row_context(row: Mapping[str, Any], *, memo: bool = True) -> dict[str, Any] | None:
    """``{"items", "groups", "metrics", "reference_items"}`` of a row, from its eval folder;
    None when the folder has no per-item values (evaluated with ``log_samples=false`` or before
    items were kept)."""
    eval_dir = (row.get("artifacts") or {}).get("eval_dir")
    ref_dir = (row.get("reference") or {}).get("eval_dir")
    if not eval_dir:
        return None
    key = (str(eval_dir), str(ref_dir) if ref_dir else None)
    if memo and key in _CONTEXT_MEMO:
        return _CONTEXT_MEMO[key]
    items = _items(eval_dir)
    ctx: dict[str, Any] | None = None
    if items is not None:
        results = Path(eval_dir) / "results.json"
        groups = (
            json.loads(read_checked(results).read_text()).get("groups") or {}
            if results.is_file()
            else {}
        )
        ctx = {
            "items": items,
            "groups": groups,
            "metrics": row.get("tasks") or {},
            "reference_items": _items(ref_dir) if ref_dir else None,
        }
    if memo:
        _CONTEXT_MEMO[key] = ctx
    return ctx


def check_comparable(a: Mapping[str, Any], b: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` unless two store rows were scored on the same items (suite, split,
    data) with the same task specs: what any paired comparison of them needs."""
    for field in ("suite", "split", "data_key"):
        if a.get(field) != b.get(field):
            raise ValueError(
                f"rows {a.get('row_key')!r} and {b.get('row_key')!r} differ in {field} "
                f"({a.get(field)!r} vs {b.get(field)!r}): a paired test needs the same items"
            )
    if row_specs(a) != row_specs(b):
        raise ValueError(
            f"rows {a.get('row_key')!r} and {b.get('row_key')!r} were scored with different "
            "task specs (tasks, weights or metrics): compare rows of one evaluation setup"
        )


def paired_test_rows(
    row_a: Mapping[str, Any],
    row_b: Mapping[str, Any],
    column: str = "average",
    *,
    alpha: float = ALPHA,
) -> PairedTest:
    """Paired test of two evaluated models on one column (``a − b``).

    Args:
        row_a, row_b: results-store rows of the same suite, split, data and task specs.
        column: ``helpful`` | ``honest`` | ``harmless`` | ``average`` | an extra column
            (``over_refusal``) | a task name (its primary metric).
        alpha: the significance level ``resolved`` is judged at.

    Raises:
        ValueError: the rows are not comparable, a row has no per-item values, or the column is
            unknown or not a mean over items (``min``).
    """
    check_comparable(row_a, row_b)
    ctx = []
    for r in (row_a, row_b):
        c = row_context(r)
        if c is None:
            raise ValueError(no_items_reason(r))
        ctx.append(c)
    columns = {**(row_b.get("extra_columns") or {}), **(row_a.get("extra_columns") or {})}
    return paired_column_test(
        column, row_specs(row_a), ctx[0], ctx[1], columns=columns, alpha=alpha
    )


def paired_test_groups(
    rows_a: Sequence[Mapping[str, Any]],
    rows_b: Sequence[Mapping[str, Any]],
    column: str = "average",
    *,
    alpha: float = ALPHA,
) -> PairedTest | None:
    """Paired test of two configurations over the seeds both were evaluated with (see the
    module docstring); None when they share no seed or a pair has no per-item values."""
    by_seed = {r.get("seed"): r for r in rows_b}
    tests = []
    for r in rows_a:
        other = by_seed.get(r.get("seed"))
        if other is None or other is r:
            continue
        try:
            tests.append(paired_test_rows(r, other, column, alpha=alpha))
        except ValueError:
            return None
    if not tests:
        return None
    k = len(tests)
    diff = sum(t.diff for t in tests) / k
    se = math.sqrt(sum(t.stderr**2 for t in tests)) / k
    return z_test(diff, se, sum(t.n for t in tests), alpha)


def clear_memo() -> None:
    """Forget the per-item values read so far (they are memoised per eval folder)."""
    _CONTEXT_MEMO.clear()
