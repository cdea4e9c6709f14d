"""Battery 16 (an independent battery on b054408, by helpers who read neither the earlier
batteries nor their tests): each finding, fixed, with its test. A: the data, mixture, training
and config inputs."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from conftest import compose

ASSETS = Path(__file__).resolve().parent / "assets" / "sources"


def _world(**knobs):
    from omegaconf import OmegaConf

    from hhh_bench.data.toy3h import Toy3HConfig

    world = {k: v for k, v in OmegaConf.to_container(compose([]).data.world).items() if k != "seed"}
    return Toy3HConfig.from_mapping({**world, "seed": 0, **knobs}, complete=True)


def test_a1_a_two_sided_world_with_nothing_left_to_contest_is_refused_up_front():
    """A1: ``two_sided_share=1`` with contested pairs ended in a ZeroDivisionError."""
    with pytest.raises(ValueError, match=r"two_sided_share=1.0 makes every one of the 400 train "
                       r"pairs there the other side \(none left to contest\)"):  # fmt: skip
        _world(two_sided_share=1.0)
    _world(two_sided_share=1.0, conflict_rate=0.0)  # nothing contested: a world


def test_a2_a_cap_of_zero_and_a_dimension_left_without_pairs_are_refused(tmp_path, monkeypatch):
    """A2: ``max_rows: 0`` gave an empty training set, cached, with exit 0."""
    from hhh_bench.data.sources import SourceConfigError, build_preference_sets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    path = str(ASSETS / "hh_rlhf_helpful_base.jsonl")

    def build(**entry):
        cfg = {"kind": "sources", "dimensions": ["helpful"], "cache_dir": str(tmp_path / "c"),
               "sources": {"helpful": [{"name": "hh_rlhf_helpful", "path": path, **entry}]}}  # fmt: skip
        return build_preference_sets(cfg)

    with pytest.raises(SourceConfigError, match=r"`max_rows` must be null \(all pairs\) or an "
                       r"integer >= 1 \(a cap of 0 keeps no pair\), got 0"):  # fmt: skip
        build(max_rows=0)
    with pytest.raises(SourceConfigError, match="got True"):
        build(max_rows=True)
    from hhh_bench.data.sources import build as B

    real = B.cap_rows
    monkeypatch.setattr(B, "cap_rows", lambda rows, cap, seed: real(rows, cap, seed)[:0])
    with pytest.raises(SourceConfigError, match=r"dimension 'helpful' is left with no preference "
                       r"pair \(its sources: \{'hh_rlhf_helpful'"):  # fmt: skip
        build()


def test_a3_a_deleted_or_nulled_world_knob_is_refused():
    """A3: ``data.world=null`` / ``~data.world.conflict_rate`` took the code's defaults (a world
    without contested pairs or stories), not the documented ones, with exit 0."""
    from hhh_bench.data.toy3h import Toy3HConfig
    from hhh_bench.validation import check_world

    cfg = compose(["~data.world.conflict_rate"])
    from hhh_bench.core.config import DataConfig, load

    with pytest.raises(ValueError, match=r"data.world lacks \['conflict_rate'\] .*set it, e.g. "
                       r"data.world.conflict_rate=<value>"):  # fmt: skip
        check_world(load(DataConfig, dict(cfg.data), "data"))
    with pytest.raises(ValueError, match=r"data.world lacks \["):
        Toy3HConfig.from_mapping({}, complete=True)
    assert Toy3HConfig.from_mapping({"seed": 3}).seed == 3  # a world built by hand: as before


def test_a4_plan_counts_the_model_the_base_stage_builds_without_a_spec_key(tmp_path):
    """A4: ``~model.spec.hidden_size`` planned LlamaConfig's 4096-wide model (28.8 GB); the base
    stage builds TinyModelSpec's (the documented 64)."""
    from hhh_bench.planning import model_config

    full = compose([f"root={tmp_path}"])
    cut = compose([f"root={tmp_path}", "~model.spec.hidden_size"])
    from hhh_bench.stages.common import to_dict

    a = model_config(to_dict(full), None, None)[0]
    b = model_config(to_dict(cut), None, None)[0]
    assert a == b and b["hidden_size"] == 64


@pytest.mark.parametrize(("overrides", "says"), [
    (["train=dpo", "+train.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj], bias: none}"],
     r"train.lora is set but train.method=full trains every weight, no adapter"),
    (["train=dpo_lora", "train.method=full"], r"train.lora is set but train.method=full"),
    (["train=sft", "train.beta=0.5", "train.loss_type=ipo"],
     r"train.beta=0.5, train.loss_type='ipo': DPO-only setting\(s\), which train.kind=sft"),
    (["train=sft", "train.precompute_ref_log_probs=true"],
     r"train.precompute_ref_log_probs=True: DPO-only"),
])  # fmt: skip
def test_a5_a6_a_knob_of_another_recipe_is_refused(overrides, says):
    """A5: an adapter under full fine-tuning, A6: β / a loss under SFT: ignored, and keyed."""
    from hhh_bench.core.config import TrainConfig, load
    from hhh_bench.stages.common import to_dict

    cfg = compose(overrides)
    with pytest.raises(ValueError, match=says):
        load(TrainConfig, to_dict(cfg.train), "train")
    for ok in (["train=dpo"], ["train=sft"], ["train=dpo_lora"]):
        load(TrainConfig, to_dict(compose(ok).train), "train")


@pytest.mark.parametrize(("weights", "says"), [
    ({"helpful": 1, "honest": 1}, r"\['harmless'\] missing"),
    ({"helpful": 1, "honest": 1, "harmless": 1, "other": 1}, r"\['other'\] not mixed"),
    ({"helpful": 0, "honest": 0, "harmless": 0}, r"mix.weights are all 0"),
])  # fmt: skip
def test_a7_reward_select_weighs_every_mixed_dimension(weights, says):
    """A7: a dimension left out of ``mix.weights`` weighed 0, without a word."""
    from hhh_bench.data.mixing.registry import check_mix

    with pytest.raises(ValueError, match=says):
        check_mix({"name": "reward_select", "weights": weights}, ["helpful", "honest", "harmless"])
    check_mix({"name": "reward_select", "weights": {"helpful": 2, "honest": 1, "harmless": 0}},
              ["helpful", "honest", "harmless"])  # fmt: skip


def test_a8_reward_select_that_keeps_every_pair_says_so(caplog):
    """A8: at its default budget reward_select keeps all pairs: its weights and scorer change
    nothing (uniform's data), said once and recorded."""
    from hhh_bench.data.mixing import reward_select as R

    sets = {d: [{"id": f"{d}{i}", "prompt": [], "chosen": [], "rejected": []} for i in range(4)]
            for d in ("helpful", "honest")}  # fmt: skip
    params = R.RewardSelectParams(scorer=lambda rows: [{"helpful": 1.0, "honest": 0.0}] * len(rows))
    R._SAID.clear()
    with caplog.at_level(logging.INFO, logger="hhh_bench"):
        res = R.reward_select(sets, budget=8, rng=random.Random(0), params=params)
        R.reward_select(sets, budget=8, rng=random.Random(0), params=params)
    assert res.info["selects_nothing"] is True
    assert [r.getMessage() for r in caplog.records if "keeps every pair" in r.getMessage()] == [
        "mix=reward_select keeps every pair ({'helpful': 4, 'honest': 4} of {'helpful': 4, "
        "'honest': 4}): its ranking selects nothing here, and the mixture is uniform's data; a "
        "budget below the pairs there are, or shares, select"]  # fmt: skip
    assert R.reward_select(sets, budget=4, rng=random.Random(0), params=params).info[
        "selects_nothing"] is False  # fmt: skip


def test_a11_leakage_switches_are_booleans():
    """A11: ``data.leakage.check_overlap=no`` (the string 'no') was read as on."""
    from hhh_bench.data.sources import SourceConfigError
    from hhh_bench.data.sources.build import leakage_settings

    with pytest.raises(SourceConfigError, match=r"check_overlap must be true or false, got 'no'"):
        leakage_settings({"check_overlap": "no"})
    with pytest.raises(SourceConfigError, match=r"drop_truthfulqa_prompts must be true, false"):
        leakage_settings({"drop_truthfulqa_prompts": "sometimes"})
    assert leakage_settings({"check_overlap": False})["check_overlap"] is False


def test_a12_stage_data_builds_the_worlds_of_seeds_only(tmp_path):
    """A12: ``stage=data seeds=[1,2]`` also built seed 0's world (``seed``), as ``stage=all``
    with the report seeds built a design seed's world it never used."""
    from hhh_bench.pipeline import run

    out = run(compose([f"root={tmp_path}", "stage=data", "seeds=[1,2]", "logger=none"]))
    assert sorted(k for k in out if k.startswith("data")) == ["data", "data_seed_1", "data_seed_2"]
    assert out["data"] == out["data_seed_1"]
    seeds = {__import__("json").loads((p / "manifest.json").read_text())["config"]["seed"]
             for p in (tmp_path / "data").iterdir()}  # fmt: skip
    assert seeds == {1, 2}


@pytest.mark.parametrize(("path", "says"), [
    ("''", r"`path` is empty or not a path \(''\): give the local file\(s\), or null"),
    (f"[{ASSETS}/hh_rlhf_helpful_base.jsonl,{ASSETS}/x.parquet]",
     r"`path` lists files of different formats \(\['json', 'parquet'\]"),
])  # fmt: skip
def test_a13_a14_an_empty_path_or_mixed_formats_are_named(path, says):
    """A13: an empty ``path`` read the Hub split instead; A14: a list mixing .jsonl and .parquet
    was read with the first file's reader (an ArrowInvalid about the second)."""
    from omegaconf import OmegaConf

    from hhh_bench.data.sources import SourceConfigError, load_source_config
    from hhh_bench.data.sources.loader import validate_source_config

    value = OmegaConf.create({"p": OmegaConf.from_dotlist([f"x={path}"]).x}).p
    with pytest.raises(SourceConfigError, match=says):
        validate_source_config({**load_source_config("hh_rlhf_helpful"), "path": value})


def test_a15_a_reward_model_scorer_without_its_arguments_is_refused_up_front():
    """A15: ``mix.scorer=reward_model`` without ``scorer_args`` passed plan, then failed after
    the data and θ0 with a TypeError naming a constructor."""
    from hhh_bench.stages.common import to_dict
    from hhh_bench.validation import check_mix_knobs

    cfg = to_dict(compose(["mix=resolved", "mix.scorer=reward_model", "stage=train"]))
    with pytest.raises(ValueError, match=r"mix \(resolved\): scorer 'reward_model' does not take "
                       r"scorer_args \{\} \(missing a required argument: 'model'\)"):  # fmt: skip
        check_mix_knobs(cfg)


def test_a16_an_overlap_check_against_no_prompt_is_not_called_checked(
    tmp_path, monkeypatch, caplog
):
    """A16: public sources with the toy suite (no evaluation prompt) recorded
    ``overlap_checked: true``, passed, against nothing."""
    from hhh_bench.data.sources import build_preference_sets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = {"kind": "sources", "dimensions": ["helpful"], "cache_dir": str(tmp_path / "c"),
           "sources": {"helpful": [{"name": "hh_rlhf_helpful",
                                    "path": str(ASSETS / "hh_rlhf_helpful_base.jsonl")}]}}  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="hhh_bench"):
        _, manifest = build_preference_sets(cfg, eval_sets={"toy3h_known_qa_test": []})
    assert manifest["leakage"]["overlap_checked"] is False
    assert "the overlap check compared nothing" in caplog.text
    _, manifest = build_preference_sets(
        cfg, eval_sets={"some_eval": ["What is the capital of France?"]}
    )
    assert manifest["leakage"]["overlap_checked"] is True


def test_a18_a_world_asking_for_more_names_than_it_can_draw_is_refused():
    """A18: ``data.world.n_known.train=100000`` ran forever: 68,600 names there are."""
    from hhh_bench.data import toy3h

    assert len(toy3h._ONSETS) ** 3 * len(toy3h._VOWELS) ** 2 == toy3h.NAME_SPACE
    with pytest.raises(ValueError, match=r"ask for 100,160 entity names in all; the world's "
                       r"5-letter names number 68,600"):  # fmt: skip
        _world(n_known={"train": 100_000, "validation": 20, "test": 20})


def test_a19_sft_refuses_a_curriculum_setting_it_cannot_train():
    """A19: ``train=sft mix=sequential`` recorded ``schedule: per_phase`` (and ``reference:
    phase``) but trained one schedule with no reference."""
    from hhh_bench.stages.common import to_dict
    from hhh_bench.validation import check_mix_knobs

    for extra in ([], ["mix.reference=phase", "mix.schedule=per_phase"]):
        cfg = to_dict(compose(["train=sft", "mix=sequential", "stage=train", *extra]))
        with pytest.raises(ValueError, match=r"mix \(sequential\): train.kind=sft trains the "
                           r"phases one after another under one learning-rate schedule"):  # fmt: skip
            check_mix_knobs(cfg)
    check_mix_knobs(
        to_dict(compose(["train=sft", "mix=sequential", "mix.schedule=one", "stage=train"]))
    )
    check_mix_knobs(to_dict(compose(["train=dpo", "mix=sequential", "stage=train"])))


def test_b4_gc_keeps_what_a_torn_last_line_may_refer_to(tmp_path, capsys):
    """B4: `cache gc --yes` removed the evaluation a torn last line of results.jsonl (a crash
    mid-write) referred to, without a word."""
    from hhh_bench.cachetool import main
    from test_battery15 import _output

    _output(tmp_path, "eval", "e0", [])
    (tmp_path / "results.jsonl").write_text('{"row_key": "e0", "artifacts": {"eval_dir": "eval/e0"')
    assert main(["gc", str(tmp_path)]) == 0
    assert (
        "ends in a torn line: an output it refers to may be listed below" in capsys.readouterr().out
    )
    assert main(["gc", str(tmp_path), "--yes"]) == 2
    assert "ends in a torn line (a write cut short by a crash)" in capsys.readouterr().err
    assert (tmp_path / "eval" / "e0").is_dir()


def test_b5_stage_report_with_a_seed_the_store_lacks_is_refused(tmp_path):
    """B5: ``stage=report seed=7`` showed the store's seed-0 report, as if it were seed 7's."""
    from hhh_bench.pipeline import _check_report_seeds

    rows = [{"seed": 0}, {"seed": 1}]
    with pytest.raises(ValueError, match=r"reports every seed of the results store \(0, 1\); "
                       r"seed=7 is not one of them and selects nothing"):  # fmt: skip
        _check_report_seeds(compose([f"root={tmp_path}", "seed=7"]), rows)
    _check_report_seeds(compose([f"root={tmp_path}", "seed=1"]), rows)
    _check_report_seeds(compose([f"root={tmp_path}"]), rows)


def test_b7_a_disabled_wandb_run_names_no_folder(tmp_path, monkeypatch):
    """B7: ``logger.mode=disabled`` printed ``wandb run: /tmp/wandb/run-...``, a folder that
    never existed."""
    from hhh_bench.tracking.wandb_log import log_experiment

    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    row = {"row_key": "k", "name": "ties", "kind": "merge", "method": "ties", "seed": 0,
           "split": "test", **dict.fromkeys(("helpful", "honest", "harmless", "average", "min"), 0.5)}  # fmt: skip
    got = log_experiment(
        [row], logger_cfg={"name": "wandb", "mode": "disabled"}, root=tmp_path, name="x"
    )
    assert got is None


def test_b_a_merge_seed_is_a_seed_a_run_takes():
    """B (minor): ``merge.params.seed=-5`` was accepted where a run's ``seed=-1`` is refused."""
    from hhh_bench.merging import get_method

    for bad in (-5, 2**32):
        with pytest.raises(
            ValueError, match=r"merge.params.seed must be an integer in \[0, 2\*\*32 - 1\]"
        ):
            get_method("dare_ta").make_params(seed=bad)
    assert get_method("dare_ta").make_params(seed=3).seed == 3


def test_a9_a_weight_under_drop_mode_is_refused():
    """A9: ``mix=conflict_aware mix.mode=drop mix.weight=0.5`` trained the same data as the
    default weight, under a key of its own."""
    from hhh_bench.data.mixing.registry import check_mix

    dims = ["helpful", "honest", "harmless"]
    with pytest.raises(ValueError, match=r"mix.weight=0.5 weighs conflicting pairs in mode: "
                       r"downweight; mode: drop removes them"):  # fmt: skip
        check_mix({"name": "conflict_aware", "mode": "drop", "weight": 0.5}, dims)
    check_mix({"name": "conflict_aware", "mode": "drop", "weight": 0.25}, dims)  # the default
    check_mix({"name": "conflict_aware", "mode": "downweight", "weight": 0.5}, dims)
