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


GROUPS = ("model", "data", "mix", "train", "merge", "merge_engine", "eval", "logger", "pipeline")


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes_and_every_key_has_a_typed_field(group):
    """Each option of each group composes, and :func:`hhh_bench.validation.validate_run` accepts it:
    a YAML key without a field in its group's dataclass (hhh_bench/core/config.py) fails here.
    Composed with stage=train: data=paper_3h under the whole pipeline's default (toy-scored)
    mixtures is refused by design (test_input_validation)."""
    from hhh_bench.validation import validate_run

    options = sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))
    assert options, group
    for option in options:
        cfg = compose([f"{group}={option}", "stage=train"])
        validate_run(OmegaConf.to_container(cfg, resolve=True))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_validates(experiment):
    from hhh_bench.validation import validate_run

    cfg = OmegaConf.to_container(compose([f"experiment={experiment}"]), resolve=True)
    if experiment == "released_specialists":  # its specialists have no known commit (test_pins)
        with pytest.raises(ValueError, match="not pinned to a commit"):
            validate_run(cfg)
        cfg["allow_unpinned"] = True
    typed = validate_run(cfg)
    assert set(typed) >= {"train", "model", "data", "eval", "merge", "merge_engine", "pipeline"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+train.learnin_rate=0.1", r"train.learnin_rate \(did you mean train.learning_rate\?\)"),
        ("+eval.batchsize=8", r"eval.batchsize \(did you mean eval.batch_size\?\)"),
        ("merge.params.kappa=-1", r"merge \(method 'resm'\): merge parameter 'kappa' must be > 0"),
        ("merge.models=[]", "merge.models is an empty list"),
        ("pipeline.merge_grid.ties.density=[0.2,1.5]", r"pipeline.merge_grid.ties .*density"),
        ("train.learning_rate=-1", "train.learning_rate must be > 0"),
    ],
)
def test_bad_values_fail_before_any_stage_runs(tmp_path, override, message):
    """The pipeline validates the whole config before the data stage: nothing is written."""
    from hhh_bench.pipeline import run

    cfg = compose([f"root={tmp_path}", "logger=none", "stage=merge", override])
    with pytest.raises(ValueError, match=message):
        run(cfg)
    assert not any(tmp_path.iterdir())


def test_plain_yaml_folders_parse():
    """accelerate/ (beside conf/, so that it is no Hydra group) holds accelerate config files and
    conf/source the dataset sources: every file must parse."""
    import yaml

    for folder in (CONF.parent / "accelerate", CONF / "source"):
        files = sorted(folder.glob("*.yaml"))
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


def test_library_code_never_imports_hydra_or_omegaconf():
    """Only the entry points (cli.py, pipeline.py, stages/) touch Hydra's config objects."""
    pkg = REPO / "src" / "hhh_bench"
    offenders = []
    for path in pkg.rglob("*.py"):
        rel = path.relative_to(pkg)
        if rel.parts[0] == "stages" or rel.name in ("cli.py", "pipeline.py"):
            continue
        text = path.read_text()
        for mod in ("hydra", "omegaconf"):
            if f"import {mod}" in text or f"from {mod}" in text:
                offenders.append(f"{rel} imports {mod}")
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


@pytest.mark.parametrize(
    "args, says",
    [
        (["+train.learnin_rate=0.1", "stage=train"], "learnin_rate"),
        (["stage=merge", "merge.models=[]"], "merge.models is an empty list"),
        (["model.device=cuda", "stage=base"], "cuda"),
        (["stage=merge", "merge.params.density=7", "merge=ties"], "density"),
        # a hub model on an offline machine without it in the cache: named before any work
        # (before this check the base stage exited 0 having written only the toy data)
        (["model=llama3_8b_instruct", "model.device=cpu", "stage=base"], "not in the HF cache"),
    ],
)
def test_bad_input_gives_a_short_error_without_traceback(tmp_path, args, says):
    """The console of a run on a bad input: exit status 2, a line or two naming the input and
    what to do, no traceback (it goes to the job's log file), and no stage run."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "HHH_VERBOSE")}
    root = tmp_path / "root"
    out = subprocess.run(
        [sys.executable, "-m", "hhh_bench", f"root={root}", "logger=none", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    console = out.stdout + out.stderr
    assert out.returncode == 2, console[-2000:]
    assert "Traceback" not in console and says in console, console[-2000:]
    assert len(out.stderr.strip().splitlines()) <= 4, out.stderr
    # only Hydra's job folder (config and the log holding the traceback): no stage ran
    assert {p.name for p in root.iterdir()} <= {"hydra"} if root.exists() else True
