"""The console of a run (issue 35, docs/console.md): one line per job with k/N, elapsed and ETA;
each line once; no carriage return in a file or a pipe; the libraries' output (logs, warnings,
progress bars) in the run's log file, whose path the console gives; the table and the answer
last. A live line only on a terminal."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMALL_WORLD
from hhh_bench.core import console

# A pipeline of 6 jobs on the session's θ0: data, base (both reused; θ0's evaluations run), the
# specialists, a mixture tried with 2 shares, a merge method (2 scalings + 1 emphasis), the
# report. Two training steps each: what is printed is under test, not what is learned.
SMALL_RUN = [
    "logger=none", "threads=1", *SMALL_WORLD, "train.max_steps=2", "train.margin_max_pairs=8",
    "train.precompute_ref_log_probs=false",
    "pipeline.oracle.enabled=false", "pipeline.mixtures=[reward_select]",
    "pipeline.tuning.emphasis=[[1,1,2]]", "pipeline.tuning.mixtures=[reward_select]",
    "~pipeline.merge_grid", "+pipeline.merge_grid.task_arithmetic.scaling=[0.5,1.0]",
]  # fmt: skip


@pytest.mark.e2e
def test_the_console_of_a_run_in_a_pipe(tmp_path, session_root, small_base):
    """The real command, its stdout and stderr pipes (not a terminal, as in CI or `| tee`):
    ~35 s on one core beside the session's θ0."""
    root = tmp_path / "run"
    for stage in ("data", "base"):
        shutil.copytree(session_root / stage, root / stage)
    env = {k: v for k, v in os.environ.items() if k not in ("HHH_VERBOSE", "HYDRA_FULL_ERROR")}
    exe = str(Path(sys.executable).parent / "hhh-bench")
    done = subprocess.run([exe, f"root={root}", *SMALL_RUN], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "\r" not in done.stdout + done.stderr  # no progress bar redrawn into a pipe
    assert done.stderr == ""  # the libraries' warnings are in the log file
    lines = [x for x in done.stdout.splitlines() if x.strip()]
    repeated = {x for x in lines if lines.count(x) > 1}
    assert not repeated, repeated  # every event once
    assert len(lines) <= 35, done.stdout  # 1 + 6 jobs + summary + table + files + answer
    # one line per job, numbered k/N in order, the last one N, each saying ran or cached
    jobs = re.findall(r"^\[\s*(\d+)/(\d+)\] ([^:]+): (ran \d+\.\d s|cached)", done.stdout, re.M)
    assert [(int(k), int(n)) for k, n, *_ in jobs] == [(k, 6) for k in range(1, 7)], done.stdout
    assert [label for _, _, label, _ in jobs] == [
        "data", "base", "train specialists", "train mix reward_select", "merge task_arithmetic",
        "report",
    ]  # fmt: skip
    assert jobs[0][3] == "cached"  # the data from the session (θ0 too, but not its evaluations)
    assert {p.name for p in (root / "base").iterdir()} == {
        p.name for p in (session_root / "base").iterdir()
    }  # fmt: skip
    assert "ETA" in lines[2]  # the second job's line: an estimate from the first
    (search,) = [x for x in lines if "mix reward_select" in x]
    assert "2 configurations, chosen " in search, search
    # the log file: named first, inside the root, holding what the libraries wrote, no redraws
    first = re.fullmatch(r"log file: (\S+) \(.*\)", lines[0])
    assert first, lines[0]
    log = Path(first.group(1))
    assert root in log.parents and log.is_file()
    text = log.read_text()
    assert "\r" not in text and "[stderr][INFO] - " in text and "[py.warnings]" in text
    assert "hhh_bench][INFO] - train: " in text  # our own details, there and not on the console
    # the end: the table, then the answer last
    assert any(x.startswith("| Method |") for x in lines[-20:])
    assert lines[-1].startswith("Mix or merge? ")


# -- the console module on its own: cheap, in-process --------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _jobs(n: int) -> None:
    console.plan([("train", f"m{i}") for i in range(n)])
    for i in range(n):
        with console.job("train", f"m{i}"):
            console.step_started(f"train m{i}")
            console.step_done(f"train m{i}", cached=False, seconds=0.0)
            console.note("chosen x=1")


@pytest.mark.parametrize(
    ("stream", "env", "live"),
    [(io.StringIO, {}, False), (_Tty, {}, True), (_Tty, {"CI": "true"}, False)],
)
def test_a_live_line_only_on_a_terminal_outside_ci(monkeypatch, stream, env, live):
    monkeypatch.delenv("CI", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out, err = stream(), stream()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    with console.session(verbosity=1, progress="auto"):
        _jobs(3)
        print("a library's line")  # noqa: T201 - what a library prints
        sys.stderr.write("bar 1/2\rbar 2/2\n")
    text = out.getvalue()
    assert ("\r" in text) is live
    shown = [re.sub(r"\x1b\[K", "", x.split("\r")[-1]) for x in text.split("\n")]  # a terminal
    lines = [x for x in shown if x]
    lines = [x for x in lines if not x.startswith("log file: ")]  # pytest's own, here
    assert [x.split(":")[0] for x in lines] == [
        "[1/3] train m0",
        "[2/3] train m1",
        "[3/3] train m2",
    ]
    assert all(x.count("; chosen x=1 | ") == 1 for x in lines)
    assert "ETA" in lines[0] and "ETA" not in lines[-1]  # nothing left after the last job
    assert "a library's line" not in text and err.getvalue() == ""  # to the log file


def test_library_output_reaches_the_log_as_final_lines(tmp_path, caplog):
    stream = console.LogStream("stderr", io.StringIO())
    with caplog.at_level(logging.INFO, logger="stderr"):
        stream.write("Tokenizing:   0%|   | 0/9\rTokenizing:  50%|#  | 4/9\r")
        stream.write("Tokenizing: 100%|##| 9/9\r")
        stream.write("\n\x1b[Aplain line\n\n")
        stream.write("unfinished")
        stream.close_line()
    assert [r.getMessage() for r in caplog.records] == [
        "Tokenizing: 100%|##| 9/9", "plain line", "unfinished",
    ]  # fmt: skip
    assert not stream.isatty()


def test_verbosity_zero_keeps_the_results_only(monkeypatch, tmp_path):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # pytest's log file, not ours
    with console.session(verbosity=0, progress="never", root=tmp_path):
        _jobs(2)
        console.say("| Method |", level=console.QUIET)
        console.say("Mix or merge? ...", level=console.QUIET)
        logging.getLogger("hhh_bench").warning("a warning of ours")
    assert out.getvalue() == "| Method |\nMix or merge? ...\n"
    (log,) = (tmp_path / "logs").glob("*.log")  # no Hydra here: a log file of our own
    assert "[1/2] train m0" in log.read_text() and "a warning of ours" in log.read_text()


def test_a_bad_console_setting_is_named():
    from hhh_bench.core.config import ConsoleConfig

    with pytest.raises(ValueError, match="console.verbosity"):
        ConsoleConfig(verbosity=5)
    with pytest.raises(ValueError, match="progress"):
        ConsoleConfig(progress="sometimes")


def test_a_search_s_configurations_read_apart():
    """What tells jobs and their runs apart on the console: a configuration's settings, and for
    a mixture what differs from its strategy's option file (the four `train mix-reward_select`
    runs of a search were indistinguishable)."""
    from hhh_bench.stages.common import load_option
    from hhh_bench.stages.train import _shown

    text = console.params_text({"density": 0.5, "weights": [0.75, 1.5], "shares": {"a": 0.25}})
    assert text == "density=0.5 weights=[0.75,1.5] shares=a 0.25"
    own = load_option("mix", "reward_select")
    shares = {"helpful": 0.5, "honest": 0.25, "harmless": 0.25}
    assert _shown("mix-reward_select", {**own, "shares": shares}, None) == (
        "mix-reward_select shares=helpful 0.5/honest 0.25/harmless 0.25"
    )
    assert _shown("mix-reward_select", own, None) == "mix-reward_select"
    assert _shown("oracle", {**own, "budget": "per_specialist"}, "oracle") == "oracle"


QUIET_ON_IMPORT = """
import logging, sys
from hhh_bench.core import console
with console.session(root=sys.argv[1]):
    before = "transformers" in sys.modules
    from transformers.utils import logging as tl
    lib = logging.getLogger("transformers")
    quiet = tl._default_handler not in lib.handlers and not tl.is_progress_bar_enabled()
    from transformers import AutoConfig  # the package works as imported (its lazy names)
hooks = [h for h in sys.meta_path if type(h).__name__ == "_OnImport"]
print(before, quiet, AutoConfig.__name__, hooks, file=sys.stderr)
"""


def test_transformers_quieted_when_first_imported_not_before(tmp_path):
    """A session does not import transformers only to silence it (~1 s of every command, of a
    cached rerun): it is quieted right after its first import; the hook is gone at the end."""
    out = subprocess.run([sys.executable, "-c", QUIET_ON_IMPORT, str(tmp_path)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stderr.split() == ["False", "True", "AutoConfig", "[]"], out.stderr
