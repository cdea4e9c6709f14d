"""A small Llama-architecture causal LM built from a config, for offline runs and tests."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from hhh_bench.models.spec import TinyModelSpec

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

__all__ = ["TinyModelSpec", "build_tiny_model"]


def build_tiny_model(
    spec: TinyModelSpec, tokenizer: PreTrainedTokenizerBase, seed: int = 0
) -> LlamaForCausalLM:
    """A randomly initialised Llama model sized for ``tokenizer``, deterministic in ``seed``."""
    # imported here: the spec alone (validation, before any stage) needs neither (~4 s of imports)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        # every field of the spec is a LlamaConfig argument of the same name (a float where
        # transformers' strict config wants one: `initializer_range=1` is written as an int)
        **{**asdict(spec), "initializer_range": float(spec.initializer_range)},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    # Initialise under a local generator state so building a model never disturbs the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
