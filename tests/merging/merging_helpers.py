"""Shared helpers of the merging tests: tiny tensors and a fast handle on peft's merge math."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping, Sequence
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


DATA_METHODS = frozenset({"fisher", "regmean"})
"""Methods that read one statistics file per finetuned model (merge parameter ``statistics``)."""


def write_statistics(
    folder: Path,
    shapes: Mapping[str, Sequence[int]],
    num: int,
    seed: int,
    grams: Iterable[str] | None = None,
) -> list[str]:
    """``num`` statistics files in ``folder`` (the layout of :mod:`hhh_bench.merging.statsfile`):
    a random positive Fisher for every tensor of ``shapes``; a random positive-definite mean Gram
    XᵀX / n (n = 3·in rows of N(0, 1), with n in ``gram_rows``) for each 2-D tensor named in
    ``grams`` (default: every 2-D tensor). Returns their paths, in order."""
    from safetensors.torch import save_file

    from hhh_bench.merging.statsfile import FISHER, GRAM, GRAM_ROWS

    g = torch.Generator().manual_seed(seed)
    grams = [k for k, s in shapes.items() if len(s) == 2] if grams is None else list(grams)
    paths = []
    for t in range(num):
        out: dict[str, Tensor] = {}
        for k, shape in shapes.items():
            out[FISHER + k] = torch.rand(tuple(shape), generator=g, dtype=torch.float64).float()
        for k in grams:
            n_in = int(shapes[k][1])
            x = torch.randn(3 * n_in, n_in, generator=g, dtype=torch.float64)
            out[GRAM + k] = (x.T @ x / x.shape[0]).float()
            out[GRAM_ROWS + k] = torch.tensor(x.shape[0])
        path = Path(folder) / f"stats-{seed}-{t}.safetensors"
        save_file(out, str(path))
        paths.append(str(path))
    return paths


_STATS_DIR: list[Path] = []


def data_params(
    method: str,
    base: Mapping[str, Tensor],
    num: int,
    seed: int = 0,
    folder: Path | None = None,
) -> dict:
    """``{"statistics": [...]}`` written for ``base``'s floating tensors when ``method`` needs
    data (:data:`DATA_METHODS`), else ``{}``; into ``folder``, else a temporary folder of this
    process (for hypothesis tests, which take no function-scoped ``tmp_path``)."""
    if method not in DATA_METHODS:
        return {}
    if folder is None:
        if not _STATS_DIR:
            import tempfile

            _STATS_DIR.append(Path(tempfile.mkdtemp(prefix="hhh-test-stats-")))
        folder = Path(tempfile_sub(_STATS_DIR[0]))
    shapes = {k: tuple(v.shape) for k, v in base.items() if v.is_floating_point()}
    return {"statistics": write_statistics(folder, shapes, num, seed)}


def tempfile_sub(root: Path) -> Path:
    """A new empty folder under ``root``."""
    import tempfile

    return Path(tempfile.mkdtemp(dir=root))
