"""Model merging: a registry of per-tensor merge methods and the public API.

Usable alone as a library (no Hydra)::

    from hhh_bench.merging import merge_state_dicts, list_methods, describe_method
    merged = merge_state_dicts("ties", base_sd, [sd_1, sd_2, sd_3], density=0.2, scaling=1.0)

See ``docs/merging.md`` for the equations and every deviation from the reference code.
"""

from __future__ import annotations

import importlib
from typing import Any

from hhh_bench.merging.api import (
    describe_method,
    list_methods,
    merge_state_dicts,
    merge_tensors,
    method_defaults,
)
from hhh_bench.merging.base import (
    CommonParams,
    MergeMethod,
    get_method,
    merge_function,
    param,
    register_method,
    validate_state_dicts,
    validate_tensors,
)
from hhh_bench.merging.methods.resm import RankStrategy, register_rank, register_reweight
from hhh_bench.merging.taskvec import LowRank, TaskVectors

__all__ = [
    "CommonParams",
    "LowRank",
    "MergeMethod",
    "RankStrategy",
    "TaskVectors",
    "describe_method",
    "get_method",
    "list_methods",
    "merge_function",
    "merge_state_dicts",
    "merge_tensors",
    "method_defaults",
    "param",
    "register_method",
    "register_rank",
    "register_reweight",
    "validate_state_dicts",
    "validate_tensors",
]

# Names of the streaming engine's modules, resolved on first use so that this package imports
# without them (and without their heavier dependencies).
_LAZY = {
    "merge_models": "hhh_bench.merging.engine",
    "diagnose": "hhh_bench.merging.diagnostics",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
