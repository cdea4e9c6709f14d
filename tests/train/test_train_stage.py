"""The train stage on the small toy world: specialists learn their dimension, mixtures log their
realized counts, LoRA runs save (and merge) adapters, bad data fails before any training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file
from train_fixtures import *  # noqa: F403

from conftest import SMALL_WORLD, compose
from hhh_bench.core.schema import SchemaError, read_jsonl, write_jsonl
from hhh_bench.stages.common import CACHE
from hhh_bench.stages.train import run_train

QUICK = ["train.max_steps=2", "train.logging_steps=1", "train.margin_max_pairs=8"]


def cfg_with(small_cfg, *overrides):
    """The small-world config with more overrides (same root: base and data are shared)."""
    base = [f"root={small_cfg.root}", "logger=none", *SMALL_WORLD, *overrides]
    try:
        return compose(base)
    except Exception:  # noqa: BLE001 - see train_fixtures.small_cfg
        return compose([*base, "~merge", "~merge_engine"])


def test_malformed_preference_file_is_rejected_before_training(
    small_cfg, world_dir, tmp_path, monkeypatch
):
    data = tmp_path / "data"
    shutil.copytree(world_dir / "prefs", data / "prefs")
    rows = read_jsonl(data / "prefs" / "honest_train.jsonl")
    good = rows[3]["rejected"]
    rows[3]["rejected"] = rows[3]["chosen"]
    write_jsonl(data / "prefs" / "honest_train.jsonl", rows)

    def no_training(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr("hhh_bench.train.dpo.train_dpo", no_training)
    monkeypatch.setattr("hhh_bench.models.load_causal_lm", no_training)
    base = {"path": str(tmp_path / "no-model"), "key": "none"}
    with pytest.raises(
        SchemaError, match=r"honest_train\.jsonl: row 3 \(id='toy3h/honest/train/00003'\)"
    ):
        run_train(
            small_cfg, base, {"dir": str(data), "key": "bad"}, dimensions=["helpful", "honest"]
        )
    rows[3]["rejected"] = good
    rows[5]["dimension"] = "helpful"
    write_jsonl(data / "prefs" / "honest_train.jsonl", rows)
    with pytest.raises(
        SchemaError, match="row 5 .* dimension 'helpful' in a file of dimension 'honest'"
    ):
        run_train(small_cfg, base, {"dir": str(data), "key": "bad2"}, dimensions=["honest"])
    with pytest.raises(FileNotFoundError, match="harmless_train.jsonl"):
        run_train(
            small_cfg, base, {"dir": str(data / "nothing"), "key": "x"}, dimensions=["harmless"]
        )
    with pytest.raises(ValueError, match="dimensions must be"):
        run_train(small_cfg, base, {"dir": str(data), "key": "x"}, dimensions=["kind"])


@pytest.mark.parametrize("dim", ["helpful", "honest", "harmless"])
def test_specialist_loss_falls_and_its_heldout_margin_rises(small_cfg, small_data, small_base, dim):
    """Acceptance on the toy world with the default train config (small world, 120 pairs)."""
    res = run_train(small_cfg, small_base, small_data, dimensions=[dim])
    out = Path(res["path"])
    assert res["kind"] == "specialist" and res["dimensions"] == [dim] and res["mix"] is None
    assert res["counts"] == {dim: 120} and res["budget"] == 120
    assert res["final_loss"] < res["first_loss"]
    m = res["margins"][dim]
    assert m["trained"]["mean"] > m["base"]["mean"] and m["delta"] > 0
    assert set(res["margins"]) == {"helpful", "honest", "harmless"}
    for f in ("model.safetensors", "config.json", "tokenizer.json", "provenance.json",
              "train_info.json", "loss_curve.jsonl"):  # fmt: skip
        assert (out / f).is_file(), f
    assert not (out / "trainer").exists()
    curve = read_jsonl(out / "loss_curve.jsonl")
    assert [r["loss"] for r in curve if "loss" in r][-1] == res["final_loss"]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["seed"] == 0 and prov["versions"]["trl"] and prov["config"]["train"]["beta"] == 0.1
    assert res["model_path"] == str(out) and res["adapter_path"] is None


def test_specialist_is_cached(small_cfg, small_data, small_base):
    first = run_train(small_cfg, small_base, small_data, dimensions=["harmless"])
    CACHE.reset()  # as a new run would: the first run's folder is reused
    again = run_train(small_cfg, small_base, small_data, dimensions=["harmless"], name="again")
    assert again["cached"] and again["key"] == first["key"] and again["name"] == "again"
    assert CACHE.hits == {"train": 1} and CACHE.misses == {}
    assert again["margins"] == first["margins"]
    # noise on another dimension does not touch this run's data: the clean specialist is reused
    noisy = cfg_with(small_cfg, "data.noise.flip_rate=0.2", "data.noise.dimension=honest")
    assert run_train(noisy, small_base, small_data, dimensions=["harmless"])["key"] == first["key"]


def test_mixture_logs_realized_counts_budget_and_noise(small_cfg, small_data, small_base):
    cfg = cfg_with(
        small_cfg,
        *QUICK,
        "mix=fixed_ratio",
        "mix.budget=all_specialists",
        "data.noise.flip_rate=0.1",
    )
    res = run_train(cfg, small_base, small_data)
    # 3 x 120 pairs, budget all_specialists = 360, shares .4/.3/.3 -> 144/108/108
    assert res["kind"] == "mixture" and res["mix"] == "fixed_ratio"
    assert res["counts"] == {"helpful": 144, "honest": 108, "harmless": 108}
    assert res["budget"] == 360 and res["budget_mode"] == "all_specialists"
    assert res["mix_info"]["resampled"] == {"helpful": 24, "honest": 0, "harmless": 0}
    assert res["noise"]["flipped"] == 36 and res["noise"]["eligible"] == 360  # round(0.1 * 360)
    ids = json.loads((Path(res["path"]) / "noise_flipped_ids.json").read_text())
    assert len(ids) == 36
    info = json.loads((Path(res["path"]) / "train_info.json").read_text())
    assert info["counts"] == res["counts"] and info["noise"]["flipped"] == 36
    # a different noise seed is a different run
    other = run_train(
        cfg_with(
            small_cfg,
            *QUICK,
            "mix=fixed_ratio",
            "mix.budget=all_specialists",
            "data.noise.flip_rate=0.1",
            "data.noise.seed=5",
        ),
        small_base,
        small_data,
    )
    assert other["key"] != res["key"]


def test_sequential_mixture_records_its_phases(small_cfg, small_data, small_base):
    # one step per phase: no warmup (its one step would train at learning rate 0, refused)
    cfg = cfg_with(small_cfg, *QUICK, "train.warmup_ratio=0.0")
    res = run_train(
        cfg,
        small_base,
        small_data,
        dimensions=["harmless", "honest"],
        mix={"name": "sequential", "budget": 10, "order": ["honest", "harmless"]},
    )
    assert res["phases"] == ["honest", "harmless"] and res["counts"] == {"harmless": 5, "honest": 5}


def test_lora_run_saves_the_adapter_and_merges_on_request(small_cfg, small_data, small_base):
    from hhh_bench.models import load_causal_lm

    cfg = cfg_with(
        small_cfg, *QUICK, "train=dpo_lora", "train.merge_adapter=true", "train.lora.r=4"
    )
    res = run_train(cfg, small_base, small_data, dimensions=["honest"])
    out = Path(res["path"])
    assert res["weights"] == "adapter+merged" and res["adapter_path"] == str(out / "adapter")
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    adapter_keys = load_file(out / "adapter" / "adapter_model.safetensors")
    assert adapter_keys and all("lora_" in k for k in adapter_keys)
    cfg_json = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg_json["r"] == 4 and cfg_json["base_model_name_or_path"] == str(
        Path(small_base["path"]).resolve()
    )
    merged = load_causal_lm(res["model_path"], dtype="float32")
    base = load_causal_lm(small_base["path"], dtype="float32")
    name = "model.layers.0.self_attn.v_proj.weight"
    assert not (merged.get_parameter(name) == base.get_parameter(name)).all()
    assert (merged.get_parameter("lm_head.weight") == base.get_parameter("lm_head.weight")).all()


def test_wandb_files_go_under_the_root(small_cfg, monkeypatch):
    import os

    from hhh_bench.tracking.wandb_log import setup_trainer_env

    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    cfg = cfg_with(small_cfg, "logger=wandb")
    setup_trainer_env(cfg.root, {"name": "wandb", "project": "hhh-bench"})

    assert os.environ["WANDB_DIR"] == str(Path(str(small_cfg.root)).resolve() / "wandb")
    assert os.environ["WANDB_PROJECT"] == "hhh-bench"


def test_sft_on_chosen_responses(small_cfg, small_data, small_base):
    res = run_train(
        cfg_with(small_cfg, *QUICK, "train=sft"), small_base, small_data, dimensions=["harmless"]
    )
    assert res["train_kind"] == "sft" and res["weights"] == "full" and res["steps"] == 2
    assert (Path(res["path"]) / "model.safetensors").is_file()
