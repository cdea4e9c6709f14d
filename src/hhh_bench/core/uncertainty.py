"""Standard errors of the 3H summary scores and paired tests of two models' scores, from the
per-item values of their tasks (:mod:`hhh_bench.core.items`).

* :func:`spec_values` gives the per-item values behind one task's primary metric (pooled over a
  group's leaves; ``win_rate`` from the rewards of the model and of the reference model).
* :func:`summary_stderr` adds ``average_stderr`` (the three dimensions are disjoint item sets:
  ``sqrt(Σ_d SE_d²) / 3``) and ``min_stderr`` (the minimum is not linear: a stratified
  bootstrap over each task's items, :func:`hhh_bench.core.stats.stratified_bootstrap_stderr`).
* :func:`column_scores` reads the extra report columns (``eval.columns``, e.g. over-refusal),
  each one task's metric with its stderr.
* :func:`paired_column_test` compares two models on one column (a dimension, ``average``, an
  extra column or a task) by the paired differences of their item values
  (:func:`hhh_bench.core.stats.paired_combination`): a dimension is
  ``Σ_t (w_t / Σw) mean_t``, the average the same with every coefficient divided by 3;
  :func:`column_item_values` gives the two models' per-item values behind it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from hhh_bench.core.items import item_values, win_items
from hhh_bench.core.scoring import DIMENSIONS, TaskSpec
from hhh_bench.core.stats import PairedTest, paired_combination, stratified_bootstrap_stderr

Items = Mapping[str, Sequence[Mapping[str, Any]]]


def spec_values(
    items: Items,
    task: str,
    metric: str,
    *,
    groups: Mapping[str, Sequence[str]] | None = None,
    reported: float | None = None,
    reference_items: Items | None = None,
) -> dict[str, float] | None:
    """Per-item values of ``metric`` on ``task`` (None when not available).

    ``win_rate`` is computed against ``reference_items`` (the base model's); any other metric
    is read from the items and must average to ``reported`` when that is given.
    """
    if metric == "win_rate":
        if reference_items is None or task not in items:
            return None
        return {f"{task}/{k}": v for k, v in win_items(items, reference_items, task).items()}
    return item_values(items, task, metric, groups=groups, expected=reported)


def _reported(metrics: Mapping[str, Mapping[str, Any]], spec: TaskSpec) -> float | None:
    v = (metrics.get(spec.name) or {}).get(spec.metric)
    return None if v is None else float(v)


def summary_stderr(
    scores: Mapping[str, Any],
    metrics: Mapping[str, Mapping[str, Any]],
    specs: Sequence[TaskSpec],
    items: Items | None,
    *,
    groups: Mapping[str, Sequence[str]] | None = None,
    reference_items: Items | None = None,
    iters: int = 1000,
    seed: int = 0,
) -> dict[str, float | None]:
    """``{"average_stderr", "min_stderr"}`` of a scored model (None where not computable)."""
    ses = [scores.get(f"{d}_stderr") for d in DIMENSIONS]
    avg = (
        math.sqrt(math.fsum(float(s) ** 2 for s in ses)) / len(DIMENSIONS)  # type: ignore[arg-type]
        if all(s is not None for s in ses)
        else None
    )
    out: dict[str, float | None] = {"average_stderr": avg, "min_stderr": None}
    if not items:
        return out
    per_spec: dict[str, list[float]] = {}
    for i, s in enumerate(specs):
        vals = spec_values(
            items,
            s.name,
            s.metric,
            groups=groups,
            reported=_reported(metrics, s),
            reference_items=reference_items,
        )
        if vals is None:
            return out
        per_spec[str(i)] = list(vals.values())

    def smallest(means: Mapping[str, Any]) -> Any:  # per resample: the lowest dimension
        import numpy as np

        dims = []
        for d in DIMENSIONS:
            parts = [(s.weight, means[str(i)]) for i, s in enumerate(specs) if s.dimension == d]
            total = sum(w for w, _ in parts)
            dims.append(sum(w * m for w, m in parts) / total)
        return np.minimum.reduce(dims)

    out["min_stderr"] = stratified_bootstrap_stderr(
        per_spec, smallest, iters=iters, seed=seed, vectorized=True
    )
    return out


def column_scores(
    metrics: Mapping[str, Mapping[str, Any]],
    columns: Mapping[str, Mapping[str, Any]] | None,
    *,
    task_template: str = "{task}",
    split_suffix: str = "test",
) -> dict[str, float | None]:
    """``{name: value, name_stderr: se}`` of the extra columns (``eval.columns``: ``{name:
    {task, metric, higher_is_better}}``; the task name goes through ``task_template``).

    Raises:
        ValueError: a column without task or metric, or whose task or metric was not evaluated.
    """
    out: dict[str, float | None] = {}
    for name, col in (columns or {}).items():
        if not col or not col.get("task") or not col.get("metric"):
            raise ValueError(f"eval.columns.{name} needs `task` and `metric`, got {col!r}")
        task = task_template.format(task=col["task"], split=split_suffix)
        row = metrics.get(task)
        if row is None or row.get(col["metric"]) is None:
            have = sorted(k for k in (row or {}) if not k.endswith("_stderr") and k != "n")
            raise ValueError(
                f"eval.columns.{name}: task {task!r} has no metric {col['metric']!r} in this "
                f"run ({'metrics: ' + str(have) if row else 'the task was not run'}); add the "
                "task to the suite or drop the column"
            )
        out[name] = float(row[col["metric"]])
        out[f"{name}_stderr"] = row.get(f"{col['metric']}_stderr")
    return out


def column_parts(
    column: str,
    specs: Sequence[TaskSpec],
    columns: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[tuple[float, str, str]]:
    """The linear combination ``[(coefficient, task, metric)]`` a column is made of.

    ``helpful`` / ``honest`` / ``harmless``: ``w_t / Σw`` over the dimension's tasks;
    ``average``: those divided by 3; an ``eval.columns`` name or a task of ``specs``: that task
    alone.

    Raises:
        ValueError: ``min`` (not a linear combination of item means) or an unknown column.
    """
    if column in DIMENSIONS:
        mine = [s for s in specs if s.dimension == column]
        total = sum(s.weight for s in mine)
        return [(s.weight / total, s.name, s.metric) for s in mine]
    if column == "average":
        return [
            (c / len(DIMENSIONS), t, m) for d in DIMENSIONS for c, t, m in column_parts(d, specs)
        ]
    if columns and column in columns:
        return [(1.0, str(columns[column]["task"]), str(columns[column]["metric"]))]
    for s in specs:
        if s.name == column:
            return [(1.0, s.name, s.metric)]
    if column == "min":
        raise ValueError(
            "no paired test for `min`: the smallest dimension is not a mean over items (compare "
            "the dimension that is smallest instead)"
        )
    raise ValueError(
        f"unknown column {column!r}: use one of {[*DIMENSIONS, 'average']}, an eval.columns name "
        f"{sorted(columns or {})} or a task {sorted({s.name for s in specs})}"
    )


def column_item_values(
    column: str,
    specs: Sequence[TaskSpec],
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    *,
    columns: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[tuple[float, str, dict[str, float], dict[str, float]]]:
    """The per-item values of two models behind one column: ``[(c_t, task, a_items, b_items)]``
    over the column's parts (:func:`column_parts`).

    ``a`` and ``b`` each hold ``"items"`` (per task), and optionally ``"groups"``, ``"metrics"``
    (reported values, checked against the items) and ``"reference_items"`` (for ``win_rate``).

    Raises:
        ValueError: per-item values are missing for a task of the column.
    """
    parts = []
    for coef, task, metric in column_parts(column, specs, columns):
        vals = []
        for label, side in (("first", a), ("second", b)):
            reported = (side.get("metrics") or {}).get(task, {}).get(metric)
            v = spec_values(
                side["items"],
                task,
                metric,
                groups=side.get("groups"),
                reported=reported,
                reference_items=side.get("reference_items"),
            )
            if v is None:
                why = (
                    "the base model's items are needed for win_rate"
                    if metric == "win_rate"
                    else "evaluate with eval.log_samples=true; a metric that is not a mean of "
                    "per-item values has no paired test"
                )
                raise ValueError(
                    f"paired test of {column!r}: the {label} model has no per-item {metric!r} "
                    f"values for task {task!r} ({why})"
                )
            vals.append(v)
        parts.append((coef, task, vals[0], vals[1]))
    return parts


def paired_column_test(
    column: str,
    specs: Sequence[TaskSpec],
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    *,
    columns: Mapping[str, Mapping[str, Any]] | None = None,
    alpha: float = 0.05,
) -> PairedTest:
    """Paired test of two models (``a − b``) on one column (``a`` and ``b`` as in
    :func:`column_item_values`).

    Raises:
        ValueError: per-item values are missing for a task of the column, or the two models
            were scored on different items.
    """
    parts = column_item_values(column, specs, a, b, columns=columns)
    return paired_combination([(c, va, vb) for c, _, va, vb in parts], alpha=alpha, label=column)
