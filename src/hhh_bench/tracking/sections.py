"""The report's Markdown: each section of ``report.md`` as a list of lines, in report order.

:func:`title_section` (title, split, metric, date), :func:`main_section` (how to read the main
table, then the table), :func:`skipped_note` (store lines skipped as invalid),
:func:`counts_note` (preference pairs per arm, items per task), :func:`other_setups_section`
(older evaluation setups of the store, each apart), :func:`all_models_section`,
:func:`per_task_section`, :func:`setup_section` (each task's metric and judge),
:func:`paired_section` (the paired tests behind the table's marks), :func:`figures_section`
and :func:`diagnostics_section`. The report ends with the answer's section
(:func:`hhh_bench.tracking.answer.answer_section`); :func:`hhh_bench.tracking.report.build_report`
puts them together. The tables come from :mod:`hhh_bench.tracking.tables`; every name from the
store is escaped (:func:`hhh_bench.tracking.markdown.md_text`). Sections write no files.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hhh_bench.tracking.diagnostics_view import diagnostics_table, layer_axes, layer_type_table
from hhh_bench.tracking.entries import (
    COLUMNS,
    NO_TEST,
    Entry,
    aggregate,
    base_means,
    extra_columns,
    table_entries,
    untested,
)
from hhh_bench.tracking.markdown import md_text, number_ranges
from hhh_bench.tracking.store import REPEATED, setup_key
from hhh_bench.tracking.tables import (
    OTHER_SEEDS,
    all_models_table,
    extra_head,
    main_table,
    paired_table,
    per_task_table,
)

METRIC_NOTES = {
    "acc": "argmax of the candidates' summed log-likelihoods",
    "acc_norm": "argmax of log-likelihood per byte of the candidate (length-normalised: the "
    "candidates differ in length)",
    "soft": "softmax probability mass on the gold candidate",
    "win_rate": "share of prompts whose answer the reward judge scores above the base model's "
    "(ties half)",
    "safe": "1 - attack success rate: share of answers to harmful prompts the safety judge "
    "labels safe",
    "over_refusal": "share of safe prompts refused (lower is better)",
    "truthful": "share of free answers the truth judge labels true",
    "true_info": "share of free answers the truth judge labels true and the info judge "
    "informative (TruthfulQA's %True·Informative)",
    "non_hallucinated": "share of free answers to HaluEval QA questions the hallucination judge "
    "labels not hallucinated (given the knowledge and the right answer)",
    "comply": "1 - over-refusal: share of safe prompts answered (a refused one is a failure)",
    "lc_win_rate": "length-controlled win rate against the data's reference answers "
    "(AlpacaEval 2: the judge's preference fitted on the length difference, read at zero)",
    "raw_win_rate": "mean judge preference for the answer over the data's reference answer",
    "length": "mean answer length in characters",
    "mt_score": "mean rating 1-10 of the first-turn answers to MT-Bench's questions by the rating "
    "judge (FastChat's single-answer grading)",
    "mt_score_norm": "MT-Bench's mean rating mapped to [0, 1]: (rating - 1) / 9",
    "strongreject": "StrongREJECT's fine-tuned evaluator: its expected score in [0, 1] of how much "
    "the answers help forbidden requests (lower is better)",
    "strongreject_rubric": "StrongREJECT's rubric score (1 - refused) * (convincing + specific - "
    "2) / 8 in [0, 1], by the rubric judge (lower is better)",
}
"""What each primary metric means, for the *Evaluation setup* table."""


def title_section(rows: Sequence[Mapping[str, Any]], *, experiment: str, split: str) -> list[str]:
    """The title (with the experiment's name) and one line: the split, the primary metric(s),
    how many rows, when the report was generated."""
    metric = sorted({str(r.get("metric", "?")) for r in rows})
    return [
        f"# hhh-bench report{': ' + md_text(experiment) if experiment else ''}",
        "",
        f"Split **{md_text(split)}**, primary metric {md_text(', '.join(metric))}"
        + (
            " (tasks naming their own: see *Evaluation setup*), "
            if any(r.get("task_specs") for r in rows)
            else ", "
        )
        + f"{len(rows)} evaluated model(s); generated {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
    ]


def main_section(
    entries: Sequence[Entry],
    rows: Sequence[Mapping[str, Any]],
    extra: Mapping[str, Mapping[str, Any]],
    marks: Mapping[tuple[str, str], Mapping[str, str]],
    tests: Mapping[str, Mapping[tuple[str, str], Any]],
    *,
    select_by: str,
    select_split: str | None,
    alpha: float,
) -> list[str]:
    """The main table (:func:`hhh_bench.tracking.tables.main_table` of ``entries``) under a
    paragraph saying how to read it: which configuration a family shows, what ± means, the
    deltas (against the base of ``rows``), bold, the paired tests' marks (``tests``), ↓."""
    n_seeds = max(e.n for e in entries)
    return [
        "## Main table",
        "",
        "One row per method family; where the pipeline compared several configurations of a "
        f"family, the one it chose by {select_by} on the selection split "
        f"({select_split or 'none'}) is shown, with how many it compared; a family without a "
        "recorded choice shows each of its configurations. "
        + ("Cells: mean ± std over seeds, n = the seeds. " if n_seeds > 1 else "")
        + (
            "One seed: value ± standard error over items, n = the items. "
            if any(v is not None for e in entries for v in e.se.values())
            else ""
        )
        + (
            "In parentheses: change from the base. "
            if base_means(rows)
            else "No base row: no deltas. "
        )
        + "Bold: best per column among all rows but the oracle"
        + (
            f"; ≈: not resolvably different from the best, †: change from the base not "
            f"resolved (paired tests over items, p ≥ {alpha}; see below). "
            if any(tests.values())
            else ". "
        )
        + (
            f"{NO_TEST}: no paired test, a row's per-item values are missing (its eval folder "
            "is gone from this root: run stage=eval again to rebuild it); an unmarked value or "
            "change there is untested, not resolved. "
            if untested(marks)
            else ""
        )
        + (
            (
                "↓: lower is better."
                if any(v.get("higher_is_better", True) is False for v in extra.values())
                else ""
            )
            + (
                " (·): descriptive, neither direction is better (no best marked)."
                if any(v.get("higher_is_better", True) is None for v in extra.values())
                else ""
            )
        )
        + seeds_note(entries),
        "",
        main_table(entries, extra, marks),
        "",
    ]


def seeds_note(entries: Sequence[Entry]) -> str:
    """What the main table's marks mean, when there are any: rows over fewer seeds than others
    (their label says how many; a one-seed ± is over items, not seeds), a ``name [2]`` (what
    tells it from the first of its name) and deltas (§) against a base mean over another set
    of seeds."""
    out = ""
    if len({e.n for e in entries}) > 1:
        out += (
            " The rows are not all over the same number of seeds: each label says its count; a "
            "mean over fewer seeds is noisier, and a one-seed ± is over items, not seeds."
        )
    numbered = [e for e in entries if e.numbered]
    if numbered:
        out += (
            " A name with [n] (n = 2, 3, ...) is another configuration of the same name and knobs: "
            + md_text("; ".join(f"{e.name} {e.numbered}" for e in numbered))
            + "."
        )
    other = [e for e in entries if e.other_seeds and any(v is not None for v in e.delta.values())]
    if other:
        base = ", ".join(other[0].base_seeds or ())
        rows = "; ".join(f"{e.label} {', '.join(e.seeds)}" for e in other)
        out += (
            f" {OTHER_SEEDS}: the change from the base compares different seed sets (the base's "
            f"seeds {base}; the rows' seeds: {md_text(rows)}): part of it is the seeds' "
            "difference."
        )
    return out


_ROW_PREFIX = re.compile(r"""result row ('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"): """)
"""``result row <its key, as Python writes a string>: `` at the head of a store check's message
(:func:`hhh_bench.tracking.store.check_row`)."""


def _row_reason(reason: str) -> tuple[str | None, str]:
    """``(row key as written, reason)`` of a skipped line's message that starts with ``result
    row '<key>': ``; ``(None, message)`` for any other (kept whole: a key or a reason holding
    ": " is never cut there)."""
    m = _ROW_PREFIX.match(reason)
    return (m.group(1), reason[m.end() :]) if m else (None, reason)


def unverified_note(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The rows of the table without a digest (written by hand or by another program, or a
    written row whose digest was deleted): read unchecked, so said under the table by name
    (battery 14, F12: an edited row without its digest was the table's unmarked best)."""
    from hhh_bench.tracking.store import DIGEST

    names = list(dict.fromkeys(str(r.get("name")) for r in rows if DIGEST not in r))
    if not names:
        return []
    n = sum(DIGEST not in r for r in rows)
    shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
    return [
        f"**{n} row{'s' if n != 1 else ''} of this table carr{'y' if n != 1 else 'ies'} no "
        f"digest** ({md_text(shown)}): written by hand or by another program, or edited with "
        "its digest removed, so read unchecked (only its scores' agreement with its tasks is "
        "checked); evaluate the model again (stage=eval) for a verified row.",
        "",
    ]


def skipped_note(skipped: Sequence[Any]) -> list[str]:
    """The Markdown lines under the main table saying how many lines of the store were skipped
    (invalid ones with ``report.skip_invalid=true``, and torn ones always) and why, by reason;
    none when none was."""
    repeats = [int(s.line) for s in skipped if s.reason == REPEATED]
    skipped = [s for s in skipped if s.reason != REPEATED]
    out = []
    if repeats:
        n = len(repeats)
        out = [
            f"**{n} line{'s' if n != 1 else ''} of the results store not used**: a later line "
            f"repeats {'their' if n != 1 else 'its'} row key (the latest of each is used): "
            f"line{'s' if n != 1 else ''} {number_ranges(repeats)}.",
            "",
        ]
    if not skipped:
        return out
    by_reason: dict[str, list[tuple[int, str | None]]] = {}
    for s in skipped:
        key, reason = _row_reason(str(s.reason))
        by_reason.setdefault(reason, []).append((int(s.line), key))
    n = len(skipped)
    parts = []
    for r, v in by_reason.items():
        keys = list(dict.fromkeys(k for _, k in v if k is not None))
        rows = (
            f" (row{'s' if len(keys) > 1 else ''} {', '.join(keys[:3])}"
            + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            + ")"
            if keys
            else ""
        )
        parts.append(
            f"line{'s' if len(v) > 1 else ''} {number_ranges([x for x, _ in v])}: {r}{rows}"
        )
    return [
        *out,
        f"**Skipped {n} invalid row{'s' if n != 1 else ''} of the results store** "
        "(not in any table or figure): " + md_text("; ".join(parts)) + ".",
        "",
    ]


def budget_note(rows: Sequence[Mapping[str, Any]]) -> str:
    """One sentence on how many preference pairs each compared arm was trained from (rows carry
    ``extra.train_pairs``): the specialists together (what a merge is built from), each mixture
    (budget-matched when equal to that sum) and the oracle. Empty when no row says."""
    pairs: dict[str, dict[str, int]] = {}
    for r in rows:
        n = (r.get("extra") or {}).get("train_pairs")
        if n:
            pairs.setdefault(str(r.get("kind")), {})[str(r.get("name"))] = int(n)
    spec = pairs.get("specialist") or {}
    if not spec:
        return ""
    total = sum(spec.values())
    parts = [f"the specialists {' + '.join(f'{n:,}' for n in spec.values())} = {total:,} (merged)"]
    for m in sorted(set((pairs.get("mixture") or {}).values())):
        match = "budget-matched" if m == total else f"{m / total:.2f}× the specialists' total"
        parts.append(f"each mixture {m:,} ({match})" if len(pairs["mixture"]) > 1 else
                     f"the mixture {m:,} ({match})")  # fmt: skip
    for o in (pairs.get("oracle") or {}).values():
        parts.append(f"the oracle {o:,} (upper reference, its own data and recipe)")
    return "Preference pairs per seed: " + "; ".join(parts) + "."


def items_note(rows: Sequence[Mapping[str, Any]]) -> str:
    """One sentence on how many items each scored task has per seed, by dimension (from the
    rows' ``task_specs`` and per-task ``n``): how much one flipped item moves a score. Empty
    when no row says."""
    counts: dict[str, dict[str, set[int]]] = {}
    for r in rows:
        for spec in r.get("task_specs") or []:
            n = ((r.get("tasks") or {}).get(spec["name"]) or {}).get("n")
            if n is not None:
                dim = counts.setdefault(str(spec["dimension"]), {})
                dim.setdefault(str(spec["name"]), set()).add(int(n))
    if not counts:
        return ""

    def fmt(ns: set[int]) -> str:
        return "/".join(str(n) for n in sorted(ns))

    parts = [
        f"{dim} " + ", ".join(f"{t} {fmt(ns)}" for t, ns in tasks.items())
        for dim, tasks in counts.items()
    ]
    return "Items per task and seed: " + "; ".join(parts) + "."


def superseded_note(dropped: Sequence[Mapping[str, Any]]) -> list[str]:
    """The line saying how many store rows a later evaluation of the same run superseded
    (:func:`hhh_bench.tracking.entries.superseded`); none when none did."""
    if not dropped:
        return []
    n = len(dropped)
    names = sorted({str(r.get("name")) for r in dropped})
    return [
        f"**{n} older row{'s' if n != 1 else ''} of the results store not shown**: the same "
        "configuration, seed, data and run config evaluated again later (its model recomputed, "
        "e.g. after a code edit); the latest row of each is used ("
        + md_text(", ".join(names[:8]) + (", ..." if len(names) > 8 else ""))
        + ").",
        "",
    ]


def counts_note(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """:func:`budget_note` and :func:`items_note` as one paragraph; none when neither says."""
    text = " ".join(x for x in (budget_note(rows), items_note(rows)) if x)
    return [text, ""] if text else []


def describe_setup(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line naming a setup: suite, metric, its scored tasks, its key."""
    r = rows[0]
    tasks = [s["name"] for s in r.get("task_specs") or []]
    setup = r.get("setup") if isinstance(r.get("setup"), Mapping) else {}
    harness = "".join(  # the harness settings that make a setup (battery 14, F4: unnamed)
        f", {k} {setup[k]}" for k in ("limit", "num_fewshot", "apply_chat_template", "backend")
        if setup.get(k) is not None
    )  # fmt: skip
    return md_text(
        f"suite {r.get('suite')}, metric {r.get('metric')}{harness}, {len(tasks)} task(s) "
        f"({', '.join(tasks) or '-'}); setup {setup_key(r)}"
    )


SHOWN_SETUP = {"newest": "the newest evaluation setup",
               "config": "the evaluation setup this report's config scores with"}  # fmt: skip
"""How the report's tables chose their setup: the one of the report's config (``eval.limit``,
tasks, ...) when rows of it exist, else the newest (:func:`hhh_bench.tracking.report.build_report`)."""


def setup_note(
    current: Sequence[Mapping[str, Any]],
    others: Sequence[Sequence[Mapping[str, Any]]],
    shown: str = "newest",
) -> list[str]:
    """A warning over the main table when the newest evaluation setup (the one the tables
    show) holds fewer rows than an older one: a stray evaluation with other settings (a task
    added, another limit or backend) would otherwise take the main table, and the answer, unsaid
    (battery 9). None otherwise."""
    most = max((len(o) for o in others), default=0)
    if most <= len(current):
        return []
    names = sorted({str(r.get("name")) for r in current})
    listed = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
    if shown == "config":
        return [
            f"**The tables below are {SHOWN_SETUP[shown]}, which holds {len(current)} row(s) "
            f"({md_text(listed)}); another setup of this store holds {most}** (see *Other "
            "evaluation setups*): report with that setup's settings to see those rows.",
            "",
        ]
    return [
        f"**The tables below are {SHOWN_SETUP[shown]}, which holds {len(current)} "
        f"row(s) ({md_text(listed)}); an older setup of this store holds {most}** (see *Other "
        "evaluation setups*): the newest rows were evaluated with other settings (another task "
        "list, task version, limit, metric or backend). If they are a stray evaluation, report "
        "them under a root of their own, or evaluate every model with those settings.",
        "",
    ]


def setup_console_line(
    current: Sequence[Mapping[str, Any]],
    others: Sequence[Sequence[Mapping[str, Any]]],
    shown: str = "newest",
) -> str | None:
    """:func:`setup_note` as one console line (battery 11, ev03r: only report.md said it, and
    the console's table and answer showed the newest, smaller setup unsaid); None otherwise."""
    most = max((len(o) for o in others), default=0)
    if most <= len(current):
        return None
    return (
        f"note: the table shows {SHOWN_SETUP[shown]} ({len(current)} row(s)); "
        f"{'an older' if shown == 'newest' else 'another'} setup of this store holds {most} "
        "row(s): see report.md (Other evaluation setups)"
    )


def other_setups_section(
    others: Sequence[Sequence[Mapping[str, Any]]],
    current: Sequence[Mapping[str, Any]],
    shown: str = "newest",
) -> list[str]:
    """One main table per older evaluation setup of the store, each on its own (its deltas
    against its own base): rows of different setups are never averaged together."""
    if not others:
        return []
    md = [
        "## Other evaluation setups in this store",
        "",
        f"The tables above are {SHOWN_SETUP[shown]} ({describe_setup(current)}). This store also "
        f"holds rows of {len(others)} other setup(s) (another task list, task version, metric "
        "or harness setting); each is shown apart below and never averaged with another.",
        "",
    ]
    for i, rows in enumerate(others, 1):
        md += [f"### Setup {i + 1}: {describe_setup(rows)}", ""]
        entries = table_entries(rows)
        md += [main_table(entries, extra_columns(rows, "main"), {}), ""]
        probes = extra_columns(rows, "diagnostics")
        md += [main_table(entries, probes, {}, scores=False), ""] if probes else []
    return md


def probes_section(
    entries: Sequence[Entry],
    probes: Mapping[str, Mapping[str, Any]],
    marks: Mapping[tuple[str, str], Mapping[str, str]],
) -> list[str]:
    """The diagnostics table (issue 32): the columns of ``eval.columns`` with ``table:
    diagnostics`` (the likelihood multiple-choice probes, the reward-model win rate against
    θ0), for the main table's rows, outside every 3H score; cells read as the main table's."""
    if not probes:
        return []
    return [
        "## Diagnostics (outside the 3H scores)",
        "",
        "Probes of what training moved, never in a dimension, the average or the answer: the "
        "likelihood multiple-choice tasks score the distributions the specialists were trained "
        "on (docs/evaluation.md). Same rows and cells as the main table (value ± spread, n, "
        "bold best by direction, the paired tests' ≈).",
        "",
        main_table(entries, probes, marks, scores=False),
        "",
    ]


def all_models_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every evaluated configuration of ``rows`` (:func:`~hhh_bench.tracking.tables.all_models_table`)."""
    numbered = [e for e in aggregate(rows) if e.numbered]
    note = (
        ["A name with [n] (n = 2, 3, ...) is another configuration of the same name and knobs: "
         + md_text("; ".join(f"{e.name} {e.numbered}" for e in numbered)) + ".", ""]
        if numbered else []
    )  # fmt: skip
    return ["## All evaluated models", "", all_models_table(rows), "", *note]


def per_task_section(entries: Sequence[Entry]) -> list[str]:
    """Per-task metrics of the main table's rows; none when no row names its tasks."""
    tasks = per_task_table(entries)
    return ["## Per-task metrics (main-table rows)", "", tasks, ""] if tasks else []


def setup_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown naming each task's primary metric (saying which are length-normalised) and the
    judges of the judged tasks, from the rows' ``task_specs``, ``extra_columns`` and ``judges``."""
    specs: dict[str, tuple[str, str]] = {}
    for r in rows:
        for s in r.get("task_specs") or []:
            specs.setdefault(s["name"], (s["dimension"], s["metric"]))
        for name, c in (r.get("extra_columns") or {}).items():
            specs.setdefault(c["task"], (f"column {name}", c["metric"]))
    judges: dict[str, Mapping[str, Any]] = {}
    for r in rows:
        for task, j in (r.get("judges") or {}).items():
            judges.setdefault(task, j)
    if not specs:
        return []
    md = [
        "## Evaluation setup",
        "",
        "| Task | Scores | Metric | Meaning | Judge |",
        "|---|---|---|---|---|",
    ]
    for task, (dim, metric) in specs.items():
        j = judges.get(task)
        judge = "-"
        if j:
            rev = f"@{j['revision']}" if j.get("revision") else ""
            judge = f"{j.get('model')}{rev} (kind {j.get('kind', '-')}, role {j['role']})"
        note = METRIC_NOTES.get(metric, "")
        cells = (md_text(x) for x in (task, dim, metric, note, judge))
        md.append("| " + " | ".join(cells) + " |")
    return [*md, ""]


def paired_section(
    entries: Sequence[Entry],
    tests: Mapping[str, Mapping[tuple[str, str], Any]],
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    alpha: float = 0.05,
) -> list[str]:
    """Markdown of the paired tests: each main-table row against the base and against each
    column's best row (difference ± standard error, p; ``≈``: not resolved at ``alpha``)."""
    cols = [*(c for c, _ in COLUMNS if c != "min"), *(extra or {})]
    heads = [dict(COLUMNS).get(c) or extra_head(c, (extra or {})[c]) for c in cols]
    md = [
        "## Paired tests over items",
        "",
        "Two models scored on the same items are compared by their per-item differences "
        "(paired z-test; Miller, arXiv:2411.00640): difference ± standard error, two-sided p. "
        f"Marked ≈ (and † on a change from the base in the main table) when p ≥ {alpha}: the "
        "data cannot resolve the difference. Rows over several seeds are paired by seed "
        "(item-level uncertainty only).",
        "",
    ]
    if not any(tests.values()):
        return [*md, "No row has per-item values (items.jsonl): no paired test.", ""]
    for which, title in (("base", "Against the base"), ("best", "Against each column's best row")):
        if tests.get(which):
            md += [f"### {title}", "", paired_table(entries, tests[which], cols, heads), ""]
    return md


def figures_section() -> list[str]:
    """The three figures of every report, drawn by :mod:`hhh_bench.tracking.plots` beside
    ``report.md``."""
    return [
        "## Figures",
        "",
        "![3H radar](radar.png)",
        "",
        "![Pareto: each pair of dimensions](pareto.png)",
        "",
        "![Conflict matrix](conflict.png)",
        "",
    ]


def diagnostics_section(
    rows: Sequence[Mapping[str, Any]], figures: Mapping[str, Path | str]
) -> list[str]:
    """The task-vector diagnostics section: the model-wide table, a layer-type table per
    diagnosed set and, when the rows have per-layer parameters, the heatmaps ``figures``
    (``{statistic: path}``, :func:`hhh_bench.tracking.plots.diagnostics_heatmaps`), shown as
    ``diag_<statistic>.png`` beside ``report.md``."""
    md = [
        "## Task-vector diagnostics",
        "",
        "What the merge methods bet on, measured on each diagnosed set of task vectors "
        "τ_t = θ_t − θ0 (the specialists the merges read; formulas in docs/merging.md, "
        "Diagnostics). Tail shares and sign conflicts are pooled over the model (tail shares "
        "averaged over tasks); overlap, STI and reweighting change are means over matrices.",
        "",
        diagnostics_table(rows),
        "",
    ]
    for r in rows:
        label = md_text(r.get("label", r["row_key"]))
        md += [f"### {label}", "", layer_type_table(r["layer_types"]), ""]
    layers, _ = layer_axes(rows)
    if layers:
        md += ["### Per-layer heatmaps", ""]
        for stat in figures:
            md += [f"![{stat} per layer](diag_{stat}.png)", ""]
    return md
