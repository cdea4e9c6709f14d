"""Training launched by the train stage (issue 34): the command it runs, the config it checks,
and the refusal of a whole pipeline wrapped in a distributed launch. The launch itself runs in
tests/test_rehearsal_pipeline.py (two processes, gloo)."""

from __future__ import annotations

import pytest

from conftest import REPO, compose


def test_the_launch_command_carries_the_processes_config_and_device(tmp_path):
    from hhh_bench.core.config import TrainConfig
    from hhh_bench.stages.train_launch import launch_command

    ddp = REPO / "accelerate" / "ddp.yaml"
    cmd = launch_command(
        TrainConfig(num_processes=4, accelerate_config=str(ddp), bf16=True, device="cuda"),
        tmp_path / "spec.json",
    )
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--config_file") + 1] == str(ddp)
    assert cmd[cmd.index("--num_processes") + 1] == "4"
    port = int(cmd[cmd.index("--main_process_port") + 1])  # a free one, not accelerate's 29500
    assert 0 < port < 65536
    assert cmd[cmd.index("--mixed_precision") + 1] == "bf16" and "--multi_gpu" not in cmd
    assert cmd[-2:] == ["hhh_bench.stages.train_launch", str(tmp_path / "spec.json")]
    cpu = launch_command(TrainConfig(num_processes=2), tmp_path / "s.json")
    assert "--multi_gpu" in cpu and "--config_file" not in cpu and "--cpu" not in cpu
    assert cpu[cpu.index("--mixed_precision") + 1] == "no"


def test_processes_and_their_config_file_are_checked_at_composition(tmp_path):
    from hhh_bench.core.config import TrainConfig

    for n in (0, -2):
        with pytest.raises(ValueError, match=r"train.num_processes must be > 0"):
            TrainConfig(num_processes=n)
    TrainConfig(accelerate_config="accelerate/ddp.yaml")  # the checkout's, from any folder
    with pytest.raises(ValueError, match=r"train.accelerate_config='.*nope.yaml' is not a file"):
        TrainConfig(accelerate_config=str(tmp_path / "nope.yaml"))


def test_processes_are_in_a_training_runs_key_and_the_config_file_is_not():
    from hhh_bench.stages.train import _NOT_IN_KEY

    assert "accelerate_config" in _NOT_IN_KEY and "num_processes" not in _NOT_IN_KEY


def test_a_pipeline_under_a_distributed_launch_is_refused_before_any_stage(tmp_path, monkeypatch):
    from hhh_bench.pipeline import run

    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(ValueError, match=r"stage=all under a distributed launch \(8 processes.*"
                       r"train.num_processes=8 train.accelerate_config="):  # fmt: skip
        run(compose([f"root={tmp_path}", "stage=all"]))
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_paper_experiments_launch_training_in_8_processes_and_the_rehearsal_in_one():
    for exp in ("paper_llama3", "paper_mistral"):
        t = compose([f"experiment={exp}"]).train
        assert (t.num_processes, t.accelerate_config) == (8, "accelerate/fsdp.yaml")
        r = compose([f"experiment={exp}", "+rehearsal=small"]).train
        assert (r.num_processes, r.accelerate_config) == (1, None)


def _job():
    from hhh_bench.stages.train_launch import TrainJob

    return TrainJob(["helpful"], None, None, 0, "helpful-specialist", {"path": "b"}, {"dir": "d"})


def test_a_launch_returns_rank_0s_result_and_a_failed_one_names_its_log(tmp_path, monkeypatch):
    import json
    import subprocess
    from pathlib import Path

    from hhh_bench.core.config import TrainConfig
    from hhh_bench.stages import train_launch

    cfg = compose([f"root={tmp_path}"])
    t = TrainConfig(num_processes=2)

    def ok(cmd, stdout, **kw):
        spec = json.loads(Path(cmd[-1]).read_text())
        assert spec["job"]["label"] == "helpful-specialist" and spec["cfg"]["root"] == str(tmp_path)
        stdout.write("hhh-bench: rank 0 of 2\n")
        Path(spec["info"]).write_text(json.dumps({"steps": 2}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(train_launch.subprocess, "run", ok)
    assert train_launch.launch_training(cfg, t, _job(), tmp_path / "tmp") == {"steps": 2}

    def fails(cmd, stdout, **kw):
        stdout.write("Traceback ...\nRuntimeError: out of memory\n")
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(train_launch.subprocess, "run", fails)
    with pytest.raises(RuntimeError, match=r"(?s)training 'helpful-specialist' in 2 processes .* exit "
                       r"status 1; nothing was written. Its log: .*launch.log\n.*out of memory"):  # fmt: skip
        train_launch.launch_training(cfg, t, _job(), tmp_path / "tmp")


def test_a_launched_process_trains_the_spec_and_rank_0_writes_the_result(tmp_path, monkeypatch):
    import dataclasses
    import json

    from omegaconf import OmegaConf

    from hhh_bench.stages import train_launch

    seen = []

    def fake_train(cfg, t, job, tmp):
        seen.append((job.label, str(tmp)))
        return {"steps": 3}

    monkeypatch.setattr(train_launch, "train_into", fake_train)
    spec = tmp_path / "spec.json"
    cfg = OmegaConf.to_container(compose([f"root={tmp_path}"]), resolve=True)
    spec.write_text(json.dumps({"cfg": cfg, "job": dataclasses.asdict(_job()),
                                "tmp": str(tmp_path / "out"), "info": str(tmp_path / "info.json")}))  # fmt: skip
    monkeypatch.setenv("RANK", "1")  # another rank: its own throwaway folder, no result
    train_launch.main(str(spec))
    assert seen[-1][1] != str(tmp_path / "out") and not (tmp_path / "info.json").exists()
    monkeypatch.setenv("RANK", "0")
    train_launch.main(str(spec))
    assert seen[-1] == ("helpful-specialist", str(tmp_path / "out"))
    assert json.loads((tmp_path / "info.json").read_text()) == {"steps": 3}
