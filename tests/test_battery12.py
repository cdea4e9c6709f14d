"""Battery 12's findings that have no better home: each a check on what the user gave."""

from __future__ import annotations

import pytest


def test_a_model_of_another_toy_world_is_said_by_eval_model(tmp_path, capsys):
    """F12: the seed-1 world's θ0 evaluated on this world scored above this world's own θ0,
    its tokenizer missing 64 of the world's words, with no word; said now, naming eval.model
    and the words (a warning, as for a stage output trained on other data)."""
    from hhh_bench.models import build_word_tokenizer
    from hhh_bench.pipeline import _check_world_words

    data = tmp_path / "data"
    data.mkdir()
    (data / "vocab.txt").write_text("alpha\nbeta\ngamma\ndelta\n")
    mine, other = tmp_path / "mine", tmp_path / "other"
    build_word_tokenizer(["alpha", "beta", "gamma", "delta"]).save_pretrained(mine)
    build_word_tokenizer(["alpha", "beta", "zeta"]).save_pretrained(other)
    _check_world_words(str(mine), {"dir": str(data)})
    assert "warning" not in capsys.readouterr().out
    _check_world_words(str(other), {"dir": str(data)})
    assert ("warning: eval.model=" in (out := capsys.readouterr().out)
            and "other: its tokenizer has no token for 2 of the 4 words of this run's toy world "
            "(e.g. ['gamma', 'delta'])" in out)  # fmt: skip
    _check_world_words(str(other), {"dir": str(tmp_path / "real")})  # no vocab.txt: real data
    assert "warning" not in capsys.readouterr().out


def test_models_merged_onto_a_base_they_were_not_trained_from_are_said(tmp_path, capsys):
    """F2: specialists of θ0 A merged onto another θ0 B of the same shape and tokenizer (plain
    folders: no record to match) ran with exit 0, every task vector the shared offset A − B.
    Said now; their own base says nothing."""
    import torch

    from hhh_bench.merging.sources import check_inputs, open_inputs, shared_offset
    from hhh_bench.models import TinyModelSpec, build_tiny_model, build_word_tokenizer

    spec = TinyModelSpec(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)  # fmt: skip
    tok = build_word_tokenizer(["a", "b", "c"])
    g = torch.Generator().manual_seed(0)

    def save(name, scale, seed=0):
        m = build_tiny_model(spec, tok, seed=seed)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(scale * torch.randn(p.shape, generator=g))
        m.save_pretrained(tmp_path / name)
        return str(tmp_path / name)

    a = save("A", 0.0)
    b = save("B", 0.0, seed=1)  # another θ0: its own initialisation
    specs = [save(f"s{i}", 0.002) for i in range(3)]  # A + small independent updates
    base, models = open_inputs(a, specs)
    check_inputs(base, models)
    assert shared_offset(base, models) < 0.5
    assert "warning" not in capsys.readouterr().out
    base, models = open_inputs(b, specs)
    check_inputs(base, models)
    assert shared_offset(base, models) > 0.95
    assert "warning: the base (" in capsys.readouterr().out


def test_a_run_that_ended_collapsed_is_said(capsys):
    """F6: a diverged DPO run (gradient 0, logits 0 at its end) was written as a specialist
    with no word; said now, naming the learning rate. A healthy end says nothing."""
    from hhh_bench.train.run import warn_collapsed

    ok = [{"step": 1, "grad_norm": 0.4, "logits/chosen": -1.2, "logits/rejected": -1.5}]
    warn_collapsed(ok, "helpful-specialist", 2e-4)
    assert "warning" not in capsys.readouterr().out
    dead = [*ok, {"step": 2, "grad_norm": 0.0, "logits/chosen": 0.0, "logits/rejected": 0.0}]
    warn_collapsed(dead, "helpful-specialist", 1e6)
    assert ("warning: train helpful-specialist: the run ended collapsed (gradient norm 0 and DPO "
            "logits 0 at step 2): it most likely diverged; check train.learning_rate=1e+06"
            ) in capsys.readouterr().out  # fmt: skip


def test_an_empty_tail_sigmas_list_is_refused_by_name_before_any_stage():
    """F16: `merge_engine.diagnostics_tail_sigmas=[]` passed the checks and failed after the
    stages loaded, naming no key."""
    from hhh_bench.core.config import MergeEngineConfig, load

    with pytest.raises(ValueError, match=r"merge_engine.diagnostics_tail_sigmas is empty"):
        load(MergeEngineConfig, {"diagnostics_tail_sigmas": []})
    load(MergeEngineConfig, {"diagnostics_tail_sigmas": [3.0]})


def test_a_split_less_template_that_names_another_split_is_refused():
    """F17: task_template 'toy3h_{task}_test' with eval.report_split=validation stored the test
    items as a validation row (the selection would then choose on test items)."""
    from conftest import compose
    from hhh_bench.core.config import EvalConfig, load
    from hhh_bench.stages.common import to_dict

    e = to_dict(compose(["eval=toy3h"]).eval)
    with pytest.raises(ValueError, match=r"task_template 'toy3h_\{task\}_test' names the test "
                       r"split's tasks, but the rows would be stored as split\(s\) \['validation'\]"):  # fmt: skip
        load(EvalConfig, {**e, "task_template": "toy3h_{task}_test", "report_split": "validation",
                          "select_split": None})  # fmt: skip
    load(EvalConfig, {**e, "task_template": "toy3h_{task}_test", "report_split": "test",
                      "select_split": None})  # fmt: skip


def test_a_merge_of_fewer_specialists_says_which_it_merged():
    """F3 (second instance): a task_arithmetic of helpful+honest beside the pipeline's three was
    "task_arithmetic [2] differs ... in model_key, config_hash"; it names the dimensions."""
    from hhh_bench.tracking import entries

    row = {"name": "task_arithmetic", "kind": "merge", "method": "task_arithmetic", "seed": 0,
           "split": "validation", "suite": "s", "metric": "acc", "model_key": "m3",
           "train_dimensions": ["helpful", "honest", "harmless"],
           **{c: 0.5 for c in ("helpful", "honest", "harmless", "average", "min")}}  # fmt: skip
    two = {**row, "row_key": "b", "model_key": "m2", "train_dimensions": ["helpful", "honest"]}
    es = {e.name: e for e in entries.aggregate([{**row, "row_key": "a"}, two])}
    assert es["task_arithmetic [2]"].numbered == (
        "differs from the first task_arithmetic in its models' dimensions (helpful, honest vs "
        "harmless, helpful, honest)"
    )


def test_a_capped_breadcrumbs_gamma_is_said():
    """F18: density 0.9 with gamma 0.5 or 0.3 gave byte-identical merges recorded as two
    configurations; the cap (mergekit's) is said."""
    from hhh_bench.merging import get_method

    m = get_method("breadcrumbs")
    note = m.make_params(density=0.9, gamma=0.5).capped_note()
    assert note.startswith("merge parameter 'gamma' = 0.5 is capped at 1 − density = 0.1")
    assert m.make_params(density=0.9, gamma=0.05).capped_note() is None
    assert m.make_params(density=1.0, gamma=0.05).capped_note() is None  # keeps everything


@pytest.mark.parametrize(("field", "value", "says"), [
    ("n_values", 9, r"^data.world.n_values must be in \[2, 8\], got 9"),
    ("n_attributes", 0, r"^data.world.n_attributes must be in \[1, "),
    ("seed", -1, r"^data.world.seed must be >= 0"),
])  # fmt: skip
def test_every_toy_world_message_names_its_key_in_full(field, value, says):
    """F21: toy-world errors dropped the `data.world.` path ("n_values must be in [2, 8])."""
    from hhh_bench.data.toy3h import Toy3HConfig

    with pytest.raises(ValueError, match=says):
        Toy3HConfig(**{field: value})


def test_battery13_weights_that_overflow_or_go_negative_are_refused():
    """Battery 13 (F8): two task weights of 1e308 summed to inf and stored helpful = 0.0;
    (F9): `+mix.weights.helpful=-1` built the mixture from the least helpful pairs."""
    from hhh_bench.core.scoring import suite_tasks
    from hhh_bench.data.mixing import get_strategy
    from hhh_bench.data.mixing.registry import build_params

    dims = {"helpful": {"a": 1e308, "b": 1e308}, "honest": {"c": 1.0}, "harmless": {"d": 1.0}}
    with pytest.raises(ValueError, match=r"eval.dimensions.helpful: weights sum to inf"):
        suite_tasks({"dimensions": dims, "task_template": "{task}"}, "test")
    dims["helpful"] = {"a": 1.0, "b": 1.0}
    assert len(suite_tasks({"dimensions": dims, "task_template": "{task}"}, "test")) == 4
    with pytest.raises(ValueError, match=r"mix.weights must be finite numbers >= 0, got "
                       r"\{'helpful': -1"):  # fmt: skip
        build_params(get_strategy("reward_select"), {"weights": {"helpful": -1.0}})
