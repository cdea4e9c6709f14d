"""Battery 18 (an independent battery on 7bd7479, by helpers who read neither the earlier
batteries nor their tests): each finding, fixed, with its test. A: the data, mixture, training,
config and eval inputs; B: merging, the cache, the store and the report."""

from __future__ import annotations

import json

import pytest

from conftest import compose


def _load(group, cls_name, *overrides):
    from hhh_bench.core import config
    from hhh_bench.stages.common import to_dict

    return config.load(getattr(config, cls_name), to_dict(compose(list(overrides))[group]), group)


def test_a_s1_a_split_no_world_draws_is_refused():
    """S1: ``+data.world.n_known.sft=5`` was read by nothing, under a new data key."""
    from test_battery16 import _world

    with pytest.raises(ValueError, match=r"data.world.n_known.sft is not a split of n_known "
                       r"\(train, validation, test\)"):  # fmt: skip
        _world(n_known={"train": 60, "validation": 20, "test": 20, "sft": 5})
    with pytest.raises(ValueError, match=r"n_unknown.extra is not a split of n_unknown \(sft, "):
        _world(n_unknown={"sft": 20, "train": 60, "validation": 20, "test": 20, "extra": 5})


def test_a_s2_a_mix_setting_on_a_specialist_is_refused():
    """S2: ``stage=train data.dimensions=[helpful] mix.budget=50`` reused the 400-pair specialist."""
    from hhh_bench.stages.common import to_dict
    from hhh_bench.validation import check_mix_of_specialist

    one = ["stage=train", "data.dimensions=[helpful]"]
    for extra in (["mix.budget=50"], ["mix=fixed_ratio"]):
        with pytest.raises(ValueError, match=r"stage=train on one dimension trains the helpful "
                           r"specialist on its pairs as they are"):  # fmt: skip
            check_mix_of_specialist(to_dict(compose([*one, *extra])))
    check_mix_of_specialist(to_dict(compose(one)))
    check_mix_of_specialist(to_dict(compose(["stage=train", "mix=fixed_ratio"])))
    check_mix_of_specialist(to_dict(compose(["data.dimensions=[helpful]", "mix.budget=50"])))


def test_a_s3_warmup_under_a_constant_schedule_is_refused():
    """S3: ``lr_scheduler_type=constant warmup_ratio=0.5``: the weights of no warmup, keyed apart."""
    with pytest.raises(ValueError, match=r"train.warmup_ratio=0.5 with "
                       r"train.lr_scheduler_type=constant: that schedule has no warmup"):  # fmt: skip
        _load("train", "TrainConfig", "train.lr_scheduler_type=constant", "train.warmup_ratio=0.5")
    _load("train", "TrainConfig", "train.lr_scheduler_type=constant", "train.warmup_ratio=0")
    _load("train", "TrainConfig", "train.lr_scheduler_type=constant_with_warmup")


def test_a_s4_single_stages_build_theta0_with_base_seed_as_stage_all_does(
    small_cfg, small_data, small_base
):
    """S4: ``stage=train pipeline.base_seed=3`` used seed 0's θ0, where stage=all uses seed 3's."""
    from hhh_bench.core.stagecache import CACHE, NotCached
    from hhh_bench.pipeline import _base, with_values

    def key(cfg):
        CACHE.dry_run = True
        try:
            return _base(cfg, small_data)["key"]
        except NotCached as e:
            return e.key
        finally:
            CACHE.dry_run = False

    seeded = key(with_values(small_cfg, {"pipeline.base_seed": 3}))
    assert seeded == key(with_values(small_cfg, {"seed": 3})) != small_base["key"]
    assert key(with_values(small_cfg, {"pipeline.base_seed": 0})) == small_base["key"]


def test_a_l1_recompute_keeps_a_file_the_stage_did_not_write(tmp_path):
    """L1: ``cache.on_mismatch=recompute`` replaced the folder, and a user's notes with it."""
    from hhh_bench.core.content import ContentMismatch
    from hhh_bench.core.stagecache import CACHE, cached_stage

    def once():
        return cached_stage(tmp_path, "data", {"x": 1}, lambda tmp: {"rows": 3},
                            result_file="manifest.json")  # fmt: skip

    CACHE.reset()
    out = once().dir
    (out / "notes.txt").write_text("my analysis")
    try:
        CACHE.on_mismatch = "recompute"
        with pytest.raises(ContentMismatch, match=r"holds file\(s\) its stage did not write: "
                           r"notes.txt; recomputing would replace the folder and delete them"):  # fmt: skip
            once()
        assert (out / "notes.txt").read_text() == "my analysis"
        (out / "notes.txt").unlink()
        (out / "manifest.json").write_text("[]")  # a file of its own, changed: recomputed
        assert once().info == {"rows": 3}
    finally:
        CACHE.reset()


def test_a_u2_what_the_config_alone_refuses_comes_before_any_stage():
    """U2: a noise rate that flips no toy pair, and ``mix.shares`` under ``scope: global``,
    were refused after θ0 was trained."""
    from hhh_bench.stages.common import to_dict
    from hhh_bench.validation import validate_run

    cfg = ["stage=train", "data.dimensions=[helpful]", "data.world.pairs_per_dimension=8"]
    with pytest.raises(ValueError, match=r"data.noise.flip_rate=0.001 flips no pair of the 8"):
        validate_run(to_dict(compose([*cfg, "data.noise.flip_rate=0.001"])))
    validate_run(to_dict(compose([*cfg, "data.noise.flip_rate=0.1"])))
    from hhh_bench.data.mixing.reward_select import RewardSelectParams

    with pytest.raises(ValueError, match=r"mix.shares has no meaning with scope: global"):
        RewardSelectParams(scope="global", shares={"helpful": 1.0})


def test_a_u1_more_world_knobs_with_no_effect_are_said():
    """U1: ``sft_story_idk_rate`` without stories, ``sft_sycophancy_rate`` without suggestions."""
    from test_battery16 import _world

    notes = _world(story_share=0.0, sft_truth_share=0.0).inert_knobs()
    assert [n.split("=")[0] for n in notes] == ["data.world.sft_story_idk_rate",
                                                "data.world.sft_sycophancy_rate"]  # fmt: skip


def test_a_u4_a_lora_module_listed_twice_is_refused():
    """U4: ``target_modules=[q_proj,q_proj]``: the adapter of ``[q_proj]`` under another key."""
    with pytest.raises(ValueError, match=r"train.lora.target_modules lists \['q_proj'\] more "
                       r"than once"):  # fmt: skip
        _load("train", "TrainConfig", "train=dpo_lora", "train.lora.target_modules=[q_proj,q_proj]")


def test_a_u10_a_damaged_store_takes_no_new_row(tmp_path):
    """U10: ``stage=eval`` appended to a store whose line 1 is no row; the report then called
    that line 'cut short'."""
    from hhh_bench.pipeline import run
    from hhh_bench.tracking.store import StoreError, scan_results

    (tmp_path / "results.jsonl").write_text("not json\n")
    cfg = compose([f"root={tmp_path}", "logger=none", "stage=eval"])
    with pytest.raises(StoreError, match=r"results.jsonl, line 1") as e:
        run(cfg)
    assert "cut short" not in str(e.value)
    assert not (tmp_path / "data").exists()
    (tmp_path / "results.jsonl").write_text('{"row_key": "a", "name": ')  # a torn last line
    with pytest.warns(RuntimeWarning, match="cut short"):
        assert scan_results(tmp_path / "results.jsonl").rows == []


def test_b_f3_a_wandb_project_wandb_refuses_is_named_before_any_stage():
    """F3: ``logger.project=a/b`` ended in W&B's traceback, after report.md was rewritten."""
    from hhh_bench.validation import check_wandb_project

    with pytest.raises(ValueError, match=r"logger.project='a/b': Invalid project name 'a/b'"):
        check_wandb_project("a/b")
    check_wandb_project("hhh-bench")


def test_b_f5_a_family_on_fewer_seeds_does_not_represent_its_group():
    """F5: one merge method run on one seed, lucky there, became the best merge and turned an
    8-seed answer into 'inconclusive on 1 seed'."""
    from hhh_bench.tracking.answer import answer_line, compare
    from hhh_bench.tracking.entries import table_entries
    from test_battery13 import _row

    rows = [_row("merge", "ties", s, 0.70, 0.0) for s in range(4)]
    rows += [_row("mixture", "uniform", s, 0.60, 0.0) for s in range(4)]
    lucky = [_row("merge", "pcb", 0, 0.95, 0.0)]
    result = compare(table_entries(rows + lucky))
    assert result["merge"].startswith("ties") and result["n_seeds"] == 4, result
    assert result["merge_choice"]["fewer_seeds"] == ["pcb"]
    assert "1 on fewer seeds left out: pcb" in answer_line(result)


def test_b_f8_a_rows_setup_key_is_its_setups(tmp_path):
    """F8: an undigested row's stale ``setup_key`` was trusted over its ``setup`` (5-item rows
    pooled with full evaluations)."""
    from hhh_bench.core.provenance import config_hash
    from hhh_bench.tracking.store import setup_key

    setup = {"suite": "toy3h", "split": "test", "limit": 5}
    assert setup_key({"setup": setup, "setup_key": "stale"}) == config_hash(setup, length=10)
    assert setup_key({"setup_key": "older"}) == "older"  # a row from before setups


def test_b_f2_statistics_on_other_data_than_the_models_were_trained_on_are_refused(tmp_path):
    """F2: fisher with ``merge.models`` of another seed's world drew its statistics from this
    run's world, without a word."""
    from hhh_bench.stages.stats import _check_trained_on

    model = tmp_path / "train" / "t1"
    model.mkdir(parents=True)
    (model / "key.json").write_text(json.dumps(
        {"stage": "train", "inputs": ["base/b0", "data/d101"]}))  # fmt: skip
    with pytest.raises(ValueError, match=r"merge.models\[1\]=.* was trained on the data output "
                       r"data/d101 \(its key.json\), but this run's data is data/d0: fisher's"):  # fmt: skip
        _check_trained_on(1, str(model), {"key": "d0"}, "fisher")
    _check_trained_on(1, str(model), {"key": "d101"}, "fisher")
    _check_trained_on(0, str(tmp_path), {"key": "d0"}, "fisher")  # no record: nothing to compare


def test_b_f6_a_theta0_not_beside_a_moved_model_is_not_offered_as_its_path(
    tmp_path, small_specialists
):
    """F6: the refusal offered ``merge.base=<the model's grandparent>/base/<key>``, a folder
    that did not exist (the model had been copied out of its root)."""
    import shutil

    from hhh_bench.pipeline import run

    moved = tmp_path / "m" / "helpful"
    shutil.copytree(sorted(small_specialists)[0], moved)
    cfg = compose([f"root={tmp_path / 'r'}", "logger=none", "stage=merge",
                   "merge=task_arithmetic", f"merge.models=[{moved}]"])  # fmt: skip
    with pytest.raises(ValueError, match=r"give merge.base=<that θ0's folder> \(the model lies "
                       r"outside the root it was trained in: .*/base/\w+ is not there\)"):  # fmt: skip
        run(cfg)


def test_a_u11_a_file_where_a_stage_folder_goes_is_named(tmp_path):
    """U11: a file at ``<root>/data`` gave ``[Errno 17] File exists``."""
    from hhh_bench.core.stagecache import CACHE, cached_stage

    (tmp_path / "data").write_text("mine")
    CACHE.reset()
    with pytest.raises(NotADirectoryError, match=r"data is a file, not a folder: the data stage "
                       r"keeps its outputs in <root>/data/"):  # fmt: skip
        cached_stage(tmp_path, "data", {"x": 1}, lambda tmp: {}, result_file="m.json")
    assert (tmp_path / "data").read_text() == "mine"


def test_a_u5_a_validation_split_left_empty_is_said(tmp_path, monkeypatch, capsys):
    """U5: ``max_rows_per_source=5`` with ``eval_fraction=0.05`` held out no pair, unsaid."""
    from hhh_bench.data.sources.build import build_preference_splits
    from test_battery16 import ASSETS

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    path = str(ASSETS / "hh_rlhf_helpful_base.jsonl")
    cfg = {"kind": "sources", "dimensions": ["helpful"], "cache_dir": str(tmp_path / "c"),
           "eval_fraction": 0.05, "max_rows_per_source": 5,
           "sources": {"helpful": [{"name": "hh_rlhf_helpful", "path": path}]}}  # fmt: skip
    out, _ = build_preference_splits(cfg)
    assert out["validation"]["helpful"] == []
    assert "data.eval_fraction=0.05 holds out no validation pair of ['helpful']" in (
        capsys.readouterr().out
    )


def test_a_u7_pairs_shared_by_two_dimensions_are_counted_and_said(capsys):
    """U7: one file given as the source of two dimensions, without a word."""
    from hhh_bench.data.sources.build import _shared_pairs

    def row(i, dim):
        return {"prompt": f"p{i}", "chosen": "c", "rejected": "r", "dimension": dim}

    sets = {"helpful": [row(i, "helpful") for i in range(20)],
            "harmless": [row(i, "harmless") for i in range(18, 40)]}  # fmt: skip
    assert _shared_pairs(sets) == {"helpful/harmless": 2}
    assert "warning: 2 preference pair(s) are in both the helpful and the harmless set" in (
        capsys.readouterr().out
    )
    sets["harmless"] = [row(i, "harmless") for i in range(19, 40)]
    assert _shared_pairs(sets) == {"helpful/harmless": 1}
    assert capsys.readouterr().out == ""  # 1 of 20: a pair two sets may share


def test_a_u4_noise_on_a_specialists_own_dimension_is_its_noise_on_every_dimension():
    """U4: ``noise.dimension=helpful`` and ``null`` flipped the same pairs of the helpful
    specialist, under two keys (two noise conditions in the report for one)."""
    from hhh_bench.data.prepare import noise_for

    on = {"flip_rate": 0.2, "dimension": "helpful", "seed": 0}
    assert noise_for(on, ["helpful"]) == noise_for({**on, "dimension": None}, ["helpful"])
    assert noise_for(on, ["helpful", "honest"])["dimension"] == "helpful"  # a mixture: not so
    assert noise_for(on, ["honest"]) is None
