"""One training run of the train stage, in this process (:func:`train_into`) or in several,
launched by the stage itself (:func:`launch_training`): ``train.num_processes`` > 1 runs one training run under ``accelerate launch`` (DDP, FSDP or ZeRO-3 by
``train.accelerate_config``) while everything else of the pipeline (data, merges, evaluations,
the report) stays in the one process that called it.

The run's processes get the composed config and the :class:`TrainJob`
in a JSON file and run :func:`train_into`: rank 0 into the stage's
temporary folder (the cache renames it into place once the launch ends well), the other ranks
into throwaway folders of their own; rank 0 returns ``train_info.json``'s content through a
file. Their output goes to a log file, whose last lines a failed launch shows.

    python -m hhh_bench.stages.train_launch SPEC.json      # what each launched process runs
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hhh_bench.core.config import DIMENSIONS, ModelConfig, TrainConfig
from hhh_bench.core.paths import accelerate_config_file
from hhh_bench.stages.common import group, log, to_dict


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """What one training run trains on, beside the config: its dimensions, mix, noise, seed and
    label, and the base and data stages' results. A launched run's processes get it as JSON."""

    dims: list[str]
    mix_cfg: dict[str, Any] | None
    noise: dict[str, Any] | None
    seed: int
    label: str
    base: dict[str, Any]
    data: dict[str, Any]


def train_into(cfg: DictConfig, t: TrainConfig, job: TrainJob, tmp: Path) -> dict[str, Any]:
    """Train ``job`` with ``t`` into ``tmp`` in this process (one of a launch's processes when
    ``accelerate launch`` started it); ``train_info.json``'s content."""
    from hhh_bench.data.prepare import read_pref_sets, training_set

    # every file is read and validated before a model is loaded: a bad row fails here
    sets = read_pref_sets(job.data["dir"], job.dims, "train")
    held = read_pref_sets(job.data["dir"], list(DIMENSIONS), "validation", required=False)
    if t.margin_max_pairs:
        held = {d: rows[: t.margin_max_pairs] for d, rows in held.items()}
    ts = training_set(sets, job.noise, job.mix_cfg, job.seed)
    log.info("train: %s on %s", job.label, ts.counts)
    from hhh_bench.tracking.wandb_log import TrainerRun
    from hhh_bench.train.run import train_model

    mcfg = group(cfg, "model", ModelConfig)
    tracker = TrainerRun(cfg.root, to_dict(cfg.get("logger")), str(cfg.name))
    return train_model(
        t, job.base, ts, held, tmp, job.label, dtype=mcfg.dtype,
        tracker=tracker if t.report_to == "wandb" else None,
        trust_remote_code=bool(cfg.get("trust_remote_code", False)),
    )  # fmt: skip


def free_port() -> int:
    """A TCP port free on the loopback interface now, for the launched processes' rendezvous
    (accelerate's default, 29500, is taken by any other launch running on the machine)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(t: TrainConfig, spec: Path) -> list[str]:
    """``accelerate launch`` of :mod:`hhh_bench.stages.train_launch` with ``t``'s processes and
    config file (none: data parallel, ``--multi_gpu``), bf16 mixed precision when ``t.bf16``.
    On a machine without GPUs the processes talk through gloo (``--cpu`` would make accelerate
    start a single process)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if t.accelerate_config:
        cmd += ["--config_file", str(accelerate_config_file(t.accelerate_config))]
    else:
        cmd += ["--multi_gpu"]
    cmd += ["--num_processes", str(t.num_processes), "--num_machines", "1"]
    cmd += ["--main_process_port", str(free_port())]  # two launches at once must not collide
    cmd += ["--mixed_precision", "bf16" if t.bf16 else "no"]
    return [*cmd, "-m", "hhh_bench.stages.train_launch", str(spec)]


def launch_training(cfg: DictConfig, t: TrainConfig, job: Any, tmp: Path) -> dict[str, Any]:
    """Run ``job`` in ``t.num_processes`` processes into ``tmp``; ``train_info.json``'s content.
    A launch that fails raises ``RuntimeError`` naming the run, the exit status and the log."""
    work = Path(tempfile.mkdtemp(prefix="hhh-bench-launch-"))
    spec = work / "spec.json"
    info = work / "train_info.json"
    spec.write_text(json.dumps({
        "cfg": OmegaConf.to_container(cfg, resolve=True), "job": dataclasses.asdict(job),
        "tmp": str(tmp), "info": str(info),
    }))  # fmt: skip
    logfile = work / "launch.log"
    cmd = launch_command(t, spec)
    log.info("train: %s in %d processes: %s", job.label, t.num_processes, " ".join(cmd))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    with logfile.open("w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    text = logfile.read_text(errors="replace")
    log.info("train: %s, the launched processes' output:\n%s", job.label, text)
    if done.returncode != 0 or not info.is_file():
        tail = "\n".join(text.splitlines()[-25:])
        raise RuntimeError(
            f"training {job.label!r} in {t.num_processes} processes (accelerate launch) failed "
            f"with exit status {done.returncode}; nothing was written. Its log: {logfile}\n{tail}"
        )
    result = json.loads(info.read_text())
    shutil.rmtree(work, ignore_errors=True)
    return result


def main(spec_path: str) -> None:
    """One launched process: train the spec's job; rank 0 into the stage's folder."""
    import importlib

    import torch

    spec = json.loads(Path(spec_path).read_text())
    cfg = OmegaConf.create(spec["cfg"])
    for name in cfg.get("plugins") or []:  # a plugin's mixing strategy or scorer
        importlib.import_module(str(name))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    t = group(cfg, "train", TrainConfig)
    job = TrainJob(**spec["job"])
    rank = int(os.environ.get("RANK", "0"))
    print(f"hhh-bench: rank {rank} of {os.environ.get('WORLD_SIZE', '1')}: {job.label}", flush=True)
    tmp = (
        Path(spec["tmp"]) if rank == 0 else Path(tempfile.mkdtemp(prefix=f"hhh-bench-rank{rank}-"))
    )
    try:
        info = train_into(cfg, t, job, tmp)
    finally:
        if rank != 0:
            shutil.rmtree(tmp, ignore_errors=True)
    if rank == 0:
        Path(spec["info"]).write_text(json.dumps(info))


if __name__ == "__main__":
    main(sys.argv[1])
