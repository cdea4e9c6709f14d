"""Battery 15's findings (an independent battery on f3eb610) that have no better home."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_a_mapping_override_that_would_merge_into_the_configs_is_refused(tmp_path):
    """F2: `pipeline.merge_grid={}` (the docs' "train the specialists once") kept the whole
    grid, and `pipeline.merge_grid={tsv: ...}` swept every shipped method too; replacing is
    `~key +key={...}`, which works."""
    from hhh_bench.pipeline import compose_run

    root = f"root={tmp_path}"
    with pytest.raises(ValueError, match=r"pipeline\.merge_grid=\{\} empties nothing"):
        compose_run([root, "pipeline.merge_grid={}"])
    with pytest.raises(ValueError, match=r"is merged into the config's pipeline\.merge_grid, "
                       r"which keeps \['dare_ta', "):  # fmt: skip
        compose_run([root, "pipeline.merge_grid={tsv: {scaling: [1.0]}}"])
    cfg = compose_run(
        [root, "~pipeline.merge_grid", "+pipeline.merge_grid={tsv: {scaling: [1.0]}}"]
    )
    assert list(cfg.pipeline.merge_grid) == ["tsv"]
    for doc in ("docs/training.md", "docs/scale.md"):  # the docs say the working form
        text = (Path(__file__).resolve().parents[1] / doc).read_text()
        assert "'~pipeline.merge_grid'" in text and "merge_grid={}" not in text


def _output(root: Path, stage: str, key: str, inputs: list[str]) -> None:
    from hhh_bench.core import content

    out = root / stage / key
    out.mkdir(parents=True)
    (out / "x.txt").write_text(key)
    (out / content.KEY_FILE).write_text(json.dumps({"stage": stage, "key": key, "inputs": inputs}))
    content.write_manifest(out, None)


def test_gc_without_a_store_refuses_and_lists_the_whole_closure(tmp_path, capsys):
    """F3: with results.jsonl missing, `cache gc --yes` removed every evaluation unsaid, and
    each further gc removed one more layer (a merge only a removed evaluation referred to)."""
    from hhh_bench.cachetool import main, unreferenced

    _output(tmp_path, "base", "b0", [])
    _output(tmp_path, "merge", "m0", ["base/b0"])
    _output(tmp_path, "eval", "e0", ["merge/m0"])
    assert {p.name for p in unreferenced(tmp_path)[0]} == {"b0", "m0", "e0"}  # one pass
    assert main(["gc", str(tmp_path), "--yes"]) == 2
    assert "has no results.jsonl rows: every evaluation" in capsys.readouterr().err
    assert (tmp_path / "eval" / "e0").is_dir()
    for empty in ("", "\n \n"):  # battery 17: an empty store removed every output
        (tmp_path / "results.jsonl").write_text(empty)
        assert main(["gc", str(tmp_path), "--yes"]) == 2
        assert "has no results.jsonl rows" in capsys.readouterr().err
        assert (tmp_path / "base" / "b0").is_dir()


@pytest.mark.parametrize("loss", ["robust", "exo_pair", "[sigmoid,robust]"])
def test_losses_that_need_a_label_smoothing_are_refused(tmp_path, loss):
    """F6/F7: `robust` trained bit-identical weights to plain DPO (ε = 0), `exo_pair` failed
    inside the train stage after data and θ0."""
    from hhh_bench.pipeline import compose_run

    with pytest.raises(ValueError, match=r"need TRL's label smoothing ε > 0"):
        compose_run([f"root={tmp_path}", f"train.loss_type={loss}"])


def _merge_row(tmp_path, method, seed, average, params, *, noise=0.0, moves=None):
    folder = tmp_path / f"{method}-{seed}-{noise}-{json.dumps(params, sort_keys=True)}"
    folder.mkdir()
    if moves is not None:
        (folder / "diagnostics.json").write_text(json.dumps({"resm": {
            "decomposed_layers": len(moves), "moved_at": 0.01, "layers_reweight_moved": 0,
            "layers_with_changed_rank": 0,
            "reweight_merge_change": {f"l{i}": m for i, m in enumerate(moves)}}}))  # fmt: skip
    return {"row_key": folder.name, "name": method, "kind": "merge", "method": method,
            "seed": seed, "split": "test", "suite": "hand", "metric": "acc", "data_key": "d",
            "params": params, "task_specs": [], "noise_rate": noise, "world_key": f"w{noise}",
            "artifacts": {"model": str(folder)}, "extra": {"selected_on": "validation"},
            **{d: average for d in ("helpful", "honest", "harmless", "average", "min")}}  # fmt: skip


def test_resm_against_tsv_per_condition_and_a_switched_off_reweighting_is_not_inert(tmp_path):
    """F4: two noise conditions in one root made the section vanish, unsaid; F8: a chosen
    `reweight=none` (a tie on validation) was declared "mechanism inert"."""
    from hhh_bench.tracking.entries import table_entries
    from hhh_bench.tracking.resm_tsv import ResmVsTsv, comparisons, resm_sections

    rows = []
    for noise in (0.0, 0.2):
        for s in (0, 1):
            rows.append(_merge_row(tmp_path, "tsv", s, 0.5, {"scaling": 1.0}, noise=noise))
            rows.append(_merge_row(tmp_path, "resm", s, 0.52,
                                   {"scaling": 1.0, "reweight": "none", "rank": "uniform"},
                                   noise=noise, moves=[0.0, 0.0]))  # fmt: skip
    results = comparisons(table_entries(rows))
    assert [r.condition for r in results] == ["noise_rate 0.0, world w0.0",
                                              "noise_rate 0.2, world w0.2"]  # fmt: skip
    assert all(isinstance(r, ResmVsTsv) and not r.inert for r in results)
    md = "\n".join(resm_sections(results))
    assert md.count("## RESM vs TSV-M") == 1 and "At noise_rate 0.2, world w0.2: " in md
    assert "switches a mechanism off on seed(s) 0 (reweight=none, rank=uniform)" in md
    assert "Mechanism inert" not in md


def _row(kind, name, seed, score, pairs, dims):
    specs = [{"name": t, "dimension": d, "weight": 1.0, "metric": "acc"}
             for t, d in (("h", "helpful"), ("o", "honest"), ("s", "harmless"))]  # fmt: skip
    return {"row_key": f"{name}-{seed}", "name": name, "kind": kind, "seed": seed,
            **({"method": name} if kind == "merge" else {"mix_strategy": name}),
            "split": "test", "suite": "hand", "metric": "acc", "data_key": "d",
            "task_specs": specs, "tasks": {t: {"acc": score} for t in "hos"},
            "train_dimensions": dims, "extra": {"train_pairs": pairs} if pairs else {},
            **{d: score for d in ("helpful", "honest", "harmless", "average", "min")}}  # fmt: skip


def test_a_mixture_of_another_budget_is_said_in_the_answer():
    """F5: a mixture trained on 2,000 pairs against specialists of 360 in all won the answer
    as `mix: uniform [2]`, unsaid in the answer line."""
    from hhh_bench.tracking.answer import answer_line, compare
    from hhh_bench.tracking.entries import table_entries

    dims = ["helpful", "honest", "harmless"]
    rows = [_row("specialist", f"{d} specialist", s, 0.5, 120, [d]) for d in dims for s in (0, 1)]
    rows += [_row("merge", "ties", s, 0.6, None, dims) for s in (0, 1)]
    matched = rows + [_row("mixture", "uniform", s, 0.7, 360, dims) for s in (0, 1)]
    assert "budget" not in answer_line(compare(table_entries(matched)))
    bigger = rows + [_row("mixture", "uniform", s, 0.9, 2000, dims) for s in (0, 1)]
    assert (
        "not budget-matched: the chosen mixture trained on 2,000 pairs, the specialists "
        "the merge is made of on 360 in all"
    ) in answer_line(compare(table_entries(bigger)))


def test_plan_refuses_a_root_the_run_refuses(tmp_path, capsys):
    """F9: `plan root=<a regular file>` planned the whole run (the run refuses that root)."""
    from hhh_bench.cli import _plan

    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as e:
        _plan([f"root={tmp_path / 'afile'}"])
    assert e.value.code == 2 and "is a regular file, not a folder" in capsys.readouterr().err


def test_a_mergekit_linear_merge_without_a_base_runs(tmp_path, small_specialists):
    """F1: a linear merge of two finetunes with no base_model (mergekit's commonest config)
    was refused as models "not trained from base_model", the first model standing in."""
    from hhh_bench.mergeyaml import run

    a, b = sorted(str(p) for p in small_specialists)[:2]
    yaml = tmp_path / "lin.yaml"
    yaml.write_text(f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: "
                    f"{{weight: 1}}\n  - model: {b}\n    parameters: {{weight: 3}}\n"
                    "dtype: float32\n")  # fmt: skip
    res = run(yaml, tmp_path / "out", progress=False)
    assert res.n_tensors > 0 and (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("device, says", [("mps", "no usable MPS device"), ("xla", "is not a device"),
                                          ("meta", "is not a device")])  # fmt: skip
def test_merge_refuses_a_device_it_cannot_use_before_merging(tmp_path, capsys, device, says):
    """F13: `hhh-bench merge ... --device mps|xla|meta` ended in PyTorch's traceback after the
    merge had started."""
    from hhh_bench.mergeyaml import main

    (tmp_path / "x.yaml").write_text("merge_method: linear\n")
    assert main([str(tmp_path / "x.yaml"), str(tmp_path / "out"), "--device", device]) == 2
    assert (
        f"hhh-bench merge: error: --device={device!r}" in (err := capsys.readouterr().err)
        or f"--device={device} " in err
    )
    assert says in err and not (tmp_path / "out").exists()


def test_a_one_model_list_of_the_base_says_so():
    """F10: a task_arithmetic YAML listing only the base said "needs at least 2 models, got 0"."""
    from hhh_bench.mergeyaml import MergekitConfigError, _check_counts

    with pytest.raises(MergekitConfigError, match=r"needs at least 1 model besides base_model; "
                       r"models lists only the base"):  # fmt: skip
        _check_counts("task_arithmetic", [])


def test_a_flip_rate_that_flips_nothing_is_refused():
    """F11: flip_rate 0.001 of 360 pairs flipped none; the clean model was reported as a
    "noise 0.001" condition."""
    from hhh_bench.data.prepare import training_set

    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [], "rejected": [],
             "dimension": "helpful", "id": str(i)} for i in range(360)]  # fmt: skip
    with pytest.raises(ValueError, match=r"flip_rate=0\.001 flips no pair of the 360 it applies "
                       r"to .* at least 0\.0014"):  # fmt: skip
        training_set({"helpful": rows}, {"flip_rate": 0.001, "seed": 0}, None, 0)


def test_export_advises_its_own_flag(tmp_path, capsys):
    """F12: export's store errors advised the report's `report.skip_invalid=true`."""
    from hhh_bench.exporting import main

    (tmp_path / "results.jsonl").write_text('{"row_key": "x"}\n{"row_key": "y"}\n')
    (tmp_path / "eval").mkdir()
    assert main([str(tmp_path), "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "--skip-invalid" in err and "report.skip_invalid" not in err


@pytest.mark.parametrize("override, says", [
    ("mix.scorer=bogus", r"mix \(conflict_aware\): scorer 'bogus' is not one of"),
    ("+mix.schedule=bogus", r"schedule must be 'per_phase' or 'one'"),
])  # fmt: skip
def test_mixture_knobs_read_when_training_are_checked_before_any_stage(tmp_path, override, says):
    """F14: mix.scorer / schedule / reference were named after data, θ0 and the specialists."""
    from hhh_bench.pipeline import compose_run

    with pytest.raises(ValueError, match=says):
        compose_run([f"root={tmp_path}", "mix=conflict_aware", override])


def test_a_diagnosed_set_is_labelled_by_the_knobs_it_was_diagnosed_with():
    """F15: a sweep's diagnosed sets were seven identical rows titled "dpo, seed 0"."""
    from hhh_bench.merging.diagnostics import resm_knobs
    from hhh_bench.stages.diagnose import knob_label

    assert knob_label("dpo, seed 0", resm_knobs(None)) == "dpo, seed 0"
    assert knob_label("dpo, seed 0", resm_knobs({"kappa": 2.0})) == "dpo, seed 0 (kappa=2.0)"
