"""The merge stage: merge the specialists (or explicit models) into θ0 with ``cfg.merge``.

Output, ``<root>/merge/<key>/`` (``key``: method, knobs, the inputs' content, output dtype and
vocabulary policy): ``model/`` (the merged HF folder: weights, config, tokenizer, model card,
``merge_info.json`` and, with ``merge_engine.diagnostics``, ``diagnostics.json``),
``merge_result.json`` and ``provenance.json``. The task vectors are diagnosed first (cached by
the inputs: a sweep over ``scaling`` computes them once; bad inputs fail there with the engine's
errors).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hhh_bench.config import MergeConfig, MergeEngineConfig
from hhh_bench.stages.common import cached_stage, group, log, model_identity, to_dict


def run_merge(
    cfg: DictConfig,
    base: str | None = None,
    models: list[str] | None = None,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """Merge (or reuse) one model; return ``{"out_dir", "key", "cached", "method", "params", ...}``.

    Args:
        cfg: the composed config (``merge``, ``merge_engine``, ``root``).
        base: θ0's folder or hub id (overrides ``merge.base``).
        models: finetuned folders / hub ids / LoRA adapters (override ``merge.models``).
        names: what each model is (its dimension), for the model card.
    """
    from hhh_bench.merging.engine import merge_models

    m = group(cfg, "merge", MergeConfig)
    engine = group(cfg, "merge_engine", MergeEngineConfig)
    base = base or m.base
    models = [str(x) for x in (models or m.models or [])]
    if not base or not models:
        raise ValueError(
            "stage=merge has no inputs: set merge.base and merge.models=[...], or run the "
            "pipeline's train stage first (hhh-bench stage=train) so its specialists exist"
        )
    params = {"device": engine.device, **m.params}
    payload = {
        "method": m.method,
        "params": params,
        "base": model_identity(str(base)),
        "models": [model_identity(x) for x in models],
        "out_dtype": engine.out_dtype,
        "vocab_policy": engine.vocab_policy,
    }
    diag = None
    if engine.diagnostics:
        from hhh_bench.stages.diagnose import resm_params_for, run_diagnose

        diag = run_diagnose(cfg, str(base), models, resm_params=resm_params_for(m.method, params))

    def compute(tmp: Path) -> dict[str, Any]:
        res = merge_models(
            m.method, base, models, tmp / "model", max_shard_size=engine.max_shard_size,
            out_dtype=engine.out_dtype, allow_pickle=engine.allow_pickle,
            allow_architecture_mismatch=engine.allow_architecture_mismatch,
            vocab_policy=engine.vocab_policy, cache_dir=engine.cache_dir,
            cache_max_gb=engine.cache_max_gb, finetuned_names=names, progress=engine.progress,
            **params,
        )  # fmt: skip
        log.info("merge: %s in %.1f s (sweep cache: %d hits, %d misses)", m.method, res.seconds,
                 res.cache_hits, res.cache_misses)  # fmt: skip
        return {**res.as_dict(), "method": m.method, **_attach(tmp / "model", diag)}

    run = cached_stage(
        cfg.root, "merge", payload, compute, result_file="merge_result.json", seed=int(cfg.seed),
        provenance={"merge": to_dict(cfg.merge), "merge_engine": to_dict(cfg.merge_engine)},
        extra={"base": str(base), "models": models}, label=m.method,
    )  # fmt: skip
    out = run.dir / "model"
    info = dict(run.info)
    if run.cached and diag is not None:  # diagnostics switched on after the merge was made
        info.update(_attach(out, diag))
    if "diagnostics" in info:
        info["diagnostics"] = str(out / "diagnostics.json")
    return {**info, "out_dir": str(out), "key": run.key, "cached": run.cached}


def _attach(out: Path, diag: dict[str, Any] | None) -> dict[str, Any]:
    """Diagnostics next to the merged model and in its card."""
    if diag is None:
        return {}
    from hhh_bench.stages.diagnose import attach_to_model

    path = attach_to_model(out, diag)
    return {"diagnostics": str(path.name), "diagnostics_key": diag["key"]}
