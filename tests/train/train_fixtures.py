"""Fixtures of the training tests: a tiny untrained model on the toy world's vocabulary, and
(only where a trained θ0 is needed) the session's small base from the root conftest.

Test modules take them with ``from train_fixtures import *`` (a module, not a nested
``conftest.py``, so the root ``conftest`` stays the only module of that name).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import SMALL_WORLD, compose

# A model small enough that a few DPO steps cost milliseconds (hidden 32, 2 layers).
TINY_SPEC = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


__all__ = [
    "one_torch_thread",
    "prefs",
    "small_cfg",
    "tiny_base_dir",
    "tiny_model",
    "tiny_tok",
    "world_dir",
]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread: on a shared 2-core machine, 2 threads oversubscribe and run ~5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_cfg(session_root):
    """The root conftest's small-world config (same root, so the base stage is shared); groups
    that are not there yet (merge, merge_engine) are left out rather than failing composition."""
    overrides = [f"root={session_root}", "logger=none", *SMALL_WORLD]
    try:
        return compose(overrides)
    except Exception:  # noqa: BLE001 - a group another part of the project has not landed yet
        return compose([*overrides, "~merge", "~merge_engine"])


@pytest.fixture(scope="session")
def world_dir(small_data) -> Path:
    return Path(small_data["dir"])


@pytest.fixture(scope="session")
def tiny_tok(world_dir):
    from hhh_bench.models import build_word_tokenizer

    vocab = (world_dir / "vocab.txt").read_text().split()
    return build_word_tokenizer(vocab, model_max_length=64)


@pytest.fixture
def tiny_model(tiny_tok):
    from hhh_bench.models import TinyModelSpec, build_tiny_model

    return build_tiny_model(TinyModelSpec(**TINY_SPEC), tiny_tok, seed=0)


@pytest.fixture(scope="session")
def prefs(world_dir):
    """Training pairs of the small world per dimension (120 each)."""
    from hhh_bench.core.schema import load_preferences

    return {
        d: load_preferences(world_dir / "prefs" / f"{d}_train.jsonl")
        for d in ("helpful", "honest", "harmless")
    }


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory, tiny_tok):
    """An untrained tiny model saved as a base folder (for LoRA loading / merging)."""
    from hhh_bench.models import TinyModelSpec, build_tiny_model

    out = tmp_path_factory.mktemp("tiny_base")
    model = build_tiny_model(TinyModelSpec(**TINY_SPEC), tiny_tok, seed=0)
    model.save_pretrained(out, safe_serialization=True)
    tiny_tok.save_pretrained(out)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
