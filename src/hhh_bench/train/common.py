"""Pieces shared by the SFT and DPO wrappers: CPU-safe trainer arguments, loss-curve capture."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


def report_to(logger: str | None) -> list[str] | str:
    """``wandb`` (offline unless the user logged in or set WANDB_MODE) or ``none``."""
    if logger == "wandb":
        os.environ.setdefault("WANDB_MODE", "offline")
        return ["wandb"]
    return "none"


class LossCurve(TrainerCallback):
    """Keeps every logged record (loss, rewards, lr) so it can be written next to the model."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102 - HF callback API
        if logs:
            self.records.append({"step": state.global_step, **logs})

    def write(self, path: str | Path) -> None:
        Path(path).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records))

    def losses(self) -> list[float]:
        return [r["loss"] for r in self.records if "loss" in r]


def cpu_defaults(device: str) -> dict[str, Any]:
    """Trainer arguments that keep a run deterministic and working on a CPU-only machine."""
    on_cpu = device == "cpu"
    return {
        "use_cpu": on_cpu,
        "dataloader_num_workers": 0,
        "gradient_checkpointing": False if on_cpu else None,
        "save_strategy": "no",
        "disable_tqdm": False,
    }


def quiet_console(trainer: Any) -> None:
    """A progress bar on the console and the logged records in files (``loss_curve.jsonl``) and
    W&B only: transformers' progress callback prints every log dict to the console; this one
    does not."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class _Bar(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102 - HF callback API
            return None

    trainer.remove_callback(PrinterCallback)
    if any(isinstance(c, ProgressCallback) for c in trainer.callback_handler.callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(_Bar(max_str_len=100))
