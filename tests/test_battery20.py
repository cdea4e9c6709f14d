"""Battery 20 (an independent battery on 4c377d9, by helpers who read neither the earlier
batteries nor their tests): each finding, fixed, with its test. A: the data, mixture, training,
config and eval inputs; B: merging, the cache, the store and the report."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_b_f4_the_sweep_cache_evicts_only_its_own_entries(tmp_path):
    """F4: eviction unlinked every ``*/*.safetensors`` under ``cache_dir``: the user's input
    models kept there (and a merge written into it) lost their weights."""
    import torch
    from safetensors.torch import save_file

    from hhh_bench.merging.cache import SweepCache

    for folder in ("base", "d1", "zz"):  # a model folder, even one named like an entry's folder
        (tmp_path / folder).mkdir()
        save_file({"w": torch.ones(4)}, str(tmp_path / folder / "model.safetensors"))
    fake = tmp_path / "ab" / ("ab" + "0" * 38 + ".safetensors")  # an entry's name, not its key
    fake.parent.mkdir()
    save_file({"w": torch.ones(4)}, str(fake), metadata={"key": "another"})
    cache = SweepCache(tmp_path, max_bytes=0)
    key = "cd" + "1" * 38
    cache.put(key, {"x": torch.zeros(8)})
    assert cache.entries() == [cache.path(key)]
    cache.evict()
    assert not cache.path(key).exists()  # its own entry: evicted
    for f in ("base/model.safetensors", "d1/model.safetensors", "zz/model.safetensors", fake):
        assert (tmp_path / f).is_file(), f


def test_b_f4_a_cache_dir_inside_an_input_model_is_refused(tmp_path):
    from hhh_bench.merging.engine import check_cache_dir

    model = tmp_path / "models" / "base"
    model.mkdir(parents=True)
    for bad in (model, model / "cache"):
        with pytest.raises(ValueError, match=r"merge_engine.cache_dir=.* is inside the input "
                           r"model .*base: the sweep cache would write"):  # fmt: skip
            check_cache_dir(bad, [model])
    check_cache_dir(tmp_path / "models", [model])  # holding the inputs: only its entries touched
    check_cache_dir(tmp_path / "elsewhere", [model])


def test_b_f1_cache_verify_and_gc_walk_the_stats_stage(tmp_path, capsys):
    """F1: ``cache verify`` said "0 differ" of a corrupted ``stats/`` output (the stage list it
    walked lacked it), which the next reuse refused; gc never listed stats outputs either."""
    from hhh_bench.cachetool import cmd_gc, cmd_verify
    from hhh_bench.core.stagecache import cached_stage

    def compute(tmp):
        (tmp / "statistics.safetensors").write_bytes(b"\x00" * 64)
        return {"n": 1}

    run = cached_stage(tmp_path, "stats", {"model": "m"}, compute, result_file="stats_info.json")
    assert cmd_verify(tmp_path, quick=False) == 0
    assert "1 stage output(s)" in capsys.readouterr().out
    (run.dir / "statistics.safetensors").write_bytes(b"\x01" * 64)
    assert cmd_verify(tmp_path, quick=False) == 1
    out = capsys.readouterr().out
    assert f"MISMATCH {run.dir}" in out and "statistics.safetensors" in out
    (tmp_path / "results.jsonl").write_text("")
    cmd_gc(tmp_path, yes=False)
    assert f"unreferenced {run.dir}" in capsys.readouterr().out


def test_a_f1_a_user_tasks_data_file_named_by_path_is_in_the_eval_key(tmp_path, monkeypatch):
    """F1: a task YAML's ``data_files`` by absolute path: editing the file reused the cached
    eval (one key, two contents)."""
    from hhh_bench.evaluation.harness import named_data_files, tasks_fingerprint

    tasks, data = tmp_path / "tasks", tmp_path / "data"
    tasks.mkdir(), data.mkdir()
    (data / "qa_test.jsonl").write_text('{"q": 1}\n')
    (data / "rel.jsonl").write_text('{"q": 2}\n')
    (tasks / "qa.yaml").write_text(
        "task: my_qa\nprocess_docs: !function utils.docs\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data / 'qa_test.jsonl'}\n    validation: [data/rel.jsonl, '${{hhh:x}}']\n"
    )
    monkeypatch.chdir(tmp_path)  # a relative data file: from the working directory
    assert [f for f, _ in named_data_files(tasks / "qa.yaml")] == [
        "data_files.test:qa_test.jsonl",
        "data_files.validation:rel.jsonl",
    ]
    before = tasks_fingerprint([tasks])
    (data / "qa_test.jsonl").write_text('{"q": 3}\n')
    after = tasks_fingerprint([tasks])
    assert after != before
    (data / "rel.jsonl").write_text('{"q": 4}\n')
    assert tasks_fingerprint([tasks]) != after


def test_a_f2_a_mixture_without_a_pair_of_one_dimension_is_refused():
    """F2: ``mix=uniform mix.budget=2`` on three dimensions trained 1 helpful + 1 honest pair and
    no harmless one, exit 0: a "3H mixture" whose harmless score was θ0's."""
    from hhh_bench.core.schema import make_row
    from hhh_bench.data.prepare import training_set

    SETS = {d: [make_row(f"{d} q{i} ?", f"c{i}", f"r{i}", d, "t", f"{d}/{i}") for i in range(10)]
            for d in ("helpful", "honest", "harmless")}  # fmt: skip

    with pytest.raises(ValueError, match=r"mixture 'uniform' \(mix.budget=2\) holds no pair of "
                       r"(\w+)(, \w+)?  ?\(pairs per dimension"):  # fmt: skip
        training_set(SETS, None, {"name": "uniform", "budget": 2}, seed=0)
    ts = training_set(SETS, None, {"name": "uniform", "budget": 3}, seed=0)
    assert sorted(ts.counts.values()) == [1, 1, 1]


def test_a_f6_training_in_float16_is_refused():
    """F6: ``model.dtype=float16`` trained DPO in pure fp16 (weights moved by 51 in two steps)."""
    from hhh_bench.validation import check_training_dtype

    for stage in ("all", "base", "train"):
        with pytest.raises(ValueError, match=rf"model.dtype=float16 with stage={stage}: the model "
                           r"would be trained in pure half precision"):  # fmt: skip
            check_training_dtype({"stage": stage, "model": {"dtype": "float16"}})
    for ok in ({"stage": "eval", "model": {"dtype": "float16"}},
               {"stage": "merge", "model": {"dtype": "float16"}},
               {"stage": "all", "model": {"dtype": "float16"}, "merge": {"models": ["a", "b"]}},
               {"stage": "train", "model": {"dtype": "bfloat16"}}):  # fmt: skip
        check_training_dtype(ok)


def test_a_f7_an_entrys_adapter_opts_are_merged_into_the_sources():
    """F7: ``{name: ultrafeedback_honesty, adapter_opts: {min_margin: 0.5}}`` replaced the
    source's options: the honest set was built from helpfulness ratings (the default aspect)."""
    from hhh_bench.data.sources.build import resolve_source_entries

    entry = {"name": "ultrafeedback_honesty", "path": "x.jsonl", "adapter_opts": {"min_margin": 2}}
    data = {"kind": "sources", "dimensions": ["honest"], "sources": {"honest": [entry]}}
    [(_, src, _)] = resolve_source_entries(data)
    assert src["adapter_opts"] == {"aspect": "honesty", "pairing": "best_vs_worst",
                                   "min_margin": 2, "seed": 0}  # fmt: skip
    assert src["path"] == "x.jsonl"


def test_a_f8_a_noisy_mixture_holds_its_specialists_flipped_pairs():
    """F8: the mixture's flips were one draw over the union (6 of 30 in common with the
    specialists', 30% honest and 20% harmless at rate 0.25): now each dimension's set is
    flipped with its specialist's draw."""
    from hhh_bench.core.schema import make_row
    from hhh_bench.data.prepare import training_set

    sets = {d: [make_row(f"{d} q{i} ?", f"c{i}", f"r{i}", d, "t", f"{d}/{i}") for i in range(40)]
            for d in ("helpful", "honest", "harmless")}  # fmt: skip
    noise = {"flip_rate": 0.25, "seed": 7, "dimension": None}
    alone = {d: set(training_set({d: sets[d]}, noise, None, 7).noise["flipped_ids"]) for d in sets}
    assert all(len(ids) == 10 for ids in alone.values())
    mixed = training_set(sets, noise, {"name": "uniform", "budget": "all_specialists"}, 7)
    assert set(mixed.noise["flipped_ids"]) == set().union(*alone.values())
    only_honest = training_set(sets, {**noise, "dimension": "honest"},
                               {"name": "uniform", "budget": "all_specialists"}, 7)  # fmt: skip
    assert set(only_honest.noise["flipped_ids"]) == alone["honest"]


def test_b_f9_statistics_given_in_another_order_than_the_models_are_refused(tmp_path):
    """F9: ``merge.params.statistics`` swapped against ``merge.models`` merged (Fisher of the
    harmless specialist weighting the honest one), exit 0."""
    from hhh_bench.core.stagecache import cached_stage
    from hhh_bench.stages.common import model_identity
    from hhh_bench.stages.merge import _check_statistics_models

    models, files = [], []
    for name in ("honest", "harmless"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(name.encode() * 8)
        models.append(str(folder))

        def compute(tmp):
            (tmp / "statistics.safetensors").write_bytes(b"\x00" * 8)
            return {}

        run = cached_stage(tmp_path / "root", "stats", {"model": model_identity(str(folder)),
                           "kind": "fisher"}, compute, result_file="stats_info.json")  # fmt: skip
        files.append(str(run.dir / "statistics.safetensors"))
    _check_statistics_models(files, models)
    with pytest.raises(ValueError, match=r"merge.params.statistics\[0\]=.* was computed on "
                       r"merge.models\[1\]=.*harmless.*not on merge.models\[0\]"):  # fmt: skip
        _check_statistics_models(files[::-1], models)
    own = tmp_path / "mine.safetensors"  # a file from elsewhere records nothing: as given
    own.write_bytes(b"\x00")
    _check_statistics_models([str(own), files[1]], models)


def test_b_f6_the_plan_counts_the_items_eval_limit_leaves():
    """F6: ``hhh-bench plan`` showed 360 items for the toy suite under ``eval.limit=4`` (24)."""
    from types import SimpleNamespace

    from hhh_bench.planning import Planner, limited

    assert [limited(60, x) for x in (None, 4, 100, 0.5, 0.01)] == [60, 4, 60, 30, 1]
    data = {"manifest": {"counts": {"eval": {f"k{i}": {"test": 60} for i in range(6)}}}}
    for limit, want in ((None, 360), (4, 24), (0.5, 180)):
        plan = SimpleNamespace(plain={"eval": {"limit": limit}, "data": {}},
                               toy_suite=lambda: True)  # fmt: skip
        assert Planner.eval_items(plan, data, "test") == (want, [])
        assert Planner.eval_items(plan, None, "test") == (want, [])


def test_b_f11_an_out_dir_that_cannot_be_created_is_named(tmp_path):
    """F11: ``hhh-bench merge ta.yaml afile/out`` said "[Errno 17] File exists: 'afile'"; under
    /proc it named ``/proc/.x.lock``, a file the user never gave."""
    from hhh_bench.merging.engine import claim

    (tmp_path / "afile").write_text("")
    file_parent = r"out_dir .*afile/out cannot be created: .*afile is a file, not a folder"
    with pytest.raises(OSError, match=file_parent), claim(tmp_path / "afile" / "out"):
        pass
    proc = r"out_dir /proc/x cannot be (created|written): .* in /proc"
    with pytest.raises(OSError, match=proc), claim(Path("/proc/x")):
        pass


def test_a_f4_rows_dropped_by_an_adapter_option_point_at_the_options():
    """F4: every row dropped by ``drop_conflicts`` was met with "raise
    data.max_malformed_fraction", which cannot bring them back."""
    from hhh_bench.data.sources.build import check_dropped
    from hhh_bench.data.sources.loader import SourceConfigError

    src = {"name": "pku", "path": "p.jsonl", "adapter": "pku_saferlhf",
           "adapter_opts": {"drop_conflicts": True}}  # fmt: skip
    with pytest.raises(SourceConfigError, match=r"conflict=30 of 30 read; the adapter's filters "
                       r"dropped them \(its options: \{'drop_conflicts': True\}"):  # fmt: skip
        check_dropped(src, {"rows_in": 30, "rows_out": 0, "dropped": {"conflict": 30}}, 0.5)
    with pytest.raises(SourceConfigError, match=r"or raise data.max_malformed_fraction"):
        check_dropped(src, {"rows_in": 30, "rows_out": 0, "dropped": {"malformed": 30}}, 0.5)


def test_a_f9_a_leakage_setting_names_only_its_own_fault():
    """F9: "unknown key(s) [] or on_overlap 'warn'", and a valid on_overlap named with a typo'd
    key."""
    from hhh_bench.data.sources.build import leakage_settings
    from hhh_bench.data.sources.loader import SourceConfigError

    with pytest.raises(SourceConfigError, match=r"^data.leakage.on_overlap must be fail or drop, "
                       r"got 'warn'$"):  # fmt: skip
        leakage_settings({"on_overlap": "warn"})
    with pytest.raises(SourceConfigError, match=r"unknown key\(s\) \['max_overlaps'\] \(did you "
                       r"mean max_overlap\?\); valid keys"):  # fmt: skip
        leakage_settings({"max_overlaps": 3})


def test_a_f10_a_suite_without_a_dimension_says_why_it_needs_it():
    from hhh_bench.core.scoring import suite_tasks

    ecfg = {"dimensions": {"helpful": {"a": 1.0}, "honest": {"b": 1.0}}, "metric": "acc"}
    with pytest.raises(ValueError, match=r"eval.dimensions.harmless has no tasks: every suite "
                       r"scores all of helpful, honest, harmless"):  # fmt: skip
        suite_tasks(ecfg, "test")


def test_b_f3_an_adapter_against_a_copy_of_its_base_without_the_training_log(tmp_path):
    """F3: a byte-identical copy of θ0's weights, config and tokenizer was refused as "not
    merge.base's content" because the copy lacked θ0's ``loss_curve.jsonl``."""
    import json

    import torch
    from safetensors.torch import save_file

    from hhh_bench.stages.common import model_identity
    from hhh_bench.stages.merge import check_same_base

    theta0, copy, other, adapter = (tmp_path / n for n in ("theta0", "copy", "other", "lora"))
    for d, w in ((theta0, 1.0), (copy, 1.0), (other, 2.0)):
        d.mkdir()
        save_file({"w": torch.full((4,), w)}, str(d / "model.safetensors"))
    (theta0 / "loss_curve.jsonl").write_text('{"step": 1}\n')
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(theta0)})
    )
    check_same_base(str(copy), [str(adapter)], base_identity=model_identity(str(copy)))
    with pytest.raises(ValueError, match=r"is a LoRA adapter trained on .*theta0"):
        check_same_base(str(other), [str(adapter)], base_identity=model_identity(str(other)))


# Battery 21 (on 1c4b60b, the fixes above): the cases it found, fixed.


def test_21a_f1_max_steps_under_one_curriculum_schedule_is_refused():
    """A-F1: ``mix=sequential mix.schedule=one train.max_steps=2`` trained 32 helpful rows and
    recorded a three-dimension mixture (SFT too: one schedule is its only one)."""
    from conftest import compose
    from hhh_bench.stages.common import to_dict
    from hhh_bench.validation import check_mix_knobs

    base = ["stage=train", "mix=sequential", "train.max_steps=2"]
    for extra in (["mix.schedule=one"], ["train=sft", "mix.schedule=one"]):
        with pytest.raises(ValueError, match=r"mix \(sequential\): train.max_steps=2 under one "
                           r"schedule trains the curriculum's rows in order"):  # fmt: skip
            check_mix_knobs(to_dict(compose([*base, *extra])))
    check_mix_knobs(to_dict(compose(base)))  # per_phase shares the steps out
    check_mix_knobs(to_dict(compose(["stage=train", "mix=sequential", "mix.schedule=one"])))


def test_21a_f2_a_user_mc_item_with_a_gold_out_of_range_is_named_before_any_model(tmp_path):
    """A-F2: "document ?: gold -1 out of range", after the model ran, naming no task or file;
    a gold of ``true`` read as 1."""
    import json

    from hhh_bench.evaluation.harness import user_tasks

    def task(golds):
        folder = tmp_path / f"t{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        (folder / "items.jsonl").write_text("".join(
            json.dumps({"question": "q ?", "choices": ["a .", "b .", "c ."], "gold": g}) + "\n"
            for g in golds))  # fmt: skip
        (folder / "toy3h_mine_test.yaml").write_text(
            'task: toy3h_mine_test\ninclude: "${hhh:shipped_tasks}/toy3h/_toy3h_template.yaml"\n'
            'dataset_kwargs:\n  data_files:\n    test: "${hhh:source_dir}/items.jsonl"\n'
        )
        return folder

    with pytest.raises(ValueError, match=r"task 'toy3h_mine_test': .*items.jsonl, line 3: `gold` "
                       r"must be the index \(0 to 2\) of the right choice among its 3, got -1"):  # fmt: skip
        user_tasks([task([0, 1, -1, 0])])
    with pytest.raises(ValueError, match=r"line 1: `gold` must be the index .* got True"):
        user_tasks([task([True])])
    assert "toy3h_mine_test" in user_tasks([task([0, 2])])


def test_21b_f1_a_scientific_literal_in_a_mergekit_yaml_is_a_number():
    """B-F1: ``lambda: 1.0e9`` (unquoted) was refused as a quoted string, "write it unquoted"."""
    import yaml

    from hhh_bench.mergeyaml import _params, _UniqueKeyLoader

    doc = yaml.load("p: {lambda: 1.0e9, density: 5e-1, w: 1e3, q: '0.5'}", Loader=_UniqueKeyLoader)
    assert {k: doc["p"][k] for k in ("lambda", "density", "w")} == {
        "lambda": 1e9, "density": 0.5, "w": 1000.0}  # fmt: skip
    with pytest.raises(ValueError, match=r"parameter 'q' is the string '0.5', not a number"):
        _params(doc["p"], "f.yaml: parameters")


def test_21a_f3_a_curriculum_phase_without_a_row_is_refused():
    """A-F3/F4/F5: ``mix=sequential train.epochs=0.01`` skipped every phase (0 steps, a train
    output without weights cached as complete), a StopIteration from TRL under one schedule,
    and full fine-tuning under LoRA when the skipped phase was the first."""
    from hhh_bench.core.schema import make_row
    from hhh_bench.train.dpo import curriculum_order

    rows = [make_row(f"{d} q{i} ?", f"c{i}", f"r{i}", d, "t", f"{d}/{i}")
            for d, n in (("helpful", 108), ("honest", 6), ("harmless", 6)) for i in range(n)]  # fmt: skip
    order = ["helpful", "honest", "harmless"]
    with pytest.raises(ValueError, match=r"train.epochs=0.05 lays out no row of the curriculum's "
                       r"honest phase \(6 pairs\), harmless phase \(6 pairs\) .* at least 0.083"):  # fmt: skip
        curriculum_order(rows, order, 0.05, 0)
    _, phases = curriculum_order(rows, order, 0.1, 0)
    assert [p["rows"] for p in phases] == [11, 1, 1]


def test_21b_f6_a_model_given_by_a_relative_path_is_rowed_by_where_it_is(
    small_cfg, tmp_path, monkeypatch
):
    """B-F6: ``+eval.model=model`` from two folders gave two models one name and model key;
    the report kept one and called the other "its model recomputed"."""
    import copy

    from omegaconf import open_dict

    from hhh_bench import pipeline

    seen = []
    monkeypatch.setattr("hhh_bench.stages.eval.run_eval",
                        lambda cfg, model, data, **kw: seen.append(model) or {})  # fmt: skip
    monkeypatch.setattr(pipeline, "_check_world_words", lambda *a: None)
    monkeypatch.setattr(pipeline, "data_keys_of", lambda *a: set())
    for sub in ("a", "b"):
        (tmp_path / sub / "model").mkdir(parents=True)
        monkeypatch.chdir(tmp_path / sub)
        cfg = copy.deepcopy(small_cfg)
        with open_dict(cfg):
            cfg.eval.model = "model"
        pipeline._eval_one(cfg, {"key": "d", "dir": str(tmp_path)})
    assert [m["name"] for m in seen] == [str(tmp_path / s / "model") for s in ("a", "b")]
    assert seen[0]["key"] != seen[1]["key"]


def test_21a_u5_shares_given_as_a_string_are_named_as_such():
    from hhh_bench.data.mixing.registry import check_shares

    with pytest.raises(ValueError, match=r"mix.shares must be a mapping \{dimension: share\} .* "
                       r"got 'harmless:0.9'"):  # fmt: skip
        check_shares("harmless:0.9", ["helpful", "honest", "harmless"])


def test_21a_u4_an_entry_that_sets_another_dimension_is_named_as_the_entrys():
    from hhh_bench.data.sources.build import resolve_source_entries
    from hhh_bench.data.sources.loader import SourceConfigError

    entry = {"name": "helpsteer2", "path": "x.jsonl", "dimension": "harmless"}
    data = {"kind": "sources", "dimensions": ["helpful"], "sources": {"helpful": [entry]}}
    with pytest.raises(SourceConfigError, match=r"the entry for source 'helpsteer2' sets "
                       r"dimension: 'harmless' but is listed under 'helpful'"):  # fmt: skip
        resolve_source_entries(data)


def test_21b_f5_a_merge_output_given_as_a_model_points_at_its_model_folder(tmp_path):
    from hhh_bench.validation import check_model_folder

    out = tmp_path / "merge" / "5a714be12498"
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text("{}")
    (out / "key.json").write_text("{}")
    with pytest.raises(ValueError, match=r"merge.models\[1\]=.* is a stage output: its model is "
                       r"in .*5a714be12498/model; give that folder"):  # fmt: skip
        check_model_folder(str(out), "merge.models[1]")
    check_model_folder(str(out / "model"), "merge.models[1]")
