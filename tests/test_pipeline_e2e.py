"""The whole pipeline on the small toy world: every stage, the report, caching, and resuming
after a SIGKILL with the same numbers as an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SMALL_WORLD, compose

# A reduced grid so the end-to-end run stays within a couple of minutes on 2 cores.
SMALL_PIPELINE = [
    "experiment=toy3h",
    "seeds=[0]",  # the demo's three seeds: `make demo`
    "logger=none",
    "threads=1",  # see conftest: robust on a shared 2-core CPU
    *SMALL_WORLD,
    "pipeline.oracle.train.epochs=1",  # its path, not its 5 epochs (the demo trains those)
    "pipeline.mixtures=[uniform,sequential,reward_select]",
    "pipeline.tuning.emphasis=[[1,1,2]]",  # one emphasis: reward_select trained twice
    "~pipeline.merge_grid",  # `merge_grid={}` would merge into the default grid, not clear it
    "+pipeline.merge_grid.task_arithmetic.scaling=[0.5,1.0]",
    "+pipeline.merge_grid.ties.density=[0.5]",
    # DARE once (dare_ties; dare_ta is the same drop with task arithmetic, merged in
    # tests/merging): the suite's 5-minute budget
    "+pipeline.merge_grid.dare_ties.drop_rate=[0.3]",
    "+pipeline.merge_grid.tsv.scaling=[1.0]",
    "+pipeline.merge_grid.resm.scaling=[1.0]",
]


# The killed run: the same settings with fewer jobs (no oracle, one mixture, two merge methods),
# so that every row it writes is one of the uninterrupted run's, to compare number for number.
KILLED_PIPELINE = [
    *(o for o in SMALL_PIPELINE
      if not o.startswith(("pipeline.mixtures", "+pipeline.merge_grid.ties",
                           "+pipeline.merge_grid.dare", "+pipeline.merge_grid.resm"))),
    "pipeline.mixtures=[uniform]",
    "pipeline.oracle.enabled=false",
]  # fmt: skip


def _rows(root: Path) -> dict[tuple[str, str], dict]:
    rows = {}
    for line in (root / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows[(r["name"], r["split"])] = r
    return rows


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, session_root, small_base, small_specialists):
    """Shares θ0 and the specialists with the session (copied into a root of its own: one
    results store holds one experiment, and the session's store holds the other tests' rows),
    then trains the oracle and the mixtures, merges, evaluates, reports. ``(cfg, out, root)``."""
    import shutil

    from hhh_bench.pipeline import run

    root = tmp_path_factory.mktemp("pipeline")
    for stage in ("data", "base", "train"):  # their keys hold content: reused, not retrained
        shutil.copytree(session_root / stage, root / stage,
                        ignore=shutil.ignore_patterns(".*"))  # fmt: skip
    cfg = compose([f"root={root}", *SMALL_PIPELINE])
    return cfg, run(cfg), root


@pytest.mark.e2e
def test_pipeline_end_to_end_and_cached(pipeline_run):
    from hhh_bench.pipeline import run
    from hhh_bench.stages.common import CACHE

    cfg, out, root = pipeline_run
    rows = _rows(root)
    names = {name for name, split in rows if split == "test"}
    for expected in ("base", "oracle", "helpful specialist", "honest specialist",
                     "harmless specialist", "mix: uniform", "mix: sequential",
                     "task_arithmetic", "ties", "dare_ties", "tsv", "resm"):  # fmt: skip
        assert expected in names, (expected, names)
    for (name, split), r in rows.items():
        for dim in ("helpful", "honest", "harmless", "average"):
            assert 0.0 <= r[dim] <= 1.0, (name, split, dim)
    # merges were chosen on validation, reported on test; tuning parity: each merge tried its
    # chosen point with the emphasis too, the tuned mixture its shares (issue 14)
    assert ("task_arithmetic", "validation") in rows
    assert rows[("task_arithmetic", "test")]["extra"]["n_configs"] == 2 + 1
    assert rows[("tsv", "test")]["extra"]["n_configs"] == 1 + 1
    tuned = rows[("mix: reward_select", "test")]["extra"]
    assert tuned["n_configs"] == 2 and tuned["selected_on"] == "validation"
    for mix in ("mix: uniform", "mix: sequential"):  # not tuned: trained once, and (issue 28)
        assert (mix, "validation") in rows  # scored on validation like every other candidate
        assert rows[(mix, "test")]["extra"]["n_configs"] == 1
        assert rows[(mix, "test")]["extra"]["selected_on"] == "validation"
    # so the answer chooses both representatives on validation, neither on the reported split
    answer = out["report"]["answer"]
    for group in ("mixture_choice", "merge_choice"):
        assert answer[group]["on"] == "validation" and not answer[group]["fallback"], answer
    assert answer["mixture_choice"]["candidates"] == 3 and not answer["mixture_choice"]["missing"]
    assert "reported split" not in out["report"]["answer_line"]
    report = Path(out["report"]["report_md"])
    assert report.is_file() and "| Method |" in report.read_text()
    for png in ("radar", "pareto", "conflict"):
        assert Path(out["report"][png]).stat().st_size > 0
    # a second run computes nothing, and says so per run (not summed over runs)
    run(cfg)
    assert CACHE.misses == {} and sum(CACHE.hits.values()) > 0


@pytest.mark.e2e
def test_a_plan_of_the_finished_run_finds_every_job_cached(pipeline_run):
    """`hhh-bench plan` computes every stage's real key (the dry run): each job of the run that
    finished is cached, the report aside, and its job list has the run's shape."""
    from hhh_bench.pipeline import prepare
    from hhh_bench.planning import plan

    cfg, _, _ = pipeline_run
    jobs, _ = plan(prepare(cfg)[0])
    assert [(j.stage, j.name) for j in jobs if j.status != "cached"] == [("report", "report")]
    merges = [j.name for j in jobs if j.stage == "merge"]
    assert merges.count("task_arithmetic scaling=0.5") == 1 and len(merges) == 2 + 1 + 2 + 2 + 2 + 2
    assert (
        sum(1 for j in jobs if j.stage == "train") == 3 + 1 + 2 + 1 + 1
    )  # oracle; 3 mixtures, one tuned


@pytest.mark.e2e
def test_killed_run_resumes_to_the_same_numbers(tmp_path, session_root, pipeline_run):
    """SIGKILL a pipeline run mid-way, run it again, compare with the uninterrupted run above
    (its settings with fewer jobs, other root; θ0 is copied so the test does not retrain it)."""
    import shutil

    root = tmp_path / "resumed"
    shutil.copytree(session_root / "data", root / "data")
    shutil.copytree(session_root / "base", root / "base")
    args = [sys.executable, "-m", "hhh_bench", f"root={root}", *KILLED_PIPELINE]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    # wait until some (not all) training is done, then kill without warning
    while time.time() < deadline and len(list((root / "train").glob("[!.]*"))) < 2:
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # the console a person reads: one numbered line per job, in order, the last one k = N, no
    # trainer dicts (they go to the log files), no traceback, no warnings from the libraries
    console = done.stdout + done.stderr
    assert "Traceback" not in console and "{'loss'" not in console and "Warning:" not in console
    lines = re.findall(r"^\[\s*(\d+)/(\d+)\] (\w+)", done.stdout, re.M)
    assert [int(k) for k, _, _ in lines] == list(range(1, len(lines) + 1)), done.stdout
    assert {int(n) for _, n, _ in lines} == {len(lines)}
    assert {stage for _, _, stage in lines} >= {"data", "base", "train", "merge", "report"}
    assert not list(root.glob("*/.*tmp*")), "a temporary folder survived"
    # the console ends with the answer (issue 14): mix or merge, with its interval or why not
    assert done.stdout.strip().splitlines()[-1].startswith("Mix or merge? ")
    resumed = _rows(root)
    reference = _rows(pipeline_run[2])
    test_rows = [k for k in resumed if k[1] == "test"]
    assert {name for name, _ in test_rows} == {
        "base", "helpful specialist", "honest specialist", "harmless specialist",
        "mix: uniform", "task_arithmetic", "tsv"}  # fmt: skip
    for k in test_rows:
        for dim in ("helpful", "honest", "harmless", "average"):
            assert resumed[k][dim] == pytest.approx(reference[k][dim], abs=1e-9), (k, dim)


@pytest.fixture(scope="session")
def specialists(session_root, small_base, small_specialists):
    """The three specialists of the pipeline run alone (stage=train per dimension: the same
    keys; reused when this worker ran the pipeline first), for tests that need only them."""
    from hhh_bench.pipeline import run

    for dim in ("helpful", "honest", "harmless"):
        run(compose([f"root={session_root}", *SMALL_PIPELINE, "stage=train",
                     f"data.dimensions=[{dim}]"]))  # fmt: skip
    return session_root


@pytest.mark.e2e
def test_readme_sweep_adds_one_row_per_configuration(tmp_path, session_root, specialists):
    """The README's sweep, verbatim but for the small world: a Hydra multirun of
    `stage=merge_eval` over 3 methods x 2 scalings merges each configuration from the trained
    specialists (nothing retrained) and adds exactly one validation row per configuration; a
    second run adds none."""
    import shutil

    root = tmp_path / "sweep"
    for stage in ("data", "base", "train"):  # the specialists of the pipeline run, reused
        shutil.copytree(session_root / stage, root / stage)
    args = [str(Path(sys.executable).parent / "hhh-bench"), "-m", "stage=merge_eval",
            "merge=ties,tsv,resm", "merge.params.scaling=0.5,1.0", f"root={root}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}", "logger=none", "threads=1",
            *SMALL_WORLD]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    trained = sorted(p.name for p in (root / "train").iterdir())
    for attempt in range(2):
        done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        rows = [json.loads(x) for x in (root / "results.jsonl").read_text().splitlines()]
        configs = [(r["method"], r["params"]["scaling"]) for r in rows]
        assert sorted(configs) == sorted(
            (m, s) for m in ("ties", "tsv", "resm") for s in (0.5, 1.0)
        ), (attempt, configs)
        assert {r["split"] for r in rows} == {"validation"}
    assert sorted(p.name for p in (root / "train").iterdir()) == trained  # nothing trained
    # the README's report of it (issue 31): one score-vs-knob figure per swept method
    from hhh_bench.pipeline import run

    out = run(compose([f"root={root}", "logger=none", "threads=1", *SMALL_WORLD,
                       "stage=report", "eval.report_split=validation"]))["report"]  # fmt: skip
    figures = out["sweep_figures"]
    assert sorted(figures) == ["resm", "ties", "tsv"], figures
    md = (Path(out["dir"]) / "report.md").read_text()
    for method, path in figures.items():
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{method} sweep]({Path(path).name})" in md
