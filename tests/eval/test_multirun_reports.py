"""Multirun jobs never overwrite one another's report (issue 18): in `hhh-bench -m ...` every job
writes `<root>/reports/<job>/`, `<job>` named after its overrides, and its console summary counts
its own stage runs. On the report fixture store (tests/assets/eval/results_fixture.jsonl): no
training, the data stage is the toy world's (about a second)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from hhh_bench.tracking.markdown import md_text

FIXTURE = Path(__file__).resolve().parents[1] / "assets" / "eval" / "results_fixture.jsonl"


def test_multirun_jobs_write_their_own_reports(tmp_path):
    """A two-job sweep of the report stage over report.interval: two folders under
    <root>/reports/, each report titled with its job and using its own interval, nothing in
    <root>/report/; neither job runs a stage (the report reads the store only: battery 17, U3,
    where a refused report had built a world first), and each says so. (It swept
    eval.select_by before battery 8; a report now refuses a select_by other than the one the
    rows were chosen by.)"""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(FIXTURE, root / "results.jsonl")
    # the fixture's rows are hand-made (one task each): eval.name keeps the report from
    # comparing them with the toy suite's full scoring (stages/report.check_scored_as_configured)
    args = [sys.executable, "-m", "hhh_bench", "-m", "stage=report", "report.interval=t,bca",
            "name=fixture", "eval.name=fixture", f"root={root}", f"hydra.sweep.dir={tmp_path / 'multirun'}", "logger=none",
            "threads=1"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    jobs = {
        kind: f"eval.name=fixture,logger=none,name=fixture,report.interval={kind},stage=report,"
        "threads=1"
        for kind in ("t", "bca")
    }
    assert sorted(p.name for p in (root / "reports").iterdir()) == sorted(jobs.values())
    for kind, job in jobs.items():
        md = (root / "reports" / job / "report.md").read_text()
        title = md_text(f"fixture [{job}]")  # names are escaped in report.md (issue 27)
        assert md.startswith(f"# hhh-bench report: {title}\n"), md[:200]
        assert ("BCa bootstrap interval" in md) == (kind == "bca"), kind
        assert (root / "reports" / job / "pareto.png").is_file()
    assert not (root / "report").exists()
    summaries = re.findall(r"^hhh-bench: (\d+) stage run\(s\) computed, (\d+) reused", done.stdout,
                           re.M)  # fmt: skip
    assert summaries == [("0", "0"), ("0", "0")], done.stdout[-3000:]
    assert not (root / "data").exists()


def test_report_stage_keys_its_folder_and_wandb_run_by_job(tmp_path):
    """Called with two job names (what `hhh-bench` passes in a multirun) the stage writes two
    folders, caches each on its own, and W&B ids differ per job; without a job: <root>/report/
    and the id it always had."""
    from hhh_bench.cli import job_name, multirun_job
    from hhh_bench.stages.report import run_report
    from hhh_bench.tracking.wandb_log import report_run_id

    shutil.copy(FIXTURE, tmp_path / "results.jsonl")
    cfg = OmegaConf.create({
        "name": "fixture", "root": str(tmp_path), "logger": {"name": "none"},
        "eval": {"report_split": "test", "select_split": "validation", "select_by": "average"},
    })  # fmt: skip
    a, b = run_report(cfg, job="merge=ties"), run_report(cfg, job="merge=tsv")
    assert Path(a["report_md"]).parent == tmp_path / "reports" / "merge=ties"
    assert Path(b["report_md"]).parent == tmp_path / "reports" / "merge=tsv"
    assert a["title"] == "fixture [merge=ties]"
    assert run_report(cfg, job="merge=ties") == a  # its own cache (report_key.json)
    single = run_report(cfg)
    assert Path(single["report_md"]).parent == tmp_path / "report"
    assert Path(a["report_md"]).is_file()  # the single run's folder swap left the jobs' alone
    ids = {report_run_id(tmp_path, "fixture", j) for j in (None, "merge=ties", "merge=tsv")}
    assert len(ids) == 3
    assert report_run_id(tmp_path, "fixture") == report_run_id(tmp_path, "fixture", None)
    # folder names: Hydra's override_dirname, made safe; long ones cut and hashed
    assert (
        job_name("merge=ties,merge.params.scaling=0.5", 3) == "merge=ties,merge.params.scaling=0.5"
    )
    assert job_name("plugins=[my.mod],x='a b'", 0) == "plugins=_my.mod_,x=_a_b_"
    assert job_name("", 4) == "job4"
    long = ",".join(f"data.world.n_known.k{i}=40" for i in range(10))
    assert len(job_name(long, 0)) == 93 and job_name(long, 0) != job_name(long + "1", 0)
    assert multirun_job() is None  # outside a Hydra multirun
