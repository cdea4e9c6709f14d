"""One training run from a :class:`~hhh_bench.config.TrainConfig`: the trainer dispatch (TRL DPO,
full or LoRA; TRL SFT on the chosen responses) and the held-out log-prob margins."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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
