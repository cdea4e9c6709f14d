"""Models: loading with a dtype policy, and the tiny offline tokenizer + model builder."""

from hhh_bench.models.loading import load_causal_lm, load_tokenizer, resolve_dtype
from hhh_bench.models.tiny import TinyModelSpec, build_tiny_model
from hhh_bench.models.tokenizer import build_word_tokenizer

__all__ = [
    "TinyModelSpec",
    "build_tiny_model",
    "build_word_tokenizer",
    "load_causal_lm",
    "load_tokenizer",
    "resolve_dtype",
]
