"""The tiny tokenizer and model: exact tokenization, chat template, save/load round trip."""

from __future__ import annotations

import pytest
import torch

from hhh_bench.models import (
    TinyModelSpec,
    build_tiny_model,
    build_word_tokenizer,
    load_causal_lm,
    load_tokenizer,
)

WORDS = [
    "what",
    "is",
    "the",
    "color",
    "of",
    "zorav",
    "?",
    "red",
    "blue",
    "i",
    "do",
    "not",
    "know",
    ".",
    "sorry",
    ",",
    "can",
    "help",
    "with",
    "that",
]
SPEC = TinyModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip


def test_tokenizer_is_exact_and_has_special_tokens():
    tok = build_word_tokenizer(WORDS)
    ids = tok("what is the color of zorav ?", add_special_tokens=False)["input_ids"]
    assert len(ids) == 7 and tok.unk_token_id not in ids
    assert tok.decode(ids) == "what is the color of zorav ?"
    assert tok("frobnicate", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    assert tok.pad_token == "<pad>" and tok.eos_token == "<eos>" and tok.bos_token == "<bos>"
    assert tok.padding_side == "left"


def test_chat_template_prompt_is_prefix_of_conversation():
    """TRL's DPO tokenization needs the generation prompt to be a prefix of prompt + answer."""
    tok = build_word_tokenizer(WORDS)
    prompt = [{"role": "user", "content": "what is the color of zorav ?"}]
    full = prompt + [{"role": "assistant", "content": "i do not know ."}]
    p = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    f = tok.apply_chat_template(full, tokenize=False)
    assert f.startswith(p)
    p_ids = tok(p, add_special_tokens=False)["input_ids"]
    f_ids = tok(f, add_special_tokens=False)["input_ids"]
    assert f_ids[: len(p_ids)] == p_ids
    assert f_ids[-1] == tok.eos_token_id


def test_model_is_deterministic_in_seed():
    tok = build_word_tokenizer(WORDS)
    a, b, c = (build_tiny_model(SPEC, tok, seed=s) for s in (1, 1, 2))
    sa, sb, sc = (m.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_save_load_round_trip_identical_logits(tmp_path):
    tok = build_word_tokenizer(WORDS)
    model = build_tiny_model(SPEC, tok, seed=0).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin"))
    tok2 = load_tokenizer(tmp_path)
    model2 = load_causal_lm(tmp_path, dtype="float32").eval()
    text = tok.apply_chat_template(
        [{"role": "user", "content": "what is the color of zorav ?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert torch.equal(ids, tok2(text, return_tensors="pt", add_special_tokens=False)["input_ids"])
    assert tok2.chat_template == tok.chat_template
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model2(ids).logits)


def test_a_folder_without_config_json_is_named_with_what_it_holds(tmp_path):
    """transformers' own error was a ValueError about a model_type (issue 27): now the folder,
    what it holds and what to give instead; a LoRA adapter folder is loaded on its base (the
    released-specialists rehearsal), and one whose config names no base says so."""
    import pytest

    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(OSError, match=rf"could not load model '{tmp_path}': the folder has no "
                       r"config.json \(it holds \['model.safetensors'\]\); give the folder"):  # fmt: skip
        load_causal_lm(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"is a LoRA adapter and its adapter_config.json names no "
                       r"base_model_name_or_path"):  # fmt: skip
        load_causal_lm(str(tmp_path))


def test_the_tiny_spec_is_read_without_torch():
    """The run's checks read :class:`TinyModelSpec` before any stage (validation.check_model):
    importing it loads neither torch nor transformers (~4.5 s of CPU a refused run would spend);
    the package's other names load on first use, and an unknown one is an AttributeError."""
    import subprocess
    import sys

    import hhh_bench.models as models

    code = ("import sys; from hhh_bench.models.tiny import TinyModelSpec; TinyModelSpec(); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    assert models.load_tokenizer is load_tokenizer and models.TinyModelSpec is TinyModelSpec
    with pytest.raises(AttributeError, match="no_such_name"):
        models.no_such_name  # noqa: B018
