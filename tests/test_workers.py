"""``workers=N``: the seeds of ``stage=all`` computed in N processes at once, then reused by the
run itself (issue 29: the demo's seeds on both cores). The workers run a plugin's stand-in for a
seed's stages here (the real stages are the e2e tests'; the demo's numbers with and without
workers are compared in docs/toy_world.md)."""

from __future__ import annotations

import os
import textwrap

import pytest

from conftest import compose

STUB = """
import os
from pathlib import Path

import hhh_bench.pipeline as P


def run_seed(cfg, data):  # a seed's stages, stood in for: one file per seed, named by its process
    if int(cfg.seed) == 13:
        raise ValueError("seed 13's stand-in fails")
    out = Path(cfg.root) / "seeds"
    out.mkdir(exist_ok=True)
    (out / f"{int(cfg.seed)}-{os.getpid()}-{data['dir']}").write_text("")
    return {"seed": int(cfg.seed), "models": []}


P.run_seed = run_seed
"""


@pytest.fixture
def stub(tmp_path, monkeypatch):
    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "stub_seeds.py").write_text(textwrap.dedent(STUB))
    path = os.pathsep.join(p for p in (str(tmp_path / "plug"), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)  # the workers' (new processes) import path


def _seeds(tmp_path, *seeds):
    from hhh_bench.pipeline import with_values

    cfg = compose([f"root={tmp_path}", "logger=none", "plugins=[stub_seeds]", "threads=1"])
    return cfg, [(with_values(cfg, {"seed": s}), True) for s in seeds]


def test_each_seed_is_computed_once_by_one_of_the_workers(tmp_path, stub, capfd):
    from hhh_bench.pipeline import run_in_workers

    cfg, seeds = _seeds(tmp_path, 1, 2, 3)
    run_in_workers(cfg, seeds, {"dir": "d0"}, 2)
    done = sorted(p.name.split("-") for p in (tmp_path / "seeds").iterdir())
    assert [(s, d) for s, _, d in done] == [("1", "d0"), ("2", "d0"), ("3", "d0")]
    pids = {s: pid for s, pid, _ in done}
    assert pids["1"] == pids["3"] != pids["2"]  # round robin: 1 and 3, then 2
    assert str(os.getpid()) not in pids.values()
    out = capfd.readouterr().out
    assert "3 seed(s) in 2 worker processes (1 torch thread(s) each)" in out
    assert "workers done in " in out
    for k, s in ((1, 1), (2, 2), (1, 3)):
        assert f"worker {k}: seed {s} done in " in out
    assert len(list((tmp_path / "logs").glob("*-worker[12].log"))) == 2


def test_a_worker_that_fails_stops_the_run_naming_its_seed(tmp_path, stub, capfd):
    from hhh_bench.pipeline import run_in_workers

    cfg, seeds = _seeds(tmp_path, 13, 2)
    with pytest.raises(ValueError, match=r"^seed 13 \(worker 1; log .*-worker1\.log\): seed 13's "
                       r"stand-in fails$"):  # fmt: skip
        run_in_workers(cfg, seeds, {"dir": "d0"}, 2)
    assert "Traceback" not in capfd.readouterr().err
    log = next((tmp_path / "logs").glob("*-worker1.log")).read_text()
    assert "worker 1 stopped" in log and "Traceback" in log  # the log keeps the traceback


@pytest.mark.parametrize("bad", ["0", "true", "two"])
def test_workers_is_a_count_of_processes(bad):
    from hhh_bench.stages.common import to_dict
    from hhh_bench.validation import check_top_level

    with pytest.raises(ValueError, match=r"workers=.* must be an integer >= 1"):
        check_top_level(to_dict(compose([f"workers={bad}"])))
    check_top_level(to_dict(compose(["workers=2"])))


def test_a_seed_whose_theta0_is_built_is_left_to_the_run_itself(small_cfg, small_data, small_base):
    """A rerun (or a resumed run) verifies its cached seeds faster in one process than in
    workers that each start and verify too (the demo's cached rerun: 36 s with workers, ~23 s
    without): only seeds without their θ0 go to the workers."""
    from hhh_bench.pipeline import _theta0_built, with_values

    assert _theta0_built(small_cfg, True, small_data)
    assert not _theta0_built(with_values(small_cfg, {"seed": 5}), True, small_data)
