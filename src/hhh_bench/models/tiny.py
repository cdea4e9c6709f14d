"""A small Llama-architecture causal LM built from a config, for offline runs and tests."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the tiny model (``conf/model/tiny.yaml`` documents every field); each field is
    the ``LlamaConfig`` argument of the same name."""

    hidden_size: int = 64
    intermediate_size: int = 192
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 64
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        ints = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings")  # fmt: skip
        for name in ints:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"model.spec.{name} must be an integer, got {v!r}")
        if not isinstance(self.tie_word_embeddings, bool):
            raise ValueError(
                f"model.spec.tie_word_embeddings must be true or false, got {self.tie_word_embeddings!r}"
            )
        r = self.initializer_range
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < float("inf"):
            raise ValueError(
                f"model.spec.initializer_range must be a number > 0 (the init's std), got {r!r}"
            )
        for name in ints[:4]:
            if getattr(self, name) < 1:
                raise ValueError(f"model.spec.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"model.spec.hidden_size ({self.hidden_size}) must be divisible by "
                f"model.spec.num_attention_heads ({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                "model.spec.num_attention_heads must be a multiple of model.spec.num_key_value_heads"
            )


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
