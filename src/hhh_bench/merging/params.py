"""The hyperparameters every merge method takes, and the typed-field machinery of all of them.

A method's parameters are a frozen dataclass subclassing :class:`CommonParams`, every field made
by :func:`param` (a default and a one-line description, optionally the allowed values). Values
are type-checked and converted on construction, then :meth:`CommonParams.validate` checks
ranges; both raise ``ValueError`` naming the parameter.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hhh_bench.core.typed import check_fields, param
from hhh_bench.core.typed import describe as describe_fields

log = logging.getLogger(__name__)

__all__ = ["COMPUTE_DTYPES", "CommonParams", "describe_params", "param"]

COMPUTE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class CommonParams:
    """Hyperparameters every method takes. Subclass it (frozen dataclass, every field with a
    default made by :func:`param`) and extend :meth:`validate` for a method's own knobs.

    Values are type-checked and converted on construction (an int for a float field becomes a
    float, a list for ``weights`` a tuple), then :meth:`validate` runs; both raise ``ValueError``
    naming the parameter.
    """

    scaling: float = param(
        1.0,
        "λ, multiplies the merged task vector (not each τ_t): θ = θ0 + λ·merge(w_1·τ_1, .., w_T·τ_T).",
    )
    weights: tuple[float, ...] | None = param(
        None,
        "One weight per finetuned model, in their order; w_t multiplies τ_t before the method "
        "(null = all 1).",
    )
    seed: int = param(
        0,
        "Seed of the random steps (DARE's and DELLA's masks); other methods are deterministic. "
        "Unset, the merge stage gives it the run's `seed` (each seed of `seeds` its own masks).",
    )
    compute_dtype: str = param(
        "float32",
        "Dtype of the arithmetic (SVDs included); the result is cast back to the base's dtype.",
        choices=tuple(COMPUTE_DTYPES),
    )
    device: str = param("cpu", "Torch device of the arithmetic (cpu, cuda, cuda:1, mps, ...).")

    def __post_init__(self) -> None:
        check_fields(self, lambda name: f"merge parameter {name!r}")
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the parameter whose value is out of range."""
        if not math.isfinite(self.scaling):
            raise ValueError(f"merge parameter 'scaling' must be finite, got {self.scaling}")
        top = torch.finfo(COMPUTE_DTYPES.get(self.compute_dtype, torch.float32)).max
        if abs(self.scaling) > top:
            raise ValueError(
                f"merge parameter 'scaling' = {self.scaling:g} is beyond the range of the "
                f"compute dtype {self.compute_dtype} (|λ| ≤ {top:.3g}): λ scales the merged task "
                "vector; values near 1 are the usual ones"
            )
        if self.scaling <= 0:  # allowed (task negation), never silent
            log.warning(
                "merge parameter 'scaling' is %s: %s", self.scaling,
                "the merge returns the base unchanged" if self.scaling == 0 else
                "the merged task vector is subtracted from the base (task negation, Ilharco et "
                "al. 2023), which removes the specialists' behaviour instead of adding it",
            )  # fmt: skip
        if self.weights is not None:
            if len(self.weights) == 0:
                raise ValueError("merge parameter 'weights' is empty; use null for all 1")
            for i, w in enumerate(self.weights):
                if not math.isfinite(w):
                    raise ValueError(f"merge parameter 'weights' entry {i} is not finite: {w}")
                if abs(w) > top:
                    raise ValueError(
                        f"merge parameter 'weights' entry {i} = {w:g} is beyond the range of "
                        f"the compute dtype {self.compute_dtype} (|w| ≤ {top:.3g})"
                    )
            if all(w == 0 for w in self.weights):  # like scaling=0: allowed, never silent
                log.warning(
                    "merge parameter 'weights' is all 0 (%s): every task vector is dropped and "
                    "the merge returns the base unchanged", list(self.weights),
                )  # fmt: skip
        try:
            dev = torch.device(self.device)
        except (RuntimeError, ValueError) as e:
            raise ValueError(
                f"merge parameter 'device' is not a torch device: {self.device!r}"
            ) from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"merge parameter 'device' is {self.device!r} but CUDA is not available"
            )

    # -- helpers used by the methods -----------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype of ``compute_dtype``."""
        return COMPUTE_DTYPES[self.compute_dtype]

    def resolve_weights(self, num_models: int) -> tuple[float, ...]:
        """The weights for ``num_models`` finetuned models (all 1 when unset)."""
        if self.weights is None:
            return (1.0,) * num_models
        if len(self.weights) != num_models:
            raise ValueError(
                f"merge parameter 'weights' has {len(self.weights)} entries but {num_models} "
                "finetuned models were given; give one weight per finetuned model, in their order"
            )
        return self.weights

    def weight_tensor(self, num_models: int, like: Tensor) -> Tensor:
        """Weights as a (T, 1, .., 1) tensor that broadcasts against a (T, *shape) stack ``like``."""
        w = torch.tensor(self.resolve_weights(num_models), dtype=like.dtype, device=like.device)
        return w.view(num_models, *([1] * (like.dim() - 1)))

    def knobs(self) -> str:
        """The knobs that scale a merged tensor, for an error about its values:
        ``merge parameter 'scaling' = 2, 'weights' = [1.0, 3.0]``."""
        weights = "null" if self.weights is None else list(self.weights)
        return f"merge parameter 'scaling' = {self.scaling:g}, 'weights' = {weights}"

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists), as they would appear in ``conf/merge/<name>.yaml``."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def describe_params(params_cls: type[CommonParams]) -> list[dict[str, Any]]:
    """Each field of ``params_cls`` as ``{"name", "type", "default", "description"}``."""
    return describe_fields(params_cls)
