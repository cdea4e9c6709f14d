"""Shared helpers of the merging tests: tiny tensors and a fast handle on peft's merge math."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor


def load_peft_merge_utils() -> ModuleType:
    """``peft/utils/merge_utils.py`` loaded on its own (it imports only torch): importing the
    ``peft`` package would pull in transformers and cost ~15 s on the test machine."""
    spec = importlib.util.find_spec("peft")  # locates the package without importing it
    assert spec is not None and spec.submodule_search_locations, "peft is a dependency"
    path = Path(next(iter(spec.submodule_search_locations))) / "utils" / "merge_utils.py"
    mod_spec = importlib.util.spec_from_file_location("_peft_merge_utils", path)
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


MODEL_COUNTS = {"slerp": (1, 2), "model_stock": (2, None), "sce": (2, None)}
"""(fewest, most) finetuned models of the methods that do not take any number (else (1, None))."""
MODEL_COUNTS |= {"consensus_ta": (2, None), "consensus_ties": (2, None)}


def fit_count(method: str, num: int) -> int:
    """``num`` moved into the range of finetuned models ``method`` accepts (:data:`MODEL_COUNTS`)."""
    low, high = MODEL_COUNTS.get(method, (1, None))
    return max(low, num if high is None else min(high, num))


def models(
    shape: tuple[int, ...], num: int, seed: int, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, list[Tensor]]:
    """A base N(0, 1) and ``num`` finetuned models base + N(0, 0.1²) · heavy-ish tails."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=torch.float64)
    fts = []
    for _ in range(num):
        noise = torch.randn(shape, generator=g, dtype=torch.float64)
        tails = torch.randn(shape, generator=g, dtype=torch.float64).exp()  # log-normal scale
        fts.append(base + 0.1 * noise * tails)
    return base.to(dtype), [f.to(dtype) for f in fts]


def state_dicts(
    num: int, seed: int, dtype: torch.dtype = torch.float32
) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
    """A tiny 'model': embeddings, two linear layers, a bias, a norm and an int buffer (hidden
    size 5: TIES's default density 0.2 keeps int(0.2·5) = 1 entry of the norm, the smallest
    tensor; a density that keeps none of a tensor is refused)."""
    shapes = {
        "model.embed_tokens.weight": (7, 5),
        "model.layers.0.mlp.up_proj.weight": (6, 5),
        "model.layers.0.mlp.up_proj.bias": (6,),
        "model.layers.0.mlp.down_proj.weight": (5, 6),
        "model.norm.weight": (5,),
        "lm_head.weight": (7, 5),
    }
    base: dict[str, Tensor] = {}
    fts: list[dict[str, Tensor]] = [{} for _ in range(num)]
    for i, (k, shape) in enumerate(shapes.items()):
        b, f = models(shape, num, seed * 101 + i, dtype)
        base[k] = b
        for sd, t in zip(fts, f, strict=True):
            sd[k] = t
    base["model.position_ids"] = torch.arange(5)
    for sd in fts:
        sd["model.position_ids"] = torch.arange(5)
    return base, fts
