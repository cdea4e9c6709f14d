"""One training run from a :class:`~hhh_bench.core.config.TrainConfig`: the trainer dispatch (TRL DPO,
full or LoRA; TRL SFT on the chosen responses) and the held-out log-prob margins."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hhh_bench.core.provenance import set_seed
from hhh_bench.train.common import LossCurve


def fit(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    out: Path,
    t: Any,
    *,
    logger: str | None,
    run_name: str,
    phases: list[str] | None,
    mix_info: Mapping[str, Any] | None = None,
) -> tuple[Any, LossCurve, str]:
    """Train with ``t`` (a ``TrainConfig``) and save the weights into ``out``; return the model,
    its loss curve and what was saved: ``full`` (weights) or ``adapter`` (``out/adapter``)."""
    common = {
        "learning_rate": t.learning_rate,
        "max_length": t.max_length,
        "lr_scheduler_type": t.lr_scheduler_type,
        "warmup_ratio": t.warmup_ratio,
        "weight_decay": t.weight_decay,
        "seed": t.seed,
        "device": t.device,
        "logger": logger,
    }
    if t.kind == "sft":
        from hhh_bench.train.dpo import curriculum_order
        from hhh_bench.train.sft import train_sft

        epochs = float(t.epochs)
        extra: dict[str, Any] = {
            "max_steps": t.max_steps,
            "gradient_accumulation_steps": t.grad_accum,
            "gradient_checkpointing": t.gradient_checkpointing,
            "run_name": run_name,
        }
        if phases:
            rows, _ = curriculum_order(rows, phases, epochs, t.seed)
            epochs, extra["train_sampling_strategy"] = 1.0, "sequential"
        conv = [{"messages": list(r["prompt"]) + list(r["chosen"])} for r in rows]
        model, curve = train_sft(
            model, tokenizer, conv, out / "trainer", epochs=epochs, batch_size=t.batch_size,
            logging_steps=t.logging_steps, bf16=t.bf16, extra_args=extra, **common,
        )  # fmt: skip
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        return model, curve, "full"

    from hhh_bench.train.dpo import train_dpo

    lora = _lora_dict(t.lora) if t.method == "lora" else None
    model, curve = train_dpo(
        model,
        tokenizer,
        rows,
        out / "trainer",
        lora=lora,
        beta=float(t.beta),
        loss_type=t.loss_type,
        loss_weights=t.loss_weights,
        epochs=float(t.epochs),
        max_steps=t.max_steps,
        batch_size=t.batch_size,
        grad_accum=t.grad_accum,
        bf16=t.bf16,
        gradient_checkpointing=t.gradient_checkpointing,
        logging_steps=t.logging_steps,
        run_name=run_name,
        curriculum=phases,
        phase_schedule=str((mix_info or {}).get("schedule", "per_phase")),
        phase_reference=str((mix_info or {}).get("reference", "base")),
        precompute_ref_log_probs=t.precompute_ref_log_probs,
        save_to=out / "adapter" if lora else out,
        **common,
    )
    if lora:
        tokenizer.save_pretrained(out)
        return model, curve, "adapter"
    return model, curve, "full"


def _lora_dict(lora: Any) -> dict[str, Any]:
    """The ``train.lora`` block as the mapping :func:`hhh_bench.train.lora.lora_config_from`
    takes."""
    return {
        "r": lora.r,
        "alpha": lora.alpha,
        "dropout": lora.dropout,
        "target_modules": list(lora.target_modules),
        "bias": lora.bias,
    }


def margins(
    model: Any, tokenizer: Any, sets: Mapping[str, Sequence[Any]], batch_size: int
) -> dict[str, Any]:
    """Per dimension, the summary of log π(chosen) − log π(rejected) over held-out pairs."""
    from hhh_bench.train.dpo import logprob_margins, margin_summary

    return {
        d: margin_summary(logprob_margins(model, tokenizer, rows, batch_size))
        for d, rows in sets.items()
    }


# (base key, dtype, device, batch size, dimension, held-out rows' hash) -> the base's margin
# summary: every training of a seed starts from the same θ0 and measures it on the same pairs.
_BASE_MARGINS: dict[tuple[Any, ...], dict[str, Any]] = {}


def base_margins(
    model: Any,
    tokenizer: Any,
    sets: Mapping[str, Sequence[Any]],
    batch_size: int,
    base_key: str | None,
    *,
    dtype: str | None,
    device: str,
) -> dict[str, Any]:
    """:func:`margins` of the base θ0 before training, remembered within the process for a base
    with a stage key (its content): the same summaries, measured once per seed."""
    import hashlib
    import json

    if not base_key:
        return margins(model, tokenizer, sets, batch_size)
    out = {}
    for d, rows in sets.items():
        digest = hashlib.sha256(json.dumps(list(rows), sort_keys=True, default=str).encode())
        key = (base_key, dtype, device, batch_size, d, digest.hexdigest())
        if key not in _BASE_MARGINS:
            _BASE_MARGINS[key] = margins(model, tokenizer, {d: rows}, batch_size)[d]
        out[d] = dict(_BASE_MARGINS[key])
    return out


def warn_collapsed(records: Sequence[Mapping[str, Any]], label: str, lr: float) -> None:
    """Say when a run ended collapsed: its last logged step has zero gradient and both DPO
    logits at exactly 0 (battery 12, F6: train.learning_rate=1e6 blew the weights up to 2.8e6
    and wrote the result as a specialist with no word). Said, not refused: the weights are what
    training made; their evaluation shows what they are worth."""
    last = next((r for r in reversed(records) if "grad_norm" in r), None)
    if last is None:
        return
    logits = [last.get(k) for k in ("logits/chosen", "logits/rejected") if k in last]
    if last.get("grad_norm") == 0.0 and logits and all(v == 0.0 for v in logits):
        from hhh_bench.core import console

        console.say(
            f"warning: train {label}: the run ended collapsed (gradient norm 0 and DPO logits "
            f"0 at step {last.get('step')}): it most likely diverged; check "
            f"train.learning_rate={lr:g}",
            level=console.QUIET,
        )


def train_model(
    t: Any,
    base: Mapping[str, Any],
    ts: Any,
    held: Mapping[str, Sequence[Any]],
    tmp: Path,
    label: str,
    *,
    dtype: str | None,
    tracker: Any = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Load θ0, train with ``t`` (a ``TrainConfig``) on the training set ``ts``, save into
    ``tmp`` (merged adapter weights too when asked), with the held-out log-prob margins on
    ``held`` before and after; returns the content of ``train_info.json``.

    ``tracker``: what the trainer's logging needs around the fit (``start()`` before it,
    ``finish()`` after: :class:`hhh_bench.tracking.wandb_log.TrainerRun` for W&B), given by
    the caller so that training imports nothing from the reporting layer; None: nothing."""
    import json
    import os
    import shutil
    import time

    from hhh_bench.models import load_causal_lm, load_tokenizer

    t0 = time.time()
    set_seed(t.seed)
    trust = trust_remote_code
    base_path = base["path"] if base.get("hub") else str(Path(base["path"]).resolve())
    device = t.device
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"  # one GPU per rank
    tokenizer = load_tokenizer(base_path, trust_remote_code=trust)
    model = load_causal_lm(base_path, dtype=dtype, device=device, trust_remote_code=trust)
    before = base_margins(model, tokenizer, held, t.margin_batch_size, base.get("content"),
                          dtype=dtype, device=device)  # fmt: skip
    if tracker is not None:
        tracker.start()
    model, curve, weights = fit(model, tokenizer, ts.rows, tmp, t, logger=t.report_to,
                                run_name=label, phases=ts.phases, mix_info=ts.mix_info)  # fmt: skip
    if tracker is not None:
        tracker.finish()
    after = margins(model, tokenizer, held, t.margin_batch_size)
    if t.method == "lora" and t.merge_adapter:
        from hhh_bench.train.lora import merge_adapter_into

        merge_adapter_into(base_path, tmp / "adapter", tmp, dtype=dtype, device=device,
                           trust_remote_code=trust)  # fmt: skip
        weights = "adapter+merged"
    noise = ts.noise
    if noise and noise["flipped_ids"]:
        (tmp / "noise_flipped_ids.json").write_text(json.dumps(noise["flipped_ids"]) + "\n")
    curve.write(tmp / "loss_curve.jsonl")
    shutil.rmtree(tmp / "trainer", ignore_errors=True)
    losses = curve.losses()
    warn_collapsed(curve.records, label, t.learning_rate)
    return {
        "train_kind": t.kind,
        "method": t.method,
        "weights": weights,
        "counts": ts.counts,
        "n_pairs": len(ts.rows),
        "pairs_dropped_by_max_length": curve.dropped_pairs,
        "budget": ts.mix_info.get("budget", len(ts.rows)) if ts.mix_info else len(ts.rows),
        "budget_mode": ts.mix_info.get("budget_mode") if ts.mix_info else "specialist",
        "mix_info": ts.mix_info,
        "phases": ts.phases,
        "phase_steps": curve.phase_steps,  # train.max_steps shared per curriculum phase
        "steps_trained": curve.last_step,
        "noise": {k: v for k, v in noise.items() if k != "flipped_ids"} if noise else None,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "steps": max((r["step"] for r in curve.records), default=0),
        "margins": {
            d: {
                "base": before[d],
                "trained": after[d],
                "delta": None  # no held-out pair of this dimension
                if after[d]["mean"] is None or before[d]["mean"] is None
                else after[d]["mean"] - before[d]["mean"],
            }
            for d in held
        },
        "base_path": base_path,
        "seconds": round(time.time() - t0, 1),
        "trainer_timings": curve.timings,
    }
