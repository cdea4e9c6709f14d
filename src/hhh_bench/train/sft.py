"""Supervised fine-tuning with TRL's ``SFTTrainer`` (the base stage teaches θ0 the toy world)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hhh_bench.train.common import LossCurve, cpu_defaults, report_to


def to_prompt_completion(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``{"messages": [..., assistant]}`` → ``{"prompt": [...], "completion": [assistant]}``,
    so TRL computes the loss on the assistant's answer only."""
    out = []
    for i, r in enumerate(rows):
        msgs = r["messages"]
        if not msgs or msgs[-1]["role"] != "assistant":
            raise ValueError(f"SFT row {i}: the last message must be the assistant's answer")
        out.append({"prompt": list(msgs[:-1]), "completion": [msgs[-1]]})
    return out


def train_sft(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    epochs: float = 3.0,
    learning_rate: float = 1e-3,
    batch_size: int = 32,
    weight_decay: float = 0.0,
    warmup_ratio: float = 0.05,
    lr_scheduler_type: str = "cosine",
    max_length: int = 64,
    seed: int = 0,
    device: str = "cpu",
    logger: str | None = None,
    logging_steps: int = 10,
    bf16: bool = False,
    extra_args: Mapping[str, Any] | None = None,
) -> tuple[Any, LossCurve]:
    """SFT ``model`` on conversational ``rows``; return the trained model and its loss curve.

    Nothing is saved here; the caller saves the model (atomically) where it belongs.
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    ds = Dataset.from_list(to_prompt_completion(rows))
    args = SFTConfig(
        output_dir=str(out_dir),
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        weight_decay=weight_decay,
        warmup_steps=warmup_ratio,
        lr_scheduler_type=lr_scheduler_type,
        max_length=max_length,
        seed=seed,
        data_seed=seed,
        logging_steps=logging_steps,
        report_to=report_to(logger),
        bf16=bf16,
        **{**cpu_defaults(device), **dict(extra_args or {})},
    )
    curve = LossCurve()
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=ds, processing_class=tokenizer, callbacks=[curve]
    )
    trainer.train()
    return trainer.model, curve
