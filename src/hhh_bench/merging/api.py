"""The public merging API: merge one tensor or whole state dicts with a registered method."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

import hhh_bench.merging.methods  # noqa: F401  (registers the methods)
from hhh_bench.merging.base import (
    get_method,
    registered_methods,
    validate_state_dicts,
    validate_tensors,
)
from hhh_bench.merging.driver import Inputs, run_merge
from hhh_bench.merging.sources import StateDictSource
from hhh_bench.merging.taskvec import LowRank


def list_methods() -> list[str]:
    """Names of the registered merge methods, sorted."""
    return registered_methods()


def describe_method(method: str) -> list[dict[str, Any]]:
    """The parameters of ``method``: ``[{"name", "type", "default", "description"}, ...]``."""
    return get_method(method).describe()


def method_defaults(method: str) -> dict[str, Any]:
    """The default value of every parameter of ``method`` (as in ``conf/merge/<method>.yaml``)."""
    return get_method(method).make_params().to_dict()


def merge_tensors(
    method: str,
    base: Tensor,
    finetuned: Sequence[Tensor | LowRank],
    *,
    name: str = "",
    **params: Any,
) -> Tensor:
    """Merge one parameter.

    Args:
        method: a registered method name (see :func:`list_methods`).
        base: θ0 for this parameter.
        finetuned: θ_1..θ_T, same shape and dtype as ``base``; or, for a LoRA specialist, its
            update τ_t = s·B·A as :class:`~hhh_bench.merging.taskvec.LowRank` (used exactly:
            SVD methods decompose it from its factors).
        name: the parameter's name (e.g. ``model.embed_tokens.weight``): TSV/RESM route embeddings
            and non-2-D parameters by it, DARE seeds its masks with it.
        **params: the method's hyperparameters (see :func:`describe_method`).

    Returns:
        The merged weight θ0 + λ·merge(τ), in the base's dtype and on the base's device.
        Non-floating tensors (must be equal across models) are returned from the base.
        Methods that need statistics over all layers (RESM's rank rule, TIES with
        ``scope="global"``) plan over this one tensor alone.

    Raises:
        ValueError: unknown method or parameter, a parameter out of range, or bad inputs (shape,
            dtype, NaN/Inf, differing integer buffers, no finetuned models), naming the
            parameter and the model index.
    """
    if isinstance(finetuned, (Tensor, LowRank)):
        raise ValueError("finetuned must be a list of tensors; wrap a single one in a list")
    if len(finetuned) == 0:
        raise ValueError(
            f"parameter {name or '(unnamed)'!r}: no finetuned models given; pass at least one"
        )
    m = get_method(method)
    p = m.make_params(**params)
    weights = [f for f in finetuned if not isinstance(f, LowRank)]
    for i, f in enumerate(finetuned):
        if isinstance(f, LowRank) and (tuple(f.shape) != tuple(base.shape) or not f.is_finite()):
            raise ValueError(
                f"parameter {name or '(unnamed)'!r}: finetuned model {i} is a low-rank update of "
                f"shape {f.shape} (base {tuple(base.shape)}) or holds NaN/Inf"
            )
    validate_tensors(name, base, weights or [base])
    p.resolve_weights(len(finetuned))
    if not base.is_floating_point():
        return base.clone()
    key = name or "tensor"
    return _merge_dicts(m, p, {key: base}, [{key: f} for f in finetuned])[key]


def merge_state_dicts(
    method: str,
    base: Mapping[str, Tensor],
    finetuned: Sequence[Mapping[str, Tensor]],
    **params: Any,
) -> dict[str, Tensor]:
    """Merge whole state dicts (in memory; the streaming engine does the same tensor by tensor,
    through the same driver).

    Keys, shapes, dtypes and values are validated first. Methods that need statistics over all
    layers (RESM's rank budget, TIES with ``scope="global"``) get a first pass over every floating
    tensor, then :meth:`~hhh_bench.merging.base.MergeMethod.plan`, then each tensor is merged.

    Args:
        method: a registered method name.
        base: θ0's state dict.
        finetuned: the T finetuned state dicts, with the base's keys.
        **params: the method's hyperparameters.

    Returns:
        ``{key: merged tensor}`` in the base's key order, dtypes and devices.

    Raises:
        ValueError: as :func:`merge_tensors`, plus key mismatches (naming the model index).
    """
    if isinstance(finetuned, Mapping):
        raise ValueError("finetuned must be a list of state dicts; wrap a single one in a list")
    m = get_method(method)
    p = m.make_params(**params)
    validate_state_dicts(base, finetuned)
    p.resolve_weights(len(finetuned))
    return _merge_dicts(m, p, base, finetuned)


def _merge_dicts(
    m: Any, p: Any, base: Mapping[str, Tensor], finetuned: Sequence[Mapping[str, Any]]
) -> dict[str, Tensor]:
    """The driver over in-memory sources (LoRA updates given as :class:`LowRank` values)."""
    base_src = StateDictSource(base, "the base")
    models = [_DictWithUpdates(sd, f"finetuned model {i}") for i, sd in enumerate(finetuned)]
    out: dict[str, Tensor] = {}

    def sink(k: str, merged: Tensor) -> None:
        b = base[k]
        out[k] = merged.clone() if merged is b else merged.to(device=b.device, dtype=b.dtype)

    # each merged tensor cast to the base's dtype by the driver, which checks it after the cast
    # (a float64 merge can overflow float32 there)
    inputs = Inputs(base_src, models, list(base))  # type: ignore[arg-type]
    run_merge(m, p, inputs, sink, out_dtype=lambda k: base[k].dtype)
    return out


class _DictWithUpdates(StateDictSource):
    """A state dict whose values may be :class:`LowRank` updates (then read as τ, not θ)."""

    def get(self, key: str) -> Tensor:
        return self.sd[key]  # type: ignore[return-value]
