"""Evaluating one model into an eval-stage folder (the work of ``stages/eval.py``)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hhh_bench.core.scoring import score_or_none
from hhh_bench.evaluation.standin_tasks import standin_eval_tasks
from hhh_bench.evaluation.suite import data_paths, include_paths, partition_values

log = logging.getLogger("hhh_bench")


def evaluate_into(
    tmp: Path,
    model: Mapping[str, Any],
    data: Mapping[str, Any] | None,
    ecfg: Mapping[str, Any],
    e: Any,
    mcfg: Any,
    specs: list[Any],
    payload: Mapping[str, Any],
    *,
    split: str,
    rehearsal: Mapping[str, Any] | None,
    root: str | Path,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """One model on one split of a suite, written into ``tmp`` (the eval stage's temporary
    folder): the tasks materialized (a rehearsal's stand-ins too), lm-eval run (the selection
    holdout's part when the suite has one), the judges run, ``samples.jsonl`` written; returns
    the content of ``results.json``.

    Args:
        e, mcfg: the typed ``eval`` and ``model`` configs (:mod:`hhh_bench.core.config`); ``ecfg`` the
            plain eval mapping the task resolution takes.
    """
    from hhh_bench.evaluation.harness import evaluate_model, materialize_tasks
    from hhh_bench.evaluation.judged_eval import open_judge_cache, run_judges
    from hhh_bench.models import load_causal_lm, load_tokenizer

    device = mcfg.device
    trust = trust_remote_code
    backend = str(ecfg.get("backend") or "hf")
    judge_cache = open_judge_cache(ecfg, root)  # an unreadable one is named before any work
    t0 = time.perf_counter()
    if backend in ("vllm", "server"):  # vLLM / the server loads the weights itself
        lm, tok = model["path"], None
    else:
        lm = load_causal_lm(model["path"], dtype=mcfg.dtype, device=device, trust_remote_code=trust)
        tok = load_tokenizer(model["path"], trust_remote_code=trust)
    load_s = time.perf_counter() - t0
    include = materialize_tasks(
        tmp / "tasks", data_paths(ecfg, data), include_paths=include_paths(ecfg),
        partitions=partition_values(ecfg),
    )  # fmt: skip
    if rehearsal is not None:  # lm-eval's built-ins on local files, under their own names
        standin_eval_tasks(rehearsal, list(payload["tasks"]), Path(include) / "standins")
    res = evaluate_model(
        lm, tok, list(dict.fromkeys([*(s.name for s in specs), *payload["tasks"]])),
        include_path=include, dtype=mcfg.dtype, trust_remote_code=trust, backend=backend,
        backend_args=ecfg.get("backend_args"), gen_kwargs=ecfg.get("gen_kwargs"),
        server=ecfg.get("server"), label=f"{model.get('name', model['key'])} ({model['path']})",
        # the server's log outlives the stage's temporary folder (an error points at it)
        server_dir=Path(root) / "logs" / "servers" / tmp.name,
        apply_chat_template=e.apply_chat_template, batch_size=e.batch_size, limit=e.limit,
        device=device, include_defaults=e.include_defaults, bootstrap_iters=e.bootstrap_iters,
        log_samples=e.log_samples,
        holdout=None if e.holdout is None
        else {**e.holdout, "part": "select" if split == e.select_split else "report"},
    )  # fmt: skip
    lm = None  # the policy's memory goes before a judge loads
    judged = run_judges(ecfg, res, include, tmp, root, judge_cache)
    if res["samples"]:
        with open(tmp / "samples.jsonl", "w") as f:
            for task, rows in res["samples"].items():
                for r in rows:
                    f.write(json.dumps({"task": task, **r}) + "\n")
    log.info("eval: %s in %.1f s", model.get("name", model["key"]), res["seconds"])
    return {
        "metrics": res["metrics"],
        "seconds": res["seconds"],
        "load_seconds": round(load_s, 3),
        "harness": res["config"],
        "model": {k: v for k, v in model.items() if k != "timings"},
        "payload": dict(payload),
        "scores_at_write": score_or_none(res["metrics"], specs),
        "judges": judged["judges"],
        "judge_counts": judged["counts"],
        "groups": res["groups"],
    }
