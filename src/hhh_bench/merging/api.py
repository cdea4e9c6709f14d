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
    finetuned: Sequence[Tensor],
    *,
    name: str = "",
    **params: Any,
) -> Tensor:
    """Merge one parameter.

    Args:
        method: a registered method name (see :func:`list_methods`).
        base: θ0 for this parameter.
        finetuned: θ_1..θ_T, same shape and dtype as ``base``.
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
    m = get_method(method)
    p = m.make_params(**params)
    validate_tensors(name, base, finetuned)
    p.resolve_weights(len(finetuned))
    if not base.is_floating_point():
        return base.clone()
    entry: dict[str, Any] = {}
    if m.needs_global_pass(p):
        stats = m.tensor_stats(name, base, finetuned, p)
        if stats is not None:
            entry = m.plan({name: stats}, p).get(name, {})
    return m.merge_tensor(name, base, finetuned, p, entry)


def merge_state_dicts(
    method: str,
    base: Mapping[str, Tensor],
    finetuned: Sequence[Mapping[str, Tensor]],
    **params: Any,
) -> dict[str, Tensor]:
    """Merge whole state dicts (in memory; the streaming engine does the same tensor by tensor).

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
    m = get_method(method)
    p = m.make_params(**params)
    validate_state_dicts(base, finetuned)
    p.resolve_weights(len(finetuned))
    floating = [k for k, v in base.items() if v.is_floating_point()]
    plan: dict[str, dict[str, Any]] = {}
    if m.needs_global_pass(p):
        stats = {}
        for k in floating:
            s = m.tensor_stats(k, base[k], [sd[k] for sd in finetuned], p)
            if s is not None:
                stats[k] = s
        plan = m.plan(stats, p)
    out: dict[str, Tensor] = {}
    for k, b in base.items():
        if not b.is_floating_point():
            out[k] = b.clone()
        else:
            out[k] = m.merge_tensor(k, b, [sd[k] for sd in finetuned], p, plan.get(k, {}))
    return out
