"""Tracking: the results store (``store``), W&B logging (``wandb_log``), paired tests between
rows (``paired``) and the report (``report``: ``report.md`` and figures), built from parts with
one job each: the statistics (``entries``), the Markdown tables (``tables``), the figures
(``plots``), the Markdown sections (``sections``, with ``markdown``'s escaping and
``diagnostics_view``'s diagnostics tables) and the answer to "mix or merge?" (``answer``)."""

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
