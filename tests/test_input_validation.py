"""Issue 27, config values: refused when the config is composed (:func:`validate_run`), before any
stage runs, with a message naming the key, the value and what is allowed."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import compose, run_cli
from hhh_bench.validation import validate_run


def check(overrides: list[str]) -> dict:
    return validate_run(OmegaConf.to_container(compose(overrides), resolve=True))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.limit=0", r"eval.limit=0: give a positive integer .* a fraction in \(0, 1\)"),
        ("eval.limit=-5", r"eval.limit=-5: give a positive integer"),
        ("eval.limit=1.5", r"eval.limit=1.5: give a positive integer"),
        ("eval.limit=true", r"eval.limit"),
        (
            "eval.metric=accc",
            r"eval.metric='accc' is not a metric of task 'toy3h_known_qa_val' "
            r"\(helpful\); its metrics: acc, acc_norm, soft",
        ),  # fmt: skip
        (
            "+eval.metrics.unknown_qa=sfot",
            r"eval.metrics.unknown_qa='sfot' is not a metric of "
            r"task 'toy3h_unknown_qa_val'",
        ),  # fmt: skip
        ("model.device=cdua", r"model.device='cdua' is not a device: use cpu, cuda, cuda:N"),
        ("model.device=auto", r"model.device='auto' is not a device"),
        ("train.device=gpu", r"train.device='gpu' is not a device"),
        ("merge_engine.device=cuda1", r"merge_engine.device='cuda1' is not a device"),
        (
            "seeds=2",
            r"seeds=2 must be a list of integers: write seeds=\[2\] for the one seed 2, "
            r"or seeds=\[0, 1\] for 2 seeds",
        ),  # fmt: skip
        ("seeds=[0,x]", r"seeds=\[0, 'x'\]: \['x'\] not integer"),
        ("seeds=[1,1]", r"seeds=\[1, 1\] repeats \[1\]"),
        ("seeds=[0,1.5]", r"not integer"),
        ("+report.skip_invalids=true", r"report.skip_invalids"),
        ("report.interval=normal", r"report.interval must be 't' or 'bca', got 'normal'"),
        # checked by the toy world's and the merge engine's own rules (hhh_bench.validation,
        # hhh_bench.core.sizes), not by the schema's
        ("data.world.n_values=99", r"n_values must be in \[2, 8\], got 99"),
        ("merge_engine.max_shard_size=lots", r"merge_engine.max_shard_size 'lots' is not a size"),
    ],
)
def test_a_bad_value_is_refused_naming_it(override, message):
    with pytest.raises(ValueError, match=message):
        check([override])


@pytest.mark.parametrize(
    "override",
    ["eval.limit=10", "eval.limit=0.25", "eval.limit=null", "eval.metric=soft",
     "model.device=cuda:1", "model.device=mps", "seeds=[3]", "seeds=[0,1,2]", "seeds=null",
     "report.skip_invalid=true", "report.interval=bca"],
)  # fmt: skip
def test_the_documented_values_pass(override):
    check([override])


def test_the_harness_suite_keeps_its_own_metrics():
    """Tasks whose metrics the shipped YAMLs do not list (built-in harness tasks, judged
    generations) are left to the eval stage: eval=harness_3h with its win_rate, safe,
    prompt_level_strict_acc validates."""
    check(["eval=harness_3h"])


def test_cli_seeds_scalar_exits_2_before_any_stage(tmp_path):
    """``seeds=2`` used to give a TypeError after the data stage: now one line, exit 2, no
    traceback, and no stage output under the root."""
    out = run_cli("seeds=2", f"root={tmp_path}", "logger=none", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert out.stderr.splitlines()[0].startswith("hhh-bench: error: seeds=2 must be a list")
    assert {p.name for p in tmp_path.iterdir()} <= {"hydra"}  # Hydra's log folder only
