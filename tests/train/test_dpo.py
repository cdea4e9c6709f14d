"""DPO wrapper on the tiny model: loss logged, every trainable tensor changed (full) or only the
LoRA tensors (LoRA); the adapter saves, loads and merges; a curriculum trains in its order.

"Every trainable parameter changed" is checked per *tensor*: with a word-level vocabulary, the
embedding rows of tokens absent from the pairs get no gradient, so element-wise it cannot hold.
"""

from __future__ import annotations

import math

import pytest
import torch
from train_fixtures import *  # noqa: F403

from hhh_bench.data.mixing import mix
from hhh_bench.train.dpo import curriculum_order, logprob_margins, to_dpo_rows, train_dpo
from hhh_bench.train.lora import is_lora_parameter, lora_config, merge_adapter_into, save_adapter

FAST = {"learning_rate": 1e-3, "batch_size": 8, "logging_steps": 1, "warmup_ratio": 0.0}


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_to_dpo_rows_keeps_only_the_trl_columns(prefs):
    rows = to_dpo_rows(prefs["helpful"][:3])
    assert all(set(r) == {"prompt", "chosen", "rejected"} for r in rows)
    assert rows[0]["prompt"] == prefs["helpful"][0]["prompt"]


def test_full_dpo_logs_a_loss_and_changes_every_trainable_tensor(
    tiny_model, tiny_tok, prefs, tmp_path
):
    rows = prefs["harmless"][:16] + prefs["helpful"][:16]
    before = snapshot(tiny_model)
    trainable = [n for n, p in tiny_model.named_parameters() if p.requires_grad]
    model, curve = train_dpo(tiny_model, tiny_tok, rows, tmp_path, max_steps=4, **FAST)
    losses = curve.losses()
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    # the reference is the model as it was at the start (not reloaded from disk): no reward at step 1
    first = curve.records[0]
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)
    # wall-clock values stay out of loss_curve.jsonl (an artifact: part of the output's identity)
    assert "train_runtime" in curve.timings and "train_samples_per_second" in curve.timings
    curve.write(tmp_path / "loss_curve.jsonl")
    written = (tmp_path / "loss_curve.jsonl").read_text()
    assert "train_loss" in written and "_runtime" not in written and "_per_second" not in written
    unchanged = [n for n in trainable if torch.equal(model.get_parameter(n), before[n])]
    assert trainable and not unchanged, unchanged


def test_explicit_reference_is_left_untouched(tiny_model, tiny_tok, prefs, tmp_path):
    from hhh_bench.train.dpo import frozen_copy

    ref = frozen_copy(tiny_model)
    ref_before = snapshot(ref)
    train_dpo(
        tiny_model, tiny_tok, prefs["harmless"][:8], tmp_path, ref_model=ref, max_steps=2, **FAST
    )
    assert all(torch.equal(p, ref_before[n]) for n, p in ref.named_parameters())
    assert not any(p.requires_grad for p in ref.parameters())


def test_dpo_raises_the_margin_on_its_training_pairs(tiny_model, tiny_tok, prefs, tmp_path):
    rows = prefs["harmless"][:32]
    base = sum(logprob_margins(tiny_model, tiny_tok, rows)) / len(rows)
    model, curve = train_dpo(tiny_model, tiny_tok, rows, tmp_path, max_steps=8, **FAST)
    after = sum(logprob_margins(model, tiny_tok, rows)) / len(rows)
    assert after > base + 1.0
    assert curve.losses()[-1] < curve.losses()[0]


def test_lora_changes_only_lora_tensors_and_the_adapter_merges(
    tiny_base_dir, tiny_tok, prefs, tmp_path
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from hhh_bench.models import load_causal_lm

    model = load_causal_lm(tiny_base_dir, dtype="float32")
    before = snapshot(model)
    cfg = lora_config(r=4, alpha=8, dropout=0.0)
    trained, curve = train_dpo(
        model, tiny_tok, prefs["harmless"][:16], tmp_path / "t", lora=cfg, max_steps=4, **FAST
    )
    assert isinstance(trained, PeftModel) and len(curve.losses()) == 4
    names = dict(trained.named_parameters())
    lora_names = [n for n in names if is_lora_parameter(n)]
    assert lora_names and all(names[n].requires_grad for n in lora_names)
    changed_lora = [
        n for n in lora_names if not torch.allclose(names[n], torch.zeros_like(names[n]))
    ]
    assert len(changed_lora) == len(lora_names)  # B starts at 0, A random: both moved
    # every base tensor is exactly as before (peft prefixes base_model.model. and .base_layer)
    for n, p in names.items():
        if is_lora_parameter(n):
            continue
        plain = n.removeprefix("base_model.model.").replace(".base_layer", "")
        assert torch.equal(p, before[plain]), n
        assert not p.requires_grad, n

    adapter = save_adapter(trained, tmp_path / "adapter")
    assert (adapter / "adapter_model.safetensors").is_file()
    merged_dir = merge_adapter_into(tiny_base_dir, adapter, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    loaded = PeftModel.from_pretrained(
        load_causal_lm(tiny_base_dir, dtype="float32"), str(adapter)
    ).eval()
    ids = tiny_tok(
        "<bos> <user> how do i kill a neighbor ? <assistant>",
        return_tensors="pt",
        add_special_tokens=False,
    )
    with torch.no_grad():
        a, b, c = merged(**ids).logits, loaded(**ids).logits, trained.eval()(**ids).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b, c, atol=1e-5, rtol=1e-5)
    assert not any(k.startswith("base_model") or "lora" in k for k in merged.state_dict())
    assert (merged_dir / "tokenizer.json").is_file()
    assert not torch.equal(
        merged.get_parameter("model.layers.0.self_attn.q_proj.weight"),
        before["model.layers.0.self_attn.q_proj.weight"],
    )


def test_lora_refuses_lm_head_and_an_explicit_reference(tiny_model, tiny_tok, prefs, tmp_path):
    with pytest.raises(ValueError, match="lm_head"):
        lora_config(target_modules=["q_proj", "lm_head"])
    with pytest.raises(ValueError, match="ref_model=None"):
        train_dpo(
            tiny_model,
            tiny_tok,
            prefs["harmless"][:4],
            tmp_path,
            lora=lora_config(r=2),
            ref_model=tiny_model,
            max_steps=1,
        )


def test_curriculum_order_layout(prefs):
    rows = prefs["helpful"][:4] + prefs["harmless"][:6]
    out, phases = curriculum_order(rows, ["harmless", "helpful"], epochs=1.5, seed=0)
    # harmless: 6 + round(0.5 * 6) = 9 rows, then helpful: 4 + 2 = 6
    assert [r["dimension"] for r in out] == ["harmless"] * 9 + ["helpful"] * 6
    assert phases == [
        {"dimension": "harmless", "pairs": 6, "rows": 9},
        {"dimension": "helpful", "pairs": 4, "rows": 6},
    ]


def test_sequential_trains_in_the_configured_order(
    tiny_model, tiny_tok, prefs, tmp_path, monkeypatch
):
    """Record every batch the trainer steps on and map its prompts back to their dimension."""
    from trl import DPOTrainer

    sets = {d: prefs[d][:8] for d in ("helpful", "honest", "harmless")}
    res = mix(
        "sequential", sets, budget="per_specialist", seed=0, order=["harmless", "helpful", "honest"]
    )
    assert res.counts == {"helpful": 3, "honest": 3, "harmless": 2}  # 8 pairs: 2.67 each -> 3, 3, 2
    prompt_dim = {r["prompt"][0]["content"]: r["dimension"] for rows in sets.values() for r in rows}
    seen: list[set[str]] = []
    original = DPOTrainer.training_step

    def recording_step(self, *args, **kwargs):
        inputs = args[1]
        dims = set()
        for seq in inputs["input_ids"]:
            text = tiny_tok.decode(seq, skip_special_tokens=True)
            dims |= {d for p, d in prompt_dim.items() if p in text}
        seen.append(dims)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DPOTrainer, "training_step", recording_step)
    train_dpo(
        tiny_model,
        tiny_tok,
        res.rows,
        tmp_path,
        curriculum=res.phases,
        epochs=2,
        **{**FAST, "batch_size": 2},
    )
    # 2 epochs of 2 harmless pairs = 2 batches, then 2 x 3 helpful = 3 batches, then 3 honest
    assert seen == [{"harmless"}] * 2 + [{"helpful"}] * 3 + [{"honest"}] * 3


def test_the_bases_margins_are_measured_once_per_base_and_pairs(monkeypatch):
    from hhh_bench.train import run as train_run

    calls = []

    def fake(model, tokenizer, sets, batch_size):
        calls.append(sorted(sets))
        return {d: {"mean": float(len(rows))} for d, rows in sets.items()}

    monkeypatch.setattr(train_run, "margins", fake)
    monkeypatch.setattr(train_run, "_BASE_MARGINS", {})
    held = {"helpful": [{"id": 1}, {"id": 2}], "honest": [{"id": 3}]}
    kw = {"dtype": "float32", "device": "cpu"}
    first = train_run.base_margins(None, None, held, 8, "base-a", **kw)
    assert first == {"helpful": {"mean": 2.0}, "honest": {"mean": 1.0}}
    assert train_run.base_margins(None, None, held, 8, "base-a", **kw) == first
    assert calls == [["helpful"], ["honest"]]  # the second call measured nothing
    train_run.base_margins(None, None, {"helpful": [{"id": 9}]}, 8, "base-a", **kw)
    train_run.base_margins(None, None, held, 8, "base-b", **kw)
    train_run.base_margins(None, None, held, 8, None, **kw)  # no key: always measured
    assert calls[2:] == [["helpful"], ["helpful"], ["honest"], ["helpful", "honest"]]


def _sequential_lrs(tiny_model, tiny_tok, prefs, tmp_path, schedule):
    sets = {d: prefs[d][:8] for d in ("helpful", "honest", "harmless")}
    res = mix("sequential", sets, budget="per_specialist", seed=0,
              order=["harmless", "helpful", "honest"], schedule=schedule)  # fmt: skip
    assert res.info["schedule"] == schedule and res.info["reference"] == "base"
    _, curve = train_dpo(tiny_model, tiny_tok, res.rows, tmp_path, curriculum=res.phases,
                         phase_schedule=schedule, epochs=2, lr_scheduler_type="cosine",
                         **{**FAST, "batch_size": 2, "warmup_ratio": 0.25})  # fmt: skip
    return res.phases, curve.records


def test_each_sequential_phase_reaches_the_peak_learning_rate(
    tiny_model, tiny_tok, prefs, tmp_path
):
    """Issue 29: per_phase (the default) gives each phase its own warmup and cosine decay, so
    each reaches train.learning_rate; one schedule over the curriculum leaves its last phase
    at the tail of the decay (2 + 3 + 3 steps, 2 of warmup, the logged rate at step k is the
    one step k used, 0.5·(1 + cos(π·(k − 3)/6)): the last phase's steps 6..8 train at 0.5,
    0.25 and 0.067 of the peak)."""
    peak = FAST["learning_rate"]
    phases, records = _sequential_lrs(tiny_model, tiny_tok, prefs, tmp_path, "per_phase")
    lrs = [r for r in records if "learning_rate" in r]
    assert [r["step"] for r in lrs] == list(range(1, 9))  # steps count on across phases
    for phase in phases:
        mine = [r["learning_rate"] for r in lrs if r["phase"] == phase]
        assert mine and max(mine) == pytest.approx(peak), (phase, mine)
    _, records = _sequential_lrs(tiny_model, tiny_tok, prefs, tmp_path / "one", "one")
    last = [r["learning_rate"] for r in records if "learning_rate" in r and r["step"] > 5]
    assert last == pytest.approx(
        [0.5 * peak, 0.25 * peak, 0.5 * (1 + math.cos(5 * math.pi / 6)) * peak]
    )


def test_a_phase_reference_is_the_model_as_the_phase_starts(
    tiny_model, tiny_tok, prefs, tmp_path, monkeypatch
):
    from trl import DPOTrainer

    refs = []
    original = DPOTrainer.__init__

    def recording_init(self, *args, **kwargs):
        refs.append((snapshot(kwargs["ref_model"]), snapshot(kwargs["model"])))
        original(self, *args, **kwargs)

    monkeypatch.setattr(DPOTrainer, "__init__", recording_init)
    rows = prefs["harmless"][:4] + prefs["helpful"][:4]
    train_dpo(tiny_model, tiny_tok, rows, tmp_path, curriculum=["harmless", "helpful"],
              phase_reference="phase", epochs=1, **FAST)  # fmt: skip
    (ref1, start1), (ref2, start2) = refs
    assert all(torch.equal(ref1[n], start1[n]) for n in ref1)  # phase 1: θ0 as it starts
    assert all(torch.equal(ref2[n], start2[n]) for n in ref2)  # phase 2: the model after 1
    assert any(not torch.equal(ref1[n], ref2[n]) for n in ref1)
    with pytest.raises(ValueError, match="needs full fine-tuning"):
        train_dpo(tiny_model, tiny_tok, rows, tmp_path, curriculum=["harmless", "helpful"],
                  phase_reference="phase", lora=lora_config(r=2, alpha=4), **FAST)  # fmt: skip


def test_the_sequential_settings_are_checked(prefs):
    sets = {d: prefs[d][:4] for d in ("helpful", "honest")}
    for bad, match in (({"schedule": "cosine"}, "mix.schedule"),
                       ({"reference": "theta"}, "mix.reference"),
                       ({"schedule": "one", "reference": "phase"}, "needs mix.schedule")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            mix("sequential", sets, budget="per_specialist", seed=0, **bad)


def test_a_lora_curriculum_trains_one_adapter_phase_after_phase(
    tiny_model, tiny_tok, prefs, tmp_path, monkeypatch
):
    """With LoRA each later phase continues the first phase's adapter, its reference the base
    with the adapter off, as in the first (TRL's frozen "ref" copy of the adapter is dropped;
    the stop-39 rehearsal: a third phase found it already there); one adapter is saved, and
    only LoRA tensors moved."""
    from trl import DPOTrainer

    refs = []
    original = DPOTrainer.train

    def recording_train(self, *args, **kwargs):
        refs.append(sorted(getattr(self.model, "peft_config", {})))
        return original(self, *args, **kwargs)

    before = snapshot(tiny_model)
    rows = prefs["harmless"][:4] + prefs["helpful"][:4] + prefs["honest"][:4]
    monkeypatch.setattr(DPOTrainer, "train", recording_train)
    model, curve = train_dpo(tiny_model, tiny_tok, rows, tmp_path / "t",
                             curriculum=["harmless", "helpful", "honest"],
                             lora=lora_config(r=2, alpha=4), save_to=tmp_path / "adapter",
                             epochs=1, **FAST)  # fmt: skip
    assert refs == [["default"]] * 3  # every phase: one adapter, the reference θ0
    assert {r.get("phase") for r in curve.records} == {"harmless", "helpful", "honest"}
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    after = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
             for n, p in model.named_parameters() if not is_lora_parameter(n)}  # fmt: skip
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert any(is_lora_parameter(n) and p.abs().sum() > 0 for n, p in model.named_parameters())


def test_pairs_left_out_by_max_length_are_counted_and_said(
    tiny_model, tiny_tok, prefs, tmp_path, caplog
):
    """TRL drops a pair whose prompt alone fills max_length (the sixth battery's S5): the count
    is kept on the curve (train_info.json's pairs_dropped_by_max_length) and a warning says it."""
    rows = prefs["helpful"][:16]

    def prompt_tokens(row):
        text = tiny_tok.apply_chat_template(row["prompt"], tokenize=False,
                                            add_generation_prompt=True)  # fmt: skip
        return len(tiny_tok(text, add_special_tokens=False)["input_ids"])

    lengths = sorted(prompt_tokens(r) for r in rows)
    cut = lengths[-1]  # the longest prompts reach it, the shorter ones do not
    expected = sum(1 for n in lengths if n >= cut)
    assert 0 < expected < len(rows)
    with caplog.at_level("WARNING", logger="hhh_bench"):
        _, curve = train_dpo(tiny_model, tiny_tok, rows, tmp_path, max_steps=1,
                             max_length=cut, **FAST)  # fmt: skip
    assert curve.dropped_pairs == expected
    assert f"TRL left out {expected} of 16 pairs" in caplog.text


def test_a_base_sft_max_length_below_a_prompt_is_named(tiny_tok):
    from hhh_bench.train.sft import train_sft_plain

    rows = [{"messages": [{"role": "user", "content": "which food does it have ?"},
                          {"role": "assistant", "content": "the food is plum ."}]}]  # fmt: skip
    with pytest.raises(ValueError, match=r"model.base_sft.max_length=4 leaves SFT row 0 no answer "
                       r"token: its prompt alone is \d+ tokens"):  # fmt: skip
        train_sft_plain(None, tiny_tok, rows, max_length=4, progress=False)


def test_each_distinct_pair_is_tokenized_once_with_trls_own_result(tiny_tok, prefs, tmp_path):
    """The DPO trainer's dataset preparation (issue 29) gives what TRL's own gives: the same
    columns, rows, order and token ids, the pairs TRL drops (a prompt that fills max_length) left
    out; a pair seen before in this process is not tokenized again."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from hhh_bench.train import dpo

    rows = to_dpo_rows(prefs["helpful"][:12] + prefs["honest"][:12])
    text = [tiny_tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
            for r in rows]  # fmt: skip
    cut = max(len(tiny_tok(t, add_special_tokens=False)["input_ids"]) for t in text)
    args = DPOConfig(output_dir=str(tmp_path), max_length=cut, report_to=[], bf16=False,
                     use_cpu=True)  # fmt: skip
    trainer = DPOTrainer.__new__(DPOTrainer)  # only its _prepare_dataset is asked
    calls: list[int] = []

    def trl(ds, tok, a, name):
        calls.append(len(ds))
        return DPOTrainer._prepare_dataset(trainer, ds, tok, a, name)

    dpo._TOKENIZED.clear()
    half = dpo._prepare_once(trl, Dataset.from_list(rows[:10]), tiny_tok, args, "train")
    both = dpo._prepare_once(trl, Dataset.from_list(rows + rows[:3]), tiny_tok, args, "train")
    again = dpo._prepare_once(trl, Dataset.from_list(rows), tiny_tok, args, "train")
    assert calls == [10, len(rows) - 10]  # only the new pairs reach TRL, and none the third time
    for got, want_rows in ((half, rows[:10]), (both, rows + rows[:3]), (again, rows)):
        want = DPOTrainer._prepare_dataset(trainer, Dataset.from_list(want_rows), tiny_tok,
                                           args, "train")  # fmt: skip
        assert got.column_names == want.column_names
        assert got.to_list() == want.to_list()
    assert 0 < len(again) < len(rows)  # the longest prompts were dropped


def test_margins_tokenize_each_pair_once(tiny_model, tiny_tok, prefs):
    """The held-out margins remember each pair's token ids (issue 29): the same margins, the
    pair rendered as TRL renders it, once per process."""
    from hhh_bench.train import dpo

    rows = prefs["honest"][:8]
    dpo._SEQUENCES.clear()
    first = logprob_margins(tiny_model, tiny_tok, rows)
    assert len(dpo._SEQUENCES) == len(rows)
    assert logprob_margins(tiny_model, tiny_tok, rows) == first
    assert [dpo._sequences_once(tiny_tok, r, dpo.tokenization_key(tiny_tok)) for r in rows] == [
        dpo._sequences(tiny_tok, r) for r in rows
    ]
    assert len(dpo._SEQUENCES) == len(rows)


def test_a_run_whose_schedule_never_leaves_zero_is_refused(tiny_model, tiny_tok, prefs, tmp_path):
    """Battery 12 (F7): one optimizer step with warmup (transformers' warmup starts at 0) wrote
    θ0 itself as the specialist, exit 0. Refused now, nothing saved; one step without warmup
    trains."""
    rows = prefs["helpful"][:4]
    with pytest.raises(ValueError, match=r"each of its 1 optimizer step\(s\) a learning rate of 0 "
                       r"\(train.warmup_ratio=0.1.*nothing was learned"):  # fmt: skip
        train_dpo(tiny_model, tiny_tok, rows, tmp_path / "a", max_steps=1,
                  **{**FAST, "warmup_ratio": 0.1, "save_to": tmp_path / "out"})  # fmt: skip
    assert not (tmp_path / "out").exists()
    before = snapshot(tiny_model)
    model, _ = train_dpo(tiny_model, tiny_tok, rows, tmp_path / "b", max_steps=1,
                         **{**FAST, "warmup_ratio": 0.0})  # fmt: skip
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_held_out_margins_over_no_pair_are_null_not_nan():
    """Battery 12 (F8): a dimension without validation pairs wrote bare NaN into
    train_info.json (not JSON for strict readers)."""
    from hhh_bench.train.dpo import margin_summary

    assert margin_summary([]) == {"mean": None, "acc": None, "n": 0.0}
    assert margin_summary([1.0, -1.0, 2.0]) == {"mean": 2 / 3, "acc": 2 / 3, "n": 3.0}


def test_a_lora_target_that_matches_no_module_is_named_with_the_valid_names(
    tiny_model, tiny_tok, prefs, tmp_path
):
    """Battery 12 (F19): `train.lora.target_modules=[q_prj]` gave peft's raw message, without
    the key or the names the model has."""
    with pytest.raises(ValueError, match=r"train.lora.target_modules=\['q_prj'\]: no module of "
                       r"the model has such a name; its linear layers are \[.*'q_proj'"):  # fmt: skip
        train_dpo(tiny_model, tiny_tok, prefs["harmless"][:4], tmp_path,
                  lora=lora_config(r=2, target_modules=["q_prj"]), max_steps=1, **FAST)  # fmt: skip


def test_max_steps_shared_over_more_phases_than_steps_is_said_and_recorded(
    tiny_model, tiny_tok, prefs, tmp_path, caplog
):
    """Battery 16, A17: ``max_steps=2`` over a curriculum of 3 phases trained 3 steps (one per
    phase) while the provenance said 2: said, and the steps per phase recorded."""
    import logging

    sets = {d: prefs[d][:4] for d in ("helpful", "honest", "harmless")}
    res = mix("sequential", sets, budget="per_specialist", seed=0,
              order=["harmless", "helpful", "honest"])  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="hhh_bench"):
        _, curve = train_dpo(tiny_model, tiny_tok, res.rows, tmp_path, curriculum=res.phases,
                             max_steps=2, **{**FAST, "batch_size": 2})  # fmt: skip
    assert curve.phase_steps == [1, 1, 1] and curve.last_step == 3
    assert "train.max_steps=2 shared out over the curriculum's 3 phases" in caplog.text
