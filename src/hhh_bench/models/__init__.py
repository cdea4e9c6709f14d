"""Models: loading with a dtype policy, and the tiny offline tokenizer + model builder.

The names are imported on first use (PEP 562): ``import hhh_bench.models.spec`` (what a config
check needs) does not import torch and transformers through this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hhh_bench.models.loading import load_causal_lm, load_tokenizer, resolve_dtype
    from hhh_bench.models.spec import TinyModelSpec
    from hhh_bench.models.tiny import build_tiny_model
    from hhh_bench.models.tokenizer import build_word_tokenizer

_WHERE = {
    "TinyModelSpec": "spec",
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
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
