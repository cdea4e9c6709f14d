"""Tracking: the results store (``store``), W&B logging (``wandb_log``) and the report
(``report``: Markdown table and figures, ending with ``answer``'s mix-or-merge line), and paired
tests between rows (``paired``)."""

from hhh_bench.tracking.paired import paired_test_groups, paired_test_rows
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
    "paired_test_groups",
    "paired_test_rows",
    "read_diagnostics",
    "read_results",
    "validate_row",
]
