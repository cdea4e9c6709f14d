"""Evaluation: the lm-eval wrapper and our task YAMLs (``harness``), judges, and a direct
log-likelihood scorer for quick checks (``choice``). 3H scoring and the statistics the report
shares are in :mod:`hhh_bench.core` (``scoring``, ``items``, ``stats``, ``uncertainty``).

Importing this package does not import lm-eval or torch; :func:`evaluate_model` does, when
called.
"""

from hhh_bench.evaluation.harness import (
    TASKS_DIR,
    HarnessResult,
    evaluate_model,
    find_tasks,
    materialize_tasks,
    shipped_tasks,
    tasks_fingerprint,
    user_tasks,
)

__all__ = [
    "TASKS_DIR",
    "HarnessResult",
    "evaluate_model",
    "find_tasks",
    "materialize_tasks",
    "shipped_tasks",
    "tasks_fingerprint",
    "user_tasks",
]
