"""Per-item results: what each evaluated item scored, and what each generation said.

lm-eval's logged samples (``simple_evaluate(..., log_samples=True)``, ``results["samples"]``)
hold, per task and document, the document, the model's responses and the per-document metric
values that the task's aggregation averages. :func:`parse_items` keeps two compact views of them:

* **items**: ``{task: [{"doc_id", <metric>: value, ...}]}``, the per-item values behind every
  mean metric, for standard errors, bootstraps and paired tests
  (:mod:`hhh_bench.core.stats`). A metric of filter ``f`` other than ``none`` is named
  ``<metric>,<f>``, as in :func:`hhh_bench.evaluation.harness.parse_results`. An item whose
  document names its entity (:data:`CLUSTER_FIELDS`) also holds ``"cluster"``
  (:func:`item_clusters`).
* **generations**: ``{task: [{"doc_id", "prompt", "response", "context", "doc"}]}`` for
  ``generate_until`` tasks: the user prompt (the document's ``prompt`` field, which our judged
  tasks' ``process_docs`` hooks guarantee; else the rendered context), the model's text, the
  rendered context and the document's scalar fields. Judges read these
  (:mod:`hhh_bench.evaluation.judged`).

:func:`item_values` returns the per-item values of one task's metric, pooling a group's leaf
tasks (lm-eval's ``weight_by_size`` groups such as ``mmlu`` average exactly those items), and
checks that their mean reproduces the reported metric, so a metric whose aggregation is not a
mean (corpus BLEU, F1) is never treated as one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hhh_bench.core.stats import win_values

ITEMS_FILE = "items.jsonl"
GENERATIONS_FILE = "generations.jsonl"
CLUSTER_FIELDS = ("cluster", "entity", "object")
"""Document fields that name the unit several items share (the toy world's questions about one
entity, its requests about one object): the first one a document has is kept as the item's
``cluster`` (``"<field>=<value>"``), for the answer's mixed-effects view
(:func:`hhh_bench.core.seedstats.mixed_effects`). A suite whose documents have none gives items
without a cluster (each item its own)."""


def metric_number(value: Any) -> float | None:
    """A metric value as a finite float (a boolean as 0/1), or None for lm-eval's ``"N/A"`` and
    other non-numbers."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


def _scalars(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The document's scalar fields (strings, numbers, booleans): what a judge or a reader needs,
    without the lists and nested records some datasets carry."""
    return {k: v for k, v in doc.items() if isinstance(v, (str, int, float, bool)) or v is None}


def parse_items(
    raw: Mapping[str, Any],
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """``(items, generations)`` from ``simple_evaluate``'s output (see the module docstring).

    Tasks without logged samples contribute nothing (``log_samples=False``).
    """
    items: dict[str, list[dict[str, Any]]] = {}
    generations: dict[str, list[dict[str, Any]]] = {}
    for task, docs in (raw.get("samples") or {}).items():
        by_doc: dict[Any, dict[str, Any]] = {}
        for s in docs:
            doc_id = s.get("doc_id")
            filt = s.get("filter", "none")
            row = by_doc.setdefault(doc_id, {"doc_id": doc_id})
            cluster = _cluster(s.get("doc"))
            if cluster is not None:
                row.setdefault("cluster", cluster)
            for metric in s.get("metrics") or []:
                value = metric_number(s.get(metric))
                if value is not None:
                    row[metric if filt == "none" else f"{metric},{filt}"] = value
            resps = s.get("filtered_resps") or []
            args = s.get("arguments") or []
            if (
                filt == "none"
                and resps
                and isinstance(resps[0], str)
                and args
                and isinstance(args[0], (list, tuple))
                and len(args[0]) >= 2
                and isinstance(args[0][1], Mapping)  # (context, generation kwargs)
            ):
                doc = s.get("doc") or {}
                context = str(args[0][0])
                prompt = doc.get("prompt") if isinstance(doc.get("prompt"), str) else context
                generations.setdefault(task, []).append(
                    {
                        "doc_id": doc_id,
                        "prompt": prompt,
                        "response": resps[0],
                        "context": context,
                        "doc": _scalars(doc),
                    }
                )
        items[task] = list(by_doc.values())
    return items, generations


def _cluster(doc: Any) -> str | None:
    """The document's cluster id (:data:`CLUSTER_FIELDS`), or None."""
    if not isinstance(doc, Mapping):
        return None
    for f in CLUSTER_FIELDS:
        v = doc.get(f)
        if isinstance(v, (str, int)) and not isinstance(v, bool) and str(v):
            return f"{f}={v}"
    return None


def write_jsonl(path: str | Path, per_task: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    """Write ``{task: [row]}`` as JSON lines ``{"task": task, **row}``."""
    with open(path, "w") as f:
        for task, rows in per_task.items():
            for r in rows:
                f.write(json.dumps({"task": task, **r}, default=str) + "\n")


def read_jsonl(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Read what :func:`write_jsonl` wrote, as ``{task: [row]}`` (file order kept)."""
    out: dict[str, list[dict[str, Any]]] = {}
    with open(path) as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                task = row.pop("task")
            except (ValueError, KeyError) as e:
                raise ValueError(f"{path}:{i}: not an item line ({e})") from None
            out.setdefault(task, []).append(row)
    return out


def leaf_tasks(task: str, groups: Mapping[str, Sequence[str]]) -> list[str]:
    """The leaf tasks under ``task`` (itself when it is not a group), depth first."""
    if task not in groups:
        return [task]
    out: list[str] = []
    for sub in groups[task]:
        out.extend(leaf_tasks(sub, groups))
    return out


def item_values(
    items: Mapping[str, Sequence[Mapping[str, Any]]],
    task: str,
    metric: str,
    *,
    groups: Mapping[str, Sequence[str]] | None = None,
    expected: float | None = None,
    tol: float = 1e-6,
) -> dict[str, float] | None:
    """Per-item values of ``metric`` for ``task``, keyed ``"<leaf task>/<doc_id>"``.

    Args:
        items: from :func:`parse_items` (or an ``items.jsonl``).
        task: a task or a group (its leaves' items are pooled).
        metric: the per-item metric name.
        groups: lm-eval's ``group_subtasks`` (group -> members).
        expected: the reported value of the metric; when given, the items' mean must reproduce
            it within ``tol``, else None is returned (the aggregation is not a plain mean).

    Returns:
        The values, or None when some leaf has no items or no such per-item metric.
    """
    out: dict[str, float] = {}
    for leaf in leaf_tasks(task, groups or {}):
        rows = items.get(leaf)
        if not rows:
            return None
        for r in rows:
            v = r.get(metric)
            if v is None:
                return None
            out[f"{leaf}/{r['doc_id']}"] = float(v)
    if not out:
        return None
    if expected is not None and abs(math.fsum(out.values()) / len(out) - float(expected)) > tol:
        return None
    return out


def item_clusters(
    items: Mapping[str, Sequence[Mapping[str, Any]]],
    task: str,
    *,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, str | None]:
    """The cluster id of every item of ``task`` (keys as in :func:`item_values`; None for an
    item without one, e.g. from a store written before items kept their cluster)."""
    return {
        f"{leaf}/{r['doc_id']}": r.get("cluster")
        for leaf in leaf_tasks(task, groups or {})
        for r in items.get(leaf) or []
    }


def merge_item_fields(
    items: dict[str, list[dict[str, Any]]],
    task: str,
    fields: Iterable[Mapping[str, Any]],
) -> None:
    """Add per-item fields (judged values) to ``items[task]`` by ``doc_id`` (rows created for
    documents not yet there)."""
    rows = items.setdefault(task, [])
    by_id = {r["doc_id"]: r for r in rows}
    for f in fields:
        row = by_id.get(f["doc_id"])
        if row is None:
            row = {"doc_id": f["doc_id"]}
            rows.append(row)
            by_id[f["doc_id"]] = row
        row.update(f)


def win_rewards(rows: Sequence[Mapping[str, Any]]) -> dict[Any, float]:
    """``{doc_id: reward}`` of a judged task's items, for win rates: an empty answer (``empty``
    true: no judge was shown it, it has no ``reward``) is ``-inf``, so it loses to any answer and
    ties with another empty one; other items without a reward are left out."""
    out: dict[Any, float] = {}
    for r in rows:
        if r.get("empty"):
            out[r["doc_id"]] = -math.inf
        elif r.get("reward") is not None:
            out[r["doc_id"]] = float(r["reward"])
    return out


def win_items(
    items: Mapping[str, Sequence[Mapping[str, Any]]],
    reference_items: Mapping[str, Sequence[Mapping[str, Any]]],
    task: str,
) -> dict[Any, float]:
    """Per-item win values (1 / 0.5 / 0) of ``task``'s rewards against the reference's."""
    return win_values(
        win_rewards(items.get(task) or []),
        win_rewards(reference_items.get(task) or []),
        label=f"win rate of task {task!r}",
    )
