"""The experiment report: a paper-style Markdown table and three figures from the results store.

``report.md``
    The main table, rows grouped Base / Oracle / Specialists / Data mixture / Model merging,
    columns Helpful, Honest, Harmless, Avg, Min. One row per *family* (a merge method, a mixing
    strategy, a specialist's dimension; a row's ``family`` field overrides the default): when a
    family holds several configurations (a hyperparameter sweep), the one with the best
    ``select_by`` score on the selection split (validation) is shown with its report-split (test)
    numbers. Cells are means over seeds, ``mean ± std`` when there are several, with the change
    from the base in parentheses; the best value per column among all rows but the oracle is
    bold. Then every evaluated configuration, and per-task metrics of the main-table rows.
    Issue 17: a one-seed cell shows ``value ± standard error`` over items; extra columns the rows
    carry (over-refusal, capability; ↓ where lower is better) follow Min; paired tests over items
    (:mod:`hhh_bench.tracking.paired`) mark a value the data cannot tell from its column's best
    (≈) and a change from the base they cannot resolve (†), and get a section of their own; an
    *Evaluation setup* table names each task's metric (saying which are length-normalised) and
    judge. Issue 27: a cell whose judged task had more than ``report.judge_failure_threshold``
    of empty or unparsed answers is marked ‡, the counts under the table
    (:mod:`hhh_bench.tracking.failures`). Battery 9: a change from a base mean over another
    set of seeds is marked §, rows over fewer seeds than others say their count, a ``name [n]``
    says what tells it from the first of its name, a model given with ``+eval.model`` (kind
    ``external``) is a group of its own, and a newest evaluation setup smaller than an older
    one is said above the table. With diagnostics rows (``<root>/diagnostics.jsonl``),
    a *Task-vector diagnostics* section: a model-wide table with one row per diagnosed set, a
    per-layer-type table per set.
    The report ends with *Mix or merge?* (:mod:`hhh_bench.tracking.answer`): each group's
    representative chosen on the selection split, the difference of their average (merge −
    mix) on the report split with a 95% t interval over paired seeds and its p, a
    mixed-effects view and the item-level bootstrap as a diagnostic, and as its last line the
    answer: merging wins, mixing wins, or inconclusive (with the seeds needed for ±0.02); or
    why there is no answer (no mixture or merge row, no shared seed).
    With merge methods swept on the selection split, a *Merge sweeps* section: per method, its
    score against each numeric knob with seed intervals (:mod:`hhh_bench.tracking.sweeps`).
``radar.png``, ``pareto.png``, ``conflict.png`` and ``diag_<statistic>.png``
    The figures (:mod:`hhh_bench.tracking.plots`); ``sweep_<method>.png``
    (:mod:`hhh_bench.tracking.sweeps`).

:func:`build_report` only puts the parts together, each with one job:
:mod:`~hhh_bench.tracking.entries` (the statistics: rows → entries, marks, matrices),
:mod:`~hhh_bench.tracking.tables` (the Markdown tables), :mod:`~hhh_bench.tracking.plots` (the
figures), :mod:`~hhh_bench.tracking.sections` (the Markdown sections, in report order),
:mod:`~hhh_bench.tracking.answer` (mix or merge?); the report stage
(:func:`hhh_bench.stages.report.run_report`) logs the result with
:mod:`~hhh_bench.tracking.wandb_log`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hhh_bench.tracking.answer import answer_section
from hhh_bench.tracking.entries import (
    COLUMNS,
    by_setup,
    conflict_matrix,
    extra_columns,
    paired_marks,
    setup_matches,
    summary_metrics,
    superseded,
    table_entries,
    untested,
)
from hhh_bench.tracking.failures import (
    THRESHOLD,
    failure_marks,
    failure_note,
    with_failure_marks,
)
from hhh_bench.tracking.plots import conflict_plot, diagnostics_heatmaps, pareto_plot, radar_plot
from hhh_bench.tracking.resm_tsv import comparisons, resm_sections
from hhh_bench.tracking.sections import (
    all_models_section,
    counts_note,
    diagnostics_section,
    figures_section,
    main_section,
    other_setups_section,
    paired_section,
    per_task_section,
    probes_section,
    setup_console_line,
    setup_note,
    setup_section,
    skipped_note,
    superseded_note,
    title_section,
    unverified_note,
)
from hhh_bench.tracking.store import DIGEST
from hhh_bench.tracking.sweeps import sweep_figures, sweep_points, sweep_section
from hhh_bench.tracking.tables import main_table


def build_report(
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    experiment: str = "",
    report_split: str = "test",
    select_split: str | None = "validation",
    select_by: str = "average",
    diagnostics: Sequence[Mapping[str, Any]] = (),
    alpha: float = 0.05,
    skipped: Sequence[Any] = (),
    judge_failure_threshold: float = THRESHOLD,
    interval: str = "t",
    config_setup: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, ``radar.png``, ``pareto.png`` and ``conflict.png`` into ``out_dir``
    (and the ``diag_<stat>.png`` heatmaps when ``diagnostics`` has rows, a ``sweep_<method>.png``
    per merge method swept on the selection split: :mod:`hhh_bench.tracking.sweeps`).

    Args:
        rows: result rows (:func:`hhh_bench.tracking.store.read_results`); rows of other splits
            than ``report_split`` / ``select_split`` are ignored.
        out_dir: the folder to write (created).
        experiment: the experiment's name, for the title.
        report_split: the split whose numbers are shown.
        select_split: the split on which a family's configuration is chosen (None: the report
            split itself, which the report then says).
        select_by: the score a configuration is chosen by (``average``, ``min``, a dimension).
        diagnostics: rows of ``<root>/diagnostics.jsonl``
            (:func:`hhh_bench.tracking.store.read_diagnostics`); none: no diagnostics section.
        alpha: significance level of the paired tests behind the ≈ / † marks; 1 − the
            coverage of the mix-or-merge interval.
        config_setup: the evaluation setup the report's config scores with
            (:func:`hhh_bench.tracking.entries.setup_matches`); its rows are the tables' when
            the store holds any, else the newest setup's.
        skipped: the store's lines left out as invalid (``report.skip_invalid=true``:
            :class:`hhh_bench.tracking.store.SkippedLine`); the report says under the main table
            how many and why.
        judge_failure_threshold: a cell whose judged task had more than this share of empty
            or unparsed answers is marked ‡, with the counts under the table
            (:mod:`hhh_bench.tracking.failures`).
        interval: the answer's interval over seeds, ``t`` (Student t) or ``bca`` (BCa
            bootstrap; ``report.interval``).

    Returns:
        ``{"markdown", "main_table", "paired_tests", "entries", "summary", "conflict_matrix",
        "report_md", "radar", "pareto", "conflict", "diagnostics_figures", "sweeps",
        "sweep_figures", "answer", "answer_line"}``: ``diagnostics_figures`` is ``{statistic:
        heatmap path}``, ``sweeps`` the swept merge methods on the selection split
        (:func:`hhh_bench.tracking.sweeps.sweep_points`) and ``sweep_figures`` ``{method:
        sweep_<method>.png}``, ``answer``
        the mix-or-merge comparison (:func:`hhh_bench.tracking.answer.compare`; None without
        an answer) and ``answer_line`` its one line (or the reason there is none), the last
        line of ``report.md``.

    Raises:
        ValueError: no row of ``report_split``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, dropped = superseded(rows)  # the same run evaluated again: its latest row
    report_rows = [dict(r) for r in rows if r.get("split", report_split) == report_split]
    if not report_rows:
        have = sorted({str(r.get("split")) for r in rows})
        raise ValueError(
            f"no results for split {report_split!r} (have {have or 'none'}); run the eval stage "
            f"on that split first"
        )
    if select_by not in dict(COLUMNS):
        raise ValueError(f"select_by must be one of {[c for c, _ in COLUMNS]}, got {select_by!r}")
    setups = by_setup(report_rows)
    shown = "newest"
    mine = [g for g in setups if config_setup and setup_matches(g[0], config_setup)]
    if mine:  # battery 14, F4: a stray `eval.limit=5` evaluation took the default report
        setups = [mine[0], *(g for g in setups if g is not mine[0])]
        shown = "config"
    report_rows, others = setups[0], setups[1:]
    entries = table_entries(report_rows)
    extra = extra_columns(report_rows, "main")
    probes = extra_columns(report_rows, "diagnostics")
    marks, tests = paired_marks(entries, {**extra, **probes}, alpha=alpha)
    marks = with_failure_marks(marks, failure_marks(entries, judge_failure_threshold))
    matrix = conflict_matrix(report_rows)
    paths = {
        "radar": radar_plot(entries, out / "radar.png", title=f"3H profile ({report_split})"),
        "pareto": pareto_plot(report_rows, out / "pareto.png", highlight=entries),
        "conflict": conflict_plot(matrix, out / "conflict.png"),
    }
    diag_rows = list(diagnostics)
    diag_figures = diagnostics_heatmaps(diag_rows, out) if diag_rows else {}
    choose_on = select_split if select_split != report_split else None  # else: said, not hidden
    select_rows = [r for r in rows if choose_on and r.get("split") == choose_on]
    # the choice is read from every row that records it, whatever split is reported (battery
    # 14, F3: with report_split=validation no chosen configuration was marked)
    sweeps = sweep_points(rows, split=choose_on or report_split, score=select_by,
                          chosen_rows=rows)  # fmt: skip
    sweep_paths = sweep_figures(sweeps, out)
    answer_md, answer, answer_text = answer_section(
        entries, select_rows=select_rows, select_split=choose_on, interval=interval, alpha=alpha
    )
    md = [
        *title_section(report_rows, experiment=experiment, split=report_split),
        *setup_note(report_rows, others, shown),
        *main_section(entries, report_rows, extra, marks, tests, select_by=select_by,
                      select_split=select_split, alpha=alpha),
        *probes_section(entries, probes, marks),
        *failure_note(entries, judge_failure_threshold),
        *skipped_note(skipped),
        *unverified_note(report_rows),
        *superseded_note(dropped),
        *counts_note(report_rows),
        *other_setups_section(others, report_rows, shown),
        *all_models_section(report_rows),
        *per_task_section(entries),
        *setup_section(report_rows),
        *paired_section(entries, tests, {**extra, **probes}, alpha=alpha),
        *figures_section(),
        *sweep_section(sweeps, sweep_paths),
        *resm_sections(comparisons(entries, level=1 - alpha)),
        *(diagnostics_section(diag_rows, diag_figures) if diag_rows else []),
        *answer_md,  # last: the report ends with its answer line
    ]  # fmt: skip
    markdown = "\n".join(md) + "\n"
    (out / "report.md").write_text(markdown)
    return {
        "markdown": markdown,
        "main_table": main_table(entries, extra, marks),
        "untested_cells": untested(marks),
        "unverified_rows": sum(DIGEST not in r for r in report_rows),
        "paired_tests": tests,
        "entries": entries,
        "summary": summary_metrics(entries, select_by, answer),
        "conflict_matrix": matrix,
        "report_md": out / "report.md",
        **paths,
        "diagnostics_figures": diag_figures,
        "sweeps": sweeps,
        "sweep_figures": sweep_paths,
        "answer": answer,
        "answer_line": answer_text,
        "setup_line": setup_console_line(report_rows, others, shown),
    }
