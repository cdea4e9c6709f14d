"""The merge stage: merge the specialists (or explicit models) into θ0 with ``cfg.merge``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hhh_bench.provenance import write_provenance
from hhh_bench.stages.common import (
    CACHE,
    is_done,
    log,
    model_identity,
    read_json,
    stage_dir,
    stage_key,
    to_dict,
)


def run_merge(
    cfg: DictConfig,
    base: str | None = None,
    models: list[str] | None = None,
    out_dir: str | None = None,
) -> dict[str, Any]:
    """Merge (or reuse) one model; return ``{"out_dir", "key", "cached", "method", "params", ...}``.

    With ``merge_engine.diagnostics`` (default true) the task vectors are diagnosed first
    (:func:`hhh_bench.stages.diagnose.run_diagnose`, cached by the inputs, so a sweep over
    ``scaling`` computes them once; bad inputs fail there with the engine's errors), and the
    merged folder gets ``diagnostics.json`` and a summary section in its ``README.md``; the
    result then carries ``diagnostics`` (that file) and ``diagnostics_key``.

    Args:
        cfg: the composed config (``merge.method``, ``merge.params``, ``merge_engine``, ``root``).
        base: θ0's folder or hub id (overrides ``cfg.merge.base``).
        models: the finetuned folders / hub ids / LoRA adapters (override ``cfg.merge.models``).
        out_dir: where to write (default ``<root>/merge/<key>``, content-addressed and cached).
    """
    from hhh_bench.merging.engine import merge_models

    base = base or cfg.merge.get("base")
    models = list(models or to_dict(cfg.merge.get("models")) or [])
    if not base or not models:
        raise ValueError(
            "stage=merge has no inputs: set merge.base and merge.models=[...], or let the pipeline "
            "train the specialists (hhh-bench stage=merge runs the train stage first)"
        )
    method = str(cfg.merge.method)
    params = dict(to_dict(cfg.merge.params) or {})
    engine = dict(to_dict(cfg.merge_engine))
    params.setdefault("device", engine.get("device", "cpu"))
    key = stage_key(
        "merge",
        {
            "method": method,
            "params": params,
            "base": model_identity(str(base)),
            "models": [model_identity(str(m)) for m in models],
            "out_dtype": engine.get("out_dtype"),
            "vocab_policy": engine.get("vocab_policy"),
        },
    )
    out = Path(out_dir) if out_dir else stage_dir(cfg, "merge", key)
    diag = None
    if engine.get("diagnostics", True):
        from hhh_bench.stages.diagnose import resm_params_for, run_diagnose

        diag = run_diagnose(
            cfg, str(base), [str(m) for m in models], resm_params=resm_params_for(method, params)
        )
    if is_done(out) and not (out_dir and engine.get("overwrite")):
        CACHE.hit("merge")
        log.info("merge: cached %s (%s)", out, method)
        info = read_json(out / "merge_result.json")
        return {**info, **_attach(out, diag), "out_dir": str(out), "key": key, "cached": True}
    res = merge_models(
        method,
        base,
        models,
        out,
        max_shard_size=engine.get("max_shard_size", "2GB"),
        out_dtype=engine.get("out_dtype"),
        overwrite=bool(engine.get("overwrite", False)) or out.exists(),
        allow_pickle=bool(engine.get("allow_pickle", False)),
        vocab_policy=engine.get("vocab_policy", "error"),
        cache_dir=engine.get("cache_dir"),
        cache_max_gb=float(engine.get("cache_max_gb", 20)),
        progress=bool(engine.get("progress", True)),
        **params,
    )
    info = {**res.as_dict(), "method": method, **_attach(out, diag)}
    (out / "merge_result.json").write_text(__import__("json").dumps(info, indent=2, default=str))
    write_provenance(
        out, {"merge": to_dict(cfg.merge), "merge_engine": engine}, seed=int(cfg.seed), stage="merge",
        extra={"base": str(base), "models": [str(m) for m in models]},
    )  # fmt: skip
    CACHE.miss("merge")
    log.info(
        "merge: %s -> %s in %.1f s (sweep cache: %d hits, %d misses)",
        method, out, res.seconds, res.cache_hits, res.cache_misses,
    )  # fmt: skip
    return {**info, "out_dir": str(out), "key": key, "cached": False}


def _attach(out: Path, diag: dict[str, Any] | None) -> dict[str, Any]:
    """Diagnostics next to the merged model and in its card (see ``run_merge``)."""
    if diag is None:
        return {}
    from hhh_bench.stages.diagnose import attach_to_model

    path = attach_to_model(out, diag)
    return {"diagnostics": str(path), "diagnostics_key": diag["key"]}
