"""The eval stage: one model on one split of the eval suite -> metrics, 3H scores, a store row.

``run_eval`` evaluates with lm-eval (cached under ``<root>/eval/<key>/``), scores the per-task
metrics with the eval config's weights and primary metric, and **appends the model's row to the
results store** ``<root>/results.jsonl`` itself (callers do not; pass ``append=False`` to skip).

The cache key covers what decides the metrics: the model's key, the data's key, the split, the
task list, the chat-template switch, ``limit``, the dtype, the custom data files' hashes and,
when ``eval.include_paths`` names folders of the user's own task YAMLs, a hash of those folders'
content (an edited YAML or hook is evaluated again; where the folders live does not matter). The
scoring (weights, primary metric) is not part of it: it is recomputed from the cached metrics on
every call, so re-scoring with ``eval.metric=soft`` evaluates nothing again and the store's row
for that model is superseded by one with the new scores (same ``row_key``).

Layout of ``<root>/eval/<key>/`` (written atomically)::

    results.json     per-task metrics with stderrs and n, lm-eval seconds, harness settings,
                     the model dict, the scores at write time
    samples.jsonl    per item: task, doc_id, id, gold, lls (the choices' log-likelihoods)
    items.jsonl      per item: task, doc_id and its metric values, judged ones included
                     (standard errors, bootstraps, paired tests: stages/judged.py)
    generations.jsonl  per generated answer: task, doc_id, prompt, response (judged tasks)
    tasks/           the lm-eval YAMLs this run used, data paths filled in (user/: the user's)
    provenance.json  eval config, versions, git revision, model and data keys
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hhh_bench.evaluation.scoring import DIMENSIONS, SPLIT_SUFFIX, TaskSpec, score, suite_tasks
from hhh_bench.provenance import atomic_dir, config_hash, file_hash, write_provenance
from hhh_bench.stages.common import CACHE, is_done, log, read_json, stage_dir, stage_key, to_dict

# Eval-config fields that only steer selection and reporting, never the numbers of one model.
_REPORT_ONLY = ("name", "select_split", "report_split", "select_by")
# Fields that decide the scores but not the lm-eval metrics (recomputed on every call).
_SCORING_ONLY = ("dimensions", "metric", "metrics", "columns", "summary_bootstrap_iters")
# Model-dict fields that have a column of their own in the row; the rest go to ``extra``.
_MODEL_FIELDS = (
    "path", "key", "kind", "name", "family", "method", "params", "mix_strategy", "noise_rate",
    "train_dimensions", "seed", "config_hash", "timings",
)  # fmt: skip


def results_path(cfg: DictConfig) -> Path:
    """The experiment's results store, ``<root>/results.jsonl``."""
    return Path(cfg.root) / "results.jsonl"


def _data_paths(eval_cfg: Mapping[str, Any], data: Mapping[str, Any] | None) -> dict[str, Path]:
    """Placeholder name -> data path for :func:`materialize_tasks`."""
    paths: dict[str, Path] = {}
    if data and data.get("dir") and (Path(data["dir"]) / "eval").is_dir():
        paths["toy3h_eval"] = Path(data["dir"]) / "eval"
    for name, path in (eval_cfg.get("data_files") or {}).items():
        if path:
            paths[name] = Path(path)
    return paths


def _include_paths(eval_cfg: Mapping[str, Any]) -> list[str]:
    """``eval.include_paths`` as a list (None or absent: none)."""
    paths = eval_cfg.get("include_paths") or []
    if isinstance(paths, (str, Path)):
        raise ValueError(
            f"eval.include_paths must be a list of folders, got {paths!r}; write "
            f"eval.include_paths=[{paths}]"
        )
    return [str(p) for p in paths]


def _known_tasks(eval_cfg: Mapping[str, Any], specs: list[TaskSpec]) -> dict[str, dict]:
    """Shipped and user tasks by name; a requested task found in neither is an error naming it
    (unless lm-eval's built-ins are indexed too: ``include_defaults``, checked by lm-eval)."""
    from hhh_bench.evaluation.harness import shipped_tasks, user_tasks

    include = _include_paths(eval_cfg)
    known = {**shipped_tasks(), **user_tasks(include)}
    if eval_cfg.get("include_defaults"):
        return known
    template = eval_cfg.get("task_template") or "{task}"
    for s in specs:
        if s.name not in known:
            where = f"eval.include_paths {include}" if include else "no eval.include_paths set"
            raise ValueError(
                f"eval.dimensions.{s.dimension} asks for lm-eval task {s.name!r} (task_template "
                f"{template!r}), which is neither a shipped task nor defined in a user task "
                f"folder ({where}); add the folder of its YAML to eval.include_paths, fix the "
                "name, or set eval.include_defaults=true for an lm-eval built-in"
            )
    return known


def _needed_files(
    specs: list[TaskSpec], paths: Mapping[str, Path], known: Mapping[str, dict] | None = None
) -> dict[str, Path]:
    """The data files of the requested tasks (shipped, or the user's in ``known``); raises if
    one is missing on disk."""
    from hhh_bench.evaluation.harness import shipped_tasks

    known = shipped_tasks() if known is None else known
    needed: dict[str, Path] = {}
    for s in specs:
        for ph in known.get(s.name, {}).get("placeholders", []):
            if ph not in paths and ph == "toy3h_eval":
                raise ValueError(
                    f"eval task {s.name!r} reads the toy world's <data dir>/eval/ items, which "
                    "this data has not: use data=toy3h, or an eval suite for real data"
                )
            if ph not in paths:
                raise ValueError(
                    f"eval task {s.name!r} reads data '{ph}', but eval.data_files.{ph} is not set"
                )
            if not paths[ph].exists():
                raise FileNotFoundError(
                    f"eval task {s.name!r}: data path {paths[ph]} (eval.data_files.{ph}) does not "
                    "exist; point it at a JSONL file in the dataset's schema "
                    "(see src/hhh_bench/evaluation/tasks/real/)"
                )
            needed[ph] = paths[ph]
    return needed


def _fingerprint(path: Path) -> str:
    """Content hash of a data file; for a folder (toy3h's eval/), of its JSONL files."""
    if path.is_file():
        return file_hash(path)
    return config_hash({p.name: file_hash(p) for p in sorted(path.glob("*.jsonl"))})


def eval_payload(
    cfg: DictConfig, model: Mapping[str, Any], data: Mapping[str, Any] | None, split: str
) -> dict[str, Any]:
    """What the eval stage's cache key is made of (see the module docstring)."""
    from hhh_bench.evaluation.harness import tasks_fingerprint
    from hhh_bench.stages.judged import column_specs, validate_judged

    ecfg = to_dict(cfg.eval)
    specs = suite_tasks(ecfg, split) + column_specs(ecfg, split)  # + extra columns (issue 17)
    validate_judged(ecfg, specs)
    files = _needed_files(specs, _data_paths(ecfg, data), _known_tasks(ecfg, specs))
    harness = {k: v for k, v in ecfg.items() if k not in (*_REPORT_ONLY, *_SCORING_ONLY)}
    harness.pop("data_files", None)
    harness.pop("batch_size", None)  # padding only: does not change the numbers
    harness.pop("include_paths", None)  # by content below, not by where the folders are
    if harness.get("judges"):  # issue 17: judges by identity (a local folder by content)
        from hhh_bench.stages.judged import judges_key

        harness["judges"] = judges_key(ecfg)
    payload = {
        "model": model["key"],
        "data": (data or {}).get("key"),
        "split": split,
        "tasks": sorted({s.name for s in specs}),
        "harness": harness,
        "dtype": to_dict(cfg.model).get("dtype"),
        "files": {k: _fingerprint(v) for k, v in sorted(files.items())},
    }
    include = _include_paths(ecfg)
    if include:  # absent when unused, so the keys of runs without user tasks do not change
        payload["user_tasks"] = tasks_fingerprint(include)
    return payload


def _base_dims(base: Mapping[str, Any] | None) -> dict[str, float] | None:
    if base is None:
        return None
    if "scores" in base and isinstance(base["scores"], Mapping):
        base = base["scores"]
    if any(base.get(d) is None for d in DIMENSIONS):
        raise ValueError(
            f"base_scores must hold {list(DIMENSIONS)} (a run_eval result, its 'scores' or a "
            f"result row); got keys {sorted(base)}"
        )
    return {d: float(base[d]) for d in DIMENSIONS}


def _base_from_store(
    cfg: DictConfig, split: str, seed: Any, data_key: str | None
) -> dict[str, float] | None:
    """The base model's scores of this split, suite and data from the store (latest row; same
    seed preferred), or None."""
    from hhh_bench.tracking.store import read_results

    suite = cfg.eval.name
    rows = [
        r
        for r in read_results(results_path(cfg))
        if r["kind"] == "base"
        and r.get("split") == split
        and r.get("suite") == suite
        and r.get("data_key") == data_key
    ]
    if not rows:
        return None
    same = [r for r in rows if r.get("seed") == seed]
    return _base_dims((same or rows)[-1])


def _config_hash(cfg: DictConfig) -> str | None:
    try:
        full = to_dict(cfg)
    except Exception:  # an interpolation that only resolves inside a Hydra app
        return None
    full.pop("stage", None)
    return config_hash(full)


def build_row(
    cfg: DictConfig,
    model: Mapping[str, Any],
    data: Mapping[str, Any] | None,
    *,
    split: str,
    key: str,
    out_dir: Path,
    metrics: Mapping[str, Any],
    scores: Mapping[str, Any],
    specs: list[TaskSpec],
    eval_seconds: float,
) -> dict[str, Any]:
    """The results-store row of one evaluated model (fields: :class:`ResultRow`)."""
    params = dict(model.get("params") or {})
    timings = {"eval_s": round(float(eval_seconds), 3)}
    timings.update({k: float(v) for k, v in (model.get("timings") or {}).items()})
    row: dict[str, Any] = {
        # one model reported in an explicit family of its own (a grid point of an ablation) is a
        # row apart from the same model reported as its method's selected configuration
        "row_key": f"{key}:{model['family']}" if model.get("family") else key,
        "experiment": str(cfg.name),
        "split": split,
        "suite": str(cfg.eval.name),
        "metric": str(cfg.eval.metric),
        "name": str(model.get("name") or model["key"]),
        "family": model.get("family"),
        "kind": str(model.get("kind", "base")),
        "method": model.get("method"),
        "params": params,
        "mix_strategy": model.get("mix_strategy"),
        "noise_rate": model.get("noise_rate"),
        "train_dimensions": list(model.get("train_dimensions") or []),
        "seed": model.get("seed", int(cfg.seed)),
        "config_hash": model.get("config_hash") or _config_hash(cfg),
        "model_key": model["key"],
        "data_key": (data or {}).get("key"),
        "eval_key": key,
        "tasks": {k: dict(v) for k, v in metrics.items()},
        "task_specs": [
            {"name": s.name, "dimension": s.dimension, "weight": s.weight, "metric": s.metric}
            for s in specs
        ],
        "timings": timings,
        "extra": {k: v for k, v in model.items() if k not in _MODEL_FIELDS},
        "artifacts": {
            "model": str(model.get("path")),
            "eval_dir": str(out_dir),
            "results": str(out_dir / "results.json"),
        },
    }
    for k in ("delta_helpful", "delta_honest", "delta_harmless", "delta_average", "delta_min"):
        row[k] = None
    row["max_drop"] = None
    row.update(scores)
    return row


def run_eval(
    cfg: DictConfig,
    model: dict[str, Any],
    data: dict[str, Any],
    *,
    split: str = "test",
    base_scores: Mapping[str, Any] | None = None,
    append: bool = True,
) -> dict[str, Any]:
    """Evaluate one model on one split of ``cfg.eval`` (cached), score it, store its row.

    Args:
        cfg: the composed config (``eval``, ``model.dtype``/``device``, ``root``, ``name``).
        model: ``{"path", "key", "kind", "name", "method", "params"}`` and optionally
            ``family``, ``mix_strategy``, ``noise_rate``, ``train_dimensions``, ``seed``,
            ``config_hash``, ``timings`` (e.g. ``{"train_s": 12.0}``). ``kind`` is one of
            base | oracle | specialist | mixture | merge.
        data: the data stage's result (``{"dir", "key"}``); its ``eval/`` folder feeds the toy
            tasks.
        split: ``validation`` (choose hyperparameters) or ``test`` (report).
        base_scores: the base model's scores for the deltas (a ``run_eval`` result, its
            ``scores`` or a row); None: the model's own scores if it is the base, else the
            store's base row of the same split, suite and data (same seed preferred), else no
            deltas.
        append: append the row to ``<root>/results.jsonl`` (skipped when an identical row for
            this ``row_key`` is already the latest there).

    Returns:
        ``{"dir", "key", "metrics", "scores", "row", "cached", "appended", "store"}``.
    """
    if split not in SPLIT_SUFFIX:
        raise ValueError(f"split must be one of {list(SPLIT_SUFFIX)}, got {split!r}")
    for field_ in ("path", "key"):
        if not model.get(field_):
            raise ValueError(f"run_eval: model dict lacks {field_!r} (got keys {sorted(model)})")
    ecfg = to_dict(cfg.eval)
    specs = suite_tasks(ecfg, split)
    payload = eval_payload(cfg, model, data, split)
    key = stage_key("eval", payload)
    out = stage_dir(cfg, "eval", key)
    cached = is_done(out)
    if cached:
        CACHE.hit("eval")
        saved = read_json(out / "results.json")
        log.info("eval: cached %s", out)
    else:
        saved = _evaluate(cfg, model, data, ecfg, specs, payload, out)
        CACHE.miss("eval")
    # issue 17: win rates against the base's answers, summary stderrs, extra columns, judges
    from hhh_bench.stages.judged import extra_scores, reference_items, summary_fields

    ref = reference_items(
        results_path(cfg),
        model,
        own_dir=out,
        split=split,
        suite=str(cfg.eval.name),
        data_key=(data or {}).get("key"),
        seed=model.get("seed", int(cfg.seed)),
        base_scores=base_scores,
    )
    metrics, judged_ctx, judged_fields = extra_scores(saved, specs, out, ref)
    if model.get("kind", "base") == "base" and base_scores is None:
        base = _base_dims(score(metrics, specs))  # the base against itself: zero deltas
    else:
        base = _base_dims(base_scores) or _base_from_store(
            cfg, split, model.get("seed", int(cfg.seed)), (data or {}).get("key")
        )
    scores = score(metrics, specs, base)
    base_items = None if (ref[1] or {}).get("kind") == "self" else ref[0]
    more, row_fields = summary_fields(
        ecfg, saved, metrics, scores, specs, split, judged_ctx, base_items
    )
    scores.update(more)
    judged_fields.update(row_fields)
    row = build_row(
        cfg,
        model,
        data,
        split=split,
        key=key,
        out_dir=out,
        metrics=metrics,
        scores=scores,
        specs=specs,
        eval_seconds=saved["seconds"],
    )
    row.update(judged_fields)
    appended = False
    if append:
        from hhh_bench.tracking.store import append_result

        appended = append_result(results_path(cfg), row)
    log.info(
        "eval: %s (%s) helpful %.3f honest %.3f harmless %.3f avg %.3f min %.3f",
        row["name"],
        split,
        scores["helpful"],
        scores["honest"],
        scores["harmless"],
        scores["average"],
        scores["min"],
    )
    return {
        "dir": str(out),
        "key": key,
        "metrics": metrics,
        "scores": scores,
        "row": row,
        "cached": cached,
        "appended": appended,
        "store": str(results_path(cfg)),
    }


def _scores_or_none(metrics: Mapping[str, Any], specs: list[TaskSpec]) -> dict[str, Any] | None:
    """The scores at write time, or None when they need what only scoring knows (win_rate)."""
    try:
        return score(metrics, specs)
    except KeyError:
        return None


def _evaluate(
    cfg: DictConfig,
    model: Mapping[str, Any],
    data: Mapping[str, Any] | None,
    ecfg: Mapping[str, Any],
    specs: list[TaskSpec],
    payload: Mapping[str, Any],
    out: Path,
) -> dict[str, Any]:
    """Run lm-eval for one model and write ``results.json`` (+ ``samples.jsonl``) atomically."""
    from hhh_bench.evaluation.harness import evaluate_model, materialize_tasks
    from hhh_bench.models import load_causal_lm, load_tokenizer

    mcfg = to_dict(cfg.model)
    device = mcfg.get("device", "cpu")
    trust = bool(cfg.trust_remote_code)
    backend = str(ecfg.get("backend") or "hf")
    t0 = time.perf_counter()
    if backend == "vllm":  # vLLM loads the weights itself (issue 17)
        lm, tok = model["path"], None
    else:
        lm = load_causal_lm(
            model["path"], dtype=mcfg.get("dtype"), device=device, trust_remote_code=trust
        )
        tok = load_tokenizer(model["path"], trust_remote_code=trust)
    load_s = time.perf_counter() - t0
    tasks = list(dict.fromkeys([*(s.name for s in specs), *payload["tasks"]]))
    with atomic_dir(out) as tmp:
        include = materialize_tasks(
            tmp / "tasks", _data_paths(ecfg, data), include_paths=_include_paths(ecfg)
        )
        res = evaluate_model(
            lm,
            tok,
            tasks,
            include_path=include,
            apply_chat_template=bool(ecfg.get("apply_chat_template", False)),
            batch_size=ecfg.get("batch_size", 32),
            limit=ecfg.get("limit"),
            device=device,
            include_defaults=bool(ecfg.get("include_defaults", False)),
            bootstrap_iters=int(ecfg.get("bootstrap_iters", 0)),
            log_samples=bool(ecfg.get("log_samples", True)),
            dtype=mcfg.get("dtype"),
            trust_remote_code=trust,
            backend=backend,
            backend_args=ecfg.get("backend_args"),
            gen_kwargs=ecfg.get("gen_kwargs"),
        )
        lm = None  # the policy's memory goes before a judge loads
        from hhh_bench.stages.judged import run_judges

        judged = run_judges(ecfg, res, include, tmp, cfg.root)
        saved = {
            "metrics": res["metrics"],
            "seconds": res["seconds"],
            "load_seconds": round(load_s, 3),
            "harness": res["config"],
            "model": {k: v for k, v in model.items() if k != "timings"},
            "payload": dict(payload),
            "scores_at_write": _scores_or_none(res["metrics"], specs),
            "judges": judged["judges"],
            "judge_counts": judged["counts"],
            "groups": res["groups"],
        }
        (tmp / "results.json").write_text(
            json.dumps(saved, indent=2, sort_keys=True, default=str) + "\n"
        )
        if res["samples"]:
            with open(tmp / "samples.jsonl", "w") as f:
                for task, rows in res["samples"].items():
                    for r in rows:
                        f.write(json.dumps({"task": task, **r}) + "\n")
        write_provenance(
            tmp,
            ecfg,
            seed=int(cfg.seed),
            stage="eval",
            extra={
                "model_key": model["key"],
                "data_key": (data or {}).get("key"),
                "payload": payload,
            },
        )
    log.info("eval: wrote %s (%.1f s)", out, res["seconds"])
    return saved
