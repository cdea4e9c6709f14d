"""Cluster sweeps: our Hydra launcher configs (conf/hydra/launcher/) compose on top of the plugins'
own, and concurrent jobs on other machines never sweep each other's temporary stage folders."""

from __future__ import annotations

import importlib.util
import os
import time

import pytest

from conftest import SMALL_WORLD, _copy_stage, compose, run_cli

SUBMITIT = importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None


@pytest.mark.skipif(
    not SUBMITIT, reason="hydra-submitit-launcher not installed: pip install -e '.[cluster]'"
)
def test_slurm_launcher_composes_with_our_defaults():
    cfg = compose(
        ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "experiment=toy3h"],
        return_hydra_config=True,
    )
    launcher = cfg.hydra.launcher
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "slurm"
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")  # the plugin's own
    assert launcher.partition == "gpu"
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (1, 1, 1)
    assert launcher.timeout_min == 720 and launcher.max_num_timeout == 3
    # inherited from the plugin: sbatch logs under the experiment's sweep folder
    assert launcher.submitit_folder.startswith(f"{cfg.root}/multirun/")
    assert launcher.submitit_folder.endswith("/.submitit/%j")
    default = compose(["hydra/launcher=slurm"], return_hydra_config=True)
    assert default.hydra.launcher.partition is None  # the cluster's default partition


def test_stage_data_builds_the_data_of_every_seed(tmp_path):
    """A cluster's CPU job runs `stage=data` once for an experiment of several seeds (issue 32:
    the paper experiments train three): each seed's own world is written, every seed's data is
    then a cache hit for stage=all's seed jobs."""
    out = run_cli("stage=data", *SMALL_WORLD, "seeds=[0,1]", f"root={tmp_path}", "logger=none",
                  cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    manifests = sorted(tmp_path.glob("data/*/manifest.json"))
    assert len(manifests) == 2, manifests  # the toy world follows the seed: two worlds
    assert "data seed 1" in out.stdout


def test_another_machines_temporary_folder_is_not_swept(tmp_path):
    """A SLURM job on another node writes <root>/<stage>/.<key>.tmp-<pid>-<ns>@<host> on the
    shared filesystem: its pid means nothing here, so the folder stays until it is a week old."""
    from hhh_bench.core.provenance import (
        FOREIGN_STALE_S,
        _host,
        atomic_dir,
        sweep_stale_temporaries,
    )

    dead_pid = 2**22 + 12345  # above Linux's default pid_max: no such process here
    theirs = tmp_path / f".k1.tmp-{dead_pid}-1@other-node-07"
    theirs.mkdir()
    ours_dead = tmp_path / f".k2.tmp-{dead_pid}-2@{_host()}"
    ours_dead.mkdir()
    old_style = tmp_path / f".k3.tmp-{dead_pid}-3"  # written before host names: ours
    old_style.mkdir()
    assert sorted(p.name for p in sweep_stale_temporaries(tmp_path)) == sorted(
        [ours_dead.name, old_style.name]
    )
    assert theirs.is_dir()
    with atomic_dir(tmp_path / "k4") as tmp:  # our own temporaries carry our host name
        assert tmp.name.endswith(f"@{_host()}") and f"tmp-{os.getpid()}-" in tmp.name
    assert theirs.is_dir()
    week_ago = time.time() - FOREIGN_STALE_S - 60
    os.utime(theirs, (week_ago, week_ago))
    assert sweep_stale_temporaries(tmp_path) == [theirs]


@pytest.mark.e2e
@pytest.mark.skipif(
    not SUBMITIT, reason="hydra-submitit-launcher not installed: pip install -e '.[cluster]'"
)
def test_a_two_job_sweep_runs_through_submits_local_executor_and_lands_each_row_once(
    shared_world, tmp_path
):
    """`hydra/launcher=local` (submitit's local executor: each job its own process, as on
    SLURM) runs a real sweep: the task function and its config travel to the job processes
    (pickled), each job evaluates θ0 with its own limit, and the store holds one row per job."""
    import json

    root = tmp_path / "root"
    for stage in ("data", "base"):
        (root / stage).mkdir(parents=True)
        _copy_stage(shared_world, root, stage)
    args = ["-m", "hydra/launcher=local", f"root={root}", "logger=none", "threads=1",
            *SMALL_WORLD, "stage=eval", "eval.limit=1,2"]  # fmt: skip
    done = run_cli(*args, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (root / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2, rows
    assert sorted(r["setup"]["limit"] for r in rows) == [1, 2]
    jobs = list((root / "multirun").glob("*/.submitit/*"))
    assert len({p.name for p in jobs}) >= 2  # two submitit jobs, each with its own folder


def _submit(tmp_path, *args: str, **env: str):
    """cluster/submit_paper.sh with a stand-in sbatch that records each call and prints a job
    id; returns the process and the recorded calls (one argument list each)."""
    import json
    import subprocess

    from conftest import REPO

    log = tmp_path / "calls.jsonl"
    fake = tmp_path / "sbatch"
    fake.write_text(
        "#!/usr/bin/env python3\nimport json, sys\n"
        f"with open({str(log)!r}, 'a') as log:\n    log.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"print(1000 + sum(1 for _ in open({str(log)!r})))\n"
    )
    fake.chmod(0o755)
    out = subprocess.run(
        ["bash", str(REPO / "cluster" / "submit_paper.sh"), *args], capture_output=True,
        text=True, env={**os.environ, "SBATCH": str(fake), **env}, timeout=60,
    )  # fmt: skip
    calls = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
    return out, calls


def test_the_paper_sbatch_template_asks_each_stage_for_what_it_needs(tmp_path):
    """Three dependent jobs: data and report on CPUs, the grid on 8 GPUs; each job's
    hhh-bench command composes and passes the run's checks, the CPU jobs on a machine without
    a GPU (data and report load no model: no device check)."""
    import shlex

    from hhh_bench.pipeline import prepare
    from hhh_bench.validation import preflight

    out, calls = _submit(tmp_path, "paper_llama3", ACCOUNT="proj")
    assert out.returncode == 0, out.stderr
    assert "data 1001 -> grid 1002 -> report 1003" in out.stdout
    flags = {"--parsable", "--requeue"}
    opts = []
    for call in calls:
        o, i = {}, 0
        while i < len(call):
            if call[i] in flags:
                o[call[i]], i = True, i + 1
            else:
                o[call[i]], i = call[i + 1], i + 2
        opts.append(o)
    assert [bool(o.get("--requeue")) for o in opts] == [True, True, False]
    assert [o.get("--dependency") for o in opts] == [None, "afterok:1001", "afterok:1002"]
    assert [o.get("--gpus-per-node") for o in opts] == [None, "8", None]
    assert all(o["--account"] == "proj" and o["--time"] for o in opts)
    for o, stage in zip(opts, ("data", "all", "report"), strict=True):
        words = shlex.split(o["--wrap"].rsplit(";", 1)[1])
        assert words[0] == "hhh-bench" and words[-1] == f"stage={stage}"
        cfg, groups = prepare(compose(words[1:]))
        assert cfg.train.num_processes == 8 and cfg.model.device == "cuda"
        if stage != "all":
            preflight(groups, loads_models=False)
        else:
            with pytest.raises(ValueError, match="no usable CUDA device|not in the HF cache"):
                preflight(groups)  # this machine: the grid job asks a GPU node for it
    (tmp_path / "bad").mkdir()
    bad, calls = _submit(tmp_path / "bad", "toy3h")
    assert bad.returncode == 2 and "not a paper experiment" in bad.stderr and not calls
