"""Data-mixture strategies: a registry of named strategies, one module each.

    from hhh_bench.data.mixing import mix, list_strategies
    result = mix("fixed_ratio", {"helpful": h, "honest": o, "harmless": s},
                 budget="per_specialist", seed=0, shares={"helpful": 0.5, "honest": 0.25,
                 "harmless": 0.25})
    result.counts   # {'helpful': 200, 'honest': 100, 'harmless': 100} for 400-pair sets

Shares are fractions of the final mixture; budgets, rounding and sampling are defined once in
:mod:`hhh_bench.data.mixing.registry`. Each strategy has ``conf/mix/<name>.yaml``.
"""

from hhh_bench.data.mixing import (  # noqa: F401  (importing registers the strategies)
    conflict_aware,
    fixed_ratio,
    proportional,
    resolved,
    reward_select,
    sequential,
    uniform,
)
from hhh_bench.data.mixing.registry import (
    BUDGETS,
    MixResult,
    allocate,
    get_strategy,
    list_strategies,
    mix,
    register_strategy,
    resolve_budget,
)
from hhh_bench.data.mixing.scorers import RewardModelScorer, get_scorer, register_scorer

__all__ = [
    "BUDGETS",
    "MixResult",
    "RewardModelScorer",
    "allocate",
    "get_scorer",
    "get_strategy",
    "list_strategies",
    "mix",
    "register_scorer",
    "register_strategy",
    "resolve_budget",
]
