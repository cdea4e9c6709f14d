"""The eval stage: one model on one split of the eval suite -> metrics, 3H scores, a store row.

``run_eval`` evaluates with lm-eval (cached under ``<root>/eval/<key>/``; the key is
:func:`hhh_bench.evaluation.suite.eval_payload`: model, data, split, tasks, harness settings,
dtype, data files' and user tasks' content), scores the per-task metrics with the suite's
weights and primary metric, and appends the model's row to ``<root>/results.jsonl``. Scoring is
not in the key: re-scoring with ``eval.metric=soft`` evaluates nothing again and supersedes the
row (same ``row_key``).

``<root>/eval/<key>/``: ``results.json`` (per-task metrics with stderrs and n, seconds, harness
settings, the model dict, the scores at write time, the judges), ``samples.jsonl`` (per item:
task, doc_id, id, gold, the choices' log-likelihoods), ``items.jsonl`` (per item: its metric
values, judged ones included: standard errors, bootstraps, paired tests),
``generations.jsonl`` (judged tasks' answers), ``tasks/`` (the YAMLs used, paths filled in),
``provenance.json``. Judged tasks, win rates against the base and summary standard errors:
:mod:`hhh_bench.evaluation.judged_eval`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hhh_bench.core.config import EvalConfig, ModelConfig
from hhh_bench.core.content import enclosing_output
from hhh_bench.core.scoring import SPLIT_SUFFIX, base_dims, score, suite_tasks
from hhh_bench.evaluation.suite import eval_payload, standin_names
from hhh_bench.stages.common import (
    cached_stage,
    code_identity,
    content_of,
    group,
    log,
    model_identity,
    run_facts,
    to_dict,
)
from hhh_bench.tracking.diagnostics_view import attach_scores

EVAL_CODE = ("hhh_bench.stages.eval", "hhh_bench.evaluation", "hhh_bench.core.scoring", "hhh_bench.core.items",
             "hhh_bench.core.stats", "hhh_bench.core.uncertainty",
             "hhh_bench.models.loading")  # fmt: skip
"""The code an evaluation runs (the harness wrapper, our tasks' Python, the judges and how their
answers are counted; the scoring, item records and statistics it shares with the report, in core;
how the policy and the judges are loaded: dtype, tokenizer); the task YAMLs and data files are
in the key by content already (:func:`eval_payload`)."""


ROWS_OF_THIS_RUN: set[str] = set()
"""The row keys the eval stage stored (or found stored unchanged) in this run of the pipeline
(:func:`hhh_bench.pipeline.run` clears it): what ``stage=all`` compares the store with."""


def results_path(cfg: DictConfig) -> Path:
    """The experiment's results store, ``<root>/results.jsonl``."""
    return Path(cfg.root) / "results.jsonl"


def run_eval(
    cfg: DictConfig,
    model: dict[str, Any],
    data: dict[str, Any],
    *,
    split: str = "test",
    base_scores: Mapping[str, Any] | None = None,
    append: bool = True,
    facts: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate one model on one split of ``cfg.eval`` (cached), score it, store its row.

    Args:
        cfg: the composed config (``eval``, ``model.dtype``/``device``, ``root``, ``name``).
        model: ``{"path", "key", "kind", "name", "method", "params"}`` and optionally
            ``family``, ``mix_strategy``, ``noise_rate``, ``train_dimensions``, ``seed``,
            ``config_hash``, ``timings``; ``kind``: base | oracle | specialist | mixture | merge | external (a given model).
        data: the data stage's result (``{"dir", "key"}``; its ``eval/`` feeds the toy tasks).
        split: ``validation`` (choose hyperparameters) or ``test`` (report).
        base_scores: the base's scores for the deltas (a result, its ``scores`` or a row); None:
            the model's own if it is the base, else the store's base row of the same split,
            suite and data (same seed preferred), else no deltas.
        append: append the row to ``<root>/results.jsonl`` (and a merge's scores to its card);
            False: nothing written (``hhh-bench plan``'s dry run).
        facts: ``run_facts(cfg)`` when the caller has it (the pipeline, once per seed: hashing
            the whole config for every model was a tenth of a cached rerun); None: computed.

    Returns:
        ``{"dir", "key", "metrics", "scores", "row", "cached", "appended", "store"}``.
    """
    from hhh_bench.tracking.store import append_result, build_row, is_base_of, read_results
    from hhh_bench.tracking.store import base_scores as stored_base

    if split not in SPLIT_SUFFIX:
        raise ValueError(f"split must be one of {list(SPLIT_SUFFIX)}, got {split!r}")
    for field_ in ("path", "key"):
        if not model.get(field_):
            raise ValueError(f"run_eval: model dict lacks {field_!r} (got keys {sorted(model)})")
    from hhh_bench.evaluation.judged_eval import column_specs, reference_first, reference_items

    ecfg = to_dict(cfg.eval)
    specs = suite_tasks(ecfg, split)  # scored; eval_payload adds the extra columns' tasks to run
    seed = model.get("seed", int(cfg.seed))
    suite, data_key = str(cfg.eval.name), (data or {}).get("key")
    where = {"split": split, "suite": suite, "data_key": data_key, "seed": seed}

    def store_rows() -> list[dict[str, Any]]:  # the base rows of this split, suite and data
        return read_results(
            results_path(cfg), where=lambda r: is_base_of(r, split, suite, data_key)
        )

    own = model.get("kind", "base") == "base" and base_scores is None  # the base: its own answers
    early = None  # a win rate's reference, found before any work (a dry run looks up nothing)
    if append and not own:
        early = reference_first(
            ecfg,
            specs,
            model,
            store_rows,
            store=results_path(cfg),
            base_scores=base_scores,
            **where,
        )
    rehearsal = to_dict(cfg.rehearsal) if "rehearsal" in cfg else None
    standins = standin_names(rehearsal, specs + column_specs(ecfg, split))
    # the dtype the model is evaluated in, as resolved on its device (auto: bf16 on a GPU that
    # supports it, float32 on CPU), not the word "auto"
    from hhh_bench.models.loading import resolve_dtype

    mdict = to_dict(cfg.model)
    dtype = str(resolve_dtype(mdict.get("dtype"), str(mdict.get("device") or "cpu")))
    payload = eval_payload(ecfg, model, data, split, dtype.removeprefix("torch."), standins)
    # by content, never by key or path: the weights evaluated, the data's artifacts, the code
    revision = to_dict(cfg.model).get("revision") if model.get("kind") == "base" else None
    payload["model"] = model_identity(str(model["path"]), revision)
    payload["data"] = content_of(data) if data else None
    payload["code"] = code_identity(*EVAL_CODE)
    run = cached_stage(
        cfg.root, "eval", payload,
        lambda tmp: _evaluate(cfg, model, data, ecfg, specs, payload, tmp, rehearsal, split),
        result_file="results.json", provenance=ecfg, seed=int(cfg.seed),
        extra={"model_key": model["key"], "data_key": (data or {}).get("key"), "payload": payload},
        label=str(model.get("name", "")),
        inputs=[p for p in (model.get("path"), (data or {}).get("dir")) if p and Path(str(p)).exists()],
    )  # fmt: skip
    from hhh_bench.evaluation.judged_eval import extra_scores, summary_fields

    ref = early or reference_items(  # the results store is read only when no base is given
        store_rows, model, own_dir=run.dir, base_scores=base_scores, **where
    )
    metrics, judged_ctx, judged_fields = extra_scores(run.info, specs, run.dir, ref)
    if model.get("kind", "base") == "base" and base_scores is None:
        base = base_dims(score(metrics, specs))  # the base against itself: zero deltas
    else:
        base = base_dims(base_scores) or stored_base(results_path(cfg), **where)
    scores = score(metrics, specs, base)
    base_items = None if (ref[1] or {}).get("kind") == "self" else ref[0]
    more, row_fields = summary_fields(
        ecfg, run.info, metrics, scores, specs, split, judged_ctx, base_items
    )
    scores.update(more)
    judged_fields.update(row_fields)
    about = {"experiment": cfg.name, "suite": cfg.eval.name, "metric": cfg.eval.metric,
             "seed": int(cfg.seed), **(facts if facts is not None else run_facts(cfg))}  # fmt: skip
    row = build_row(
        about, model, data, split=split, key=run.key, out_dir=run.dir, metrics=metrics,
        scores=scores, specs=specs, eval_seconds=run.info["seconds"],
        harness=run.info.get("harness"),
    )  # fmt: skip
    row.update(judged_fields)
    appended = append_result(results_path(cfg), row) if append else False
    if append:
        ROWS_OF_THIS_RUN.add(str(row["row_key"]))
    if append and model.get("kind") == "merge" and enclosing_output(str(model["path"])):
        attach_scores(model["path"], row)  # our merge's card carries its scores (never a user's)
    log.info("eval: %s (%s) %s", row["name"], split,
             " ".join(f"{k} {scores[k]:.3f}" for k in ("helpful", "honest", "harmless", "average", "min")))  # fmt: skip
    return {
        "dir": str(run.dir), "key": run.key, "metrics": metrics, "scores": scores, "row": row,
        "cached": run.cached, "appended": appended, "store": str(results_path(cfg)),
    }  # fmt: skip


def _evaluate(
    cfg: DictConfig,
    model: Mapping[str, Any],
    data: Mapping[str, Any] | None,
    ecfg: Mapping[str, Any],
    specs: list[Any],
    payload: Mapping[str, Any],
    tmp: Path,
    rehearsal: Mapping[str, Any] | None = None,
    split: str = "test",
) -> dict[str, Any]:
    """Run lm-eval (and the judges) for one model into ``tmp``: the content of ``results.json``."""
    from hhh_bench.evaluation.run import evaluate_into

    return evaluate_into(
        tmp, model, data, ecfg, group(cfg, "eval", EvalConfig), group(cfg, "model", ModelConfig),
        specs, payload, split=split, rehearsal=rehearsal, root=cfg.root,
        trust_remote_code=bool(cfg.trust_remote_code),
    )  # fmt: skip
