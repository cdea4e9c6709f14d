"""Evaluation: the lm-eval wrapper and our task YAMLs (``harness``), 3H scoring (``scoring``),
and a direct log-likelihood scorer for quick checks (``choice``).

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
from hhh_bench.evaluation.scoring import (
    DIMENSIONS,
    TaskSpec,
    dimension_scores,
    score,
    suite_tasks,
    summarize,
)

__all__ = [
    "DIMENSIONS",
    "TASKS_DIR",
    "HarnessResult",
    "TaskSpec",
    "dimension_scores",
    "evaluate_model",
    "find_tasks",
    "materialize_tasks",
    "score",
    "shipped_tasks",
    "suite_tasks",
    "summarize",
    "tasks_fingerprint",
    "user_tasks",
]
