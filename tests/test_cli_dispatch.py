"""The one dispatcher (src/hhh_bench/cli.py): ``hhh-bench SUBCOMMAND`` runs a subcommand by name,
each with its own ``--help``; anything else is the Hydra form, whose ``--help`` lists the
subcommands above Hydra's groups. ``hhh-bench list`` shows what a run can name."""

from __future__ import annotations

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
    code, out = _main(monkeypatch, capsys, "list", "groups")
    groups = dict(line.split(None, 1) for line in out.splitlines() if line.startswith("  "))
    assert "_common" not in groups["merge"] and "tsv" in groups["merge"]  # shared parts hidden


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
