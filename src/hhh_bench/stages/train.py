"""The train stage: one DPO (or SFT) run from θ0 on the preference pairs of some dimensions.

One dimension (``data.dimensions=[helpful]``) trains a *specialist*, the input of every merge;
several train a *mixture* baseline, combined by a mixing strategy (``mix=<name>``) under a budget;
``data.noise`` flips a seeded share of the training pairs first (:mod:`hhh_bench.data.prepare`).

Output, ``<root>/train/<key>/`` (``key`` hashes the base and data keys, the dimensions, the mix,
the noise, the train config and the seed): the weights (full fine-tuning, or LoRA with
``train.merge_adapter``) and/or ``adapter/``; ``train_info.json`` (realized counts, budget,
noise, losses, held-out margins: mean log π(chosen) − log π(rejected) on each dimension's
validation pairs before and after); ``loss_curve.jsonl``; ``noise_flipped_ids.json``;
``provenance.json``. Under ``accelerate launch`` only rank 0 writes. With
``train.num_processes`` > 1 the stage launches the run itself (:mod:`hhh_bench.stages.train_launch`):
only training runs in several processes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hhh_bench.core import console
from hhh_bench.core.config import DIMENSIONS, DataConfig, TrainConfig
from hhh_bench.data.mixing.registry import get_strategy
from hhh_bench.data.mixing.scorers import register_scorer
from hhh_bench.data.toy3h import Toy3HScorer
from hhh_bench.stages.common import (
    cached_stage,
    code_identity,
    content_of,
    group,
    keyed,
    load_option,
    log,
    to_dict,
)
from hhh_bench.stages.train_launch import TrainJob, launch_training, train_into

# The toy world's exact reward as the mixing strategies' ``toy3h`` scorer: the world and the
# strategies do not import each other; they meet here (docs/architecture.md).
register_scorer("toy3h", Toy3HScorer)

_NOT_IN_KEY = ("report_to", "logging_steps", "margin_batch_size", "name", "accelerate_config")
"""Train-config keys that change how a run is logged or launched, not what it learns
(``num_processes`` is in the key: the processes multiply the batch)."""
TRAIN_CODE = ("hhh_bench.stages.train", "hhh_bench.stages.train_launch", "hhh_bench.train", "hhh_bench.data.prepare", "hhh_bench.data.noise",
              "hhh_bench.core.schema", "hhh_bench.core.text",
              "hhh_bench.models.loading")  # fmt: skip
"""The code every training run runs; a mixture adds its strategy's and scorers' modules."""


def _scorer_of(strategy: Any, mix_cfg: Mapping[str, Any]) -> str | None:
    """The scorer a mixture uses: its config's, else its strategy's parameters' default (a
    config that leaves ``scorer`` out still scores with it)."""
    import dataclasses

    if mix_cfg.get("scorer") is not None:
        return str(mix_cfg["scorer"])
    params = getattr(strategy, "params", None)
    if params is not None and dataclasses.is_dataclass(params):
        for f in dataclasses.fields(params):
            if f.name == "scorer" and f.default is not dataclasses.MISSING:
                return str(f.default)
    return None


def train_code(mix_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The code identity of a training run: :data:`TRAIN_CODE`, and for a mixture the mixing
    package's registry and scorers and the module of its strategy (a plugin's included)."""
    items: list[Any] = list(TRAIN_CODE)
    if mix_cfg is not None:
        strategy = get_strategy(str(mix_cfg["name"]))
        items += ["hhh_bench.data.mixing.registry", "hhh_bench.data.mixing.scorers",
                  getattr(strategy, "fn", strategy)]  # fmt: skip
        if _scorer_of(strategy, mix_cfg) == "toy3h":  # the oracle reward of the toy world
            items.append("hhh_bench.data.toy3h")
    return code_identity(*items)


def resolve_mix(cfg: DictConfig, mix: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The mix config: ``cfg.mix`` (None or its own name), ``conf/mix/<mix>.yaml``, or a mapping."""
    if mix is None or (isinstance(mix, str) and "mix" in cfg and cfg.mix.get("name") == mix):
        m = to_dict(cfg.mix)
    else:
        m = load_option("mix", mix) if isinstance(mix, str) else dict(to_dict(mix))
    if "name" not in m:
        raise ValueError(f"a mix config needs a 'name' (the strategy), got {m}")
    return m


def run_train(
    cfg: DictConfig,
    base: dict[str, Any],
    data: dict[str, Any],
    *,
    dimensions: list[str] | None = None,
    mix: str | Mapping[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Train (or reuse) one model from the base on the preference pairs of ``dimensions``.

    Args:
        cfg: the composed config (``train``, ``mix``, ``data``, ``model``, ``logger``, ``seed``).
        base, data: the base and data stages' results (``path``/``dir``, ``key``).
        dimensions: the dimensions to train on (default ``data.dimensions``); one = a specialist.
        mix: None → ``cfg.mix``; a name → that option; a mapping → that config (mixtures only).
        name: a label for logs and the W&B run (not part of the key).

    Returns:
        ``train_info.json``'s content plus ``path``, ``key``, ``cached``, ``model_path`` (full
        weights or None) and ``adapter_path`` (the LoRA adapter or None).
    """
    from hhh_bench.data.prepare import noise_for

    t = group(cfg, "train", TrainConfig)
    dcfg = group(cfg, "data", DataConfig)
    dims = list(dimensions if dimensions is not None else dcfg.dimensions)
    if not dims or len(set(dims)) != len(dims) or any(d not in DIMENSIONS for d in dims):
        raise ValueError(f"dimensions must be distinct names from {list(DIMENSIONS)}, got {dims}")
    kind = "specialist" if len(dims) == 1 else "mixture"
    mix_cfg = resolve_mix(cfg, mix) if kind == "mixture" else None
    noise = noise_for(to_dict(cfg.data.get("noise")), dims)
    seed = int(cfg.seed)
    tdict = {k: v for k, v in keyed(cfg.train).items() if k not in _NOT_IN_KEY}
    # the dtype θ0 is loaded and trained in (model.dtype): its weights' bytes depend on it
    payload = {"base": content_of(base), "data": content_of(data), "dimensions": dims,
               "mix": keyed(mix_cfg), "noise": noise, "train": tdict, "seed": seed,
               "dtype": to_dict(cfg.model).get("dtype"), "code": train_code(mix_cfg)}  # fmt: skip
    label = name or (f"{dims[0]}-specialist" if kind == "specialist" else f"mix-{mix_cfg['name']}")
    summary = {"kind": kind, "dimensions": dims, "name": label, "mix": mix_cfg and mix_cfg["name"]}

    def compute(tmp: Path) -> dict[str, Any]:
        job = TrainJob(dims, mix_cfg, noise, seed, label, base, data)
        if t.num_processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return launch_training(cfg, t, job, tmp) | summary
        return train_into(cfg, t, job, tmp) | summary

    run = cached_stage(
        cfg.root, "train", payload, compute, result_file="train_info.json", seed=seed,
        write=int(os.environ.get("RANK", "0")) == 0, label=_shown(label, mix_cfg, name),
        provenance={"train": to_dict(cfg.train), "mix": mix_cfg, "noise": noise,
                    "data": to_dict(cfg.data), "model": to_dict(cfg.model)},
        extra={"base_key": base["key"], "data_key": data["key"], "dimensions": dims},
        inputs=[p for p in (base.get("path"), data["dir"]) if p and Path(str(p)).exists()],
    )  # fmt: skip
    info = {**run.info, **summary}
    if cfg.get("stage") == "train" and (info.get("mix_info") or {}).get("selects_nothing"):
        # battery 16, A8: the mixture a user asked for is uniform's data (stage=all tries this
        # configuration beside its emphases' on purpose: said there in the log only)
        if (mix_cfg or {}).get("name") == "resolved":  # battery 21, A-U1
            console.say(f"warning: train {label}: mix=resolved overrules no pair (no pair's "
                        "margins pass mix.threshold against it): the mixture is uniform's data; "
                        "a lower mix.threshold resolves")  # fmt: skip
        else:
            console.say(f"warning: train {label}: mix=reward_select keeps every pair at this "
                        "budget and these shares: its ranking selects nothing, and the mixture is "
                        "uniform's data; a mix.budget below the pairs there are, or mix.shares, "
                        "select")  # fmt: skip
    resampled = sum(
        int(v or 0) for v in ((info.get("mix_info") or {}).get("resampled") or {}).values()
    )
    total = sum(int(v or 0) for v in (info.get("counts") or {}).values())
    if cfg.get("stage") == "train" and total and resampled * 2 > total:  # battery 18, U3
        console.say(f"warning: train {label}: {resampled} of its {total} pairs are repeats drawn "
                    "again to fill the budget (mix_info.resampled in train_info.json): few "
                    "distinct pairs stand behind this mixture")  # fmt: skip
    for d, m in (info.get("margins") or {}).items() if not run.cached else ():
        if m["delta"] is None:
            console.say(f"train {label}: no held-out {d} pair (its validation split is empty): "
                        "no held-out margin measured")  # fmt: skip
            continue
        log.info("train: %s held-out %s margin %.3f -> %.3f", label, d, m["base"]["mean"],
                 m["trained"]["mean"])  # fmt: skip
    return {
        **info,
        "key": run.key,
        "content": run.identity,
        "path": str(run.dir),
        "cached": run.cached,
        **_paths(run.dir, info),
    }


def _shown(label: str, mix_cfg: Mapping[str, Any] | None, name: str | None) -> str:
    """What the console and the log call a run: its label, and for a mixture the settings
    that differ from its strategy's option file (``mix-reward_select shares=helpful
    0.5/honest 0.25/harmless 0.25``), so that a search's runs read apart."""
    if mix_cfg is None or name:
        return label
    try:
        own = load_option("mix", str(mix_cfg["name"]))
    except ValueError:  # a plugin's strategy without an option file
        own = {}
    changed = {k: v for k, v in mix_cfg.items() if k != "name" and own.get(k) != v}

    return " ".join(x for x in (label, console.params_text(changed)) if x)


def _paths(out: Path, info: Mapping[str, Any]) -> dict[str, Any]:
    weights = info.get("weights", "full")
    return {
        "model_path": str(out) if weights in ("full", "adapter+merged") else None,
        "adapter_path": str(out / "adapter") if weights.startswith("adapter") else None,
    }
