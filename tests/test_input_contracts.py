"""The contracts behind issue 27's refusals, checked on their own (fast, in-process): what a
merge method or a mixing strategy may return, what a model folder must hold to be evaluated,
the run's own scalars, a mistyped key's one line. ``make battery`` runs the same cases through
the command line; these keep them inside ``make test`` (and its coverage)."""

from __future__ import annotations

import io
import os

import pytest
import torch

# ---------------------------------------------------------------------------------------------
# A merge method's result


def test_a_merge_methods_result_must_be_a_dense_float_tensor_of_the_parameters_shape():
    from hhh_bench.merging import get_method
    from hhh_bench.merging.base import MethodError, check_result

    m = get_method("task_arithmetic")
    p = m.make_params()
    ok = torch.zeros(2, 3)
    check_result(m, "w", ok, (2, 3), p)
    cases = [
        (None, "returned a NoneType for parameter 'w', not a tensor"),
        (torch.zeros(3, 2), r"returned shape \(3, 2\) for parameter 'w', whose shape is \(2, 3\)"),
        (torch.zeros(2, 3, dtype=torch.int32), "returned a torch.int32 tensor"),
        (torch.empty(2, 3, device="meta"), "returned a meta tensor"),
        (torch.full((2, 3), float("nan")), r"returned 6 NaN/Inf value\(s\) for parameter 'w'"),
    ]
    for out, says in cases:
        with pytest.raises(MethodError, match=says):
            check_result(m, "w", out, (2, 3), p)
    check_result(m, "w", torch.full((2, 3), float("inf")), (2, 3), p, finite=False)


def test_model_counts_are_refused_by_the_method_before_any_input_is_opened():
    from hhh_bench.merging import get_method

    for name, n, says in [
        ("slerp", 3, "interpolates two models"),
        ("model_stock", 1, "needs at least 2 finetuned models, got 1"),
        ("sce", 1, "needs at least 2 finetuned models, got 1"),
    ]:
        m = get_method(name)
        with pytest.raises(ValueError, match=says):
            m.check_models(n, m.make_params())
    m = get_method("consensus_ta")
    with pytest.raises(ValueError, match="'min_agreement' = 5 exceeds the 3"):
        m.check_models(3, m.make_params(min_agreement=5))
    get_method("task_arithmetic").check_models(7, get_method("task_arithmetic").make_params())


def test_a_failed_merge_discards_the_sweep_cache_entries_it_wrote(tmp_path):
    from hhh_bench.merging.cache import SweepCache

    cache = SweepCache(tmp_path / "c", 1 << 30)
    cache.put("ab" + "0" * 38, {"tau": torch.ones(3)})
    assert cache.path("ab" + "0" * 38).is_file()
    cache.discard_written()
    assert not list((tmp_path / "c").rglob("*.safetensors"))
    assert not (tmp_path / "c" / "ab").exists()


# ---------------------------------------------------------------------------------------------
# A mixing strategy's result


def _row(i: int, dim: str = "helpful") -> dict:
    from hhh_bench.core.schema import make_row

    return dict(make_row(f"p{i}", "c", "r", dim, "t", f"{dim}/{i}"))


def test_a_mixing_strategys_result_must_keep_its_contract():
    from hhh_bench.data.mixing.registry import MixResult, check_result

    rows = [_row(i) for i in range(4)]
    check_result("s", MixResult(rows, {"helpful": 4}, {}), 4, dims=["helpful"])
    check_result(
        "s", MixResult(rows + rows[:1], {"helpful": 5}, {}), 5, dims=["helpful"]
    )  # a resampled id
    cases = [
        ([rows], "returned a list, not a MixResult"),
        (MixResult(rows, {"helpful": 9}, {}), r"returned counts .* that do not match its 4 rows"),
        (MixResult([], {}, {}), "returned no preference pairs"),
        (MixResult(rows, {"helpful": 4}, {}), "more than its budget of 3"),
        (MixResult([{"prompt": "p"}], {"helpful": 1}, {}), "returned an invalid row"),
    ]
    for result, says in cases:
        with pytest.raises(ValueError, match=says):
            check_result(
                "s", result[0] if isinstance(result, list) else result, 3, dims=["helpful"]
            )


def test_a_strategy_that_raises_is_named():
    from hhh_bench.data.mixing.registry import STRATEGIES, NoParams, mix, register_strategy

    @register_strategy("contract_raises", NoParams)
    def bad(sets, *, budget, rng, params):
        raise RuntimeError("boom")

    try:
        with pytest.raises(
            ValueError, match="mixing strategy 'contract_raises'.*RuntimeError: boom"
        ):
            mix("contract_raises", {"helpful": [_row(0)]}, budget=1, seed=0)
    finally:
        STRATEGIES.remove("contract_raises")


# ---------------------------------------------------------------------------------------------
# A model to evaluate


def test_a_model_folder_transformers_would_only_warn_about_is_refused():
    from hhh_bench.models.loading import check_finite_weights, check_loading_info

    check_loading_info("m", {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []})
    for info, says in [
        ({"missing_keys": ["a.w", "b.w"]}, r"'m' lacks: \['a.w', 'b.w'\]"),
        ({"unexpected_keys": ["layers.9.w"]}, "has no place for: .*layers.9.w"),
        ({"mismatched_keys": [("w", (2,), (3,))]}, "of another shape"),
    ]:
        with pytest.raises(ValueError, match=says):
            check_loading_info("m", info)
    lin = torch.nn.Linear(2, 2)
    check_finite_weights("m", lin)
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"tensor 'weight' holds 1 NaN/Inf"):
        check_finite_weights("m", lin)


def test_a_folder_without_tokenizer_files_is_named(tmp_path):
    from hhh_bench.models.loading import load_tokenizer

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="has no tokenizer"):
        load_tokenizer(tmp_path)


# ---------------------------------------------------------------------------------------------
# The run's own scalars and a mistyped key


def test_the_runs_own_scalars_are_checked():
    from hhh_bench.validation import check_seeds, check_top_level

    check_top_level({"trust_remote_code": False, "threads": 2, "name": "toy3h"})
    for cfg, says in [
        ({"trust_remote_code": "maybe"}, "must be true or false"),
        ({"threads": 1.5}, "threads=1.5 must be an integer"),
        ({"threads": 0}, "threads=0 must be an integer >= 1"),
        ({"name": "../x"}, "must be one folder name"),
    ]:
        with pytest.raises(ValueError, match=says):
            check_top_level(cfg)
    with pytest.raises(ValueError, match=r"seed=-1 must be in \[0, 2\*\*32 - 1\]"):
        check_seeds({"seed": -1})
    with pytest.raises(ValueError, match=r"outside \[0, 2\*\*32 - 1\]"):
        check_seeds({"seed": 0, "seeds": [0, -3]})


HYDRA_TEXT = """Could not override 'train.learnin_rate'.
To append to your config use +train.learnin_rate=0.1
Key 'learnin_rate' is not in struct
    full_key: train.learnin_rate
    object_type=dict
"""


def test_a_mistyped_key_is_one_line_with_the_closest_key():
    from hhh_bench.cli import unknown_key_line

    line = unknown_key_line(HYDRA_TEXT, ["train.learnin_rate=0.1", "stage=data"])
    assert line == (
        "hhh-bench: error: train.learnin_rate is not a setting (did you mean "
        "train.learning_rate?); to add a key on purpose, write +train.learnin_rate=...\n"
    )
    assert unknown_key_line("In 'config': Could not find 'merge/tie'", []) is None


def test_stderr_is_held_until_a_job_starts():
    from hhh_bench.cli import HeldStderr

    real = io.StringIO()
    held = HeldStderr(real)
    held.write("hydra says no\n")
    held.flush()
    assert real.getvalue() == "" and held.take() == "hydra says no\n"
    held.write("kept\n")
    held.release()
    held.write("then through\n")
    held.flush()
    assert real.getvalue() == "kept\nthen through\n"
    assert held.getvalue() == real.getvalue()  # anything else is the real stream's


# ---------------------------------------------------------------------------------------------
# Where a value was given, and what a folder holds


def test_an_oracle_train_override_is_named_where_it_was_given():
    from hhh_bench.core.config import OracleConfig

    for over, says in [
        ({"beta": -1.0}, r"^pipeline\.oracle\.train\.beta must be"),
        ({"warmup_ratio": 2.0}, r"^pipeline\.oracle\.train\.warmup_ratio must be"),
        ({"bogus": 1}, r"pipeline\.oracle\.train\.bogus"),
    ]:
        with pytest.raises(ValueError, match=says):
            OracleConfig(train=over)
    OracleConfig(train={"beta": 0.5})


def test_a_folder_is_an_adapter_only_when_it_holds_no_full_model(tmp_path):
    from hhh_bench.core.paths import is_adapter_folder

    full, adapter, both = tmp_path / "full", tmp_path / "adapter", tmp_path / "both"
    for d in (full, adapter, both):
        d.mkdir()
        (d / "adapter_config.json").write_text("{}")
    for d in (full, both):
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"")
    for d in (adapter, both):
        (d / "adapter_model.safetensors").write_bytes(b"")
    assert not is_adapter_folder(full)  # a stray adapter_config.json beside full weights
    assert is_adapter_folder(adapter)
    assert not is_adapter_folder(tmp_path)  # no adapter_config.json at all
    with pytest.raises(ValueError, match="holds both a full model .* and a LoRA adapter"):
        is_adapter_folder(both)


def test_hugging_face_folders_in_the_environment_must_be_folders(tmp_path, monkeypatch):
    from hhh_bench.validation import check_hf_folders

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for var in ("HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    check_hf_folders()  # a folder to be created is fine
    monkeypatch.setenv("HF_HOME", str(a_file))
    with pytest.raises(ValueError, match=r"^HF_HOME=.* is a regular file, not a folder"):
        check_hf_folders()
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(a_file / "hub"))
    with pytest.raises(ValueError, match=r"^HF_HUB_CACHE=.* is a regular file"):
        check_hf_folders()
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(a_file))
    with pytest.raises(ValueError, match=r"^HF_DATASETS_CACHE=.* regular file"):
        check_hf_folders()


def test_ifeval_without_nltks_punkt_tab_is_refused_before_any_work(tmp_path, monkeypatch):
    import nltk

    from hhh_bench.rehearsal import ensure_standin_punkt, use_nltk_data
    from hhh_bench.validation import check_nltk_data

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty")])
    monkeypatch.delenv("NLTK_DATA", raising=False)
    suite = {"dimensions": {"helpful": {"ifeval": 1.0}, "honest": {"x": 1.0}}}
    with pytest.raises(
        ValueError,
        match=r"eval task ifeval \(eval.dimensions.helpful.ifeval\) "
        r"needs NLTK's punkt_tab data.*~eval.dimensions.helpful.ifeval",
    ):
        check_nltk_data(suite)
    check_nltk_data({"dimensions": {"helpful": {"other": 1.0}}})  # no task that needs it
    use_nltk_data(ensure_standin_punkt(tmp_path / "nltk"))  # the rehearsal's stand-in
    check_nltk_data(suite)
    assert nltk.word_tokenize("It is. Done.") == ["It", "is", ".", "Done", "."]


# ---------------------------------------------------------------------------------------------
# The sixth independent battery's findings (round 6, on 996b024)


def test_every_request_split_share_must_give_its_split_requests():
    from hhh_bench.data.toy3h import Toy3HConfig, build_world

    for split in ({"train": 0.5, "validation": 0.5, "test": 0.0},
                  {"train": 1.2, "validation": -0.1, "test": -0.1}):  # fmt: skip
        with pytest.raises(ValueError, match=r"request_split\.\w+ must be a share in \(0, 1\)"):
            Toy3HConfig.from_mapping({"request_split": split})
    tiny = Toy3HConfig.from_mapping({"request_split": {"train": 0.98, "validation": 0.01,
                                                       "test": 0.01}})  # fmt: skip
    with pytest.raises(ValueError, match=r"request_split.validation=0.01 gives the validation "
                       "split no request"):  # fmt: skip
        build_world(tiny)


def test_training_knobs_that_would_change_a_run_silently_are_refused():
    from hhh_bench.core.config import LoraConfig, TrainConfig

    with pytest.raises(ValueError, match=r"train.max_steps=0: give a number of optimizer steps"):
        TrainConfig(max_steps=0)
    for n in (0, -5):
        with pytest.raises(ValueError, match=r"train.margin_max_pairs must be >= 1"):
            TrainConfig(margin_max_pairs=n)
    TrainConfig(margin_max_pairs=None)
    for alpha in (0, float("nan")):
        with pytest.raises(ValueError, match=r"train.lora.alpha must be a finite number other"):
            LoraConfig(alpha=alpha)


def test_a_tiny_model_shorter_than_its_training_sequences_is_refused():
    from conftest import compose
    from hhh_bench.stages.common import to_dict
    from hhh_bench.validation import validate_run

    cfg = to_dict(compose(["model.spec.max_position_embeddings=8"]))
    with pytest.raises(ValueError, match=r"model.spec.max_position_embeddings=8 is shorter than "
                       r"model.base_sft.max_length=64"):  # fmt: skip
        validate_run(cfg)


def test_reward_select_weights_must_be_finite():
    from hhh_bench.data.mixing.reward_select import RewardSelectParams

    for w in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"mix.weights must be finite numbers"):
            RewardSelectParams(weights={"helpful": w})


def test_a_strategys_counts_must_be_its_rows_dimensions():
    from hhh_bench.core.schema import make_row
    from hhh_bench.data.mixing.registry import MixResult, check_result

    rows = [make_row("p", "c", "r", "helpful", "test", f"h{i}") for i in range(3)]
    check_result("s", MixResult(rows, {"helpful": 3}, {}), 3, dims=["helpful", "honest"])
    with pytest.raises(ValueError, match=r"returned counts \{'helpful': 2, 'honest': 1\}, but "
                       r"its rows' dimensions count \{'helpful': 3\}"):  # fmt: skip
        check_result("s", MixResult(rows, {"helpful": 2, "honest": 1}, {}), 3,
                     dims=["helpful", "honest"])  # fmt: skip


def test_a_negative_standard_error_in_the_store_is_refused():
    from hhh_bench.tracking.store import _check_counts, check_row  # noqa: F401

    row = {"kind": "base", "row_key": "k", "name": "base", "helpful": 0.5, "honest": 0.5,
           "harmless": 0.5, "average": 0.5, "min": 0.5, "helpful_stderr": -0.1,
           "split": "test"}  # fmt: skip
    with pytest.raises(ValueError, match=r"helpful_stderr = -0.1 is negative"):
        check_row(row)


def test_roots_and_model_paths_with_a_tilde_or_inside_a_stage_output_are_refused(tmp_path):
    from hhh_bench.cli import check_multirun_first, check_root_value
    from hhh_bench.validation import check_model_folder

    with pytest.raises(ValueError, match=r"'~' is not expanded here"):
        check_root_value("~/x")
    out = tmp_path / "train" / "abc"
    out.mkdir(parents=True)
    (out / "checksums.json").write_text("{}")
    with pytest.raises(ValueError, match=r"lies inside .*, a finished stage output"):
        check_root_value(str(out / "sub"))
    check_root_value(str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match=r"eval.model='~/m': '~' is not expanded"):
        check_model_folder("~/m", "eval.model")
    with pytest.raises(SystemExit):
        check_multirun_first(["stage=merge", "-m", "merge=ties,tsv"])
    check_multirun_first(["-m", "stage=merge", "merge=ties,tsv"])


def test_a_full_disk_inside_a_librarys_writer_names_the_stage_output(tmp_path):
    from hhh_bench.core.stagecache import _named_write_errors

    class SafetensorError(Exception):  # what safetensors' save_file raises, OS error inside
        pass

    full = r"No space left on device \(writing a stage output\)"
    with pytest.raises(OSError, match=full) as e, _named_write_errors(tmp_path / "train" / "k"):
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                                  "(os error 28)")  # fmt: skip
    assert e.value.errno == 28 and e.value.filename == str(tmp_path / "train" / "k")


def test_a_specialist_trained_from_another_base_is_refused_by_the_merge_stage(tmp_path):
    import json

    from hhh_bench.stages.merge import check_same_base

    mine, other, plain = tmp_path / "mine", tmp_path / "other", tmp_path / "plain"
    for folder, base in ((mine, "b" * 64), (other, "c" * 64)):
        (folder / "adapter").mkdir(parents=True)
        (folder / "key.json").write_text(json.dumps(
            {"stage": "train", "payload": {"base": base}, "inputs": [f"base/{base[:12]}"]}))  # fmt: skip
    plain.mkdir()  # a released specialist: no key.json, nothing to compare
    check_same_base("B", [str(mine), str(mine / "adapter"), str(plain)], base_identity="b" * 64)
    with pytest.raises(ValueError, match=r"merge.models\[1\]='.*other/adapter' was trained from "
                       r"the θ0 stage output base/cccccccccccc, not from merge.base='B'"):  # fmt: skip
        check_same_base("B", [str(mine), str(other / "adapter")], base_identity="b" * 64)
    # a hub base: not compared by content
    check_same_base("x", [str(other)], base_identity="hub:x@main")


def test_a_store_line_repeated_later_is_said_under_the_table(tmp_path):
    from hhh_bench.tracking.sections import skipped_note
    from hhh_bench.tracking.store import SkippedLine, StoreScan

    scan = StoreScan(tmp_path / "r.jsonl", rows=[{"row_key": "a"}, {"row_key": "b"},
                                                 {"row_key": "a"}], lines=[1, 2, 4])  # fmt: skip
    assert [r["row_key"] for r in scan.latest()] == ["a", "b"]
    (rep,) = scan.repeated()
    assert rep.line == 1
    note = skipped_note([SkippedLine(3, "a torn line"), rep])
    assert note[0].startswith("**1 line of the results store not used**") and "line 1" in note[0]
    assert note[2].startswith("**Skipped 1 invalid row")


def test_a_user_task_yaml_that_does_not_parse_is_named_by_the_users_own_file(tmp_path):
    from hhh_bench.evaluation.harness import user_tasks

    (tmp_path / "t.yaml").write_text("task: toy3h_mytask_val\ndataset_path: json\n  bad: [\n")
    with pytest.raises(ValueError, match=rf"eval.include_paths: {tmp_path}/t.yaml does not parse"):
        user_tasks([str(tmp_path)])


def test_a_knob_set_by_the_user_for_another_method_is_the_only_one_named():
    from hhh_bench.stages.common import load_option
    from hhh_bench.validation import method_knobs

    params = dict(load_option("merge", "resm")["params"])
    kept, dropped = method_knobs("ties", params)  # the option's own knobs: all left behind
    assert "kappa" not in kept and "kappa" in dropped
    kept, dropped = method_knobs("ties", {**params, "kappa": params["kappa"] + 1})
    assert "kappa" in kept and "kappa" not in dropped and "rank" in dropped


def test_a_world_asked_for_more_items_than_it_has_says_so(tmp_path, caplog):
    from hhh_bench.data.toy3h import Toy3HConfig, generate

    cfg = Toy3HConfig.from_mapping({"eval_items_per_kind": 400})
    with caplog.at_level("WARNING", logger="hhh_bench"):
        manifest = generate(cfg, tmp_path)
    repeated = manifest["counts"]["eval_repeated"]
    assert "story_request" in repeated and repeated["story_request"]["test"] < 400
    assert "story_request_test holds 400 items but only" in caplog.text


def test_a_model_evaluated_on_another_world_than_its_own_is_warned(
    small_cfg, session_root, small_data, small_specialists, capsys
):  # fmt: skip
    """Issue 27's open item: `stage=eval +eval.model=<a specialist of seed 0's world>` on the
    world of another seed ran without a word. Its data stage is followed back from the model's
    output (train -> data); on another world the console says so and the row records it."""
    from conftest import SMALL_WORLD, compose
    from hhh_bench.pipeline import run
    from hhh_bench.stages.common import data_keys_of

    model = next(p for p in (session_root / "train").iterdir() if not p.name.startswith("."))
    assert data_keys_of(model) == {small_data["key"]}  # its own world
    assert data_keys_of(session_root) == set()  # not a stage output: nothing known
    out = run(compose([f"root={session_root}", "logger=none", "threads=1", *SMALL_WORLD,
                       "data.world.seed=7", "stage=eval", f"+eval.model={model}"]))  # fmt: skip
    said = capsys.readouterr().out
    assert (
        f"warning: eval.model={model} was trained on other data (data stage {small_data['key']})"
        in said
    )
    assert out["eval"]["row"]["extra"]["trained_on_data"] == [small_data["key"]]
    assert out["eval"]["row"]["kind"] == "external"  # given, not a merge (battery 9, 6)


# -- the seventh independent battery (283 cases on 4068c9b): each finding a contract -------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pipeline.base_seed=-1"], r"pipeline.base_seed=-1 must be an integer in \[0, 2\*\*32 - 1\]"),
        (["data.noise.seed=-3"], r"data.noise.seed=-3 must be an integer"),
        (["train.seed=-1"], r"train.seed=-1 must be an integer"),
        (["train.loss_type=[sigmoid,sft]", "train.loss_weights=[0,0]"], r"every weight is 0"),
        (["model.path=/some/base"], r"model.path='/some/base' is for model.kind=hub"),
        (["model.revision=main"], r"model.revision='main' is for model.kind=hub"),
        (["model.spec.initializer_range=-1"], r"model.spec.initializer_range must be a number > 0"),
        (["model.spec.initializer_range=0"], r"model.spec.initializer_range must be a number > 0"),
        (["model.spec.tie_word_embeddings=1"], r"model.spec.tie_word_embeddings must be true or false"),
        (["data.world.popular_value_weight=inf"], r"data.world.popular_value_weight must be in \(0, 1e6\]"),
        (["data.world.popular_value_weight=1e308"], r"data.world.popular_value_weight must be in"),
        (["pipeline.merge_grid.task_arithmetic.scaling=[1.0,1.0]"], r"task_arithmetic.scaling=\[1.0, 1.0\] repeats a value"),
        (["eval.include_paths=[/nonexistent]"], r"eval.include_paths: '/nonexistent' is not a folder"),
        (["stage=merge", "merge=slerp"], r"merge \(method 'slerp', data.dimensions: one specialist each\): .* got 3"),
        (["+eval.metrics.nosuch=acc"], r"eval.metrics.nosuch: no task 'nosuch' in the suite"),
        (["stage=train", "mix=sequential", "mix.order=[helpful,honest]"], r"mix.order must list each mixed dimension"),
    ],
)  # fmt: skip
def test_battery7_values_refused_by_name_before_any_stage(overrides, message):
    """Silent-wrong values, a traceback from transformers' strict config and refusals that came
    after minutes of unasked training: each refused when the config is checked, naming it."""
    from conftest import compose
    from hhh_bench.pipeline import prepare

    with pytest.raises(ValueError, match=message):
        prepare(compose(overrides))


def test_battery7_an_initializer_range_written_as_an_integer_builds():
    from hhh_bench.models.tiny import TinyModelSpec, build_tiny_model
    from hhh_bench.models.tokenizer import build_word_tokenizer

    tok = build_word_tokenizer(["a", "b"], model_max_length=16)
    model = build_tiny_model(TinyModelSpec(initializer_range=1, max_position_embeddings=16), tok)
    assert model.config.initializer_range == 1.0


def test_battery7_cache_gc_removes_nothing_it_cannot_vouch_for(tmp_path, capsys):
    """DATA-LOSS: an unreadable store (a folder) was read as empty and every output removed;
    folders with a key.json naming no stage or key, and no checksums.json, were removed too."""
    from hhh_bench.cachetool import main

    (tmp_path / "train" / "run1").mkdir(parents=True)
    (tmp_path / "train" / "run1" / "key.json").write_text("{}")
    (tmp_path / "eval" / "abc").mkdir(parents=True)
    (tmp_path / "eval" / "abc" / "key.json").write_text('{"stage": "eval", "key": "abc"}')
    assert main(["gc", str(tmp_path), "--yes"]) == 0
    assert (tmp_path / "train" / "run1").is_dir() and (tmp_path / "eval" / "abc").is_dir()
    assert "2 folder(s) kept that are not outputs this cache wrote" in capsys.readouterr().out
    (tmp_path / "results.jsonl").mkdir()
    assert main(["gc", str(tmp_path), "--yes"]) == 2
    assert "results.jsonl exists but is not a readable file" in capsys.readouterr().err


def test_battery7_hhh_bench_merge_never_writes_inside_a_stage_output(tmp_path):
    """DATA-LOSS: `hhh-bench merge CONFIG OUT --overwrite` with OUT a pipeline merge's model
    folder replaced it (and a new OUT inside a data output changed that output)."""
    import json

    from hhh_bench.mergeyaml import check_out_dir

    out = tmp_path / "merge" / "abc"
    (out / "model").mkdir(parents=True)
    (out / "key.json").write_text(json.dumps({"stage": "merge", "key": "abc"}))
    (out / "checksums.json").write_text("{}")
    for target in (out / "model", out / "new" / "merged", out):
        with pytest.raises(ValueError, match=r"lies inside .*, a finished stage output"):
            check_out_dir(target)
    check_out_dir(tmp_path / "elsewhere")


def test_merge_and_export_outputs_stay_out_of_a_runs_stage_folders(tmp_path):
    """Battery 8 (DATA-LOSS): `hhh-bench export ROOT --out ROOT/eval/<key>/x.jsonl` wrote inside
    a finished eval output (its next reuse then failed its checksums), and `hhh-bench merge
    CONFIG ROOT/merge/newdir` wrote into a run's merge stage folder. Both refused by name."""
    import json

    from conftest import run_cli

    root = tmp_path / "run"
    done = root / "eval" / "abc"
    done.mkdir(parents=True)
    (done / "checksums.json").write_text("{}")
    (root / "results.jsonl").write_text("")
    out = run_cli("export", str(root), "--out", str(done / "x.jsonl"), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"--out {done / 'x.jsonl'} lies inside '{done}', a finished stage output" in out.stderr
    assert not (done / "x.jsonl").exists()
    cfg = tmp_path / "ties.yaml"
    cfg.write_text(json.dumps({"merge_method": "linear", "models": [{"model": "a"}]}))
    out = run_cli("merge", str(cfg), str(root / "merge" / "newdir"), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"the merge stage folder of the run root '{root}'" in out.stderr
    assert not (root / "merge").exists()


def test_battery7_command_line_refusals_are_one_line(tmp_path):
    """Tracebacks: a group set to null (Hydra's own ValueError), a sweeper key without a sweeper
    (AssertionError); a verbose flag before a subcommand; a root inside a run's stage folder."""
    from conftest import run_cli
    from hhh_bench.cli import check_root_value

    out = run_cli("stage=data", "data=null", f"root={tmp_path / 'r'}", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "refused before any job: ValueError: Config group override must be" in out.stderr
    out = run_cli("--verbose", "list", "methods", cwd=tmp_path)
    assert out.returncode == 0 and "merge methods" in out.stdout
    (tmp_path / "run" / "eval").mkdir(parents=True)
    (tmp_path / "run" / "results.jsonl").write_text("")
    with pytest.raises(ValueError, match="the eval stage folder of the run root"):
        check_root_value(str(tmp_path / "run" / "eval"))


def test_an_empty_mapping_override_that_would_empty_nothing_is_refused(tmp_path):
    """`eval.dimensions.helpful={}` (meant: no helpful tasks) left the three tasks in place,
    since Hydra merges a mapping given on the command line into the config's: the run scored
    what the user meant to drop. Refused by name, with what to type; an empty mapping where the
    config's is empty too stays allowed."""
    from conftest import run_cli

    out = run_cli("stage=report", "eval.dimensions.helpful={}", f"root={tmp_path / 'r'}",
                  "logger=none", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert (
        "eval.dimensions.helpful={} empties nothing: Hydra merges a mapping given on the command "
        "line into the config's, so eval.dimensions.helpful still holds ['benign_request', "
        "'known_qa', 'story_request']; drop an entry with ~eval.dimensions.helpful.known_qa, or "
        "the whole key with ~eval.dimensions.helpful"
    ) in out.stderr
    out = run_cli("stage=report", "eval.backend_args={}", f"root={tmp_path / 'r'}",
                  "logger=none", cwd=tmp_path)  # fmt: skip
    assert "empties nothing" not in out.stderr and "no results in" in out.stderr


def test_battery7_a_closed_console_pipe_does_not_stop_the_run():
    """`hhh-bench ... | head -1`: the reader leaves, the run goes on (its log keeps every
    line); it failed with a BrokenPipeError named as a stage write error."""
    from hhh_bench.core import console

    class Closed(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

    saved = console._S.out
    console._S.out = Closed()
    try:
        console.say("a line")  # no exception
        assert console._S.out.name == os.devnull
        console.say("another")
    finally:
        console._S.out = saved


def test_battery7_a_mergekit_yaml_repeating_a_key_and_a_relative_path_that_is_no_hub_id(tmp_path):
    """Silent-wrong: a YAML repeating `merge_method` ran the last one; unclear: a relative
    folder path in merge.models was read as a hub id ("run huggingface-cli download ...")."""
    from hhh_bench.mergeyaml import MergekitConfigError, load_config
    from hhh_bench.validation import check_model_folder

    cfg = tmp_path / "m.yaml"
    cfg.write_text("merge_method: task_arithmetic\nmerge_method: ties\nmodels: []\n")
    with pytest.raises(MergekitConfigError, match="the key 'merge_method' appears twice"):
        load_config(cfg, lambda m: None)
    with pytest.raises(
        ValueError, match=r"merge.models\[0\]='runs/x/train/abc' does not exist .* no hub id"
    ):
        check_model_folder("runs/x/train/abc", "merge.models[0]")
    check_model_folder("org/model", "merge.models[0]")  # a hub id: the stage resolves it


def test_battery7_rows_of_another_world_or_selection_split_are_not_pooled_as_seeds():
    """Silent-wrong: a store holding seed 0 of conflict_rate 0.2 and seed 1 of conflict_rate 0
    reported one row "over 2 paired seeds"; runs choosing on validation and on test were mixed
    in the answer. Rows carry `world_key` (the data config less the values that follow the seed,
    and the splits); rows differing in it are separate rows of the table."""
    from conftest import SMALL_WORLD, compose
    from hhh_bench.stages.common import world_key
    from hhh_bench.tracking.entries import configuration

    base = [*SMALL_WORLD]
    k0, k1 = world_key(compose([*base, "seed=0"])), world_key(compose([*base, "seed=1"]))
    assert k0 == k1  # the world's seed follows the run's: seeds of one configuration
    assert world_key(compose([*base, "data.world.conflict_rate=0"])) != k0
    assert world_key(compose([*base, "eval.select_split=test"])) != k0
    row = {"kind": "merge", "name": "ties", "method": "ties", "params": {"density": 0.5}}
    same = configuration({**row, "seed": 0, "world_key": k0}) == configuration(
        {**row, "seed": 1, "world_key": k1}
    )
    other = configuration({**row, "world_key": k0}) == configuration({**row, "world_key": "x"})
    assert same and not other


def test_battery7_the_world_key_of_public_sets_is_the_same_for_every_seed():
    """`data=paper_3h` has a fixed `data.seed: 0` (its caps and holdout draw): not a value
    that follows the run's seed, so it stays in the key, and seeds 0 and 1 still pool."""
    from conftest import compose
    from hhh_bench.stages.common import world_key

    assert world_key(compose(["data=paper_3h", "seed=0"])) == world_key(
        compose(["data=paper_3h", "seed=1"])
    )
    assert world_key(compose(["data=paper_3h", "data.seed=1"])) != world_key(
        compose(["data=paper_3h"])
    )


def test_battery7_a_quoted_number_in_a_mergekit_yaml_and_a_lora_training_output(tmp_path):
    """Unclear: `density: '0.5'` got a range message for a value in range (it is a string); a
    LoRA specialist's train folder given as a model was "no config.json" without the way out."""
    from hhh_bench.mergeyaml import MergekitConfigError, _params
    from hhh_bench.validation import check_model_folder

    with pytest.raises(
        MergekitConfigError, match="parameter 'density' is the string '0.5', not a number"
    ):
        _params({"density": "0.5"}, "models[0]")
    assert _params({"density": 0.5, "note": "x"}, "models[0]") == {"density": 0.5, "note": "x"}
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"is a LoRA training output: its adapter is in .*adapter"):
        check_model_folder(str(tmp_path), "merge.models[0]")


def test_battery7_a_copied_roots_cached_report_names_its_own_files(tmp_path):
    """Silent-wrong: in a copy of a root, the cached report printed the original root's
    report.md and figures (they still existed there)."""
    import json

    from hhh_bench.core.content import write_manifest
    from hhh_bench.stages.report import _KEY_FILE, _cached

    old, new = tmp_path / "orig" / "report", tmp_path / "copy" / "report"
    for d in (old, new):
        d.mkdir(parents=True)
        for name in ("report.md", "radar.png", "pareto.png", "conflict.png", "sweep_ties.png"):
            (d / name).write_text(name)
    result = {k: str(old / f) for k, f in (("report_md", "report.md"), ("radar", "radar.png"),
                                            ("pareto", "pareto.png"), ("conflict", "conflict.png"))}  # fmt: skip
    result.update({"dir": str(old), "sweep_figures": {"ties": str(old / "sweep_ties.png")}})
    (new / _KEY_FILE).write_text(json.dumps({"key": "k", "result": result}))
    write_manifest(new, None)
    got = _cached(new, "k")
    assert got["report_md"] == str(new / "report.md") and got["dir"] == str(new)
    assert got["sweep_figures"] == {"ties": str(new / "sweep_ties.png")}


def test_battery7_a_relative_model_folder_says_where_it_was_looked_for(tmp_path, monkeypatch):
    """Unclear: a mergekit YAML's `base_model: ../x` was "does not exist" without saying it is
    taken from the working directory (mergekit's rule too), not the YAML's folder."""
    from hhh_bench.merging.sources import resolve_path

    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ValueError, match=rf"'\.\./x' does not exist \(a relative path is taken from {tmp_path}"
    ):
        resolve_path("../x")
    with pytest.raises(ValueError, match=r"'/no/such/x' does not exist$"):
        resolve_path("/no/such/x")


def test_battery7_a_lora_adapter_copied_out_of_its_train_folder_is_checked_against_its_base(
    tmp_path,
):
    """Silent-wrong: an adapter copied out of its train folder (no key.json above it) skipped
    the θ0 check, though its adapter_config.json names the base it was trained on."""
    import json

    from hhh_bench.stages.common import model_identity
    from hhh_bench.stages.merge import check_same_base

    a, b, adapter = tmp_path / "base_a", tmp_path / "base_b", tmp_path / "lora_copy"
    for d, text in ((a, "a"), (b, "b"), (adapter, "")):
        d.mkdir()
        (d / "model.safetensors").write_text(text or "lora")
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(a)}))
    with pytest.raises(
        ValueError, match=r"is a LoRA adapter trained on .*base_a.* not merge.base="
    ):
        check_same_base(str(b), [str(adapter)], base_identity=model_identity(str(b)))
    # its own base: fine
    check_same_base(str(a), [str(adapter)], base_identity=model_identity(str(a)))


def test_battery8_a_lora_adapter_whose_base_is_not_here_is_said(tmp_path, capsys):
    """Silent (battery 8): an adapter whose adapter_config.json names a base not on this
    machine (a missing folder, another hub id) was merged against merge.base without a word."""
    import json

    from hhh_bench.stages.common import model_identity
    from hhh_bench.stages.merge import check_same_base

    base, adapter = tmp_path / "base", tmp_path / "lora_copy"
    for d in (base, adapter):
        d.mkdir()
        (d / "model.safetensors").write_text(d.name)
    for recorded in ("/nonexistent/base", "meta-llama/Llama-3-8B"):
        (adapter / "adapter_config.json").write_text(
            json.dumps({"base_model_name_or_path": recorded})
        )
        check_same_base(str(base), [str(adapter)], base_identity=model_identity(str(base)))
        said = capsys.readouterr().out
        assert (
            f"warning: merge.models[0]={str(adapter)!r} is a LoRA adapter trained on {recorded!r} "
            "(its adapter_config.json), which is not here to compare with merge.base="
        ) in said


def test_a_single_stage_runs_its_one_seed_and_seed_alone_is_the_run_seed():
    """Battery 8: `stage=train seeds=[1]` reused seed 0's specialist and said nothing; and
    `seed=3` on its own ran seed 0 (the default seeds [0] won). seeds is now unset by default
    (the one seed `seed`), and a single stage given seeds of another seed is refused."""
    from conftest import compose
    from hhh_bench.pipeline import _seed_cfgs
    from hhh_bench.stages.common import to_dict
    from hhh_bench.validation import validate_run

    assert [int(c.seed) for c, _ in _seed_cfgs(compose(["seed=3"]))] == [3]
    assert [int(c.seed) for c, _ in _seed_cfgs(compose(["seeds=[1,2]"]))] == [1, 2]
    for overrides, message in (
        (["stage=train", "seeds=[1]"], r"stage=train runs one seed, seed=0, but seeds=\[1\] "
                                       r"lists another: run stage=train seed=N for each"),
        (["stage=merge", "seeds=[0,1]"], r"stage=merge runs one seed, seed=0, but seeds=\[0, 1\] "
                                         r"lists others"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            validate_run(to_dict(compose(overrides)))
    for overrides in (["stage=train", "seed=1", "seeds=[1]"], ["stage=report", "seeds=[0,1]"]):
        validate_run(to_dict(compose(overrides)))  # the one seed, or a stage over all seeds


def test_battery9_one_theta0_for_every_seed_on_worlds_that_follow_the_seed_is_refused():
    """Battery 9 (17): `pipeline.base_seed=0 seeds=[0,1]` on the default world (world.seed:
    ${seed}) built each seed's θ0 from its own world with SFT seed 0: not one θ0, unsaid. One
    world for every seed (experiment=ablation_resm) is what base_seed is for."""
    from conftest import compose
    from hhh_bench.pipeline import _check_base_seed, _seed_cfgs

    cfg = compose(["seeds=[0,1]", "pipeline.base_seed=0"])
    with pytest.raises(ValueError, match=r"pipeline.base_seed=0 asks for one θ0 for every seed, "
                       r"but each seed draws its own data .*\(model.kind=tiny, base_sft\)"):  # fmt: skip
        _check_base_seed(cfg, _seed_cfgs(cfg))
    for ok in (["data.world.seed=0"], ["pipeline.base_seed=null"]):
        cfg = compose(["seeds=[0,1]", "pipeline.base_seed=0", *ok])
        _check_base_seed(cfg, _seed_cfgs(cfg))


def test_a_hub_model_given_with_the_tiny_defaults_is_theta0_as_it_is():
    """Battery 8: the README's `model.kind=hub model.path=<folder>` kept tiny.yaml's
    `base_sft.enabled: true` and fine-tuned the given model on the toy world before using it as
    θ0. tiny.yaml now says `auto`: SFT for a tiny model only; true/false still choose."""
    from conftest import compose
    from hhh_bench.core.config import ModelConfig, load
    from hhh_bench.stages.common import to_dict

    def model(*overrides):
        return load(ModelConfig, to_dict(compose(list(overrides)).model))

    assert model().sft_enabled and model().base_sft.enabled == "auto"
    assert not model("model.kind=hub", "model.path=/some/folder").sft_enabled
    assert model("model.kind=hub", "model.path=/x", "model.base_sft.enabled=true").sft_enabled
    assert not model("model.base_sft.enabled=false").sft_enabled
    with pytest.raises(ValueError, match=r"model.base_sft.enabled must be true, false or auto"):
        model("model.base_sft.enabled=yes")


def test_battery8_sizes_lambda_and_cache_roots_are_named(tmp_path):
    """Battery 8 (unclear): `data.world.eval_items_per_kind=100000000` was killed for memory
    with no message; a mergekit YAML's `lambda: .inf` was named 'scaling'; `hhh-bench cache
    verify` on the parent of a root said "0 stage output(s), 0 differ" and exit 0."""
    from conftest import compose, run_cli
    from hhh_bench.mergeyaml import MergekitConfigError, _gta
    from hhh_bench.stages.common import to_dict
    from hhh_bench.validation import validate_run

    with pytest.raises(ValueError, match=r"data.world.eval_items_per_kind=100000000 is above "
                       r"100,000"):  # fmt: skip
        validate_run(to_dict(compose(["data.world.eval_items_per_kind=100000000"])))
    for bad in (float("inf"), "abc"):  # battery 22, B-F1: 'abc' was "could not convert ..."
        with pytest.raises(MergekitConfigError, match=r"parameter 'lambda' must be a finite "
                           rf"number, got {bad!r}"):  # fmt: skip
            _gta("none")({"lambda": bad, "normalize": False, "rescale": False},
                         [{"weight": 1.0, "density": 1.0}], "w")  # fmt: skip
    run = tmp_path / "runs" / "x"
    (run / "data" / "abc").mkdir(parents=True)
    (run / "data" / "abc" / "key.json").write_text("{}")
    out = run_cli("cache", "verify", str(tmp_path / "runs"), cwd=tmp_path)
    assert out.returncode == 2 and "is not a run's root" in out.stderr
    out = run_cli("cache", "verify", str(run), cwd=tmp_path)
    assert "is not a run's root" not in out.stderr


def test_battery9_cache_gc_yes_waits_for_a_run_using_the_root(tmp_path):
    """Data loss (battery 9): `cache gc --yes` during a running `stage=all` removed its new
    outputs (trained, not yet evaluated: no store row refers to them), and the run died."""
    from conftest import run_cli
    from hhh_bench.core.stagecache import run_marker, runs_using

    root = tmp_path / "run"
    (root / "data" / "abc").mkdir(parents=True)
    (root / "data" / "abc" / "key.json").write_text("{}")
    with run_marker(root):
        assert runs_using(root) == [os.getpid()]
        out = run_cli("cache", "gc", str(root), "--yes", cwd=tmp_path)
        assert (
            out.returncode == 2 and f"a run is using {root} (process {os.getpid()})" in out.stderr
        )
        assert run_cli("cache", "gc", str(root), cwd=tmp_path).returncode == 0  # a listing is fine
    assert runs_using(root) == []  # ended: gc may remove again


def test_battery9_all_zero_merge_weights_are_said(caplog):
    """`merge.params.weights=[0,0,0]` returned θ0 with no word (scaling=0 warns)."""
    from hhh_bench.merging.params import CommonParams

    with caplog.at_level("WARNING"):
        CommonParams(weights=[0.0, 0.0, 0.0])
    assert "'weights' is all 0 ([0.0, 0.0, 0.0]): every task vector is dropped" in caplog.text


def test_battery9_a_pickle_only_model_folder_is_named_before_work(tmp_path):
    """Battery 9 (U5): `+eval.model=<folder of config.json + pytorch_model.bin>` ended in
    transformers' message about missing files. Refused at composition, naming the file and
    what to do (load_causal_lm says the same); safetensors beside a pickle are fine."""
    from conftest import compose
    from hhh_bench.core.config import EvalConfig, load
    from hhh_bench.stages.common import to_dict
    from hhh_bench.validation import check_eval

    def check(folder):  # as validate_run checks the eval group, before any stage
        check_eval(load(EvalConfig, to_dict(compose([f"+eval.model={folder}"]).eval)))

    m = tmp_path / "m"
    m.mkdir()
    (m / "config.json").write_text("{}")
    (m / "pytorch_model.bin").write_bytes(b"x")
    said = (rf"eval.model='{m}' holds its weights as pickle \(pytorch_model.bin\) and no "
            r"\.safetensors file: hhh-bench loads weights as safetensors only")  # fmt: skip
    with pytest.raises(ValueError, match=said):
        check(m)
    (m / "model.safetensors").write_bytes(b"x")
    check(m)
