"""Tracking: the results store (``store``), W&B logging (``wandb_log``) and the report
(``report``: Markdown table and figures)."""

from hhh_bench.tracking.store import (
    KINDS,
    ResultRow,
    append_diagnostics,
    append_result,
    load_results,
    read_diagnostics,
    read_results,
    validate_row,
)

__all__ = [
    "KINDS",
    "ResultRow",
    "append_diagnostics",
    "append_result",
    "load_results",
    "read_diagnostics",
    "read_results",
    "validate_row",
]
