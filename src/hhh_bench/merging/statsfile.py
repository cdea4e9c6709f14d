"""The data-aware statistics of one specialist, as Fisher merging and RegMean read them.

One safetensors file per specialist (written by :mod:`hhh_bench.merging.datastats`; any file
of this layout works, e.g. one made by hand for a test):

- ``fisher/<parameter>``: the diagonal Fisher of the parameter, F = (1/N)·Σ_n (∂ℓ_n/∂θ)², the
  mean over N samples of the squared gradient of each sample's loss (the parameter's shape,
  float32). ``fisher_sq_sum`` (a float64 scalar): Σ over every ``fisher/`` tensor of Σ F², the
  squared L2 norm of the whole model's Fisher (FusionBench's ``normalize_fisher_weight`` divides
  by its square root; when absent the reader computes it from the tensors).
- ``gram/<weight>``: for the weight W (out × in) of an ``nn.Linear``, the mean Gram matrix
  G = XᵀX / n of the layer's inputs X (n rows: every token of every sample; in × in, float32);
  ``gram_rows/<weight>`` (an int64 scalar): n.

The metadata (``__metadata__``, strings) records ``format`` (:data:`FORMAT`), the kinds held
and how the statistics were made (samples, seed, loss; see the writer).

A reader never loads the whole file: :class:`StatisticsFile` reads the header, then one tensor
when asked (``safetensors.safe_open``), so a merge streams the statistics tensor by tensor along
with the weights.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

FORMAT = "hhh-bench-merge-statistics/1"
FISHER = "fisher/"
GRAM = "gram/"
GRAM_ROWS = "gram_rows/"
FISHER_SQ_SUM = "fisher_sq_sum"
KINDS = ("fisher", "gram")
"""What a statistics file can hold: the diagonal Fisher (Fisher merging), the Gram matrices of
the linear layers' inputs (RegMean)."""


def _header(path: Path, label: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(``{tensor: {"dtype", "shape"}}``, metadata) of a safetensors file; ``ValueError`` naming
    ``label`` and the file when it is missing or not safetensors."""
    if not path.is_file():
        raise ValueError(f"{label}: {path} does not exist (compute it with the stats stage)")
    try:
        with path.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or n > path.stat().st_size - 8:
                raise ValueError("bad header length")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (OSError, ValueError) as e:
        raise ValueError(f"{label}: {path} is not a safetensors file ({e})") from None
    meta = header.pop("__metadata__", None) or {}
    return header, {str(k): str(v) for k, v in meta.items()}


class StatisticsFile:
    """One specialist's statistics file, read lazily (see the module docstring).

    Args:
        path: the ``.safetensors`` file.
        label: how errors name it (``"statistics file 1 (finetuned model 1)"``).
    """

    def __init__(self, path: str | Path, label: str = "statistics file") -> None:
        self.path = Path(path)
        self.label = f"{label} ({self.path})"
        self._tensors, self.metadata = _header(self.path, label)
        fmt = self.metadata.get("format")
        if fmt is not None and fmt != FORMAT:
            raise ValueError(
                f"{self.label}: format {fmt!r}, expected {FORMAT!r}; compute it again with "
                "this version"
            )

    def names(self, kind: str) -> list[str]:
        """The parameter (``fisher``) or weight (``gram``) names the file holds, in its order."""
        prefix = FISHER if kind == "fisher" else GRAM
        return [k[len(prefix) :] for k in self._tensors if k.startswith(prefix)]

    def has(self, kind: str, name: str) -> bool:
        return ((FISHER if kind == "fisher" else GRAM) + name) in self._tensors

    def shape(self, kind: str, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[(FISHER if kind == "fisher" else GRAM) + name]["shape"])

    def _get(self, key: str) -> Tensor:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as h:
            return h.get_tensor(key)

    def fisher(self, name: str) -> Tensor:
        """F of parameter ``name``; ``ValueError`` naming it and the file when absent."""
        if not self.has("fisher", name):
            raise ValueError(
                f"{self.label} has no Fisher of parameter {name!r} ({self._held()}); it was "
                "computed for another model or without kind 'fisher'"
            )
        return self._get(FISHER + name)

    def gram(self, name: str) -> tuple[Tensor, int]:
        """(mean Gram XᵀX / n, n) of the inputs of the linear layer whose weight is ``name``."""
        if not self.has("gram", name):
            raise ValueError(
                f"{self.label} has no Gram matrix for weight {name!r} ({self._held()}); it was "
                "computed for another model or without kind 'gram'"
            )
        rows = GRAM_ROWS + name
        n = int(self._get(rows)) if rows in self._tensors else -1
        return self._get(GRAM + name), n

    def fisher_sq_sum(self) -> float:
        """Σ F² over every ``fisher/`` tensor (recorded, else computed tensor by tensor, once per
        version of the file)."""
        if FISHER_SQ_SUM in self._tensors:
            return float(self._get(FISHER_SQ_SUM))
        st = self.path.stat()
        return _computed_sq_sum(str(self.path), st.st_size, st.st_mtime_ns, st.st_ino)

    def _held(self) -> str:
        f, g = len(self.names("fisher")), len(self.names("gram"))
        return f"it holds {f} Fisher tensor(s) and {g} Gram matrice(s)"


@functools.lru_cache(maxsize=64)
def _computed_sq_sum(path: str, size: int, mtime_ns: int, ino: int) -> float:
    """Σ F² of a file without a recorded ``fisher_sq_sum`` (the stat fields are the cache key)."""
    from safetensors import safe_open

    total = 0.0
    with safe_open(path, framework="pt") as h:
        for key in h.keys():  # noqa: SIM118
            if key.startswith(FISHER):
                # float64 (sums of 1e8 squares), in blocks: no copy of the whole tensor
                for block in h.get_tensor(key).reshape(-1).split(1 << 18):
                    b = block.double()
                    total += float(torch.dot(b, b))
    return total


def open_statistics(
    paths: Sequence[str] | None, num_models: int, method: str
) -> list[StatisticsFile]:
    """The statistics files of a merge with ``method``, one per finetuned model in their order;
    ``ValueError`` naming the parameter ``statistics`` when there are none or their number is
    not the models'."""
    if not paths:
        raise ValueError(
            f"{method} needs data: merge parameter 'statistics' is null; give one statistics "
            "file per finetuned model, in their order (in the pipeline the stats stage computes "
            f"them from each specialist's training prompts: merge={method} does it itself)"
        )
    if len(paths) != num_models:
        raise ValueError(
            f"merge parameter 'statistics' has {len(paths)} file(s) but {num_models} finetuned "
            "models were given; give one statistics file per finetuned model, in their order"
        )
    return [
        StatisticsFile(p, f"merge parameter 'statistics' entry {i} (finetuned model {i})")
        for i, p in enumerate(paths)
    ]


def fisher_coefficients(
    files: Sequence[StatisticsFile], eps: float, normalize: bool
) -> list[float]:
    """FusionBench's per-model scaling of the Fisher, c_t ∝ 1/(‖F_t‖ + ε) normalised to sum 1
    (``normalize``; else all 1): ‖F_t‖ is the L2 norm of model t's whole Fisher."""
    if not normalize:
        return [1.0] * len(files)
    inv = [1.0 / (math.sqrt(f.fisher_sq_sum()) + eps) for f in files]
    total = sum(inv)
    return [x / total for x in inv]


def absolute_paths(params: Any, name: str = "statistics") -> None:
    """Check the ``statistics`` entries of frozen ``params`` and make them absolute (so that a
    record or a cache key names the same files from any working directory)."""
    paths = getattr(params, name)
    if paths is None:
        return
    if len(paths) == 0:
        raise ValueError(f"merge parameter {name!r} is empty; give one file per finetuned model")
    for i, p in enumerate(paths):
        if not p.strip():
            raise ValueError(f"merge parameter {name!r} entry {i} is an empty path")
    resolved = tuple(str(Path(p).expanduser().resolve()) for p in paths)
    object.__setattr__(params, name, resolved)


STATISTICS_HELP = (
    "One statistics file per finetuned model, in their order (stats stage output; null: the "
    "pipeline fills it, elsewhere an error)."
)
