"""The diagnose stage: task-vector diagnostics of a base and its specialists, cached by content.

    hhh-bench stage=diagnose                                         # the pipeline's specialists
    hhh-bench stage=diagnose merge.base=<dir> merge.models=[<dir>,<dir>,<dir>]

``run_diagnose`` calls :func:`hhh_bench.merging.diagnose` and writes ``<root>/diagnose/<key>/``
atomically::

    diagnostics.json   the full report (per parameter, per layer type, model-wide, RESM's ranks)
    diagnostics.md     its Markdown summary
    provenance.json    options, versions, git revision, inputs

and appends its summary to ``<root>/diagnostics.jsonl`` (the report stage draws it). The key
covers the inputs' content, the options (``merge_engine.diagnostics_*``), ``vocab_policy`` and
RESM's knobs without the compose-only ones (scaling, weights, seed): every merge of a sweep over
``scaling``, and every method that is not RESM or TSV-M, reuses one computation. The merge stage
runs it for every merge (``merge_engine.diagnostics: true``) and copies the report next to the
merged model.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hhh_bench.provenance import atomic_dir, write_provenance
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

CARD_HEADING = "## Task-vector diagnostics"


def diagnostics_path(cfg: DictConfig) -> Path:
    """The experiment's diagnostics store, ``<root>/diagnostics.jsonl``."""
    return Path(cfg.root) / "diagnostics.jsonl"


def diagnose_options(engine: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`~hhh_bench.merging.diagnose` options from ``merge_engine`` (``diagnostics_top_k``,
    ``diagnostics_tail_sigmas``, ``diagnostics_svd_embeddings``)."""
    return {
        "top_k": engine.get("diagnostics_top_k"),
        "tail_sigmas": [float(c) for c in (engine.get("diagnostics_tail_sigmas") or [3.0, 5.0])],
        "svd_embeddings": bool(engine.get("diagnostics_svd_embeddings", False)),
    }


def resm_params_for(method: str | None, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The knobs of a merge that RESM's diagnostics (reweighting change, density, ranks) take:
    all of RESM's for ``resm`` (or a subclass of its params), ``rank_fraction`` and
    ``embeddings`` for TSV-M-like methods, none otherwise (RESM's defaults are diagnosed)."""
    if not method or not params:
        return {}
    from hhh_bench.merging import get_method
    from hhh_bench.merging.methods.resm import ResmParams
    from hhh_bench.merging.methods.tsv import TsvParams

    cls = get_method(str(method)).params_cls
    if issubclass(cls, ResmParams):
        names = {f.name for f in dataclasses.fields(ResmParams)}
    elif issubclass(cls, TsvParams):
        names = {"rank_fraction", "embeddings"}
    else:
        return {}
    return {k: v for k, v in params.items() if k in names}


def diagnostics_label(cfg: DictConfig, *, explicit: bool = False) -> str:
    """How the report names a set of task vectors: ``merge_engine.diagnostics_label`` if set,
    else the training option, the preference-noise rate when > 0 and the seed."""
    engine = to_dict(cfg.get("merge_engine")) or {}
    if engine.get("diagnostics_label"):
        return str(engine["diagnostics_label"])
    parts = []
    if explicit:
        parts.append("explicit models")
    else:
        train = cfg.get("train")
        parts.append(str(train.get("name", "train")) if train is not None else "train")
        data = cfg.get("data")
        noise = data.get("noise") if data is not None else None
        flip = float(noise.get("flip_rate", 0.0) or 0.0) if noise is not None else 0.0
        if flip > 0:
            parts.append(f"noise {flip:g}")
    parts.append(f"seed {cfg.get('seed', 0)}")
    return ", ".join(parts)


def run_diagnose(
    cfg: DictConfig,
    base: str,
    models: Sequence[str],
    *,
    resm_params: Mapping[str, Any] | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """Diagnose (or reuse) the task vectors of ``models`` against ``base``.

    Args:
        cfg: the composed config (``merge_engine``, ``root``, ``seed``, ``name``).
        base: θ0's folder or hub id.
        models: the finetuned folders, hub ids or LoRA adapter folders.
        resm_params: RESM's knobs to diagnose with (:func:`resm_params_for` of a merge); None:
            RESM's defaults.
        label: the set's name in the report (default :func:`diagnostics_label`).

    Returns:
        ``{"dir", "key", "cached", "path", "report", "markdown", "row_appended"}``.
    """
    from hhh_bench.merging.diagnostics import diagnose, parameter_table, resm_knobs, write_report
    from hhh_bench.tracking.diagnostics_view import summary_markdown
    from hhh_bench.tracking.store import append_diagnostics

    engine = dict(to_dict(cfg.merge_engine) or {})
    opts = diagnose_options(engine)
    knobs = resm_knobs(resm_params)
    vocab_policy = engine.get("vocab_policy", "error")
    models = [str(m) for m in models]
    key = stage_key(
        "diagnose",
        {
            "base": model_identity(str(base)),
            "models": [model_identity(m) for m in models],
            "options": opts,
            "resm": knobs,
            "vocab_policy": vocab_policy,
        },
    )
    out = stage_dir(cfg, "diagnose", key)
    cached = is_done(out)
    if cached:
        CACHE.hit("diagnose")
        report = read_json(out / "diagnostics.json")
        log.info("diagnose: cached %s", out)
    else:
        with atomic_dir(out, overwrite=out.exists()) as tmp:
            report = diagnose(
                str(base),
                models,
                **opts,
                resm_params=knobs,
                device=str(engine.get("device", "cpu")),
                vocab_policy=vocab_policy,
                allow_pickle=bool(engine.get("allow_pickle", False)),
                progress=bool(engine.get("progress", True)),
            )
            write_report(report, tmp / "diagnostics.json")
            (tmp / "diagnostics.md").write_text(
                summary_markdown(report, heading="# Task-vector diagnostics")
            )
            write_provenance(
                tmp,
                {"diagnose": {**opts, "resm": knobs, "vocab_policy": vocab_policy}},
                seed=int(cfg.get("seed", 0)),
                stage="diagnose",
                extra={"base": str(base), "models": models},
            )
        CACHE.miss("diagnose")
        log.info("diagnose: wrote %s in %.1f s", out, report["seconds"])
    row = {
        "row_key": key,
        "experiment": str(cfg.get("name", "")),
        "label": label or diagnostics_label(cfg, explicit=_explicit(cfg)),
        "seed": cfg.get("seed"),
        "num_models": report["num_models"],
        "inputs": {"base": str(base), "models": models},
        "options": report["options"],
        "resm": {k: v for k, v in report["resm"].items() if k not in ("ranks", "uniform_ranks")},
        "model": report["model"],
        "layer_types": report["layer_types"],
        "params": parameter_table(report),
        "statistics": report["statistics"],
        "artifacts": {"diagnostics": str(out / "diagnostics.json")},
    }
    appended = append_diagnostics(diagnostics_path(cfg), row)
    return {
        "dir": str(out),
        "key": key,
        "cached": cached,
        "path": str(out / "diagnostics.json"),
        "report": report,
        "markdown": summary_markdown(report, heading=CARD_HEADING),
        "row_appended": appended,
    }


def _explicit(cfg: DictConfig) -> bool:
    merge = cfg.get("merge")
    return bool(merge is not None and merge.get("models"))


def _replace_file(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def attach_to_model(out_dir: str | Path, diag: Mapping[str, Any]) -> Path:
    """Copy a :func:`run_diagnose` result's ``diagnostics.json`` into a merged model's folder and
    put its summary as the last section of the model card (``README.md``), replacing an earlier
    one; idempotent. Returns the copied file's path."""
    out = Path(out_dir)
    dst = out / "diagnostics.json"
    text = Path(diag["path"]).read_text()
    if not dst.is_file() or dst.read_text() != text:
        _replace_file(dst, text)
    card = out / "README.md"
    old = card.read_text() if card.is_file() else ""
    kept = old.split(CARD_HEADING)[0].rstrip("\n")
    new = (kept + "\n\n" if kept else "") + diag["markdown"]
    if new != old:
        _replace_file(card, new)
    return dst
