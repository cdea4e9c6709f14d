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


def _wall_clock(key: str) -> bool:
    """A logged value that measures the machine, not the training (``train_runtime``,
    ``train_samples_per_second``, ...)."""
    return key.endswith("_runtime") or key.endswith("_per_second")


class LossCurve(TrainerCallback):
    """Keeps every logged record (loss, rewards, lr) so it can be written next to the model.

    Wall-clock values (:func:`_wall_clock`) go to :attr:`timings` instead of the records:
    ``loss_curve.jsonl`` is one of the output's artifacts, so it is part of the output's content
    identity and of every later stage's key (docs/caching.md). A timing in it would make two runs
    of the same training, with bit-identical weights, two different identities, and the stages
    after a recompute would run again for nothing. The stages keep the timings in their result
    file, which is outside the identity.
    """

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.timings: dict[str, Any] = {}
        self.phase: str | None = None  # a curriculum trained phase by phase: the phase's name
        self.offset = 0  # the steps of the phases before this one
        self.last_step = 0
        self.dropped_pairs = 0  # pairs the trainer left out: prompt of max_length tokens or more
        self.phase_steps: list[int] | None = None  # a curriculum's max_steps, shared per phase

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102 - HF callback API
        if logs:
            self.timings.update({k: v for k, v in logs.items() if _wall_clock(k)})
            kept = {k: v for k, v in logs.items() if not _wall_clock(k)}
            if kept:
                phase = {"phase": self.phase} if self.phase is not None else {}
                self.records.append({"step": self.offset + state.global_step, **phase, **kept})

    def on_step_end(self, args, state, control, **kwargs):  # noqa: D102 - HF callback API
        self.last_step = self.offset + state.global_step

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
