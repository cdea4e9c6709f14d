"""The train stage: one DPO (or SFT) run from θ0 on the preference pairs of some dimensions.

* One dimension (``data.dimensions=[helpful]``) trains a *specialist*, the input of every merge;
  mixing does not apply.
* Several dimensions train a *mixture* baseline: the sets are combined by a mixing strategy
  (``mix=<name>``, :mod:`hhh_bench.data.mixing`) under a budget.
* ``data.noise`` flips a seeded share of the training pairs first (robustness study).

Output, ``<root>/train/<key>/`` (written atomically; ``key`` hashes the base and data keys, the
dimensions, the mix config, the noise, the train config and the seed)::

    config.json, model.safetensors, generation_config.json, tokenizer files   (full fine-tuning,
                                                   or LoRA with train.merge_adapter=true)
    adapter/adapter_config.json, adapter/adapter_model.safetensors          (LoRA)
    train_info.json      realized counts per dimension, budget, noise, losses, held-out margins
    loss_curve.jsonl     every logged record of the trainer (loss, rewards/*, lr, ...)
    noise_flipped_ids.json   ids of the flipped pairs (when data.noise.flip_rate > 0)
    provenance.json      resolved config, seed, package versions, git revision

Held-out margins: for every dimension with a ``prefs/<dim>_validation.jsonl``, the mean of
``log π(chosen) − log π(rejected)`` over its pairs for the base and for the trained model (DPO's
implicit reward margin is 0 for the base by construction, so the plain log-prob margin is what
compares the two), and the change.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hhh_bench.provenance import atomic_dir, set_seed, write_provenance
from hhh_bench.stages.common import CACHE, is_done, log, read_json, stage_dir, stage_key, to_dict

TRAIN_KINDS = ("dpo", "sft")
METHODS = ("full", "lora")
# Keys of the train config that change how a run is logged, not what it learns.
_NOT_IN_KEY = ("report_to", "logging_steps", "margin_batch_size", "name")


def resolve_mix(cfg: DictConfig, mix: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The mix config: ``cfg.mix`` (None or its own name), ``conf/mix/<mix>.yaml``, or a mapping."""
    if mix is None or (isinstance(mix, str) and "mix" in cfg and cfg.mix.get("name") == mix):
        m = to_dict(cfg.mix)
    elif isinstance(mix, str):
        from hhh_bench.paths import conf_dir

        path = conf_dir() / "mix" / f"{mix}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in path.parent.glob("*.yaml"))
            raise ValueError(f"unknown mix {mix!r}: no {path}; available: {known}")
        m = to_dict(OmegaConf.load(path))
    else:
        m = dict(to_dict(mix))
    if "name" not in m:
        raise ValueError(f"a mix config needs a 'name' (the strategy), got {m}")
    return m


def read_pref_sets(
    data_dir: str | Path, dimensions: list[str], split: str, required: bool = True
) -> dict[str, list[dict[str, Any]]]:
    """Read and validate ``<data_dir>/prefs/<dim>_<split>.jsonl`` for each dimension.

    Raises:
        SchemaError: a malformed row (the message names file, row and id) or a row whose
            ``dimension`` is not the file's.
        FileNotFoundError: a missing file when ``required``.
    """
    from hhh_bench.data.schema import SchemaError, load_preferences

    out: dict[str, list[dict[str, Any]]] = {}
    for dim in dimensions:
        path = Path(data_dir) / "prefs" / f"{dim}_{split}.jsonl"
        if not path.is_file():
            if required:
                raise FileNotFoundError(
                    f"no preference file {path}; the data stage writes prefs/<dimension>_<split>.jsonl "
                    f"for each dimension (is {dim!r} in the data config?)"
                )
            continue
        rows = load_preferences(path)
        for i, r in enumerate(rows):
            if r["dimension"] != dim:
                raise SchemaError(
                    f"{path}: row {i} (id={r['id']!r}) has dimension {r['dimension']!r} in a "
                    f"file of dimension {dim!r}"
                )
        out[dim] = rows  # type: ignore[assignment]
    return out


def _noise_payload(noise: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not noise or not float(noise.get("flip_rate") or 0.0):
        return None
    return {
        "flip_rate": float(noise["flip_rate"]),
        "dimension": noise.get("dimension"),
        "seed": int(noise["seed"]),
    }


def _check_train_cfg(t: Mapping[str, Any]) -> None:
    if t.get("kind") not in TRAIN_KINDS:
        raise ValueError(f"train.kind must be one of {list(TRAIN_KINDS)}, got {t.get('kind')!r}")
    if t.get("method", "full") not in METHODS:
        raise ValueError(f"train.method must be one of {list(METHODS)}, got {t.get('method')!r}")
    if t.get("method") == "lora" and not t.get("lora"):
        raise ValueError(
            "train.method=lora needs a train.lora block (r, alpha, dropout, target_modules)"
        )
    if t.get("kind") == "sft" and t.get("method") == "lora":
        raise ValueError("train.kind=sft supports full fine-tuning only (train.method=full)")


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _rank_device(device: str) -> str:
    """``cuda`` → this process's GPU under ``accelerate launch`` (``LOCAL_RANK``), so N ranks do not
    all load the model onto GPU 0."""
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def _setup_wandb(cfg: DictConfig) -> None:
    """W&B files under ``<root>/wandb`` (never the repo), project/entity/mode from the logger."""
    os.environ.setdefault("WANDB_DIR", str(Path(str(cfg.root)).resolve() / "wandb"))
    Path(os.environ["WANDB_DIR"]).mkdir(parents=True, exist_ok=True)
    lg = to_dict(cfg.logger) if "logger" in cfg else {}
    if lg.get("project"):
        os.environ.setdefault("WANDB_PROJECT", str(lg["project"]))
    if lg.get("entity"):
        os.environ.setdefault("WANDB_ENTITY", str(lg["entity"]))
    if lg.get("mode"):
        os.environ["WANDB_MODE"] = str(lg["mode"])


def _finish_wandb() -> None:
    try:
        import wandb
    except ImportError:  # pragma: no cover
        return
    if wandb.run is not None:
        wandb.finish()


def _margins(
    model: Any, tokenizer: Any, sets: Mapping[str, list], batch_size: int
) -> dict[str, Any]:
    from hhh_bench.train.dpo import logprob_margins, margin_summary

    return {
        d: margin_summary(logprob_margins(model, tokenizer, rows, batch_size))
        for d, rows in sets.items()
    }


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
        cfg: the composed config (``train``, ``mix``, ``data``, ``model``, ``logger``, ``seed``,
            ``root`` are read).
        base: the base stage's result (``path``, ``key``).
        data: the data stage's result (``dir``, ``key``).
        dimensions: the dimensions to train on (default ``cfg.data.dimensions``); one = a specialist.
        mix: the mixing strategy: None → ``cfg.mix``; a name → ``cfg.mix`` if it has that name, else
            ``conf/mix/<name>.yaml``; a mapping → that config. Ignored for a specialist.
        name: a label for logs and the W&B run (not part of the key).

    Returns:
        ``{"path", "key", "cached", "kind": "specialist" | "mixture", "dimensions", "mix",
        "counts", "name", "model_path", "adapter_path", ...}`` plus everything in
        ``train_info.json`` (``budget``, ``noise``, ``final_loss``, ``margins``, ...).
        ``model_path`` is the folder of full weights (None for an unmerged LoRA run);
        ``adapter_path`` the LoRA adapter folder (None for full fine-tuning).
    """
    from hhh_bench.data.schema import DIMENSIONS

    dims = list(dimensions if dimensions is not None else to_dict(cfg.data.dimensions))
    if not dims or len(set(dims)) != len(dims) or any(d not in DIMENSIONS for d in dims):
        raise ValueError(f"dimensions must be distinct names from {list(DIMENSIONS)}, got {dims}")
    tcfg = to_dict(cfg.train)
    _check_train_cfg(tcfg)
    kind = "specialist" if len(dims) == 1 else "mixture"
    mix_cfg = resolve_mix(cfg, mix) if kind == "mixture" else None
    noise = _noise_payload(to_dict(cfg.data.get("noise")))
    if noise and noise["dimension"] not in (None, *dims):
        noise = None  # noise on a dimension this run does not train on: the clean run, reused
    seed = int(cfg.seed)
    key = stage_key(
        "train",
        {
            "base": base["key"],
            "data": data["key"],
            "dimensions": dims,
            "mix": mix_cfg,
            "noise": noise,
            "train": {k: v for k, v in tcfg.items() if k not in _NOT_IN_KEY},
            "seed": seed,
        },
    )
    out = stage_dir(cfg, "train", key)
    label = name or (f"{dims[0]}-specialist" if kind == "specialist" else f"mix-{mix_cfg['name']}")
    summary = {"key": key, "kind": kind, "dimensions": dims, "name": label}
    summary["mix"] = mix_cfg["name"] if mix_cfg else None
    if is_done(out):
        CACHE.hit("train")
        log.info("train: cached %s (%s)", out, label)
        info = read_json(out / "train_info.json")
        return {**info, **summary, "path": str(out), "cached": True, **_paths(out, info)}

    data_dir = Path(data["dir"])
    # Validate everything before any model is loaded: a malformed file fails here, naming its row.
    sets = read_pref_sets(data_dir, dims, "train")
    heldout = read_pref_sets(data_dir, list(DIMENSIONS), "validation", required=False)
    max_pairs = tcfg.get("margin_max_pairs")
    if max_pairs:
        heldout = {d: rows[: int(max_pairs)] for d, rows in heldout.items()}

    rows, counts, mix_info, phases, noise_info = _training_rows(sets, noise, mix_cfg, seed)
    log.info("train: %s on %s", label, counts)

    t0 = time.time()
    set_seed(seed)
    from hhh_bench.models import load_causal_lm, load_tokenizer

    trust = bool(cfg.get("trust_remote_code", False))
    base_path = base["path"] if base.get("hub") else str(Path(base["path"]).resolve())
    device = _rank_device(str(tcfg.get("device", "cpu")))
    tokenizer = load_tokenizer(base_path, trust_remote_code=trust)
    model = load_causal_lm(
        base_path, dtype=to_dict(cfg.model).get("dtype"), device=device, trust_remote_code=trust
    )
    mb = int(tcfg.get("margin_batch_size", 64))
    base_margins = _margins(model, tokenizer, heldout, mb)

    logger = tcfg.get("report_to")
    if logger == "wandb":
        _setup_wandb(cfg)
    main = _is_main_process()
    ctx = atomic_dir(out) if main else _scratch_dir()
    with ctx as tmp:
        model, curve, weights = _fit(
            model,
            tokenizer,
            rows,
            tmp,
            tcfg,
            seed=seed,
            logger=logger,
            run_name=label,
            phases=phases,
        )
        if logger == "wandb":
            _finish_wandb()
        trained_margins = _margins(model, tokenizer, heldout, mb)
        lora = tcfg.get("method") == "lora"
        if lora and tcfg.get("merge_adapter") and main:
            from hhh_bench.train.lora import merge_adapter_into

            merge_adapter_into(
                base_path,
                tmp / "adapter",
                tmp,
                dtype=to_dict(cfg.model).get("dtype"),
                device=device,
                trust_remote_code=trust,
            )
            weights = "adapter+merged"
        losses = curve.losses()
        info: dict[str, Any] = {
            **summary,
            "train_kind": tcfg["kind"],
            "method": tcfg.get("method", "full"),
            "weights": weights,
            "counts": counts,
            "n_pairs": len(rows),
            "budget": mix_info.get("budget", len(rows)) if mix_info else len(rows),
            "budget_mode": mix_info.get("budget_mode") if mix_info else "specialist",
            "mix_info": mix_info,
            "phases": phases,
            "noise": noise_info,
            "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None,
            "steps": max((r["step"] for r in curve.records), default=0),
            "margins": {
                d: {
                    "base": base_margins[d],
                    "trained": trained_margins[d],
                    "delta": trained_margins[d]["mean"] - base_margins[d]["mean"],
                }
                for d in heldout
            },
            "base_path": base_path,
            "seconds": round(time.time() - t0, 1),
        }
        if main:
            if noise_info and noise_info["flipped_ids"]:
                (tmp / "noise_flipped_ids.json").write_text(
                    json.dumps(noise_info["flipped_ids"]) + "\n"
                )
            noise_log = {k: v for k, v in (noise_info or {}).items() if k != "flipped_ids"}
            info["noise"] = noise_log or None
            (tmp / "train_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            curve.write(tmp / "loss_curve.jsonl")
            shutil.rmtree(tmp / "trainer", ignore_errors=True)
            write_provenance(
                tmp,
                {
                    "train": tcfg,
                    "mix": mix_cfg,
                    "noise": noise,
                    "data": to_dict(cfg.data),
                    "model": to_dict(cfg.model),
                },
                seed=seed,
                stage="train",
                extra={"base_key": base["key"], "data_key": data["key"], "dimensions": dims},
            )
    CACHE.miss("train")
    for d, m in info["margins"].items():
        log.info(
            "train: %s held-out %s margin %.3f -> %.3f (acc %.2f -> %.2f)",
            label,
            d,
            m["base"]["mean"],
            m["trained"]["mean"],
            m["base"]["acc"],
            m["trained"]["acc"],
        )
    return {**info, "path": str(out), "cached": False, **_paths(out, info)}


class _scratch_dir:
    """Non-main ranks of a distributed run train in a throwaway folder and write nothing."""

    def __enter__(self) -> Path:
        self._tmp = tempfile.TemporaryDirectory(prefix="hhh-train-rank-")
        return Path(self._tmp.name)

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()


def _paths(out: Path, info: Mapping[str, Any]) -> dict[str, Any]:
    weights = info.get("weights", "full")
    return {
        "model_path": str(out) if weights in ("full", "adapter+merged") else None,
        "adapter_path": str(out / "adapter") if weights.startswith("adapter") else None,
    }


def _training_rows(
    sets: dict[str, list[dict[str, Any]]],
    noise: dict[str, Any] | None,
    mix_cfg: dict[str, Any] | None,
    seed: int,
) -> tuple[
    list[dict[str, Any]],
    dict[str, int],
    dict[str, Any] | None,
    list[str] | None,
    dict[str, Any] | None,
]:
    """Noise, then mixing: the rows to train on, realized counts, mix info, phases, noise info."""
    from hhh_bench.data.mixing import mix as mix_sets
    from hhh_bench.data.noise import flip_preferences

    noise_info = None
    if noise:
        flat = [r for d in sets for r in sets[d]]
        flipped_rows, flipped = flip_preferences(
            flat, noise["flip_rate"], noise["seed"], dimension=noise.get("dimension")
        )
        sets = {d: [r for r in flipped_rows if r["dimension"] == d] for d in sets}
        noise_info = {
            **noise,
            "eligible": sum(1 for r in flat if noise.get("dimension") in (None, r["dimension"])),
            "flipped": len(flipped),
            "flipped_ids": flipped,
        }
    if mix_cfg is None:
        (dim,) = sets
        rows, counts, mix_info, phases = list(sets[dim]), {dim: len(sets[dim])}, None, None
    else:
        params = {k: v for k, v in mix_cfg.items() if k not in ("name", "budget")}
        res = mix_sets(
            mix_cfg["name"],
            sets,
            budget=mix_cfg.get("budget", "per_specialist"),
            seed=seed,
            **params,
        )
        rows, counts, mix_info, phases = res.rows, res.counts, res.info, res.phases
    if noise_info is not None:
        noise_info["flipped_in_training_set"] = sum(
            1 for r in rows if r.get("meta", {}).get("noise_flipped")
        )
    return rows, counts, mix_info, phases, noise_info


def _fit(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    tmp: Path,
    t: Mapping[str, Any],
    *,
    seed: int,
    logger: str | None,
    run_name: str,
    phases: list[str] | None,
) -> tuple[Any, Any, str]:
    """Run the trainer and save the weights into ``tmp``; return (model, curve, weights kind)."""
    common = {
        "learning_rate": float(t["learning_rate"]),
        "max_length": t.get("max_length"),
        "lr_scheduler_type": t.get("lr_scheduler_type", "cosine"),
        "warmup_ratio": float(t.get("warmup_ratio", 0.0)),
        "weight_decay": float(t.get("weight_decay", 0.0)),
        "seed": seed,
        "device": str(t.get("device", "cpu")),
        "logger": logger,
    }
    if t["kind"] == "sft":
        from hhh_bench.train.dpo import curriculum_order
        from hhh_bench.train.sft import train_sft

        epochs = float(t["epochs"])
        extra: dict[str, Any] = {
            "max_steps": int(t.get("max_steps", -1)),
            "gradient_accumulation_steps": int(t.get("grad_accum", 1)),
            "gradient_checkpointing": bool(t.get("gradient_checkpointing", False)),
            "run_name": run_name,
        }
        if phases:
            rows, _ = curriculum_order(rows, phases, epochs, seed)
            epochs, extra["train_sampling_strategy"] = 1.0, "sequential"
        conv = [{"messages": list(r["prompt"]) + list(r["chosen"])} for r in rows]
        model, curve = train_sft(
            model,
            tokenizer,
            conv,
            tmp / "trainer",
            epochs=epochs,
            batch_size=int(t["batch_size"]),
            logging_steps=int(t.get("logging_steps", 5)),
            bf16=bool(t.get("bf16", False)),
            extra_args=extra,
            **common,
        )
        _save_full(model, tokenizer, tmp)
        return model, curve, "full"

    from hhh_bench.train.dpo import train_dpo

    lora = t.get("lora") if t.get("method") == "lora" else None
    model, curve = train_dpo(
        model,
        tokenizer,
        rows,
        tmp / "trainer",
        lora=lora,
        beta=float(t["beta"]),
        loss_type=t.get("loss_type", "sigmoid"),
        loss_weights=t.get("loss_weights"),
        epochs=float(t["epochs"]),
        max_steps=int(t.get("max_steps", -1)),
        batch_size=int(t["batch_size"]),
        grad_accum=int(t.get("grad_accum", 1)),
        bf16=bool(t.get("bf16", False)),
        gradient_checkpointing=bool(t.get("gradient_checkpointing", False)),
        logging_steps=int(t.get("logging_steps", 5)),
        run_name=run_name,
        curriculum=phases,
        precompute_ref_log_probs=bool(t.get("precompute_ref_log_probs", False)),
        save_to=tmp / "adapter" if lora else tmp,
        **common,
    )
    if lora:
        tokenizer.save_pretrained(tmp)
        return model, curve, "adapter"
    return model, curve, "full"


def _save_full(model: Any, tokenizer: Any, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
