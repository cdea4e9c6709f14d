"""Battery 17 (an independent battery on bac41a8, by a helper who read neither the earlier
batteries nor their tests): each finding, fixed, with its test (F2, the empty store and
``cache gc --yes``, is in test_battery15.py)."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from conftest import compose


def test_f1_noise_on_a_dimension_no_run_trains_is_refused():
    """F1: ``data.dimensions=[helpful] data.noise.dimension=honest`` trained the clean data under
    the clean run's key, exit 0: a noisy condition that flipped nothing."""
    from hhh_bench.core.config import DataConfig, load
    from hhh_bench.stages.common import to_dict

    def data(*overrides):
        return load(DataConfig, to_dict(compose(list(overrides)).data), "data")

    with pytest.raises(ValueError, match=r"data.noise.dimension='honest' is not in "
                       r"data.dimensions \['helpful'\]: no pair would be flipped"):  # fmt: skip
        data("data.dimensions=[helpful]", "data.noise.flip_rate=0.5", "data.noise.dimension=honest")
    data("data.dimensions=[helpful]", "data.noise.flip_rate=0.5", "data.noise.dimension=helpful")
    data("data.dimensions=[helpful]", "data.noise.flip_rate=0.0", "data.noise.dimension=honest")
    data("data.noise.flip_rate=0.5", "data.noise.dimension=honest")  # the honest run is noisy


def test_u1_merge_adapter_under_full_fine_tuning_is_refused():
    """U1: ``train.merge_adapter=true`` with ``method=full``: a new key, a retrain, the same
    weights."""
    from hhh_bench.core.config import TrainConfig, load
    from hhh_bench.stages.common import to_dict

    with pytest.raises(ValueError, match=r"train.merge_adapter=true merges a LoRA adapter into "
                       r"full weights, but train.method=full"):  # fmt: skip
        load(TrainConfig, to_dict(compose(["train.merge_adapter=true"]).train), "train")
    cfg = compose(["train=dpo_lora", "train.merge_adapter=true"])
    assert load(TrainConfig, to_dict(cfg.train), "train").merge_adapter


def test_u2_gc_lists_and_removes_what_a_killed_run_left(tmp_path, capsys):
    """U2: a killed eval's ``eval/.<key>.tmp-*`` stayed after later runs, and `cache gc` did
    not list it."""
    from hhh_bench.cachetool import main
    from hhh_bench.core.provenance import _host
    from test_battery15 import _output

    _output(tmp_path, "eval", "e0", [])
    (tmp_path / "results.jsonl").write_text(json.dumps({"row_key": "e0"}) + "\n")
    dead = 2**22 + 12345  # above any pid this machine hands out (pid_max is at most 2**22)
    left = tmp_path / "eval" / f".e1.tmp-{dead}-{time.time_ns()}@{_host()}"
    (left / "model").mkdir(parents=True)
    live = tmp_path / "eval" / f".e2.tmp-{os.getpid()}-{time.time_ns()}@{_host()}"
    live.mkdir()
    assert main(["gc", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"stale temporary {left}" in out and str(live) not in out
    assert "1 temporary folder(s) of killed runs (remove with --yes)" in out
    assert left.is_dir()
    assert main(["gc", str(tmp_path), "--yes"]) == 0
    assert f"removed {left}" in capsys.readouterr().out
    assert not left.exists() and live.is_dir() and (tmp_path / "eval" / "e0").is_dir()


def test_u3_merge_inputs_known_wrong_are_refused_before_the_data_stage(
    tmp_path, small_base, small_specialists
):
    """U3: the same model twice, or a ``merge.base`` that is not the models' θ0, wrote the
    data stage's world first, then refused."""
    from hhh_bench.pipeline import run

    models = sorted(str(p) for p in small_specialists)
    copy = tmp_path / "copy"
    shutil.copytree(models[0], copy)

    def merge(base, *given):
        return compose([f"root={tmp_path / 'r'}", "logger=none", "stage=merge",
                        "merge=task_arithmetic", f"merge.base={base}",
                        f"merge.models=[{','.join(given)}]"])  # fmt: skip

    with pytest.raises(ValueError, match=r"merge.models\[1\]=.* is merge.models\[0\]=.* \(the "
                       r"same content\): one model listed twice"):  # fmt: skip
        run(merge(small_base["path"], models[0], models[0]))
    with pytest.raises(ValueError, match=r"one model listed twice"):
        run(merge(small_base["path"], models[0], str(copy)))
    with pytest.raises(ValueError, match=r"merge.models\[0\]=.* was trained from"):
        run(merge(models[2], models[0], models[1]))
    assert not (tmp_path / "r" / "data").exists()


def test_u3_stage_report_builds_no_data(tmp_path):
    """U3: a refused ``stage=report`` (``eval.select_split=test`` of a store chosen on
    validation) wrote a world first."""
    from hhh_bench.pipeline import run

    row = {"row_key": "k", "name": "ties", "kind": "merge", "method": "ties", "seed": 0,
           "split": "test", "experiment": "toy3h", "extra": {"selected_on": "validation"},
           **dict.fromkeys(("helpful", "honest", "harmless", "average", "min"), 0.5)}  # fmt: skip
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n")
    cfg = compose([f"root={tmp_path}", "logger=none", "stage=report", "name=toy3h",
                   "eval.select_split=test"])  # fmt: skip
    with pytest.raises(ValueError, match=r"eval.select_split=test, but the pipeline chose"):
        run(cfg)
    assert not (tmp_path / "data").exists()


def test_u4_a_world_knob_with_no_effect_is_said(tmp_path, capsys):
    """U4: ``n_unknown.sft=0 sft_idk_rate=0.9`` was accepted without a word."""
    from test_battery16 import _world

    n_unknown = {"sft": 0, "train": 60, "validation": 20, "test": 20}
    (note,) = _world(
        n_unknown=n_unknown, sft_idk_rate=0.9, story_share=0.0, sft_story_idk_rate=0.0
    ).inert_knobs()
    assert note.startswith("data.world.sft_idk_rate=0.9 has no effect: data.world.n_unknown.sft=0")
    assert (
        _world(
            n_unknown=n_unknown, sft_idk_rate=0.0, story_share=0.0, sft_story_idk_rate=0.0
        ).inert_knobs()
        == []
    )
    assert _world().inert_knobs() == []
    notes = _world(n_unknown=n_unknown, story_share=0.2).inert_knobs()
    assert [n.split("=")[0] for n in notes] == ["data.world.sft_idk_rate",
                                                "data.world.sft_story_idk_rate"]  # fmt: skip
