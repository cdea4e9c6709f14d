"""The offline stand-ins of the paper's hub models (issue 12): the real architecture class and
config values at small sizes, a locally trained BPE tokenizer of the family's kind, the family's
chat template, loaded through the hub code path (AutoModelForCausalLM / AutoTokenizer)."""

from __future__ import annotations

import json

import pytest

from hhh_bench.models import load_causal_lm, load_tokenizer
from hhh_bench.models.standin import (
    FAMILIES,
    MANIFEST,
    REWARD_MODEL_OUTPUTS,
    StandinSpec,
    ensure_released_specialists,
    ensure_standin,
    ensure_standin_reward_model,
    real_config,
    scaled_config,
)

NAMES = sorted(FAMILIES)


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    return {name: ensure_standin(name, root / name) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_standin_loads_as_the_real_architecture(standins, name):
    real = real_config(name)
    model = load_causal_lm(standins[name], dtype="float32")
    tok = load_tokenizer(standins[name])
    cfg = model.config
    assert type(model).__name__ == real["architectures"][0]
    assert cfg.model_type == real["model_type"]
    # GQA: 32 query heads share 8 key/value heads in both real models (ratio 4)
    assert real["num_attention_heads"] // real["num_key_value_heads"] == 4
    assert cfg.num_attention_heads // cfg.num_key_value_heads == 4
    assert cfg.num_attention_heads * cfg.head_dim == cfg.hidden_size == 64
    assert cfg.num_hidden_layers == 2
    # MLP ratio 14336 / 4096 = 3.5 kept: 64 * 3.5 = 224
    assert cfg.intermediate_size == 224
    assert cfg.rope_parameters["rope_theta"] == real["rope_theta"]
    assert cfg.rope_parameters["rope_type"] == "default"  # both real configs: no rope_scaling
    assert cfg.max_position_embeddings == real["max_position_embeddings"]
    assert cfg.rms_norm_eps == real["rms_norm_eps"]
    assert cfg.hidden_act == real["hidden_act"]
    assert cfg.tie_word_embeddings is False
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert getattr(cfg, "sliding_window", None) == real.get("sliding_window")
    assert cfg.vocab_size == len(tok)
    assert cfg.eos_token_id == tok.convert_tokens_to_ids(FAMILIES[name].eos)
    manifest = json.loads((standins[name] / MANIFEST).read_text())
    assert manifest["stands_in_for"] == FAMILIES[name].hub_id
    # saved in bf16 as on the hub, loaded as the configured dtype
    assert model(**tok("hello there", return_tensors="pt")).logits.shape[-1] == len(tok)


def test_rope_scaling_and_sliding_window_of_a_real_config_are_kept_or_capped():
    """A Llama-3.1-style rope_scaling is carried over as is; a Mistral-v0.1-style window of
    4096 is capped to the spec's 32 so it engages on short sequences."""
    llama31 = {
        **real_config("llama3_8b_instruct"),
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    }  # fmt: skip
    out = scaled_config(llama31, StandinSpec(), vocab_size=500, bos_id=1, eos_id=2)
    assert out["rope_scaling"] == llama31["rope_scaling"]
    mistral01 = {**real_config("mistral_7b_instruct"), "sliding_window": 4096}
    assert (
        scaled_config(mistral01, StandinSpec(), vocab_size=500, bos_id=1, eos_id=2)[
            "sliding_window"
        ]
        == 32
    )
    assert real_config("mistral_7b_instruct")["sliding_window"] is None  # v0.2: no window


def test_spec_must_keep_the_gqa_ratio():
    with pytest.raises(ValueError, match="GQA ratio 32/8 = 4"):
        scaled_config(
            real_config("llama3_8b_instruct"),
            StandinSpec(num_attention_heads=2, hidden_size=64),
            vocab_size=500,
            bos_id=1,
            eos_id=2,
        )
    with pytest.raises(ValueError, match="unknown key"):
        StandinSpec.from_mapping({"hidden": 64})


def test_llama3_chat_template(standins):
    tok = load_tokenizer(standins["llama3_8b_instruct"])
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": " What is 2+2? "},
        {"role": "assistant", "content": "4"},
    ]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
    )
    prompt = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert text.startswith(prompt)  # TRL's prompt/completion split needs the prefix
    ids = tok(text, add_special_tokens=False)["input_ids"]
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens.count("<|begin_of_text|>") == 1 and tokens[0] == "<|begin_of_text|>"
    assert tokens.count("<|start_header_id|>") == 3 and tokens.count("<|eot_id|>") == 3
    # the special tokens follow the BPE vocabulary in the real relative order (128000..128009)
    specials = [tok.convert_tokens_to_ids(t) for t in FAMILIES["llama3_8b_instruct"].special_tokens]
    assert specials == list(range(len(tok) - 10, len(tok)))
    assert tok("hi")["input_ids"][0] == tok.bos_token_id  # the post-processor adds BOS


def test_mistral_chat_template(standins):
    import jinja2

    tok = load_tokenizer(standins["mistral_7b_instruct"])
    msgs = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == "<s>[INST] What is 2+2? [/INST] 4</s>[INST] And 3+3? [/INST]"
    full = tok.apply_chat_template(msgs[:2], tokenize=False)
    assert full.startswith(tok.apply_chat_template(msgs[:1], tokenize=False))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids).count("<s>") == 1
    with pytest.raises(jinja2.TemplateError, match="system turn"):
        tok.apply_chat_template([{"role": "system", "content": "x"}, *msgs], tokenize=False)
    with pytest.raises(jinja2.TemplateError, match="alternate"):
        tok.apply_chat_template([msgs[0], msgs[0]], tokenize=False)


TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "  two leading spaces, tabs\tand\nnew lines\n\n",
    "Zürich, São Paulo, 東京, Ελλάδα and emoji 🙂🚀 with math ∑ ℵ₀",
    'def f(x):\n    return {"a": [1, 2, 3]}  # comment',
    "It's 12,345.67 dollars -- isn't it?",
]


@pytest.mark.parametrize("name", NAMES)
def test_bpe_round_trips_text(standins, name):
    tok = load_tokenizer(standins[name])
    backend = json.loads(tok.backend_tokenizer.to_str())
    assert backend["model"]["type"] == "BPE"
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text, (name, text)
    if FAMILIES[name].tokenizer_kind == "byte_level":
        assert {"ByteLevel"} <= {p["type"] for p in backend["pre_tokenizer"]["pretokenizers"]}
    else:
        assert backend["model"]["byte_fallback"] is True
        # an unseen character falls back to its UTF-8 bytes, never to <unk>
        pieces = tok.convert_ids_to_tokens(tok("ℵ", add_special_tokens=False)["input_ids"])
        assert pieces[-3:] == ["<0xE2>", "<0x84>", "<0xB5>"] and "<unk>" not in pieces


def test_ensure_standin_reuses_and_refuses_other_settings(standins, tmp_path):
    folder = standins["mistral_7b_instruct"]
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert ensure_standin("mistral", folder) == folder  # alias, same settings: reused
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="built with other settings.*spec"):
        ensure_standin("mistral_7b_instruct", folder, {"hidden_size": 32})
    (tmp_path / "other").mkdir()
    with pytest.raises(FileExistsError, match="not a stand-in folder"):
        ensure_standin("llama3", tmp_path / "other")
    with pytest.raises(ValueError, match="no stand-in for model 'gpt2'"):
        ensure_standin("gpt2", tmp_path / "gpt2")


def test_standin_build_is_deterministic(standins, tmp_path):
    from safetensors.torch import load_file

    again = ensure_standin("llama3_8b_instruct", tmp_path / "again")
    a = load_file(standins["llama3_8b_instruct"] / "model.safetensors")
    b = load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    other = ensure_standin("llama3_8b_instruct", tmp_path / "seed1", {"seed": 1})
    c = load_file(other / "model.safetensors")
    assert not all((a[k] == c[k]).all() for k in a)


def test_released_specialists_full_weights_and_lora(standins, tmp_path):
    import torch
    from safetensors.torch import load_file

    base = standins["llama3_8b_instruct"]
    out = ensure_released_specialists(base, tmp_path / "sp")
    assert list(out) == ["helpful", "honest", "harmless"]
    base_sd = load_file(base / "model.safetensors")
    for name in ("helpful", "harmless"):
        model = load_causal_lm(out[name], dtype="auto")
        assert type(model).__name__ == "LlamaForCausalLM"
        sd = load_file(out[name] / "model.safetensors")
        assert sd["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16
        delta = (sd["model.layers.0.mlp.up_proj.weight"].float() - base_sd[
            "model.layers.0.mlp.up_proj.weight"].float())  # fmt: skip
        assert delta.abs().max() > 0
    helpful = load_file(out["helpful"] / "model.safetensors")
    harmless = load_file(out["harmless"] / "model.safetensors")
    key = "model.layers.1.self_attn.o_proj.weight"
    assert not torch.equal(helpful[key], harmless[key])  # each specialist its own stream
    adapter = json.loads((out["honest"] / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(base) and adapter["r"] == 8
    lora = load_file(out["honest"] / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in lora.items())
    assert not (out["honest"] / "model.safetensors").exists()


def test_standin_reward_model_feeds_the_reward_model_scorer(tmp_path):
    from hhh_bench.data.mixing.scorers import ARMORM_OUTPUT_DIMENSIONS, RewardModelScorer

    folder = ensure_standin_reward_model(tmp_path / "rm")
    scorer = RewardModelScorer(
        str(folder), ARMORM_OUTPUT_DIMENSIONS, device="cpu", dtype="float32", batch_size=2
    )
    row = {
        "prompt": [{"role": "user", "content": "Is the sky blue?"}],
        "chosen": [{"role": "assistant", "content": "Yes, on a clear day."}],
        "rejected": [{"role": "assistant", "content": "No."}],
    }
    margins = scorer([row, row, row])
    assert len(margins) == 3 and set(margins[0]) == {"helpful", "honest", "harmless"}
    assert margins[0] == margins[2]  # deterministic, batch-independent
    assert len(ARMORM_OUTPUT_DIMENSIONS) == REWARD_MODEL_OUTPUTS
