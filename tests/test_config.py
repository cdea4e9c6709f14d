"""Every config composes; typos fail at composition; the CLI prints the composed config."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import CONF, REPO, compose

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def test_default_config_composes():
    cfg = compose()
    assert cfg.stage == "all"
    for group in ("model", "data", "mix", "train", "merge", "eval", "logger"):
        assert group in cfg, group
    OmegaConf.resolve(cfg)


# Experiments on Hydra sweeper plugins that are optional extras, with the extra that installs each.
OPTIONAL_SWEEPERS = {"optuna": ("hydra_plugins.hydra_optuna_sweeper", "optuna")}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    text = (CONF / "experiment" / f"{experiment}.yaml").read_text()
    for sweeper, (module, extra) in OPTIONAL_SWEEPERS.items():
        if f"/hydra/sweeper: {sweeper}" in text and importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} not installed: pip install -e '.[{extra}]'")
    cfg = compose([f"experiment={experiment}"], return_hydra_config=True)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.name


GROUPS = ("model", "data", "mix", "train", "merge", "merge_engine", "eval", "logger")


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes(group):
    options = sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))
    assert options, group
    for option in options:
        cfg = compose([f"{group}={option}"])
        OmegaConf.resolve(cfg)


def test_plain_yaml_folders_parse():
    """conf/accelerate holds accelerate config files and conf/source the dataset sources: not
    Hydra groups, but every file must parse."""
    import yaml

    for folder in ("accelerate", "source"):
        files = sorted((CONF / folder).glob("*.yaml"))
        assert files, folder
        for f in files:
            assert isinstance(yaml.safe_load(f.read_text()), dict), f


def test_typo_in_a_key_fails_at_composition():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="sed"):
        compose(["sed=1"])
    with pytest.raises(ConfigCompositionException):
        compose(["data.world.n_knwon=3"])


def test_cli_prints_composed_config(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for cmd in (
        [os.path.join(os.path.dirname(sys.executable), "hhh-bench"), "--cfg", "job"],
        [sys.executable, "-m", "hhh_bench", "--cfg", "job", "stage=data"],
    ):
        out = subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        assert "stage:" in out.stdout and "world:" in out.stdout


def test_unknown_stage_is_rejected():
    from hhh_bench.pipeline import run

    with pytest.raises(ValueError, match="unknown stage 'trian'"):
        run(compose(["stage=trian"]))


def test_library_code_never_imports_hydra():
    offenders = []
    for path in (REPO / "src" / "hhh_bench").rglob("*.py"):
        if path.name == "cli.py":
            continue
        text = path.read_text()
        if "import hydra" in text or "from hydra" in text:
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders, offenders


def test_merge_optuna_searches_resm_on_validation():
    pytest.importorskip(
        "hydra_plugins.hydra_optuna_sweeper",
        reason="hydra-optuna-sweeper not installed: pip install -e '.[optuna]'",
    )
    cfg = compose(["experiment=merge_optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize"
    assert cfg.stage == "merge_eval" and cfg.merge.method == "resm"
    assert cfg.eval.select_split == "validation" != cfg.eval.report_split
    OmegaConf.resolve(cfg)
    assert sweeper.sampler.seed == cfg.seed
    for key in sweeper.params:  # every searched knob is one of conf/merge/resm.yaml's
        assert key.startswith("merge.params.") and key.split(".")[-1] in cfg.merge.params, key
