"""The train stage: one DPO (or SFT) run from θ0 on the preference pairs of some dimensions.

One dimension (``data.dimensions=[helpful]``) trains a *specialist*, the input of every merge;
several train a *mixture* baseline, combined by a mixing strategy (``mix=<name>``) under a budget;
``data.noise`` flips a seeded share of the training pairs first (:mod:`hhh_bench.data.prepare`).

Output, ``<root>/train/<key>/`` (``key`` hashes the base and data keys, the dimensions, the mix,
the noise, the train config and the seed): the weights (full fine-tuning, or LoRA with
``train.merge_adapter``) and/or ``adapter/``; ``train_info.json`` (realized counts, budget,
noise, losses, held-out margins: mean log π(chosen) − log π(rejected) on each dimension's
validation pairs before and after); ``loss_curve.jsonl``; ``noise_flipped_ids.json``;
``provenance.json``. Under ``accelerate launch`` only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hhh_bench.config import DIMENSIONS, DataConfig, ModelConfig, TrainConfig
from hhh_bench.stages.common import cached_stage, group, load_option, log, to_dict

_NOT_IN_KEY = ("report_to", "logging_steps", "margin_batch_size", "name")
"""Train-config keys that change how a run is logged, not what it learns."""


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
    from hhh_bench.data.prepare import noise_for, read_pref_sets, training_set

    t = group(cfg, "train", TrainConfig)
    dcfg = group(cfg, "data", DataConfig)
    dims = list(dimensions if dimensions is not None else dcfg.dimensions)
    if not dims or len(set(dims)) != len(dims) or any(d not in DIMENSIONS for d in dims):
        raise ValueError(f"dimensions must be distinct names from {list(DIMENSIONS)}, got {dims}")
    kind = "specialist" if len(dims) == 1 else "mixture"
    mix_cfg = resolve_mix(cfg, mix) if kind == "mixture" else None
    noise = noise_for(to_dict(cfg.data.get("noise")), dims)
    seed = int(cfg.seed)
    tdict = {k: v for k, v in to_dict(cfg.train).items() if k not in _NOT_IN_KEY}
    payload = {"base": base["key"], "data": data["key"], "dimensions": dims, "mix": mix_cfg,
               "noise": noise, "train": tdict, "seed": seed}  # fmt: skip
    label = name or (f"{dims[0]}-specialist" if kind == "specialist" else f"mix-{mix_cfg['name']}")
    summary = {"kind": kind, "dimensions": dims, "name": label, "mix": mix_cfg and mix_cfg["name"]}

    def compute(tmp: Path) -> dict[str, Any]:
        # every file is read and validated before a model is loaded: a bad row fails here
        sets = read_pref_sets(data["dir"], dims, "train")
        held = read_pref_sets(data["dir"], list(DIMENSIONS), "validation", required=False)
        if t.margin_max_pairs:
            held = {d: rows[: t.margin_max_pairs] for d, rows in held.items()}
        ts = training_set(sets, noise, mix_cfg, seed)
        log.info("train: %s on %s", label, ts.counts)
        return _train(cfg, t, base, ts, held, tmp, label) | summary

    run = cached_stage(
        cfg, "train", payload, compute, result_file="train_info.json", seed=seed,
        write=int(os.environ.get("RANK", "0")) == 0, label=label,
        provenance={"train": to_dict(cfg.train), "mix": mix_cfg, "noise": noise,
                    "data": to_dict(cfg.data), "model": to_dict(cfg.model)},
        extra={"base_key": base["key"], "data_key": data["key"], "dimensions": dims},
    )  # fmt: skip
    info = {**run.info, **summary}
    for d, m in (info.get("margins") or {}).items() if not run.cached else ():
        log.info("train: %s held-out %s margin %.3f -> %.3f", label, d, m["base"]["mean"],
                 m["trained"]["mean"])  # fmt: skip
    return {
        **info,
        "key": run.key,
        "path": str(run.dir),
        "cached": run.cached,
        **_paths(run.dir, info),
    }


def _train(
    cfg: DictConfig,
    t: TrainConfig,
    base: dict[str, Any],
    ts: Any,
    held: dict,
    tmp: Path,
    label: str,
) -> dict[str, Any]:
    """Load θ0, train, save into ``tmp``; the content of ``train_info.json``."""
    from hhh_bench.models import load_causal_lm, load_tokenizer
    from hhh_bench.provenance import set_seed
    from hhh_bench.train.run import fit, margins

    mcfg = group(cfg, "model", ModelConfig)
    t0 = time.time()
    set_seed(t.seed)
    trust = bool(cfg.get("trust_remote_code", False))
    base_path = base["path"] if base.get("hub") else str(Path(base["path"]).resolve())
    device = t.device
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"  # one GPU per rank
    tokenizer = load_tokenizer(base_path, trust_remote_code=trust)
    model = load_causal_lm(base_path, dtype=mcfg.dtype, device=device, trust_remote_code=trust)
    before = margins(model, tokenizer, held, t.margin_batch_size)
    if t.report_to == "wandb":
        from hhh_bench.tracking.wandb_log import setup_trainer_env

        setup_trainer_env(cfg.root, to_dict(cfg.get("logger")))
    model, curve, weights = fit(model, tokenizer, ts.rows, tmp, t, logger=t.report_to,
                                run_name=label, phases=ts.phases)  # fmt: skip
    if t.report_to == "wandb":
        from hhh_bench.tracking.wandb_log import finish_run

        finish_run()
    after = margins(model, tokenizer, held, t.margin_batch_size)
    if t.method == "lora" and t.merge_adapter:
        from hhh_bench.train.lora import merge_adapter_into

        merge_adapter_into(base_path, tmp / "adapter", tmp, dtype=mcfg.dtype, device=device,
                           trust_remote_code=trust)  # fmt: skip
        weights = "adapter+merged"
    noise = ts.noise
    if noise and noise["flipped_ids"]:
        (tmp / "noise_flipped_ids.json").write_text(json.dumps(noise["flipped_ids"]) + "\n")
    curve.write(tmp / "loss_curve.jsonl")
    shutil.rmtree(tmp / "trainer", ignore_errors=True)
    losses = curve.losses()
    return {
        "train_kind": t.kind,
        "method": t.method,
        "weights": weights,
        "counts": ts.counts,
        "n_pairs": len(ts.rows),
        "budget": ts.mix_info.get("budget", len(ts.rows)) if ts.mix_info else len(ts.rows),
        "budget_mode": ts.mix_info.get("budget_mode") if ts.mix_info else "specialist",
        "mix_info": ts.mix_info,
        "phases": ts.phases,
        "noise": {k: v for k, v in noise.items() if k != "flipped_ids"} if noise else None,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "steps": max((r["step"] for r in curve.records), default=0),
        "margins": {
            d: {
                "base": before[d],
                "trained": after[d],
                "delta": after[d]["mean"] - before[d]["mean"],
            }
            for d in held
        },
        "base_path": base_path,
        "seconds": round(time.time() - t0, 1),
    }


def _paths(out: Path, info: Mapping[str, Any]) -> dict[str, Any]:
    weights = info.get("weights", "full")
    return {
        "model_path": str(out) if weights in ("full", "adapter+merged") else None,
        "adapter_path": str(out / "adapter") if weights.startswith("adapter") else None,
    }
