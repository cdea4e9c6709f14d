"""The eval stage's judged and uncertainty parts (kept apart from ``stages/eval.py``, which calls
them at four points):

* :func:`judges_key` — the judges' identities for the eval cache key (a local judge folder by
  content, a hub judge by id and revision);
* :func:`run_judges` — after lm-eval, inside the cached folder: judge the generations of every
  judged task (:mod:`hhh_bench.evaluation.judged`; verdicts cached in
  ``<root>/cache/judges.sqlite``), merge the judged metrics and per-item values in, write
  ``items.jsonl`` and ``generations.jsonl``;
* :func:`reference_items` — the base model's items, against which ``win_rate`` is scored (the
  model's own when it is the base; else the base of ``base_scores``; else the store's base row
  of the same split, suite and data, same seed preferred);
* :func:`extra_scores` — on every call: ``win_rate`` of the reward tasks, ``average_stderr`` and
  ``min_stderr``, the extra columns (``eval.columns``, e.g. over-refusal), the paired tests of
  each dimension against the base, and what the row records about its judges and reference.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hhh_bench.core.content import read_checked
from hhh_bench.core.items import (
    GENERATIONS_FILE,
    ITEMS_FILE,
    merge_item_fields,
    read_jsonl,
    write_jsonl,
)
from hhh_bench.core.scoring import DIMENSIONS, SPLIT_SUFFIX, TaskSpec
from hhh_bench.core.uncertainty import column_scores, paired_column_test, summary_stderr

log = logging.getLogger("hhh_bench")


def column_specs(ecfg: Mapping[str, Any], split: str) -> list[TaskSpec]:
    """The tasks of ``eval.columns`` (extra report columns), as specs of weight 0 outside the
    three dimensions, so they are run, cache-keyed and checked like the suite's tasks."""
    template = str(ecfg.get("task_template") or "{task}")
    out = []
    for name, col in (ecfg.get("columns") or {}).items():
        if not col or not col.get("task") or not col.get("metric"):
            raise ValueError(f"eval.columns.{name} needs `task` and `metric`, got {col!r}")
        task = template.format(task=col["task"], split=SPLIT_SUFFIX[split])
        out.append(TaskSpec(task, f"columns.{name}", 0.0, str(col["metric"])))
    return out


def validate_judged(ecfg: Mapping[str, Any], specs: Sequence[TaskSpec]) -> None:
    """Before any model loads: every judged task of the run has its judge configured and
    lm-eval will log the generations the judges read.

    Raises:
        ValueError: naming the task and the setting to fix.
    """
    from hhh_bench.evaluation.harness import TASKS_DIR
    from hhh_bench.evaluation.judged import check_judges
    from hhh_bench.evaluation.judged import judge_roles as roles_under
    from hhh_bench.evaluation.judges import specs_from_config

    roles = roles_under(TASKS_DIR)
    for folder in ecfg.get("include_paths") or []:
        if Path(folder).is_dir():
            roles.update(roles_under(folder))
    mine = {s.name: roles[s.name] for s in specs if s.name in roles}
    if not mine:
        return
    if not ecfg.get("log_samples", True):
        raise ValueError(
            f"judged task(s) {sorted(mine)} need eval.log_samples=true (the judges read the "
            "answers lm-eval logs)"
        )
    judges = specs_from_config(ecfg.get("judges"))
    check_judges(mine, judges)
    needs_info = sorted(
        s.name for s in specs if s.name in mine and s.metric in ("true_info", "informative")
    )
    if needs_info and "info" not in judges:
        raise ValueError(
            f"task(s) {needs_info} are scored by true_info/informative, which need an "
            "informativeness judge: set eval.judges.info (conf/eval/harness_3h.yaml documents "
            "it), or score them by `truthful`"
        )


def judges_key(ecfg: Mapping[str, Any]) -> dict[str, str]:
    """``{judge name: fingerprint}`` of ``eval.judges`` (validated), for the cache key."""
    from hhh_bench.evaluation.judges import judge_fingerprint, specs_from_config

    return {n: judge_fingerprint(s) for n, s in specs_from_config(ecfg.get("judges")).items()}


def judge_cache_path(root: str | Path) -> Path:
    """Where judge verdicts are kept for every model of an experiment."""
    return Path(root) / "cache" / "judges.sqlite"


def open_judge_cache(ecfg: Mapping[str, Any], root: str | Path) -> Any:
    """The experiment's judge cache, checked (an unreadable one named, or moved aside under
    ``cache.on_mismatch=recompute``: :class:`hhh_bench.evaluation.judges.JudgeCache`), when the
    suite has judges; None otherwise. Called before the policy model loads."""
    from hhh_bench.core.stagecache import CACHE
    from hhh_bench.evaluation.judges import JudgeCache

    if not any(ecfg.get("judges") or {}):
        return None
    return JudgeCache(judge_cache_path(root), on_mismatch=CACHE.on_mismatch)


def check_judges_early(ecfg: Mapping[str, Any], root: str | Path) -> None:
    """Before any stage runs: every ``eval.judges`` entry is valid (a guard states
    ``on_unparsed``, ...: :meth:`hhh_bench.evaluation.judges.JudgeSpec.from_config`) and an
    existing judge cache is readable (:func:`open_judge_cache`).

    Raises:
        ValueError: naming the judge and the setting, or the cache's file.
    """
    from hhh_bench.core.scoring import suite_tasks
    from hhh_bench.evaluation.endpoint import api_key
    from hhh_bench.evaluation.judges import specs_from_config

    for name, spec in specs_from_config(ecfg.get("judges")).items():
        if spec.endpoint is not None:  # its key is in the environment before any work
            api_key(f"eval.judges.{name}", spec)
    for split in {s for s in (ecfg.get("select_split"), ecfg.get("report_split")) if s}:
        validate_judged(ecfg, suite_tasks(ecfg, split) + column_specs(ecfg, split))
    if judge_cache_path(root).exists():
        open_judge_cache(ecfg, root)


def check_judges_offline(ecfg: Mapping[str, Any]) -> None:
    """On an offline machine (``HF_HUB_OFFLINE=1``), every judge named by a hub id is in the
    HF cache at its revision, checked before any stage runs: otherwise the run would generate
    every answer and only then fail to load the judge.

    Raises:
        ValueError: naming the judge, its id and revision, and the command that fetches it.
    """
    import os

    from hhh_bench.core.hubref import cached_config, is_hub_id
    from hhh_bench.evaluation.judges import specs_from_config

    if os.environ.get("HF_HUB_OFFLINE") != "1":
        return
    for name, spec in specs_from_config(ecfg.get("judges")).items():
        if not is_hub_id(spec.model) or spec.endpoint is not None:
            continue
        if cached_config(spec.model, spec.revision) is None:
            rev = f" --revision {spec.revision}" if spec.revision else ""
            raise ValueError(
                f"eval.judges.{name}: {spec.model} (revision {spec.revision or 'main'}) is not in "
                f"the HF cache and this machine is offline (HF_HUB_OFFLINE=1): on a machine "
                f"with network run `hf download {spec.model}{rev}` with the same HF_HOME, or "
                f"give a local folder (eval.judges.{name}.model=/path)"
            )


def run_judges(
    ecfg: Mapping[str, Any],
    res: dict[str, Any],
    include: Path,
    out: Path,
    root: str | Path,
    cache: Any = None,
) -> dict[str, Any]:
    """Judge the run's generations and merge the judged metrics and items into ``res``.

    Writes ``items.jsonl`` and ``generations.jsonl`` into ``out`` (the cached folder being
    written). ``cache``: the judge cache opened before the work (:func:`open_judge_cache`;
    None: opened here). Returns ``{"judges": {task: record}, "counts": {task: {cached,
    judged}}}``.
    """
    from hhh_bench.evaluation.judged import judge_generations, judge_roles
    from hhh_bench.evaluation.judges import specs_from_config

    ran = set(res["metrics"])
    roles = {t: r for t, r in judge_roles(include).items() if t in ran}
    silent = sorted(t for t in roles if t not in (res.get("generations") or {}))
    if silent:
        raise ValueError(
            f"judged task(s) {silent} ran but lm-eval logged no generations for them: set "
            "eval.log_samples=true (the judges read the logged answers)"
        )
    info: dict[str, Any] = {"judges": {}, "counts": {}}
    if roles:
        gc.collect()  # the policy model is gone: free its memory before a judge loads
        _empty_cuda_cache()
        judged = judge_generations(
            res["generations"],
            roles,
            specs_from_config(ecfg.get("judges")),
            cache=cache if cache is not None else open_judge_cache(ecfg, root),
            refusal_rule=str(ecfg.get("refusal_rule") or "any"),
        )
        for task, row in judged["metrics"].items():
            res["metrics"].setdefault(task, {}).update(row)
            merge_item_fields(res["items"], task, judged["items"][task])
        info = {"judges": judged["judges"], "counts": judged["counts"]}
        for task, c in judged["counts"].items():
            m = judged["metrics"][task]
            log.info("eval: judged %s (%d from cache, %d new; %d of %d answers empty, %d "
                     "unparsed)", task, c["cached"], c["judged"], m["n_empty"], m["n"],
                     m["n_unparsed"])  # fmt: skip
    if res.get("items"):
        write_jsonl(out / ITEMS_FILE, res["items"])
    if res.get("generations"):
        write_jsonl(out / GENERATIONS_FILE, res["generations"])
    return info


def _empty_cuda_cache() -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_items(eval_dir: str | Path | None) -> dict[str, list[dict[str, Any]]] | None:
    """The ``items.jsonl`` of an eval folder (its output checked against its manifest first), or
    None when it has none."""
    if not eval_dir:
        return None
    path = Path(eval_dir) / ITEMS_FILE
    return read_jsonl(read_checked(path)) if path.is_file() else None


def _base_row(
    rows: Sequence[Mapping[str, Any]],
    *,
    split: str,
    suite: str,
    data_key: str | None,
    seed: Any,
) -> Mapping[str, Any] | None:
    cands = [
        r
        for r in rows
        if r.get("kind") == "base"
        and r.get("split") == split
        and r.get("suite") == suite
        and r.get("data_key") == data_key
    ]
    same = [r for r in cands if r.get("seed") == seed]
    return (same or cands)[-1] if cands else None


def reference_needs(ecfg: Mapping[str, Any], specs: Sequence[TaskSpec], split: str) -> list[str]:
    """What in this run is scored against the base model's answers (``win_rate``), by name:
    the suite's tasks and the ``eval.columns`` (the default ``win_vs_base``)."""
    template = str(ecfg.get("task_template") or "{task}")
    out = [f"task {s.name} (metric win_rate)" for s in specs if s.metric == "win_rate"]
    for name, col in (ecfg.get("columns") or {}).items():
        if col and col.get("metric") == "win_rate" and col.get("task"):
            task = template.format(task=col["task"], split=SPLIT_SUFFIX[split])
            out.append(f"eval.columns.{name} (task {task}, metric win_rate)")
    return out


def reference_first(
    ecfg: Mapping[str, Any],
    specs: Sequence[TaskSpec],
    model: Mapping[str, Any],
    store_rows: Callable[[], Sequence[Mapping[str, Any]]],
    *,
    store: Path,
    base_scores: Mapping[str, Any] | None,
    split: str,
    **where: Any,
) -> tuple[dict[str, list[dict[str, Any]]] | None, dict[str, Any] | None] | None:
    """Before any evaluation of a model that is not its own reference: the base's items
    (:func:`reference_items`) when a win rate of the run needs them (:func:`reference_needs`),
    None when none does (they are looked up after the evaluation, for the paired tests).

    Raises:
        ValueError: a win rate needs them and they are not there, naming what needs them, the
            model, why they are missing and the ways on (evaluate the base first; drop a
            column): before anything is evaluated, not after (battery 10).
    """
    needs = reference_needs(ecfg, specs, split)
    if not needs:
        return None
    ref = reference_items(
        store_rows, model, own_dir=None, base_scores=base_scores, split=split, **where
    )
    items, info = ref
    if items is not None:
        return ref
    if info is not None:
        why = f"the base's eval folder {info.get('eval_dir')} has no {ITEMS_FILE}"
    elif base_scores is not None:
        why = "the base given to this evaluation (base_scores) names no eval folder"
    else:
        why = f"no evaluated base model of this split, suite and data is in {store}"
    columns = ", ".join("~" + n.split()[0] for n in needs if n.startswith("eval.columns."))
    drop = f", or drop {'it' if len(needs) == 1 else 'the columns'} ({columns})" if columns else ""
    raise ValueError(
        f"{'; '.join(needs)} {'is' if len(needs) == 1 else 'are'} scored against the base "
        f"model's answers, but {why}, for model {str(model.get('name') or model['path'])!r}: "
        "evaluate the base first (hhh-bench stage=eval with the same data and eval settings, "
        f"without +eval.model){drop}; nothing was evaluated"
    )


def reference_items(
    store_rows: Callable[[], Sequence[Mapping[str, Any]]],
    model: Mapping[str, Any],
    *,
    own_dir: Path | None,
    split: str,
    suite: str,
    data_key: str | None,
    seed: Any,
    base_scores: Mapping[str, Any] | None,
) -> tuple[dict[str, list[dict[str, Any]]] | None, dict[str, Any] | None]:
    """``(items, record)`` of the reference (base) model for ``win_rate``; ``(None, None)``
    when no base is known (see the module docstring for the order of the look-up)."""
    if model.get("kind", "base") == "base" and base_scores is None:
        return load_items(own_dir), {"kind": "self", "eval_dir": str(own_dir)}
    if base_scores is not None:
        where = base_scores.get("dir") or (base_scores.get("artifacts") or {}).get("eval_dir")
        if where:
            return load_items(where), {"kind": "given", "eval_dir": str(where)}
        return None, None
    row = _base_row(store_rows(), split=split, suite=suite, data_key=data_key, seed=seed)
    if row is None:
        return None, None
    where = (row.get("artifacts") or {}).get("eval_dir")
    return load_items(where), {"kind": "store", "row_key": row["row_key"], "eval_dir": where}


def extra_scores(
    saved: Mapping[str, Any],
    specs: Sequence[TaskSpec],
    out: Path,
    ref: tuple[dict[str, list[dict[str, Any]]] | None, dict[str, Any] | None],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """What the judged tasks and the per-item values add to a model's scoring.

    Returns:
        ``(metrics, context, row fields)``: the metrics with ``win_rate`` added to the reward
        tasks (a copy); ``{"items", "ref_items"}`` for :func:`summary_fields`; the fields to add
        to the row: ``judges`` (per judged task: role, judge, model, revision, protocol,
        fingerprint) and ``reference`` (whose answers the win rate is against).

    Raises:
        ValueError: a task's primary metric is ``win_rate`` but no base model's items are known.
    """
    from hhh_bench.evaluation.judged import reference_metrics

    ref_items, ref_info = ref
    metrics = {t: dict(v) for t, v in saved["metrics"].items()}
    roles = {t: j["role"] for t, j in (saved.get("judges") or {}).items()}
    items = load_items(out)
    needs_ref = [s.name for s in specs if s.metric == "win_rate"]
    if needs_ref and (items is None or ref_items is None):
        raise ValueError(
            f"task(s) {needs_ref} are scored by win_rate against the base model's answers, but "
            + (
                "this run logged no per-item values (set eval.log_samples=true)"
                if items is None
                else "no evaluated base model of this split, suite and data was found: evaluate "
                "the base first (kind=base), or pass base_scores"
            )
        )
    if items is not None and ref_items is not None:
        for task, row in reference_metrics(items, roles, ref_items).items():
            metrics.setdefault(task, {}).update(row)
    fields = {"judges": saved.get("judges") or {}, "reference": ref_info}
    return metrics, {"items": items, "ref_items": ref_items}, fields


def summary_fields(
    ecfg: Mapping[str, Any],
    saved: Mapping[str, Any],
    metrics: Mapping[str, Mapping[str, Any]],
    scores: Mapping[str, Any],
    specs: Sequence[TaskSpec],
    split: str,
    ctx: Mapping[str, Any],
    base_items: Mapping[str, Any] | None,
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Score fields and row fields from the per-item values.

    Returns:
        ``(scores, row fields)``: ``average_stderr``, ``min_stderr`` and the extra columns
        (``eval.columns``) with their stderrs; and for the row ``extra_columns`` (each column's
        task, metric and direction) and ``paired_vs_base`` (per dimension and the average: this
        model against the base, :func:`hhh_bench.core.uncertainty.paired_column_test`;
        None without the base's items or for the base itself).
    """
    groups = saved.get("groups") or {}
    out: dict[str, float | None] = dict(
        summary_stderr(
            scores,
            metrics,
            specs,
            ctx.get("items"),
            groups=groups,
            reference_items=ctx.get("ref_items"),
            iters=int(ecfg.get("summary_bootstrap_iters") or 1000),
        )
    )
    template = str(ecfg.get("task_template") or "{task}")
    out.update(
        column_scores(
            metrics, ecfg.get("columns"), task_template=template, split_suffix=SPLIT_SUFFIX[split]
        )
    )
    extra = {
        name: {
            "task": template.format(task=c["task"], split=SPLIT_SUFFIX[split]),
            "metric": str(c["metric"]),
            # null: a descriptive column (an answer length), no best marked; a bool otherwise
            # (validation.check_columns refused anything else before work)
            "higher_is_better": c.get("higher_is_better", True),
            "table": str(c.get("table", "main")),  # the report table it is shown in
        }
        for name, c in (ecfg.get("columns") or {}).items()
    }
    paired: dict[str, Any] = {}
    if base_items and ctx.get("items"):
        a = {"items": ctx["items"], "groups": groups, "metrics": metrics,
             "reference_items": ctx.get("ref_items")}  # fmt: skip
        b = {"items": base_items, "groups": groups, "reference_items": ctx.get("ref_items")}
        for col in (*DIMENSIONS, "average"):
            try:
                paired[col] = paired_column_test(col, specs, a, b).as_dict()
            except ValueError as e:  # e.g. a built-in metric that is not a mean of items
                log.debug("eval: no paired test of %s against the base: %s", col, e)
    return out, {"extra_columns": extra, "paired_vs_base": paired or None}
