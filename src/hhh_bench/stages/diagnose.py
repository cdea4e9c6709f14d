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

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hhh_bench.core.config import MergeEngineConfig
from hhh_bench.core.provenance import config_hash
from hhh_bench.core.stagecache import CACHE
from hhh_bench.merging.diagnostics import resm_params_for  # noqa: F401  (re-exported)
from hhh_bench.stages.common import (
    ENGINE_CODE,
    cached_stage,
    code_identity,
    group,
    model_identity,
    to_dict,
)
from hhh_bench.tracking.diagnostics_view import CARD_HEADING, attach_to_model  # noqa: F401


def diagnostics_path(cfg: DictConfig) -> Path:
    """The experiment's diagnostics store, ``<root>/diagnostics.jsonl``."""
    return Path(cfg.root) / "diagnostics.jsonl"


def diagnose_options(engine: MergeEngineConfig) -> dict[str, Any]:
    """:func:`~hhh_bench.merging.diagnose` options from ``merge_engine`` (``diagnostics_top_k``,
    ``diagnostics_tail_sigmas``, ``diagnostics_svd_embeddings``)."""
    return {
        "top_k": engine.diagnostics_top_k,
        "tail_sigmas": [float(c) for c in engine.diagnostics_tail_sigmas],
        "svd_embeddings": engine.diagnostics_svd_embeddings,
    }


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
    """Diagnose (or reuse) the task vectors of ``models`` against ``base``; append the summary
    row to ``<root>/diagnostics.jsonl``.

    Args:
        cfg: the composed config (``merge_engine``, ``root``, ``seed``, ``name``).
        base: θ0's folder or hub id.
        models: the finetuned folders, hub ids or LoRA adapter folders.
        resm_params: RESM's knobs (:func:`resm_params_for` of a merge); None: its defaults.
        label: the set's name in the report (default :func:`diagnostics_label`).

    Returns:
        ``{"dir", "key", "cached", "path", "report", "markdown", "row_appended"}``.
    """
    from hhh_bench.merging.diagnostics import diagnose, resm_knobs
    from hhh_bench.tracking.diagnostics_view import summary_markdown
    from hhh_bench.tracking.store import append_diagnostics, diagnostics_row

    engine = group(cfg, "merge_engine", MergeEngineConfig)
    opts = diagnose_options(engine)
    knobs = resm_knobs(resm_params)
    models = [str(m) for m in models]
    payload = {
        "base": model_identity(str(base)),
        "models": [model_identity(m) for m in models],
        "options": opts,
        "resm": knobs,
        "vocab_policy": engine.vocab_policy,
        "code": code_identity(
            "hhh_bench.stages.diagnose",
            *ENGINE_CODE,
            "hhh_bench.merging.diagnostics",
            "hhh_bench.merging.methods.tsv",
            "hhh_bench.merging.methods.resm",
        ),
    }

    label = label or knob_label(diagnostics_label(cfg, explicit=_explicit(cfg)), knobs)
    memo_key = "diagnose:" + config_hash({"payload": payload, "label": label, "root": str(cfg.root),
                            "experiment": str(cfg.get("name", "")), "seed": cfg.get("seed")})  # fmt: skip
    done = CACHE.memo.get(memo_key)
    if done is not None and done[0] == _signature(Path(done[1]["dir"])):
        return {**done[1], "cached": True, "row_appended": False}

    def compute(tmp: Path) -> dict[str, Any]:
        report = diagnose(
            str(base), models, **opts, resm_params=knobs, device=engine.device,
            vocab_policy=engine.vocab_policy, allow_pickle=engine.allow_pickle,
            allow_architecture_mismatch=engine.allow_architecture_mismatch,
            progress=engine.progress,
        )  # fmt: skip
        (tmp / "diagnostics.md").write_text(
            summary_markdown(report, heading="# Task-vector diagnostics")
        )
        return report

    run = cached_stage(
        cfg.root, "diagnose", payload, compute, result_file="diagnostics.json", seed=int(cfg.get("seed", 0)),
        provenance={"diagnose": {**opts, "resm": knobs, "vocab_policy": engine.vocab_policy}},
        extra={"base": str(base), "models": models}, inputs=[str(base), *models],
    )  # fmt: skip
    path = run.dir / "diagnostics.json"
    row = diagnostics_row(
        run.info, key=run.key, experiment=str(cfg.get("name", "")), seed=cfg.get("seed"),
        label=label, base=str(base),
        models=models, path=path,
    )  # fmt: skip
    out = {
        "dir": str(run.dir),
        "key": run.key,
        "cached": run.cached,
        "path": str(path),
        "report": run.info,
        "markdown": summary_markdown(run.info, heading=CARD_HEADING),
        "row_appended": append_diagnostics(diagnostics_path(cfg), row),
    }
    if not CACHE.dry_run:
        CACHE.memo[memo_key] = (_signature(run.dir), out)
    return out


def _signature(folder: Path) -> Any:
    """The files of an output folder by name, size and modification time (None when gone):
    a diagnosis this run verified and whose row it stored is reused from ``CACHE.memo`` while
    they hold (every merge of a seed diagnoses the same specialists; a cached rerun of the demo
    verified the one output and compared its row with the store's 39 times per seed, a sixth
    of the rerun); a file changed since is verified again."""
    try:
        return tuple(sorted((p.name, st.st_size, st.st_mtime_ns)
                            for p in folder.iterdir() if (st := p.stat())))  # fmt: skip
    except OSError:
        return None


def knob_label(label: str, knobs: Mapping[str, Any]) -> str:
    """``label`` with the RESM knobs a set was diagnosed with where they are not RESM's
    defaults (battery 15, F15: a sweep's sets were seven rows titled "dpo, seed 0")."""
    from hhh_bench.merging.diagnostics import resm_knobs

    default = resm_knobs(None)
    other = {k: v for k, v in knobs.items() if default.get(k) != v}
    if not other:
        return label
    return label + " (" + ", ".join(f"{k}={v}" for k, v in sorted(other.items())) + ")"


def _explicit(cfg: DictConfig) -> bool:
    merge = cfg.get("merge")
    return bool(merge is not None and merge.get("models"))
