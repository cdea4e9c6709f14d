"""The one dispatcher (src/hhh_bench/cli.py): ``hhh-bench SUBCOMMAND`` runs a subcommand by name,
each with its own ``--help``; anything else is the Hydra form, whose ``--help`` lists the
subcommands above Hydra's groups. ``hhh-bench list`` shows what a run can name."""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import sys

import pytest

from conftest import REPO
from hhh_bench import cli


def _main(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["hhh-bench", *argv])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    code = exit_.value.code
    return (0 if code is None else int(code)), capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
def test_every_subcommand_has_its_own_help(name, monkeypatch, capsys):
    code, out = _main(monkeypatch, capsys, name, "--help")
    assert code == 0 and out.startswith(f"usage: hhh-bench {name}"), out


def test_a_bad_subcommand_argument_is_a_usage_error_not_a_traceback(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["hhh-bench", "list", "bogus"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    assert "unknown list 'bogus'; choose from experiments" in capsys.readouterr().err


def test_list_shows_the_registries_and_the_config_tree(monkeypatch, capsys):
    from hhh_bench.core.paths import conf_dir
    from hhh_bench.data.mixing import list_strategies
    from hhh_bench.merging import list_methods

    code, out = _main(monkeypatch, capsys, "list", "methods", "strategies", "experiments")
    assert code == 0
    names = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    experiments = {p.stem for p in (conf_dir() / "experiment").glob("*.yaml")}
    assert names == set(list_methods()) | set(list_strategies()) | experiments
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "arXiv:2312.06795" in rows["breadcrumbs"]  # one line: summary, then own parameters
    assert rows["breadcrumbs"].endswith("[density=0.9, gamma=0.01, normalize=False, rescale=none]")
    assert rows["task_arithmetic"].endswith("[common parameters only]")
    code, out = _main(monkeypatch, capsys, "list", "groups")
    groups = dict(line.split(None, 1) for line in out.splitlines() if line.startswith("  "))
    assert "_common" not in groups["merge"] and "tsv" in groups["merge"]  # shared parts hidden
    assert "source" not in groups  # the datasets data options list: `list sources`


@pytest.mark.parametrize("override", ["+accelerate=fsdp", "accelerate=ddp", "++accelerate.x=1"])
def test_an_accelerate_override_says_how_accelerate_is_used(override, monkeypatch, capsys):
    """``+accelerate=fsdp`` was silently ignored (issue 27): exit 2 before Hydra runs, with the
    launch command; the files are no Hydra group (they lie in accelerate/, beside conf/)."""
    monkeypatch.setattr(sys, "argv", ["hhh-bench", "stage=train", override])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"hhh-bench: error: {override}: accelerate is")
    assert "accelerate launch --config_file accelerate/fsdp.yaml -m hhh_bench" in err


def test_shared_defaults_and_launcher_files_are_no_choice():
    """``merge=_common`` ran a RESM merge: the merge options' shared part is conf/merge_common.yaml
    now, outside the group, so it is neither listed nor selectable (Hydra names the options)."""
    from hydra.errors import MissingConfigException

    from conftest import CONF, compose

    assert not (CONF / "accelerate").exists() and not list(CONF.glob("*/_*.yaml"))
    with pytest.raises(MissingConfigException, match=r"Could not find 'merge/_common'"):
        compose(["merge=_common"])
    assert compose(["merge=ties"]).merge.params.scaling == 1.0  # the shared part still applies


def test_the_hydra_form_help_lists_the_subcommands_then_hydras_groups():
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run(
        [sys.executable, "-m", "hhh_bench", "--help"], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    head, _, hydra = out.stdout.partition("hhh-bench is powered by Hydra.")
    for name, sub in cli.SUBCOMMANDS.items():
        assert f"  {name}" in head and sub.summary in head
    assert "== Configuration groups ==" in hydra and "experiment:" in hydra
    groups = hydra.split("== Configuration groups ==")[1].split("==")[0]
    merge_line = next(line for line in groups.splitlines() if line.startswith("merge: "))
    merge_options = merge_line.removeprefix("merge: ").split(", ")
    assert {"dare_ta", "dare_ties", "resm", "ties"} <= set(merge_options)
    assert "_common" not in groups
    assert "accelerate" not in groups and "\nsource:" not in groups
    assert "\ntrain: dpo" in groups  # the lines after it are kept


def test_source_is_no_group_a_run_chooses(monkeypatch, capsys):
    """``source=beavertails`` ended in Hydra's "Could not override 'source'" (issue 27: --help
    listed conf/source/ as a group): exit 2 before Hydra, naming where sources are chosen."""
    monkeypatch.setattr(sys, "argv", ["hhh-bench", "source=beavertails", "stage=data"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("hhh-bench: error: source=beavertails: source is no config group")
    assert "data.sources" in err and "hhh-bench list sources" in err


def test_list_imports_plugins_first():
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO / 'tests' / 'assets' / 'plugins'}"}
    out = subprocess.run(
        [sys.executable, "-m", "hhh_bench", "list", "methods", "strategies", "--plugin",
         "my_hhh_ext"], env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "median_tv" in out.stdout and "first_half_each" in out.stdout


def test_a_plugin_that_cannot_be_imported_is_named(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["hhh-bench", "list", "--plugin", "no_such_module_x"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2 and "--plugin 'no_such_module_x'" in capsys.readouterr().err


def test_job_names_are_the_overrides_made_safe_and_short():
    assert (
        cli.job_name("merge=ties,merge.params.scaling=0.5", 0)
        == "merge=ties,merge.params.scaling=0.5"
    )
    assert cli.job_name("", 3) == "job3"
    assert (
        cli.job_name("data.dimensions=[helpful, honest]", 1) == "data.dimensions=_helpful,_honest_"
    )
    long = "merge.params.scaling=" + ",".join(["0.5"] * 40)
    name = cli.job_name(long, 0)
    digest = hashlib.sha256(long.encode()).hexdigest()[:12]
    assert name == f"{long[:80]}-{digest}" and len(name) == 93
    assert cli.job_name(long + "x", 0) != name  # another long name keeps its own folder


def _task(cfg, monkeypatch, capsys, verbose: bool = False):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setenv("HHH_VERBOSE", "1" if verbose else "0")
    return cli.task(cfg)


def test_a_bad_input_ends_the_task_with_status_2_and_no_traceback(tmp_path, monkeypatch, capsys):
    from conftest import compose

    cfg = compose([f"root={tmp_path}", "logger=none", "stage=merge", "merge.models=[]"])
    with pytest.raises(SystemExit) as exit_:
        _task(cfg, monkeypatch, capsys)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "hhh-bench: error:" in err and "merge.models" in err
    assert "Traceback" not in err and "rerun with --verbose" in err
    with pytest.raises(ValueError, match="merge.models"):  # --verbose: the exception itself
        _task(cfg, monkeypatch, capsys, verbose=True)


def test_a_bad_console_setting_stops_the_task_before_any_stage(tmp_path, monkeypatch, capsys):
    from conftest import compose

    cfg = compose([f"root={tmp_path}", "logger=none", "stage=data", "console.verbosity=9"])
    with pytest.raises(SystemExit) as exit_:
        _task(cfg, monkeypatch, capsys)
    assert exit_.value.code == 2 and "console" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written
    monkeypatch.setenv("HHH_VERBOSE", "1")
    assert cli.console_settings(compose(["console.verbosity=0"]))["verbosity"] == 2
    monkeypatch.setenv("HHH_VERBOSE", "0")
    assert cli.console_settings(compose(["console.verbosity=0"]))["verbosity"] == 0


def test_a_sweep_run_without_m_says_to_add_m_before_any_stage(tmp_path, monkeypatch, capsys):
    """``hhh-bench experiment=merge_optuna`` without ``-m`` used to run one merge with the
    default knobs and search nothing (issue 27): exit 2, a line saying to add -m, nothing
    written. The Hydra config is set as the app sets it."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from conftest import compose

    over = ["experiment=merge_optuna", f"root={tmp_path}", "logger=none"]
    cfg = compose(over, return_hydra_config=True)

    def as_hydra_sets(mode: str) -> None:
        job = copy.deepcopy(cfg)
        with open_dict(job):
            job.hydra.overrides.task = over[:1]
            job.hydra.mode = mode
        HydraConfig.instance().set_config(job)

    try:
        as_hydra_sets("RUN")
        with pytest.raises(SystemExit) as exit_:
            _task(cfg, monkeypatch, capsys)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and not any(tmp_path.iterdir())
        assert (
            "this config is a sweep (OptunaSweeper over merge.params.scaling, merge.params.kappa"
            in err
            and "add -m: hhh-bench -m experiment=merge_optuna\n" in err
        )
        as_hydra_sets("MULTIRUN")
        cli.check_sweep_mode()  # a job of the sweep: fine
    finally:
        HydraConfig.instance().cfg = None  # type: ignore[assignment]


def test_the_hydra_form_runs_in_process_and_takes_the_verbose_flag(tmp_path, monkeypatch, capsys):
    """``hhh-bench -v stage=data ...`` through :func:`cli.main`: the flag is ours (removed
    before Hydra parses the arguments), the data stage writes its output under the root."""
    monkeypatch.setenv("HHH_VERBOSE", "0")  # put back after the test (a delenv is not)
    monkeypatch.chdir(tmp_path)
    small = ["data.world.n_known.train=10", "data.world.n_known.validation=4",
             "data.world.n_known.test=4", "data.world.pairs_per_dimension=20",
             "data.world.eval_items_per_kind=6"]  # fmt: skip
    monkeypatch.setattr(
        sys,
        "argv",
        ["hhh-bench", "-v", "stage=data", f"root={tmp_path / 'r'}", "logger=none", *small],
    )
    cli.main()
    assert os.environ["HHH_VERBOSE"] == "1" and "-v" not in sys.argv
    assert len(list((tmp_path / "r" / "data").glob("*/manifest.json"))) == 1
    assert "data" in capsys.readouterr().out


def test_ctrl_c_is_the_last_line_no_progress_bar_after_it(monkeypatch, capsys):
    """Battery 7/8: after Ctrl-C a progress bar left open (the base SFT's) printed its last state
    after the interrupt line, when it was collected."""
    import gc
    import sys

    from tqdm import tqdm

    from hhh_bench import cli

    def interrupted():
        bar = tqdm(total=10, desc="base SFT", file=sys.stderr, mininterval=0)
        bar.update(5)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_main", interrupted)
    monkeypatch.delenv("HHH_VERBOSE", raising=False)
    with pytest.raises(SystemExit) as stop:
        cli.main()
    assert stop.value.code == 130
    del stop  # the interrupted frame, and its bar, are collected now
    gc.collect()
    err = capsys.readouterr().err
    assert "base SFT:  50%" in err  # the bar did show while the stage ran
    assert err.rstrip().endswith("rerunning the same command resumes from them"), err[-300:]


SWALLOWED_CANCEL = """
import asyncio, os, signal, sys, threading
from hhh_bench import cli

async def requests():  # a request loop that takes a cancellation as a failed request
    for _ in range(50):
        try:
            await asyncio.sleep(0.1)
        except asyncio.CancelledError:
            pass
    return "finished"

if sys.argv[1] == "ours":
    cli._interrupt_everywhere()
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    print(asyncio.run(requests()))
except KeyboardInterrupt:
    print("interrupted")
"""


def test_ctrl_c_interrupts_an_event_loop_that_swallows_cancellation():
    """``make rehearse`` once saw `hhh-bench stage=eval eval.backend=server` end with status 0
    after Ctrl-C: Python's own SIGINT handler lets ``asyncio.run`` cancel its task instead, and
    a loop that swallows the cancellation goes on. hhh-bench's handler raises in the loop."""
    import signal
    import subprocess

    def run(which: str) -> str:  # SIGINT as a terminal gives it (a background job's parent, a
        return subprocess.run(  # CI runner's, may ignore it: the child would inherit that)
            [sys.executable, "-c", SWALLOWED_CANCEL, which], capture_output=True, text=True,
            timeout=60, check=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        ).stdout.strip()  # fmt: skip

    assert run("python") == "finished"  # the failure mode, as Python does it
    assert run("ours") == "interrupted"


def test_ctrl_c_a_library_swallowed_still_ends_the_run_as_interrupted(monkeypatch, capsys):
    """``make rehearse`` saw `hhh-bench stage=eval eval.backend=server` end with status 0 after
    a SIGINT that came while the run was ending (the KeyboardInterrupt raised where a clean-up
    swallowed it): a SIGINT our handler saw ends the run as interrupted, status 130."""
    import contextlib
    import signal

    from hhh_bench import cli

    def swallowed():
        with contextlib.suppress(KeyboardInterrupt):  # a library's clean-up that took it as
            cli._raise_interrupt(signal.SIGINT, None)  # a failure of its own
        return None

    monkeypatch.setattr(cli, "_main", swallowed)
    monkeypatch.setattr(cli, "_INTERRUPTED", False)
    with pytest.raises(SystemExit) as stop:
        cli.main()
    assert stop.value.code == 130
    assert "hhh-bench: interrupted" in capsys.readouterr().err
