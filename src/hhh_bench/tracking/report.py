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
    judge.
    The report ends with *Mix or merge?* (:mod:`hhh_bench.tracking.answer`): the best
    data-mixture row against the best model-merging row, the difference of their average
    (merge − mix) with a 95% interval from a paired bootstrap over seeds and items, the items
    behind it per task, and as its last line the answer: merging wins, mixing wins, or no
    difference we can resolve (the interval covers 0); or why there is no answer (no mixture
    or merge row, no shared seed, no per-item values).
``radar.png``
    One polygon per family (the main table's rows) on the three dimensions, one small panel per
    group (oracle, specialists, data mixture, model merging) with the base in grey as the
    reference in each, the series of a panel in distinct colors, the legends below the panels.
``pareto.png``
    One panel per pair of dimensions (helpful-harmless, helpful-honest, honest-harmless): every
    evaluated model (every row, every seed) as a small marker by kind, the non-dominated front
    of the compared models as a dotted line, the main table's rows at their means as numbered
    markers (numbers placed so that none overlaps another) and a key beside: number → name.
``conflict.png``
    A 3x3 heatmap: row i, column j is how training on dimension i alone (the specialists) moved
    dimension j relative to the base (mean over seeds): the collaboration / conflict matrix.

``diag_<statistic>.png`` (when ``<root>/diagnostics.jsonl`` has rows)
    Task-vector diagnostics (:mod:`hhh_bench.merging.diagnostics`): per statistic, one heatmap
    per diagnosed set of specialists side by side (rows: layer index, columns: layer type), and
    in ``report.md`` a model-wide table with one row per set and a per-layer-type table per set.

Plots use Matplotlib's object-oriented API on the Agg canvas, so no display or global backend
state is involved.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hhh_bench.core.scoring import DIMENSIONS
from hhh_bench.tracking.markdown import md_text
from hhh_bench.tracking.store import setup_key

GROUPS: tuple[tuple[str, str], ...] = (
    ("base", "Base"),
    ("oracle", "Oracle"),
    ("specialist", "Specialists"),
    ("mixture", "Data mixture"),
    ("merge", "Model merging"),
)
COLUMNS: tuple[tuple[str, str], ...] = (
    ("helpful", "Helpful"),
    ("honest", "Honest"),
    ("harmless", "Harmless"),
    ("average", "Avg"),
    ("min", "Min"),
)
DIGITS = 3


def family_of(row: Mapping[str, Any]) -> str:
    """The family a row belongs to: its ``family`` field, else one derived from its kind."""
    if row.get("family"):
        return str(row["family"])
    kind = row.get("kind")
    if kind == "base":
        return "Base"
    if kind == "oracle":
        return "Oracle"
    if kind == "specialist":
        dims = trained_dimensions(row)
        return f"Specialist: {'+'.join(dims)}" if dims else str(row["name"])
    if kind == "mixture":
        return f"Mixture: {row.get('mix_strategy') or row.get('method') or row['name']}"
    if kind == "merge":
        return f"Merge: {row.get('method') or row['name']}"
    return str(row.get("name"))


def trained_dimensions(row: Mapping[str, Any]) -> list[str]:
    """The dimensions a model was trained on: ``train_dimensions``, else the one dimension word
    its name contains (``dpo_helpful``), else none."""
    dims = row.get("train_dimensions")
    if dims:
        return [d for d in DIMENSIONS if d in dims]
    found = [d for d in DIMENSIONS if d in str(row.get("name", "")).lower()]
    return found if len(found) == 1 else []


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    mu = sum(values) / len(values)
    if len(values) < 2:
        return mu, None
    return mu, math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1))


@dataclass
class Entry:
    """One configuration (rows of one :func:`configuration` key) aggregated over its seeds."""

    kind: str
    family: str
    name: str
    rows: list[dict[str, Any]]
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float | None] = field(default_factory=dict)
    delta: dict[str, float | None] = field(default_factory=dict)
    n_configs: int = 1
    selected_on: str | None = None
    se: dict[str, float | None] = field(default_factory=dict)  # one seed: the row's item stderr

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def label(self) -> str:
        if self.n_configs > 1:
            return f"{self.name} (best of {self.n_configs} on {self.selected_on})"
        return self.name


CONFIG_FIELDS = ("kind", "name", "family", "method", "mix_strategy", "noise_rate")
"""Fields two rows must share to be seeds of one configuration (with ``train_dimensions`` and,
unless the rows carry the pipeline's choice, ``params``: :func:`configuration`)."""


def configuration(row: Mapping[str, Any]) -> str:
    """The key of a row's configuration: everything that says what the model is, except the
    seed. Rows that differ in it are never pooled as seeds (a sweep's ``scaling=0.5`` and
    ``scaling=1.0`` are two rows of the table, not one with a ± between them). A row that
    carries the pipeline's choice on the selection split (``extra.selected_on``) is its family's
    chosen configuration of that seed: such rows pool over seeds whatever knobs each seed chose
    (the all-models table says "varies by seed")."""
    key: dict[str, Any] = {k: row.get(k) for k in CONFIG_FIELDS}
    key["train_dimensions"] = sorted(str(d) for d in row.get("train_dimensions") or [])
    if (row.get("extra") or {}).get("selected_on"):
        key["selected"] = True
    else:
        key["params"] = row.get("params") or {}
    return json.dumps(key, sort_keys=True, default=str)


def _split_repeated_seeds(rs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows of one configuration, split where a seed repeats (rows of the same seed that differ
    in something else, say the data): each row joins the first part without its seed, in file
    order, so that each part holds a seed once."""
    parts: list[list[dict[str, Any]]] = []
    for r in rs:
        part = next((p for p in parts if all(x.get("seed") != r.get("seed") for x in p)), None)
        if part is None:
            parts.append([r])
        else:
            part.append(r)
    return parts


def _distinct_names(groups: list[tuple[str, str, list[dict[str, Any]]]]) -> list[str]:
    """Each group's name, made distinct where one kind and name holds several configurations:
    the name plus the knobs that tell them apart (``ties [scaling=0.5]``), else the first one
    plain and the others numbered (``ties [2]``: the same knobs, another data or model)."""
    labels: dict[tuple[str, str], list[str]] = {}
    for kind, name, rs in groups:
        params = {_params(r) for r in rs}
        chosen = bool((rs[0].get("extra") or {}).get("selected_on"))
        labels.setdefault((kind, name), []).append(
            params.pop() if len(params) == 1 and not chosen else ""
        )
    names, seen, used = [], set(), dict.fromkeys(labels, 0)
    for kind, name, _ in groups:
        mine = labels[(kind, name)]
        i = used[(kind, name)]
        used[(kind, name)] += 1
        label = name
        if len(mine) > 1 and mine[i] and mine.count(mine[i]) == 1:
            label = f"{name} [{mine[i]}]"
        n = 2
        while (kind, label) in seen:
            label, n = f"{name} [{n}]", n + 1
        seen.add((kind, label))
        names.append(label)
    return names


def aggregate(rows: Sequence[Mapping[str, Any]]) -> list[Entry]:
    """Group rows into configurations (:func:`configuration`; a seed never twice in one) with
    mean and std per score. An entry's name is the rows' name, with the knobs that tell it
    apart when one name holds several configurations (``ties [scaling=0.5]``)."""
    by_config: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_config.setdefault(configuration(r), []).append(dict(r))
    groups = [
        (part[0]["kind"], str(part[0]["name"]), part)
        for rs in by_config.values()
        for part in _split_repeated_seeds(rs)
    ]
    extra = list(extra_columns(rows))
    entries = []
    for (kind, _, rs), name in zip(groups, _distinct_names(groups), strict=True):
        e = Entry(kind=kind, family=family_of(rs[0]), name=name, rows=rs)
        for col, _ in COLUMNS:
            e.mean[col], e.std[col] = _mean_std([float(r[col]) for r in rs])
        for col in extra:  # extra columns (over-refusal, capability) where every seed has one
            if all(r.get(col) is not None for r in rs):
                e.mean[col], e.std[col] = _mean_std([float(r[col]) for r in rs])
        if len(rs) == 1:
            e.se = {c: rs[0].get(f"{c}_stderr") for c in e.mean}
        entries.append(e)
    return entries


def base_means(rows: Sequence[Mapping[str, Any]]) -> dict[str, float] | None:
    """Mean scores of the base rows (over seeds), or None when the store has no base row."""
    base = [r for r in rows if r["kind"] == "base"]
    if not base:
        return None
    return {col: _mean_std([float(r[col]) for r in base])[0] for col, _ in COLUMNS}


def _with_deltas(entries: list[Entry], base: Mapping[str, float] | None) -> None:
    """Deltas of the means from the base's means, and the largest drop of a dimension's mean
    below the base's (None without a base)."""
    for e in entries:
        for col, _ in COLUMNS:
            e.delta[col] = None if base is None or e.kind == "base" else e.mean[col] - base[col]
        e.delta["max_drop"] = (
            None if base is None else max(0.0, *(base[d] - e.mean[d] for d in DIMENSIONS))
        )


def table_entries(report_rows: Sequence[Mapping[str, Any]]) -> list[Entry]:
    """The main table's entries, in table order. The report chooses nothing: a family shows the
    configuration the pipeline chose on the selection split (rows whose ``extra.selected_on``
    is set, with ``n_configs`` and the split), or, when no row of it carries a choice, every
    configuration it holds, each as its own row. Deltas against the base of ``report_rows``."""
    entries = aggregate(report_rows)
    by_family: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        by_family.setdefault((e.kind, e.family), []).append(e)
    shown: list[Entry] = []
    for kind, _ in GROUPS:
        for (k, _fam), members in by_family.items():
            if k != kind:
                continue
            chosen = [m for m in members if _choice(m)]
            for e in chosen or members:
                choice = _choice(e)
                if choice:
                    e.selected_on = str(choice["selected_on"])
                    e.n_configs = int(choice.get("n_configs") or 1)
                shown.append(e)
    _with_deltas(shown, base_means(report_rows))
    return shown


def _choice(e: Entry) -> dict[str, Any] | None:
    """The pipeline's selection record of an entry's rows (``extra.selected_on``...), if any."""
    for r in e.rows:
        extra = r.get("extra") or {}
        if extra.get("selected_on"):
            return extra
    return None


def _fmt(value: float, std: float | None) -> str:
    return f"{value:.{DIGITS}f}" + (f" ± {std:.{DIGITS}f}" if std is not None else "")


def _spread(e: Entry, col: str) -> float | None:
    """What follows ± in a cell: the std over seeds (several seeds), else the row's standard
    error over items (one seed), else nothing."""
    return e.std.get(col) if e.std.get(col) is not None else e.se.get(col)


def _fmt_opt(value: float | None) -> str:
    return "-" if value is None else f"{value:.{DIGITS}f}"


def _fmt_delta(delta: float | None) -> str:
    return "" if delta is None else f" ({delta:+.{DIGITS}f})"


def best_per_column(entries: Sequence[Entry]) -> dict[str, float]:
    """Best (highest) displayed mean per column among the compared rows (every kind but oracle)."""
    compared = [e for e in entries if e.kind != "oracle"]
    return {
        col: max(round(e.mean[col], DIGITS) for e in compared) for col, _ in COLUMNS if compared
    }


def main_table(
    entries: Sequence[Entry],
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    marks: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
) -> str:
    """The paper-style Markdown table of :func:`select_entries`' rows.

    Args:
        entries: the rows, in table order.
        extra: extra columns after Min (:func:`extra_columns`); bold marks their best value by
            direction.
        marks: per entry ``(kind, name)`` and column, a mark after the value (``≈``: not
            resolvably different from the column's best) or after the delta (``†``: change from
            the base not resolved), from :func:`paired_marks`.
    """
    extra = dict(extra or {})
    best = best_per_column(entries)
    best.update(_best_extra(entries, extra))
    cols = [*COLUMNS, *((c, _extra_head(c, v)) for c, v in extra.items())]
    head = "| Method | " + " | ".join(h for _, h in cols) + " |"
    lines = [head, "|" + "---|" + "---:|" * len(cols)]
    for kind, title in GROUPS:
        members = [e for e in entries if e.kind == kind]
        if not members:
            continue
        lines.append(f"| *{title}* |" + " |" * len(cols))
        for e in members:
            mk = (marks or {}).get((e.kind, e.name), {})
            cells = []
            for col, _ in cols:
                if col not in e.mean:
                    cells.append("-")
                    continue
                text = _fmt(e.mean[col], _spread(e, col))
                if e.kind != "oracle" and round(e.mean[col], DIGITS) == best.get(col):
                    text = f"**{text}**"
                text += mk.get(col, "")
                delta = _fmt_delta(e.delta.get(col))
                if delta and mk.get(f"delta_{col}"):
                    delta = delta[:-1] + mk[f"delta_{col}"] + ")"
                cells.append(text + delta)
            lines.append(f"| {md_text(e.label)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _params(row: Mapping[str, Any]) -> str:
    p = row.get("params") or {}
    return ", ".join(f"{k}={v}" for k, v in sorted(p.items())) or "-"


def all_models_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Every evaluated configuration (means over seeds), in group order."""
    entries = aggregate(rows)
    _with_deltas(entries, base_means(rows))
    lines = [
        "| Group | Model | Params | Seeds | Helpful | Honest | Harmless | Avg | Min | Max drop |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, title in GROUPS:
        for e in sorted((e for e in entries if e.kind == kind), key=lambda e: e.name):
            cells = [_fmt(e.mean[c], _spread(e, c)) + _fmt_delta(e.delta[c]) for c, _ in COLUMNS]
            params = {_params(r) for r in e.rows}
            shown = params.pop() if len(params) == 1 else "varies by seed"
            lines.append(
                f"| {title} | {md_text(e.name)} | {md_text(shown)} | {e.n} | "
                + " | ".join(cells)
                + f" | {_fmt_opt(e.delta['max_drop'])} |"
            )
    return "\n".join(lines)


def per_task_table(entries: Sequence[Entry]) -> str:
    """Per-task primary metrics (means over seeds) of the main-table rows."""
    specs: dict[str, str] = {}
    for e in entries:
        for r in e.rows:
            for s in r.get("task_specs") or []:
                specs.setdefault(s["name"], s["metric"])
            for c in (r.get("extra_columns") or {}).values():  # extra columns' tasks
                specs.setdefault(c["task"], c["metric"])
            for t in r.get("tasks") or {}:
                specs.setdefault(t, r.get("metric", "acc"))
    if not specs:
        return ""
    names = sorted(specs)
    lines = [
        "| Method | " + " | ".join(md_text(f"{t} ({specs[t]})") for t in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for e in entries:
        cells = []
        for t in names:
            vals = [
                float(r["tasks"][t][specs[t]])
                for r in e.rows
                if t in (r.get("tasks") or {}) and r["tasks"][t].get(specs[t]) is not None
            ]
            cells.append(f"{sum(vals) / len(vals):.{DIGITS}f}" if vals else "-")
        lines.append(f"| {md_text(e.label)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def conflict_matrix(rows: Sequence[Mapping[str, Any]]) -> list[list[float | None]]:
    """``M[i][j]`` = mean over specialists trained on dimension i alone of (their score on
    dimension j − the base's mean score on j); None where there is no such specialist or no base."""
    base = base_means(rows)
    out: list[list[float | None]] = []
    for di in DIMENSIONS:
        spec = [r for r in rows if r["kind"] == "specialist" and trained_dimensions(r) == [di]]
        row: list[float | None] = []
        for dj in DIMENSIONS:
            if base is None or not spec:
                row.append(None)
            else:
                row.append(sum(float(r[dj]) - base[dj] for r in spec) / len(spec))
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# Uncertainty, extra columns, judges and metrics (issue 17)
# ---------------------------------------------------------------------------------------------

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
}


def extra_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The extra report columns the rows carry (``extra_columns``: over-refusal, capability),
    in first-seen order: ``{name: {"task", "metric", "higher_is_better"}}``."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        for name, spec in (r.get("extra_columns") or {}).items():
            out.setdefault(name, dict(spec))
    return out


def _extra_head(name: str, spec: Mapping[str, Any]) -> str:
    arrow = "" if spec.get("higher_is_better", True) else " ↓"
    return name.replace("_", "-").capitalize() + arrow


def _best_extra(
    entries: Sequence[Entry], extra: Mapping[str, Mapping[str, Any]]
) -> dict[str, float]:
    compared = [e for e in entries if e.kind != "oracle"]
    out = {}
    for col, spec in extra.items():
        vals = [round(e.mean[col], DIGITS) for e in compared if col in e.mean]
        if vals:
            out[col] = max(vals) if spec.get("higher_is_better", True) else min(vals)
    return out


def paired_marks(
    entries: Sequence[Entry],
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    alpha: float = 0.05,
) -> tuple[dict[tuple[str, str], dict[str, str]], dict[str, dict[tuple[str, str], Any]]]:
    """Paired tests over items behind the main table's marks.

    For every column (the dimensions, the average and the extra columns) and every compared
    entry (all but the oracle): the test against the base (``†`` on the delta when p ≥ alpha)
    and against the column's best entry (``≈`` when p ≥ alpha: the data cannot tell it from the
    best). Entries over several seeds are paired by seed
    (:func:`hhh_bench.tracking.paired.paired_test_groups`). Entries without per-item values get
    no test and no mark.

    Returns:
        ``(marks, tests)``: marks per ``(kind, name)`` and column (``delta_<col>`` for the
        delta), and ``{"base": {(name, col): PairedTest}, "best": {...}}``.
    """
    from hhh_bench.tracking.paired import paired_test_groups

    extra = dict(extra or {})
    cols = [*(c for c, _ in COLUMNS if c != "min"), *extra]
    base = next((e for e in entries if e.kind == "base"), None)
    compared = [e for e in entries if e.kind != "oracle"]
    marks: dict[tuple[str, str], dict[str, str]] = {}
    tests: dict[str, dict[tuple[str, str], Any]] = {"base": {}, "best": {}}
    for col in cols:
        have = [e for e in compared if col in e.mean]
        if not have:
            continue
        higher = extra.get(col, {}).get("higher_is_better", True)
        best = (max if higher else min)(have, key=lambda e: e.mean[col])
        for e in have:
            mk = marks.setdefault((e.kind, e.name), {})
            if base is not None and e is not base and col in base.mean:
                t = paired_test_groups(e.rows, base.rows, col, alpha=alpha)
                if t is not None:
                    tests["base"][(e.name, col)] = t
                    if not t.resolved:
                        mk[f"delta_{col}"] = "†"
            if e is not best:
                t = paired_test_groups(e.rows, best.rows, col, alpha=alpha)
                if t is not None:
                    tests["best"][(e.name, col)] = t
                    if not t.resolved:
                        mk[col] = " ≈"
    return marks, tests


def _fmt_test(t: Any) -> str:
    mark = "" if t.resolved else " ≈"
    return f"{t.diff:+.{DIGITS}f} ± {t.stderr:.{DIGITS}f} (p={t.p_value:.2g}){mark}"


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
    heads = [dict(COLUMNS).get(c) or _extra_head(c, (extra or {})[c]) for c in cols]
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
        if not tests.get(which):
            continue
        md += [f"### {title}", "", "| Method | " + " | ".join(heads) + " |",
               "|---|" + "---:|" * len(cols)]  # fmt: skip
        for e in entries:
            cells = [
                _fmt_test(tests[which][(e.name, c)]) if (e.name, c) in tests[which] else "-"
                for c in cols
            ]
            if any(c != "-" for c in cells):
                md.append(f"| {md_text(e.label)} | " + " | ".join(cells) + " |")
        md.append("")
    return md


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


def by_setup(rows: Sequence[Mapping[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows partitioned by evaluation setup (:func:`hhh_bench.tracking.store.setup_key`), the
    setup of the most recently written row first, then the others from newest to oldest."""
    groups: dict[str, list[dict[str, Any]]] = {}
    last: dict[str, int] = {}
    for i, r in enumerate(rows):
        k = setup_key(r)
        groups.setdefault(k, []).append(dict(r))
        last[k] = i
    return [groups[k] for k in sorted(groups, key=lambda k: -last[k])]


def describe_setup(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line naming a setup: suite, metric, its scored tasks, its key."""
    r = rows[0]
    tasks = [s["name"] for s in r.get("task_specs") or []]
    return md_text(
        f"suite {r.get('suite')}, metric {r.get('metric')}, {len(tasks)} task(s) "
        f"({', '.join(tasks) or '-'}); setup {setup_key(r)}"
    )


def other_setups_section(
    others: Sequence[Sequence[Mapping[str, Any]]], current: Sequence[Mapping[str, Any]]
) -> list[str]:
    """One main table per older evaluation setup of the store, each on its own (its deltas
    against its own base): rows of different setups are never averaged together."""
    if not others:
        return []
    md = [
        "## Other evaluation setups in this store",
        "",
        f"The tables above are the latest setup ({describe_setup(current)}). This store also "
        f"holds rows of {len(others)} other setup(s) (another task list, task version, metric "
        "or harness setting); each is shown apart below and never averaged with another.",
        "",
    ]
    for i, rows in enumerate(others, 1):
        md += [f"### Setup {i + 1}: {describe_setup(rows)}", ""]
        md += [main_table(table_entries(rows), extra_columns(rows), {}), ""]
    return md


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


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

_MARKERS = {"base": "s", "oracle": "*", "specialist": "^", "mixture": "D", "merge": "o"}
_COLORS = {
    "base": "#444444",
    "oracle": "#b8860b",
    "specialist": "#2ca02c",
    "mixture": "#1f77b4",
    "merge": "#d62728",
}


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(fig)
    return fig


SERIES_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
    "#17becf", "#000075", "#800000", "#f032e6", "#469990", "#e6b800", "#000000",
)  # fmt: skip
"""Line colours of the radar's series within a panel, most distinct first: tab10 without its grey
(the base's reference colour), then navy, maroon, magenta, teal, gold and black (from Sasha
Trubetskoy's 20 distinct colours). A panel with more series repeats them with another dash."""
_DASHES = ("-", "--", ":", "-.")
_BASE_GREY = "#888888"


def radar_figure(entries: Sequence[Entry], title: str = "") -> Any:
    """The radar as a Figure: one small polar panel per group of the main table (oracle,
    specialists, data mixture, model merging), the base drawn in grey in each as the
    reference, each panel's series in distinct colours (:data:`SERIES_COLORS`), its legend below
    it, outside the plot area."""
    import textwrap

    base = next((e for e in entries if e.kind == "base"), None)
    facets = [(t, [e for e in entries if e.kind == k]) for k, t in GROUPS if k != "base"]
    facets = [f for f in facets if f[1]] or [("Base", [])]
    # Fixed geometry in inches (the legend's height is known before drawing): panels side by
    # side, each legend below its panel, one line per series (plus the base) and wrapped name.
    width_in, panel_in, gap_in, top_in = 2.7, 2.2, 0.55, 0.75
    labels = [[textwrap.fill(e.name, 30) for e in members] for _, members in facets]
    lines = max(sum(s.count("\n") + 1 for s in f) for f in labels) + (base is not None)
    legend_in = 0.3 + 0.13 * lines
    fig_w, fig_h = width_in * len(facets) + 0.4, top_in + panel_in + gap_in + legend_in
    fig = _figure((fig_w, fig_h))
    angles = [2 * math.pi * i / len(DIMENSIONS) for i in range(len(DIMENSIONS))]
    ring = [*angles, angles[0]]
    for i, ((group, members), names) in enumerate(zip(facets, labels, strict=True)):
        left = 0.2 + i * width_in + (width_in - panel_in) / 2
        rect = (left / fig_w, (legend_in + gap_in) / fig_h, panel_in / fig_w, panel_in / fig_h)
        ax = fig.add_axes(rect, projection="polar")
        if base is not None:
            vals = [base.mean[d] for d in DIMENSIONS]
            ax.plot(ring, [*vals, vals[0]], color=_BASE_GREY, lw=1.6, label=f"{base.name} "
                    "(reference)", zorder=1)  # fmt: skip
        for j, (e, name) in enumerate(zip(members, names, strict=True)):
            vals = [e.mean[d] for d in DIMENSIONS]
            color = SERIES_COLORS[j % len(SERIES_COLORS)]
            dash = _DASHES[(j // len(SERIES_COLORS)) % len(_DASHES)]
            ax.plot(ring, [*vals, vals[0]], color=color, ls=dash, lw=1.3, label=name, zorder=2)
            ax.fill(ring, [*vals, vals[0]], color=color, alpha=0.05)
        ax.set_xticks(angles, [d.capitalize() for d in DIMENSIONS], fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_yticks([0.25, 0.5, 0.75, 1.0], ["", "0.5", "", "1"], fontsize=6)
        ax.set_rlabel_position(60)  # radial ticks between the Helpful and Honest axes
        ax.set_title(f"{group} ({len(members)})" if members else group, fontsize=8, pad=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=6,
                      frameon=False, handlelength=2.2, borderaxespad=0)  # fmt: skip
    fig.suptitle(title or "3H profile per method family", fontsize=9)
    return fig


def radar_plot(entries: Sequence[Entry], path: str | Path, title: str = "") -> Path:
    """Save :func:`radar_figure` of the main table's rows to ``path``."""
    radar_figure(entries, title).savefig(path, bbox_inches="tight")
    return Path(path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated points (maximize both coordinates), sorted by the first."""
    front = [
        p
        for p in points
        if not any(q[0] >= p[0] and q[1] >= p[1] and (q[0] > p[0] or q[1] > p[1]) for q in points)
    ]
    return sorted(set(front))


PARETO_PAIRS: tuple[tuple[str, str], ...] = (
    ("helpful", "harmless"),
    ("helpful", "honest"),
    ("honest", "harmless"),
)
"""The Pareto figure's panels: (x, y) dimension pairs."""


def pareto_figure(rows: Sequence[Mapping[str, Any]], highlight: Sequence[Entry] = ()) -> Any:
    """The Pareto figure: one panel per pair of dimensions (:data:`PARETO_PAIRS`), every row as
    a small marker by kind, the compared (non-oracle) rows' non-dominated front as a dotted line,
    each ``highlight`` entry (the main table's rows) at its mean as a larger marker with its
    number, and a key beside the panels: number → name. Numbers are placed so that no two
    overlap (:func:`_place_labels`)."""
    import textwrap

    from matplotlib.lines import Line2D

    panel_in, gap_in, left_in, bottom_in, top_in = 2.6, 0.55, 0.55, 0.95, 0.55
    line_in = 0.15  # one key line at 6.5 pt
    per_col = max(1, int(panel_in / line_in))
    short = [textwrap.shorten(e.name, 32, placeholder="…") for e in highlight]
    wide = max((len(n) for n in short), default=0)
    names = [f"{k + 1:>2}  {n:<{wide}}  " + " ".join(f"{e.mean[d]:.2f}" for d in DIMENSIONS)
             for k, (n, e) in enumerate(zip(short, highlight, strict=True))]  # fmt: skip
    if names:  # a header line, then number, name and the three means
        names.insert(0, f"{'#':>2}  {'model':<{wide}}  " + "help hon  harm")
    n_cols = math.ceil(len(names) / per_col) if names else 0
    col_in = 0.3 + 0.054 * max((len(n) for n in names), default=0)
    key_in = n_cols * col_in + (0.25 if n_cols else 0)
    n = len(PARETO_PAIRS)
    fig_w = left_in + n * panel_in + (n - 1) * gap_in + key_in + 0.2
    fig_h = bottom_in + panel_in + top_in
    fig = _figure((fig_w, fig_h))
    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []  # window extents of the key and of the numbers placed so far
    key_x = (left_in + n * panel_in + (n - 1) * gap_in + 0.25) / fig_w
    for k, name in enumerate(names):
        col, line = divmod(k, per_col)
        text = fig.text(key_x + col * col_in / fig_w,
                        (bottom_in + panel_in - line * line_in) / fig_h, name,
                        fontsize=6.5, va="top", ha="left", family="monospace",
                        color=_COLORS[highlight[k - 1].kind] if k else "black",
                        gid="pareto-key")  # fmt: skip
        placed.append(text.get_window_extent(renderer))
    for i, (dx, dy) in enumerate(PARETO_PAIRS):
        x0 = left_in + i * (panel_in + gap_in)
        ax = fig.add_axes((x0 / fig_w, bottom_in / fig_h, panel_in / fig_w, panel_in / fig_h))
        for kind, _ in GROUPS:
            pts = [(float(r[dx]), float(r[dy])) for r in rows if r["kind"] == kind]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=_MARKERS[kind],
                           color=_COLORS[kind], s=14, alpha=0.35, lw=0)  # fmt: skip
        front = pareto_front([(float(r[dx]), float(r[dy])) for r in rows if r["kind"] != "oracle"])
        if len(front) > 1:
            ax.plot([p[0] for p in front], [p[1] for p in front], color="#888888", lw=1, ls=":")
        for e in highlight:
            ax.scatter([e.mean[dx]], [e.mean[dy]], marker=_MARKERS[e.kind], s=42, zorder=3,
                       color=_COLORS[e.kind], edgecolors="black", linewidths=0.5)  # fmt: skip
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(dx.capitalize(), fontsize=8)
        ax.set_ylabel(dy.capitalize(), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.set_title(f"{dx.capitalize()} vs {dy.capitalize()}", fontsize=8)
        points = [(k + 1, e.mean[dx], e.mean[dy], _COLORS[e.kind]) for k, e in enumerate(highlight)]
        _place_labels(ax, points, placed, renderer)
    kinds = [(k, t) for k, t in GROUPS if any(r["kind"] == k for r in rows)]
    handles = [Line2D([], [], ls="", marker=_MARKERS[k], color=_COLORS[k], label=t)
               for k, t in kinds]  # fmt: skip
    if handles:
        fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(left_in / fig_w, 0.0),
                   ncol=len(handles), fontsize=7, frameon=False)  # fmt: skip
    fig.suptitle("Every evaluated model on each pair of dimensions (numbers: main-table rows; "
                 "dotted: the non-dominated front)", fontsize=8)  # fmt: skip
    return fig


def pareto_plot(
    rows: Sequence[Mapping[str, Any]], path: str | Path, highlight: Sequence[Entry] = ()
) -> Path:
    """Save :func:`pareto_figure` to ``path``."""
    pareto_figure(rows, highlight).savefig(path)
    return Path(path)


_RINGS = tuple(
    (r * cx, r * cy) for r in (5, 11, 19, 30)
    for cx, cy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
)  # fmt: skip
"""Where a number's box may sit relative to its point (corner or side nearest the point, in
points): the four diagonals, then the four sides, at growing distance (a thin leader line
from 11 pt on)."""
_CLUSTER_PX = 6.0
"""Points closer than this on the canvas (pixels) share one number label ("6–8,11")."""


def _place_labels(
    ax: Any, points: Sequence[tuple[int, float, float, str]], placed: list[Any], renderer: Any
) -> None:
    """Number each point (``(number, x, y, color)``) so that no two numbers' boxes overlap,
    with each other or with ``placed`` (extended with the new boxes).

    Deterministic: points closer than :data:`_CLUSTER_PX` share one label (their numbers,
    consecutive ones as a range). Each label, in order, goes to the first place of
    :data:`_RINGS` whose box is inside the axes and clear of every label and of the other
    points' markers; else clear of the labels inside the axes; else clear of the labels
    anywhere; else to the free place of a grid over the axes nearest its point (with a leader
    line). Boxes are computed from the label's size, so one text is drawn per label."""
    from matplotlib.transforms import Bbox, ScaledTranslation

    to_px = renderer.points_to_pixels(1.0)
    disp = [tuple(ax.transData.transform((x, y))) for _, x, y, _ in points]
    clusters: list[list[int]] = []
    for i, (px, py) in enumerate(disp):
        near = [c for c in clusters if any(math.dist((px, py), disp[j]) < _CLUSTER_PX for j in c)]
        merged = [i, *(j for c in near for j in c)]
        clusters = [c for c in clusters if c not in near] + [sorted(merged)]
    clusters.sort(key=lambda c: points[c[0]][0])
    markers = [Bbox.from_bounds(px - 4, py - 4, 8, 8) for px, py in disp]
    frame = ax.get_window_extent(renderer)
    pad = 1.5
    for members in clusters:
        nums = sorted(points[i][0] for i in members)
        colors = {points[i][3] for i in members}
        color = colors.pop() if len(colors) == 1 else "#333333"
        px, py = disp[members[0]]
        style = {"fontsize": 6.5, "fontweight": "bold", "color": color, "gid": "pareto-label"}
        probe = ax.text(0, 0, _number_ranges(nums), **style)
        size = probe.get_window_extent(renderer)
        w, h = size.width, size.height
        probe.remove()
        others = [m for i, m in enumerate(markers) if i not in members]

        def box_at(
            dx: float, dy: float, at: tuple[float, float, float, float] = (px, py, w, h)
        ) -> Any:
            return _label_box(*at, dx, dy, pad)

        def free(b: Any, inside: bool = True, clear: Sequence[Any] = ()) -> bool:
            return (not inside or _contains(frame, b)) and not any(
                b.overlaps(o) for o in (*placed, *clear)
            )

        rings = [(dx * to_px, dy * to_px) for dx, dy in _RINGS]
        spots = [o for o in rings if free(box_at(*o), clear=others)]
        spots = spots or [o for o in rings if free(box_at(*o))]
        spots = spots or [o for o in rings if free(box_at(*o), inside=False)]
        if not spots:  # a grid over the axes, nearest first
            step = max(w, h) / 2
            grid = [
                (frame.x0 + step * a - px, frame.y0 + step * b - py)
                for a in range(1, int(frame.width / step))
                for b in range(1, int(frame.height / step))
            ]
            grid.sort(key=lambda o: (math.hypot(*o), o))
            spots = [o for o in grid if free(box_at(*o))] or [rings[0]]
        dx, dy = spots[0]
        b = box_at(dx, dy)
        x0, y0 = b.x0 + pad, b.y0 + pad  # the text's lower-left corner, on the canvas
        shift = ScaledTranslation((x0 - px) / renderer.dpi, (y0 - py) / renderer.dpi,
                                  ax.figure.dpi_scale_trans)  # fmt: skip
        ax.text(*ax.transData.inverted().transform((px, py)), _number_ranges(nums), ha="left",
                va="bottom", transform=ax.transData + shift, **style)  # fmt: skip
        if math.hypot(dx, dy) > 8 * to_px:  # a leader line to the box's nearest corner
            ax.annotate("", ax.transData.inverted().transform((px, py)),
                        xytext=ax.transData.inverted().transform((px + dx, py + dy)),
                        arrowprops={"arrowstyle": "-", "color": color, "lw": 0.5,
                                    "shrinkA": 0, "shrinkB": 3})  # fmt: skip
        placed.append(b)


def _label_box(px: float, py: float, w: float, h: float, dx: float, dy: float, pad: float) -> Any:
    """The box (padded) of a ``w`` x ``h`` label whose corner, or side, nearest the point
    ``(px, py)`` sits at the offset ``(dx, dy)`` from it (pixels)."""
    from matplotlib.transforms import Bbox

    x0 = px + dx - (w if dx < 0 else w / 2 if dx == 0 else 0)
    y0 = py + dy - (h if dy < 0 else h / 2 if dy == 0 else 0)
    return Bbox.from_bounds(x0 - pad, y0 - pad, w + 2 * pad, h + 2 * pad)


def _number_ranges(nums: Sequence[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"1–3,5"``."""
    out: list[str] = []
    for n in nums:
        if out and out[-1].split("–")[-1] == str(n - 1):
            out[-1] = out[-1].split("–")[0] + f"–{n}"
        else:
            out.append(str(n))
    return ",".join(out)


def _contains(outer: Any, inner: Any) -> bool:
    return bool(
        outer.x0 <= inner.x0 and inner.x1 <= outer.x1 and outer.y0 <= inner.y0
        and inner.y1 <= outer.y1
    )  # fmt: skip


def _cmap(name: str) -> Any:
    from matplotlib import colormaps

    return colormaps[name]


def conflict_plot(matrix: Sequence[Sequence[float | None]], path: str | Path) -> Path:
    """The 3x3 collaboration / conflict heatmap of :func:`conflict_matrix` (blue: helped,
    red: hurt; grey: no specialist or no base)."""
    fig = _figure((5.2, 4.4))
    ax = fig.add_subplot()
    vals = [[float("nan") if v is None else float(v) for v in row] for row in matrix]
    finite = [abs(v) for row in vals for v in row if v == v]
    vmax = max(finite) if finite and max(finite) > 0 else 1.0
    cmap = _cmap("RdBu").with_extremes(bad="#dddddd")
    im = ax.imshow(vals, cmap=cmap, vmin=-vmax, vmax=vmax)
    labels = [d.capitalize() for d in DIMENSIONS]
    ax.set_xticks(range(3), labels)
    ax.set_yticks(range(3), labels)
    ax.set_xlabel("Score on dimension (change from base)")
    ax.set_ylabel("Specialist trained on")
    for i, row in enumerate(vals):
        for j, v in enumerate(row):
            dark = v == v and abs(v) > 0.6 * vmax
            text = "n/a" if v != v else f"{v:+.3f}"
            ax.text(
                j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black"
            )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title("Training on i moves j (specialists vs base)")
    fig.savefig(path, bbox_inches="tight")
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Task-vector diagnostics
# ---------------------------------------------------------------------------------------------

DIAG_HEATMAP_STATS = (
    "norm",
    "kurtosis",
    "tail_share_3",
    "tail_share_5",
    "reweight_change",
    "sign_conflict",
    "subspace_overlap",
    "sti_normalized",
    "resm_density",
    "resm_rank_ratio",
)
"""Statistics drawn as per-layer heatmaps (other ``tail_share_<c>`` columns are added when the
rows have them); the full set is in each row's tables and ``diagnostics.json``."""


def _diag_stats(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    present = {
        k for r in rows for p in r.get("params") or [] for k, v in p.items() if v is not None
    }
    extra = sorted(
        (k for k in present if k.startswith("tail_share_") and k not in DIAG_HEATMAP_STATS),
        key=lambda k: float(k.removeprefix("tail_share_")),
    )
    return [s for s in (*DIAG_HEATMAP_STATS, *extra) if s in present]


def diagnostics_grid(
    row: Mapping[str, Any], stat: str, layers: Sequence[int], types: Sequence[str]
) -> list[list[float]]:
    """The (layer x type) grid of one diagnostics row's per-parameter values of ``stat``; NaN
    where a layer has no such parameter or the statistic is undefined there."""
    grid = [[float("nan")] * len(types) for _ in layers]
    li = {layer: i for i, layer in enumerate(layers)}
    ti = {t: j for j, t in enumerate(types)}
    for p in row.get("params") or []:
        v = p.get(stat)
        if p.get("layer") is None or v is None or p["type"] not in ti:
            continue
        grid[li[int(p["layer"])]][ti[p["type"]]] = float(v)
    return grid


def _axes_of(rows: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[str]]:
    layers = sorted(
        {int(p["layer"]) for r in rows for p in r["params"] if p.get("layer") is not None}
    )
    types: dict[str, None] = {}
    for r in rows:
        for p in r["params"]:
            if p.get("layer") is not None:
                types.setdefault(p["type"], None)
    return layers, list(types)


DIAG_UNIT_STATS = ("sign_conflict", "subspace_overlap", "subspace_overlap_right",
                   "reweight_change", "resm_density")  # fmt: skip
"""Statistics that are shares, in [0, 1] by definition (so are ``tail_share_<c>``): their
heatmaps always span 0–1, so one color means the same share in every figure."""


def diag_color_range(stat: str, values: Sequence[float]) -> tuple[float, float]:
    """A heatmap's color scale: 0–1 for a share (:data:`DIAG_UNIT_STATS`, ``tail_share_<c>``);
    else the finite values' range, and for constant values the range from 0 (or the value,
    when negative) to at least 1, so an all-zero map gets 0–1, never a scale around 0."""
    if stat in DIAG_UNIT_STATS or stat.startswith("tail_share_"):
        return 0.0, 1.0
    finite = [float(v) for v in values if v == v and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if hi <= lo:
        return min(0.0, lo), max(1.0, hi)
    return lo, hi


def diagnostics_heatmap(rows: Sequence[Mapping[str, Any]], stat: str, path: str | Path) -> Path:
    """One heatmap per diagnostics row, side by side, on one color scale: rows = layer index,
    columns = layer type, color = the statistic (per-task statistics averaged over tasks); grey:
    undefined (e.g. no SVD statistic on a norm vector). Parameters outside the layers
    (embeddings, final norm, LM head) are in the tables, not here."""
    layers, types = _axes_of(rows)
    grids = [diagnostics_grid(r, stat, layers, types) for r in rows]
    vmin, vmax = diag_color_range(stat, [v for g in grids for line in g for v in line])
    # Fixed margins in inches (no tight bounding box: one draw per figure): room for the
    # rotated type names below, the titles above, the colorbar on the right.
    label_in = 0.055 * max((len(t) for t in types), default=4) + 0.35
    panel_w, panel_h = max(2.4, 0.42 * len(types)), max(1.2, 0.32 * len(layers))
    width, height = panel_w * len(rows) + 0.55 * len(rows) + 1.0, panel_h + label_in + 0.75
    fig = _figure((width, height))
    fig.subplots_adjust(
        left=0.5 / width,
        right=1 - 0.9 / width,
        bottom=label_in / height,
        top=1 - 0.6 / height,
        wspace=0.55 / panel_w,
    )
    cmap = _cmap("viridis").with_extremes(bad="#dddddd")
    axes = []
    im = None
    for i, (row, grid) in enumerate(zip(rows, grids, strict=True)):
        ax = fig.add_subplot(1, len(rows), i + 1)
        axes.append(ax)
        im = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(types)), types, rotation=60, ha="right", fontsize=6)
        ax.set_yticks(range(len(layers)), [str(x) for x in layers], fontsize=6)
        ax.set_ylabel("layer" if i == 0 else "", fontsize=7)
        ax.set_title(str(row.get("label", row.get("row_key"))), fontsize=7)
        if len(layers) * len(types) <= 120:
            for a, line in enumerate(grid):
                for b, v in enumerate(line):
                    if v == v:
                        dark = (v - vmin) / (vmax - vmin) < 0.5
                        ax.text(b, a, f"{v:.2g}", ha="center", va="center", fontsize=5,
                                color="white" if dark else "black")  # fmt: skip
    if im is not None:
        cax = fig.add_axes((1 - 0.75 / width, label_in / height, 0.12 / width, panel_h / height))
        fig.colorbar(im, cax=cax)
        cax.tick_params(labelsize=6)
    helps = [r.get("statistics", {}).get(stat) for r in rows]
    fig.suptitle(f"{stat}: {next((h for h in helps if h), stat)}", fontsize=8)
    fig.savefig(path)
    return Path(path)


def diagnostics_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Model-wide figures, one row per diagnostics set: mean ‖τ_t‖ over tasks, median
    kurtosis, pooled tail shares and sign conflicts, mean overlap and normalized STI, RESM's
    density range, reweighting change and changed ranks."""

    def f(v: Any) -> str:
        return "-" if v is None else f"{float(v):.3f}"

    def mean(vals: Sequence[Any] | None) -> float | None:
        v = [x for x in (vals or []) if x is not None]
        return sum(v) / len(v) if v else None

    head = (
        "| set | T | ‖τ_t‖ (mean) | kurtosis (median) | > 3σ | > 5σ | sign conflict | overlap "
        "| STI (norm.) | reweight Δ | RESM D (min–max) | k ≠ uniform |"
    )
    lines = [head, "|---|---:|" + "---:|" * 10]
    for r in rows:
        m, pooled, resm = r["model"], r["model"].get("pooled", {}), r.get("resm") or {}
        dens = resm.get("density") or {}
        cells = [
            str(r["num_models"]),
            f(mean(pooled.get("norm"))),
            f(m.get("kurtosis", {}).get("median")),
            f(mean(pooled.get("tail_share_3"))),
            f(mean(pooled.get("tail_share_5"))),
            f(pooled.get("sign_conflict")),
            f(m.get("subspace_overlap", {}).get("mean")),
            f(m.get("sti_normalized", {}).get("mean")),
            f(m.get("reweight_change", {}).get("mean")),
            f"{f(dens.get('min'))}–{f(dens.get('max'))}",
            f"{resm.get('layers_with_changed_rank', '-')} / {resm.get('decomposed_layers', '-')}",
        ]
        lines.append(f"| {md_text(r.get('label', r['row_key']))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def diagnostics_section(
    rows: Sequence[Mapping[str, Any]], out_dir: str | Path
) -> tuple[list[str], dict[str, Path]]:
    """The report's diagnostics Markdown lines and its heatmaps (``diag_<stat>.png``)."""
    from hhh_bench.tracking.diagnostics_view import layer_type_table

    out = Path(out_dir)
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
    figures: dict[str, Path] = {}
    layers, _ = _axes_of(rows)
    if layers:
        md += ["### Per-layer heatmaps", ""]
        for stat in _diag_stats(rows):
            figures[stat] = diagnostics_heatmap(rows, stat, out / f"diag_{stat}.png")
            md += [f"![{stat} per layer](diag_{stat}.png)", ""]
    return md, figures


# ---------------------------------------------------------------------------------------------
# The whole report
# ---------------------------------------------------------------------------------------------


def skipped_note(skipped: Sequence[Any]) -> list[str]:
    """The Markdown lines under the main table saying how many lines of the store were skipped
    as invalid (``report.skip_invalid=true``) and why, by reason; none when none was."""
    if not skipped:
        return []
    by_reason: dict[str, list[int]] = {}
    for s in skipped:
        reason = str(s.reason)
        reason = reason.split(": ", 1)[1] if reason.startswith("result row ") else reason
        by_reason.setdefault(reason, []).append(int(s.line))
    n = len(skipped)
    parts = [
        f"line{'s' if len(v) > 1 else ''} {_number_ranges(v)}: {r}" for r, v in by_reason.items()
    ]
    return [
        f"**Skipped {n} invalid row{'s' if n != 1 else ''} of the results store** "
        "(report.skip_invalid=true; not in any table or figure): "
        + md_text("; ".join(parts))
        + ".",
        "",
    ]


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
) -> dict[str, Any]:
    """Write ``report.md``, ``radar.png``, ``pareto.png`` and ``conflict.png`` into ``out_dir``
    (and the ``diag_<stat>.png`` heatmaps when ``diagnostics`` has rows).

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
        skipped: the store's lines left out as invalid (``report.skip_invalid=true``:
            :class:`hhh_bench.tracking.store.SkippedLine`); the report says under the main table
            how many and why.

    Returns:
        ``{"markdown", "main_table", "paired_tests", "entries", "summary", "conflict_matrix",
        "report_md", "radar", "pareto", "conflict", "diagnostics_figures", "answer",
        "answer_line"}``: ``diagnostics_figures`` is ``{statistic: heatmap path}``, ``answer``
        the mix-or-merge comparison (:func:`hhh_bench.tracking.answer.compare`; None without
        an answer) and ``answer_line`` its one line (or the reason there is none), the last
        line of ``report.md``.

    Raises:
        ValueError: no row of ``report_split``.
    """
    from hhh_bench.tracking.answer import answer_section

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
    report_rows, others = setups[0], setups[1:]
    entries = table_entries(report_rows)
    metric = sorted({str(r.get("metric", "?")) for r in report_rows})
    base = base_means(report_rows)
    n_seeds = max(e.n for e in entries)
    extra = extra_columns(report_rows)
    marks, tests = paired_marks(entries, extra, alpha=alpha)
    budgets = " ".join(x for x in (budget_note(report_rows), items_note(report_rows)) if x)
    md = [
        f"# hhh-bench report{': ' + md_text(experiment) if experiment else ''}",
        "",
        f"Split **{md_text(report_split)}**, primary metric {md_text(', '.join(metric))}"
        + (
            " (tasks naming their own: see *Evaluation setup*), "
            if any(r.get("task_specs") for r in report_rows)
            else ", "
        )
        + f"{len(report_rows)} evaluated model(s); generated {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "## Main table",
        "",
        "One row per method family; where the pipeline compared several configurations of a "
        f"family, the one it chose by {select_by} on the selection split "
        f"({select_split or 'none'}) is shown, with how many it compared; a family without a "
        "recorded choice shows each of its configurations. "
        + ("Cells: mean ± std over seeds. " if n_seeds > 1 else "")
        + (
            "One seed: value ± standard error over items. "
            if any(v is not None for e in entries for v in e.se.values())
            else ""
        )
        + ("In parentheses: change from the base. " if base else "No base row: no deltas. ")
        + "Bold: best per column among all rows but the oracle"
        + (
            f"; ≈: not resolvably different from the best, †: change from the base not "
            f"resolved (paired tests over items, p ≥ {alpha}; see below). "
            if any(tests.values())
            else ". "
        )
        + (
            "↓: lower is better."
            if any(not v.get("higher_is_better", True) for v in extra.values())
            else ""
        ),
        "",
        main_table(entries, extra, marks),
        "",
        *skipped_note(skipped),
        *([budgets, ""] if budgets else []),
        *other_setups_section(others, report_rows),
        "## All evaluated models",
        "",
        all_models_table(report_rows),
        "",
    ]
    tasks = per_task_table(entries)
    if tasks:
        md += ["## Per-task metrics (main-table rows)", "", tasks, ""]
    md += setup_section(report_rows)
    md += paired_section(entries, tests, extra, alpha=alpha)
    matrix = conflict_matrix(report_rows)
    md += [
        "## Figures",
        "",
        "![3H radar](radar.png)",
        "",
        "![Pareto: each pair of dimensions](pareto.png)",
        "",
        "![Conflict matrix](conflict.png)",
        "",
    ]
    paths = {
        "radar": radar_plot(entries, out / "radar.png", title=f"3H profile ({report_split})"),
        "pareto": pareto_plot(report_rows, out / "pareto.png", highlight=entries),
        "conflict": conflict_plot(matrix, out / "conflict.png"),
    }
    diag_figures: dict[str, Path] = {}
    if diagnostics:
        diag_md, diag_figures = diagnostics_section(list(diagnostics), out)
        md += diag_md
    answer_md, answer, answer_text = answer_section(entries, alpha=alpha)
    md += answer_md  # last: the report ends with its answer line
    markdown = "\n".join(md) + "\n"
    (out / "report.md").write_text(markdown)
    summary: dict[str, Any] = {}
    for e in entries:
        for col, _ in COLUMNS:
            summary[f"{e.family}/{col}"] = e.mean[col]
    compared = [e for e in entries if e.kind not in ("oracle", "base")]
    if compared:
        best = max(compared, key=lambda e: e.mean[select_by])
        summary["best/family"] = best.family
        summary["best/name"] = best.name
        summary[f"best/{select_by}"] = best.mean[select_by]
    if answer:
        for k in ("diff", "ci_low", "ci_high", "verdict"):
            summary[f"mix_or_merge/{k}"] = answer[k]
    return {
        "markdown": markdown,
        "main_table": main_table(entries, extra, marks),
        "paired_tests": tests,
        "entries": entries,
        "summary": summary,
        "conflict_matrix": matrix,
        "report_md": out / "report.md",
        **paths,
        "diagnostics_figures": diag_figures,
        "answer": answer,
        "answer_line": answer_text,
    }
