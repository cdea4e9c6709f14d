"""The stats stage: the data-aware statistics of one specialist, for Fisher merging and RegMean.

A merge with a method that reads statistics (``statistics_kind``: ``fisher`` needs the diagonal
Fisher, ``regmean`` the Gram matrices) and no ``merge.params.statistics`` runs this stage for
each specialist first (:func:`statistics_for`), then merges with the files it wrote.

Output, ``<root>/stats/<key>/`` (``key``: the specialist's content (and its base's, for a LoRA
adapter), the kind, the content of the N training rows drawn, the options of
``merge_engine.statistics`` and the code): ``statistics.safetensors``
(:mod:`hhh_bench.merging.statsfile`), ``stats_info.json`` (what it holds: samples, tokens, row
ids, options) and ``provenance.json``. A second merge of the same specialists (another λ, α,
another grid point, another experiment on the same root) finds it and computes nothing.

The rows are the specialist's own training set, as the train stage builds it: the data stage's
``prefs/<dimension>_train.jsonl`` with the run's preference noise applied
(:func:`hhh_bench.data.prepare.training_set`), so a specialist trained on flipped pairs is
measured on the same flipped pairs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hhh_bench.core.config import DIMENSIONS, MergeEngineConfig
from hhh_bench.core.paths import is_adapter_folder
from hhh_bench.core.provenance import config_hash
from hhh_bench.stages.common import cached_stage, code_identity, group, model_identity, to_dict

STATS_CODE = ("hhh_bench.stages.stats", "hhh_bench.merging.datastats",
              "hhh_bench.merging.statsfile", "hhh_bench.merging.engine",
              "hhh_bench.models.loading", "hhh_bench.data.prepare",
              "hhh_bench.data.noise")  # fmt: skip
"""The code a statistics file depends on (its key holds these files; the engine for its
incremental safetensors writer)."""
FILE = "statistics.safetensors"


def specialist_rows(cfg: DictConfig, data: Mapping[str, Any], dimension: str) -> list[dict]:
    """The training rows of the ``dimension`` specialist, noise applied as the train stage does."""
    from hhh_bench.data.prepare import noise_for, read_pref_sets, training_set

    if dimension not in DIMENSIONS:
        raise ValueError(f"no training data for {dimension!r}: expected one of {list(DIMENSIONS)}")
    sets = read_pref_sets(data["dir"], [dimension], "train")
    noise = noise_for(to_dict(cfg.data.get("noise")), [dimension])
    return [dict(r) for r in training_set(sets, noise, None, int(cfg.seed)).rows]


def run_stats(
    cfg: DictConfig,
    model: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    kind: str,
    base: str | None = None,
    label: str = "",
) -> dict[str, Any]:
    """Compute (or reuse) the ``kind`` statistics of ``model`` on a draw of ``rows``.

    Args:
        cfg: the composed config (``merge_engine.statistics``, ``merge_engine.device``, ``root``).
        model: the specialist's folder (full weights, or a LoRA adapter).
        rows: its training rows (:func:`specialist_rows`).
        kind: ``fisher`` or ``gram``.
        base: the base a LoRA adapter is merged into (default: its ``adapter_config.json``'s).
        label: what the console calls it (its dimension).

    Returns:
        ``stats_info.json``'s content plus ``path`` (the file), ``dir``, ``key``, ``cached``.
    """
    from hhh_bench.merging.datastats import StatsOptions, select_rows, specialist_statistics

    engine = group(cfg, "merge_engine", MergeEngineConfig)
    s = engine.statistics
    options = StatsOptions(
        kinds=(kind,), num_samples=s.num_samples, seed=s.seed, max_length=s.max_length,
        dtype=s.dtype, device=s.device or engine.device, gram_dtype=s.gram_dtype,
        gram_budget_gb=s.gram_budget_gb,
    )  # fmt: skip
    picked = select_rows(list(rows), options.num_samples, options.seed)
    adapter = is_adapter_folder(model)
    payload = {
        "model": model_identity(model),
        "base": model_identity(str(base)) if adapter and base else None,
        "kind": kind,
        "rows": config_hash(picked, length=64),  # the rows drawn, by content
        "options": {k: v for k, v in dataclasses.asdict(options).items() if k != "gram_budget_gb"},
        "code": code_identity(*STATS_CODE),
    }

    def compute(tmp: Path) -> dict[str, Any]:
        meta = specialist_statistics(model, picked, tmp / FILE, options, base=base)
        return {**meta, "file": FILE}

    run = cached_stage(
        cfg.root, "stats", payload, compute, result_file="stats_info.json", seed=s.seed,
        provenance={"statistics": dataclasses.asdict(options)},
        extra={"model": model, "base": base}, label=f"{kind} {label}".strip(),
        inputs=[p for p in (model, base) if p and Path(str(p)).exists()],
    )  # fmt: skip
    return {**run.info, "path": str(run.dir / FILE), "dir": str(run.dir), "key": run.key,
            "content": run.identity, "cached": run.cached}  # fmt: skip


def _check_trained_on(i: int, model: str, data: Mapping[str, Any], method: str) -> None:
    """A specialist that is a train stage output (``key.json``) was trained on this run's data:
    its statistics are computed on the rows of ``data`` (battery 18, F2: another seed's world
    gave another Fisher, without a word)."""
    import json

    from hhh_bench.stages.common import train_record

    record = train_record(model)
    try:
        key = json.loads(record.read_text()) if record is not None else {}
    except ValueError:
        return
    if not isinstance(key, dict) or key.get("stage") != "train":
        return
    theirs = [
        Path(str(x)).name for x in key.get("inputs") or [] if Path(str(x)).parent.name == "data"
    ]
    if theirs and data.get("key") not in theirs:
        raise ValueError(
            f"merge.models[{i}]={model!r} was trained on the data output data/{theirs[0]} (its "
            f"key.json), but this run's data is data/{data.get('key')}: {method}'s statistics "
            "would be computed on other rows than it was trained on; run with the data config "
            "and seed the models were trained with, or give merge.params.statistics=[...]"
        )


def statistics_for(
    cfg: DictConfig,
    data: Mapping[str, Any] | None,
    base: str,
    models: Sequence[str],
    names: Sequence[str] | None,
    kind: str,
) -> list[dict[str, Any]]:
    """The ``kind`` statistics of every model of a merge, in order: model i is the specialist of
    dimension ``names[i]`` (the pipeline's), else ``data.dimensions[i]`` (explicit
    ``merge.models``, by position), trained on that dimension's rows of the run's data."""
    dims = list(names) if names else list(to_dict(cfg.data.dimensions))
    if len(dims) != len(models):
        raise ValueError(
            f"{cfg.merge.method} needs data: merge parameter 'statistics' is null and the "
            f"{len(models)} models cannot be matched to their training data (data.dimensions "
            f"has {len(dims)}: {dims}); give merge.params.statistics=[...] (one file per model) "
            "or as many models as data.dimensions, in its order"
        )
    if data is None:
        from hhh_bench.stages.data import run_data

        data = run_data(cfg)
    for i, model in enumerate(models):
        _check_trained_on(i, model, data, cfg.merge.method)
    return [
        run_stats(cfg, m, specialist_rows(cfg, data, d), kind=kind, base=base, label=d)
        for m, d in zip(models, dims, strict=True)
    ]
