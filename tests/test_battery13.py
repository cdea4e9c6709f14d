"""Battery 13's findings (an independent battery on bb47833): each a check on what the user
gave, refused by name before work, or a report that no longer pools what differs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import SMALL_WORLD, compose, run_cli


def test_plan_refuses_a_stage_it_does_not_plan(tmp_path, capsys):
    """F1: ``plan stage=report`` and ``plan stage=bogus`` printed stage=all's 115 jobs."""
    from hhh_bench.planning import main

    assert main([f"root={tmp_path}", "stage=report"]) == 2
    err = capsys.readouterr().err
    assert "plan lists the jobs of stage=all" in err and "not of stage=report" in err
    assert main([f"root={tmp_path}", "stage=bogus"]) == 2
    assert "unknown stage 'bogus'" in capsys.readouterr().err


def test_eval_refuses_a_merge_setting_it_would_not_read(tmp_path):
    """F2: ``stage=eval merge=task_arithmetic`` evaluated θ0 without a word."""
    r = run_cli(f"root={tmp_path}", "logger=none", "stage=eval", "merge=task_arithmetic",
                cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "merge=task_arithmetic: stage=eval does not read the merge settings" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "eval").exists()


def _tiny(tmp_path: Path, name: str, *, seed: int, act: str | None = None) -> str:
    from hhh_bench.models import TinyModelSpec, build_tiny_model, build_word_tokenizer

    spec = TinyModelSpec(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)  # fmt: skip
    model = build_tiny_model(spec, build_word_tokenizer(["a", "b"]), seed=seed)
    if act:
        model.config.hidden_act = act
    model.save_pretrained(tmp_path / name)
    return str(tmp_path / name)


def test_the_architecture_switch_named_by_the_refusal_exists_and_works(tmp_path):
    """F3: the refusal advised ``allow_architecture_mismatch=true``, which no command line could
    set (the diagnostics ignored the engine's switch). It names the setting now, the setting
    composes without ``+`` and reaches the diagnostics as it reaches the merge."""
    from hhh_bench.merging.diagnostics import diagnose

    cfg = compose(["merge_engine.allow_architecture_mismatch=true"])
    assert cfg.merge_engine.allow_architecture_mismatch is True
    base = _tiny(tmp_path, "base", seed=0)
    models = [_tiny(tmp_path, "m1", seed=1), _tiny(tmp_path, "m2", seed=2, act="gelu")]
    with pytest.raises(ValueError, match=r"hidden_act='gelu'.*pass "
                       r"merge_engine\.allow_architecture_mismatch=true"):  # fmt: skip
        diagnose(base, models, progress=False)
    report = diagnose(base, models, progress=False, allow_architecture_mismatch=True)
    assert report["num_models"] == 2


def test_a_top_level_typo_is_refused_with_the_closest_key(tmp_path):
    """F4: ``+sead=5`` ran seed 0 with exit 0 (nested keys were checked, top-level ones not)."""
    from hhh_bench.pipeline import compose_run

    with pytest.raises(ValueError, match=r"^sead is not a setting \(did you mean seed\?\)"):
        compose_run([f"root={tmp_path}", "+sead=5"])
    for ok in ("experiment=toy3h", "+rehearsal=small"):  # keys groups and experiments add
        from hhh_bench.validation import check_top_level_keys

        check_top_level_keys(compose([ok]))


def test_a_folder_holding_two_checkpoints_is_refused_by_merge_and_eval(tmp_path):
    """F5: shards + index beside a stale ``model.safetensors``: the merge read the shards,
    transformers (eval) the single file: two models by one name, exit 0 both."""
    from hhh_bench.merging.sources import weight_files
    from hhh_bench.validation import check_model_folder

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"stale")
    shard = "model-00001-of-00001.safetensors"
    (folder / shard).write_bytes(b"x")
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": shard}}))
    with pytest.raises(ValueError, match=r"eval\.model='.*m': .* holds both model\.safetensors "
                       r"and model\.safetensors\.index\.json"):  # fmt: skip
        check_model_folder(str(folder), "eval.model")
    with pytest.raises(ValueError, match="finetuned model 1: .*two checkpoints"):
        weight_files(folder, "finetuned model 1")
    index.write_text(json.dumps({"weight_map": {"w": "model.safetensors"}}))  # one checkpoint
    check_model_folder(str(folder), "eval.model")


def _merge_row(seed: int, scaling: float, average: float, *, world: str = "w1") -> dict[str, Any]:
    return {"row_key": f"ta-{seed}-{scaling}-{world}", "name": "task_arithmetic",
            "kind": "merge", "method": "task_arithmetic", "params": {"scaling": scaling},
            "seed": seed, "split": "validation", "suite": "toy3h", "metric": "acc",
            "task_specs": [], "world_key": world, "average": average}  # fmt: skip


def test_a_sweep_counts_each_seed_once_and_never_pools_another_world():
    """F6: a seed evaluated again counted as a third seed of a 2-seed store; rows of another
    world pooled into the same point."""
    from hhh_bench.tracking.sweeps import sweep_points, sweep_section

    rows = [_merge_row(s, k, 0.6 + 0.01 * s + 0.1 * k) for s in (0, 1) for k in (0.5, 1.0)]
    rows.append(_merge_row(1, 1.0, 0.7))  # seed 1 evaluated again: the latest counts
    rows += [_merge_row(1, k, 0.3, world="w2") for k in (0.5, 1.0)]  # another world
    sweeps = sweep_points(rows)
    assert [s.method for s in sweeps] == ["task_arithmetic", "task_arithmetic [2]"]
    first, other = sweeps
    point = next(p for p in first.points if p.knobs == {"scaling": 1.0})
    assert sorted(point.seeds) == [0, 1] and point.values == [pytest.approx(0.7), 0.7]
    assert first.repeated == 1 and other.repeated == 0
    assert other.differs == "world (world_key)" and [len(p.values) for p in other.points] == [1, 1]
    md = "\n".join(sweep_section(sweeps, {}))
    assert "1 row(s) of a configuration's seed evaluated again left out" in md
    assert "### task_arithmetic [2]" in md and "Rows of another world (world_key)" in md


def _row(kind: str, name: str, seed: int, score: float, noise: float) -> dict[str, Any]:
    specs = [{"name": t, "dimension": d, "weight": 1.0, "metric": "acc"}
             for t, d in (("h", "helpful"), ("o", "honest"), ("s", "harmless"))]  # fmt: skip
    return {"row_key": f"{name}-{seed}-{noise}", "name": name, "kind": kind, "seed": seed,
            **({"method": name} if kind == "merge" else {"mix_strategy": name}),
            "split": "test", "suite": "hand", "metric": "acc", "data_key": "d",
            "world_key": f"world-{noise}", "noise_rate": noise, "task_specs": specs,
            "tasks": {t: {"acc": score} for t in "hos"},
            **{d: score for d in ("helpful", "honest", "harmless", "average", "min")},
            "created_at": f"2026-12-07T00:00:0{int(noise * 2)}"}  # fmt: skip


def test_the_answer_pairs_a_merge_with_a_mixture_of_its_own_condition():
    """F7: a clean merge was paired with a mixture trained on 50% flipped labels as one seed
    ("the same world and training seed for both")."""
    from hhh_bench.tracking.answer import answer_line, compare
    from hhh_bench.tracking.entries import table_entries

    clean = [_row("merge", "ties", s, 0.70 + 0.01 * s, 0.0) for s in (0, 1)]
    clean += [_row("mixture", "uniform", s, 0.60, 0.0) for s in (0, 1)]
    noisy = [_row("mixture", "uniform", s, 0.90, 0.5) for s in (0, 1)]  # the better mixture
    result = compare(table_entries(clean + noisy))  # the clean condition holds both
    assert result["mixture_mean"] == pytest.approx(0.6), result["mixture_mean"]
    assert "of the rows at noise_rate 0.0" in (line := answer_line(result)), line
    assert "the table also holds noise_rate 0.5" in line
    merges = [r for r in clean if r["kind"] == "merge"]
    result = compare(table_entries(merges + noisy))  # no condition holds both
    assert isinstance(result, str) and "trained in different conditions" in result, result
    noisy += [_row("merge", "ties", s, 0.50, 0.5) for s in (0, 1)]
    result = compare(table_entries(clean + noisy))  # both conditions: the newest is answered
    assert result["mixture_mean"] == pytest.approx(0.9) and result["merge_mean"] == 0.5
    assert "of the rows at noise_rate 0.5" in answer_line(result)
    result = compare(table_entries(clean))  # one condition: as before, no note
    assert result["mixture_mean"] == pytest.approx(0.6) and "noise_rate" not in answer_line(result)


def test_no_noise_recorded_pairs_with_a_noise_rate_of_zero():
    """A row without ``noise_rate`` (a store written before it was recorded, a hand row) is the
    clean condition, as the table's configurations read it: paired with rows at 0.0, not a
    condition of its own."""
    from hhh_bench.tracking.answer import answer_line, compare
    from hhh_bench.tracking.entries import table_entries

    rows = [{**_row("merge", "ties", s, 0.7, 0.0), "noise_rate": None} for s in (0, 1)]
    rows += [_row("mixture", "uniform", s, 0.6, 0.0) for s in (0, 1)]
    result = compare(table_entries(rows))
    assert not isinstance(result, str), result
    assert result["merge_mean"] == pytest.approx(0.7) and "noise_rate" not in answer_line(result)


def test_an_empty_or_blank_root_is_refused_however_it_is_spelt(tmp_path):
    """F10: ``root=''`` (Hydra's quoted empty string) wrote the run into the current folder,
    ``root=' '`` into a folder named ' '."""
    from hhh_bench.cli import check_root
    from hhh_bench.validation import check_top_level

    for arg in ("root=''", "root=' '", 'root=" x"'):
        with pytest.raises(SystemExit) as e:
            check_root([arg])
        assert e.value.code == 2
    for value in ("", " ", " runs/x"):
        with pytest.raises(ValueError, match="empty or begins or ends with a space"):
            check_top_level({"root": value})


def test_plan_runs_the_judge_checks_the_run_runs(tmp_path, capsys):
    """F11: ``plan`` printed a cost table for judge settings the run refuses."""
    from hhh_bench.planning import main

    paper = [f"root={tmp_path}", "model=llama3_8b_instruct", "eval=harness_3h", "data=paper_3h"]
    for bad, says in (("eval.judges.safety.mode=bogus", "eval.judges.safety.mode must be one of"),
                      ("eval.judges.safety=null", "needs a judge: set eval.judges.safety")):  # fmt: skip
        assert main([*paper, bad]) == 2
        assert says in capsys.readouterr().err


def test_store_rows_take_the_seeds_a_run_takes_and_a_merge_names_its_method():
    """F12: a hand row of seed −1 (a seed every run refuses) changed the answer; a merge row
    without its method was a phantom merge method."""
    from hhh_bench.tracking.store import check_row

    row = {"row_key": "k", "name": "ties", "kind": "merge", "method": "ties", "seed": 0,
           "split": "test", **dict.fromkeys(("helpful", "honest", "harmless", "average", "min"),
                                            0.5)}  # fmt: skip
    check_row(row)
    with pytest.raises(ValueError, match=r"seed = -1 is outside \[0, 2\*\*32 - 1\]"):
        check_row({**row, "seed": -1})
    with pytest.raises(ValueError, match="a merge row without its merge method"):
        check_row({k: v for k, v in row.items() if k != "method"})


def test_plan_counts_the_toy_worlds_vocabulary_before_the_data_stage_ran(tmp_path):
    """F13: before θ0 existed, ``plan`` counted a vocabulary of 4 special tokens (~24% fewer
    parameters); it counts the world's words now, as the data stage will."""
    from hhh_bench.data.toy3h import Toy3HConfig, generate
    from hhh_bench.planning import model_config
    from hhh_bench.stages.common import to_dict

    cfg = to_dict(compose([f"root={tmp_path}", *SMALL_WORLD]))
    conf, where = model_config(cfg, None, None)
    manifest = generate(Toy3HConfig.from_mapping(cfg["data"]["world"]), tmp_path / "data")
    assert where == "model.spec" and conf["vocab_size"] == manifest["counts"]["vocab_size"] + 4
    assert conf == model_config(cfg, None, {"manifest": manifest})[0]


def test_a_task_larger_than_the_net_margin_is_said_so():
    """F14: "one task carries more than half the margin ... (600%)" at a margin near 0."""
    from hhh_bench.tracking.answer import answer_line, compare
    from hhh_bench.tracking.entries import table_entries

    rows = []
    for s in (0, 1):
        rows.append({**_row("merge", "ties", s, 0.5, 0.0), "tasks": {"h": {"acc": 0.8},
                     "o": {"acc": 0.2}, "s": {"acc": 0.56}}, "average": 0.52})  # fmt: skip
        rows.append(_row("mixture", "uniform", s, 0.5, 0.0))
    line = answer_line(compare(table_entries(rows)))
    assert "one task outweighs the whole margin: h alone is +0.100 while the margin is +0.020 " \
           "(other tasks pull the other way)" in line, line  # fmt: skip


def test_models_of_another_theta0_are_refused_before_this_runs_theta0_is_trained(
    tmp_path, small_specialists
):
    """F15: ``merge.models`` without ``merge.base`` trained a whole θ0 (minutes on a real model)
    and then refused the models as trained from another one."""
    from hhh_bench.pipeline import run

    models = sorted(str(p) for p in small_specialists)[:2]
    cfg = compose(
        [
            f"root={tmp_path}",
            "logger=none",
            "stage=merge",
            "merge=task_arithmetic",
            f"merge.models=[{','.join(models)}]",
        ]
    )  # fmt: skip  (the default world)
    with pytest.raises(ValueError, match=r"merge\.models\[0\]=.* was trained from the θ0 stage "
                       r"output base/\w+; merge\.base is not given"):  # fmt: skip
        run(cfg)
    assert not (tmp_path / "base").exists()
