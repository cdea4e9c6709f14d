"""Models: loading with a dtype policy, and the tiny offline tokenizer + model builder.

The names are imported when first used (PEP 562): ``hhh_bench.models.tiny``'s spec, which the
run's checks read before any stage, then costs no torch or transformers import."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hhh_bench.models.loading import load_causal_lm, load_tokenizer, resolve_dtype
    from hhh_bench.models.tiny import TinyModelSpec, build_tiny_model
    from hhh_bench.models.tokenizer import build_word_tokenizer

_WHERE = {
    "TinyModelSpec": "tiny",
    "build_tiny_model": "tiny",
    "build_word_tokenizer": "tokenizer",
    "load_causal_lm": "loading",
    "load_tokenizer": "loading",
    "resolve_dtype": "loading",
}

__all__ = [
    "TinyModelSpec",
    "build_tiny_model",
    "build_word_tokenizer",
    "load_causal_lm",
    "load_tokenizer",
    "resolve_dtype",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
