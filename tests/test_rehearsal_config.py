"""The rehearsal overlay (conf/rehearsal/small.yaml, issue 12) composes on every real-path
experiment and keeps its code path; prepare_rehearsal builds the stand-ins it names and returns
the overrides that use them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONF, REPO, compose
from hhh_bench.stages.common import to_dict

REAL = {
    "paper_llama3": ("llama3_8b_instruct", "LlamaForCausalLM"),
    "paper_mistral": ("mistral_7b_instruct", "MistralForCausalLM"),
    "released_specialists": ("llama3_8b_instruct", "LlamaForCausalLM"),
}
OVERLAY = CONF / "rehearsal" / "small.yaml"


def _cfg(experiment: str, root, *extra: str):
    cfg = compose(
        [f"experiment={experiment}", "+rehearsal=small", f"root={root}", "logger=none", *extra]
    )
    cfg.rehearsal.fixtures = str(REPO / "tests" / "assets")
    return cfg


@pytest.mark.parametrize("experiment", sorted(REAL))
def test_overlay_composes_on_every_real_path_experiment(experiment, tmp_path):
    plain = compose([f"experiment={experiment}"])
    cfg = _cfg(experiment, tmp_path)
    OmegaConf.resolve(cfg)
    standin, _ = REAL[experiment]
    # the model: a stand-in folder of the experiment's model, loaded as a hub id is
    assert cfg.model.name == plain.model.name and cfg.model.standin == standin
    assert cfg.model.kind == "hub" and cfg.model.path == f"{tmp_path}/rehearsal/{standin}"
    assert (cfg.model.dtype, cfg.model.device) == ("float32", "cpu")
    # training: the experiment's own train config, a few steps, bf16 off
    assert cfg.train.name == plain.train.name
    for key in ("learning_rate", "batch_size", "grad_accum", "max_length", "merge_adapter"):
        assert cfg.train[key] == plain.train[key], key
    assert cfg.train.max_steps == 2 and cfg.train.bf16 is False
    assert cfg.train.gradient_checkpointing is False
    # data, merges, pipeline plan and eval suite: the experiment's
    assert cfg.data == plain.data
    assert cfg.pipeline.mixtures == plain.pipeline.mixtures
    assert cfg.merge.get("models") == plain.merge.get("models")
    assert cfg.eval.name == plain.eval.name and cfg.eval.dimensions == plain.eval.dimensions
    assert cfg.eval.include_defaults is False and cfg.rehearsal.eval_standins is True
    assert cfg.merge_engine.device == "cpu"
    for path in cfg.eval.data_files.values():
        assert (REPO / "tests" / "assets" / "eval").as_posix() in path


def test_every_key_of_the_overlay_is_documented():
    """Each key line carries a comment, on its line or on the line above."""
    lines = OVERLAY.read_text().splitlines()
    assert lines[0] == "# @package _global_"
    undocumented = []
    for i, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z_][\w]*:", line) and "#" not in line:
            above = lines[i - 1].strip() if i else ""
            indent = len(line) - len(line.lstrip())
            parent = next(
                (p for p in reversed(lines[:i]) if p.strip() and len(p) - len(p.lstrip()) < indent),
                "",
            )
            # entries of a name -> value mapping are documented by the mapping's comment
            if not above.startswith("#") and "->" not in parent.partition("#")[2]:
                undocumented.append(line.strip())
    assert not undocumented, undocumented


@pytest.fixture(scope="module")
def rehearsal_root(tmp_path_factory):
    return tmp_path_factory.mktemp("rehearsal")


@pytest.mark.parametrize("experiment", ["paper_llama3", "paper_mistral"])
def test_prepare_builds_the_standin_and_points_sources_at_fixtures(experiment, rehearsal_root):
    from hhh_bench.models import load_causal_lm, load_tokenizer
    from hhh_bench.pipeline import with_values
    from hhh_bench.rehearsal import prepare_rehearsal

    # a policy other than the stand-ins' own (issue 27): the suite's stays
    cfg = _cfg(experiment, rehearsal_root, "eval.judges.safety.on_unparsed=negative")
    overrides = prepare_rehearsal(to_dict(cfg))
    # model.path is the stand-in itself; the judged suite's judges are stand-ins too
    roles = set(cfg.eval.judges)
    assert set(overrides) == {"data.sources", *(f"eval.judges.{r}" for r in roles)}
    for r in roles:
        judge = overrides[f"eval.judges.{r}"]
        assert Path(judge["model"]).is_dir() and judge["kind"] == cfg.eval.judges[r].kind
        # the suite's on_unparsed policy is the suite's, not the stand-in's (issue 27)
        assert judge.get("on_unparsed") == cfg.eval.judges[r].get("on_unparsed")
    from hhh_bench.evaluation.judges import specs_from_config

    assert set(specs_from_config({r: overrides[f"eval.judges.{r}"] for r in roles})) == roles
    assert overrides["eval.judges.safety"]["on_unparsed"] == "negative"
    standin, arch = REAL[experiment]
    model = load_causal_lm(cfg.model.path, dtype=cfg.model.dtype)
    assert type(model).__name__ == arch
    assert load_tokenizer(cfg.model.path).chat_template
    new = with_values(cfg, overrides)
    for dim, entries in to_dict(new.data.sources).items():
        names = [e["name"] for e in entries]
        assert names == list(cfg.data.sources[dim])  # the experiment's sources, in order
        assert all((REPO / e["path"]).is_file() or e["path"].startswith("/") for e in entries)


def test_prepare_builds_released_specialists_for_merge_models(rehearsal_root):
    from hhh_bench.rehearsal import prepare_rehearsal

    cfg = _cfg("released_specialists", rehearsal_root)
    overrides = prepare_rehearsal(to_dict(cfg))
    assert "data.sources" not in overrides  # this experiment's data is the toy world
    assert overrides["merge.base"] == cfg.model.path
    models = overrides["merge.models"]
    assert [m.rsplit("/", 1)[-1] for m in models] == [
        "3H_Merging_Llama3_Helpfulness",
        "3H_Merging_Llama3_Honesty",
        "3H_Merging_Llama3_Harmlessness",
    ]
    from pathlib import Path

    kinds = ["lora" if (Path(m) / "adapter_config.json").is_file() else "full" for m in models]
    assert kinds == list(cfg.rehearsal.specialists.kinds)
    with pytest.raises(ValueError, match="2 kinds for 3 merge.models"):
        prepare_rehearsal(to_dict(_cfg("released_specialists", rehearsal_root,
                                       "rehearsal.specialists.kinds=[full,lora]")))  # fmt: skip


def test_prepare_swaps_the_reward_model_of_scored_mixtures(rehearsal_root):
    from hhh_bench.data.mixing.scorers import ARMORM_OUTPUT_DIMENSIONS
    from hhh_bench.pipeline import with_values
    from hhh_bench.rehearsal import prepare_rehearsal

    armo = {
        "name": "reward_select",
        "scorer": "reward_model",
        "scorer_args": {
            "model": "RLHFlow/ArmoRM-Llama3-8B-v0.1",
            "trust_remote_code": True,
            "device": "cuda",
            "dtype": "bfloat16",
            "output_dimensions": list(ARMORM_OUTPUT_DIMENSIONS),
        },
    }
    cfg = with_values(
        _cfg("paper_llama3", rehearsal_root), {"pipeline.mixtures": ["uniform", armo]}
    )
    overrides = prepare_rehearsal(to_dict(cfg))
    uniform, swapped = overrides["pipeline.mixtures"]
    assert uniform == "uniform"
    args = swapped["scorer_args"]
    assert args["model"] == cfg.rehearsal.reward_model
    assert (args["device"], args["dtype"], args["trust_remote_code"]) == ("cpu", "float32", False)
    assert args["output_dimensions"] == list(ARMORM_OUTPUT_DIMENSIONS)  # the experiment's own
    assert {k: v for k, v in swapped.items() if k != "scorer_args"} == {
        k: v for k, v in armo.items() if k != "scorer_args"
    }


def test_standin_eval_tasks_writes_the_suites_builtins(tmp_path):
    from hhh_bench.core.scoring import suite_tasks
    from hhh_bench.evaluation.judged_eval import column_specs
    from hhh_bench.evaluation.standin_tasks import standin_eval_tasks

    cfg = _cfg("paper_llama3", tmp_path)
    ecfg = to_dict(cfg.eval)
    names = [s.name for s in suite_tasks(ecfg, "test") + column_specs(ecfg, "test")]
    written = standin_eval_tasks(to_dict(cfg.rehearsal), names, tmp_path / "tasks" / "standins")
    assert sorted(written.names) == ["arc_challenge", "ifeval", "mmlu", "truthfulqa_mc2"]
    assert not (tmp_path / "tasks" / "standins" / "halueval_qa_mc.yaml").exists()
    off = {**to_dict(cfg.rehearsal), "eval_standins": False}
    assert standin_eval_tasks(off, names, tmp_path / "off") is None
    assert standin_eval_tasks(None, names, tmp_path / "off") is None
    with pytest.raises(ValueError, match="rehearsal.eval_data"):
        standin_eval_tasks({"eval_standins": True}, names, tmp_path / "x")
