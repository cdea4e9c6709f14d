"""The report's answer to "mix data or merge models?", in one line.

The best data-mixture row of the main table meets the best model-merging row (each the
configuration the table shows for its family; the best by mean ``average`` over seeds). On the
seeds both were evaluated with, every task of the ``average`` column gives per-item paired
differences (merge − mix, :func:`hhh_bench.core.uncertainty.column_item_values`); their
weighted sum of task means, averaged over seeds, is the difference of the two ``average``
scores, and a paired bootstrap over seeds and items
(:func:`hhh_bench.core.stats.hierarchical_bootstrap_ci`) gives its interval. The verdict:
merging wins when the whole interval is above 0, mixing wins when it is below, and otherwise the
data cannot resolve a difference::

    Mix or merge? best merge ties 0.644 vs best mixture mix: uniform 0.775 (3 seeds):
    merge − mix = -0.131, 95% CI [-0.201, -0.060] (paired bootstrap over items and seeds):
    mixing wins

(one line in the report and on the console). The two rows are picked as the best of their
groups on the report split itself; the interval does not account for that pick, so a near call
between several families of one group deserves a look at the selection split too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hhh_bench.core.stats import hierarchical_bootstrap_ci, paired_differences
from hhh_bench.core.uncertainty import column_item_values
from hhh_bench.tracking.entries import Entry
from hhh_bench.tracking.markdown import md_text
from hhh_bench.tracking.paired import check_comparable, row_context, row_specs

ITERS = 2000
"""Bootstrap resamples behind the interval (Monte Carlo error of a 95% end: ~1% of its width)."""

VERDICTS = ("merging wins", "mixing wins", "no difference we can resolve")


def verdict(low: float, high: float) -> str:
    """``merging wins`` when the interval (of merge − mix) lies above 0, ``mixing wins`` when
    below, ``no difference we can resolve`` when it covers 0 (an end at 0 included)."""
    if low > 0:
        return VERDICTS[0]
    if high < 0:
        return VERDICTS[1]
    return VERDICTS[2]


def compare(
    entries: Sequence[Entry], *, alpha: float = 0.05, iters: int = ITERS, seed: int = 0
) -> dict[str, Any] | str:
    """The best mixture entry against the best merge entry (see the module docstring).

    Args:
        entries: the main table's entries (:func:`hhh_bench.tracking.entries.table_entries`).
        alpha: 1 − the interval's coverage (0.05: a 95% interval).
        iters, seed: the bootstrap's resamples and seed.

    Returns:
        ``{"mixture", "merge"`` (the rows' labels), ``"mixture_family", "merge_family",
        "mixture_mean", "merge_mean"`` (means of ``average`` over the paired seeds), ``"diff"``
        (merge − mix), ``"ci_low", "ci_high", "level", "seeds", "n_seeds", "items_per_task"``
        (paired items per seed), ``"weights"`` (each task's coefficient in the average),
        ``"n_items"`` (items per seed), ``"verdict"}``; or, when there is
        no answer, a sentence saying why (no mixture or merge row, no shared seed, a row
        without per-item values, rows of different items).
    """
    best: dict[str, Entry] = {}
    for kind, what in (("mixture", "data-mixture"), ("merge", "model-merging")):
        group = [e for e in entries if e.kind == kind]
        if not group:
            return f"the main table has no {what} row"
        best[kind] = max(group, key=lambda e: e.mean["average"])
    mix, merge = best["mixture"], best["merge"]
    mix_by_seed = {r.get("seed"): r for r in mix.rows}
    merge_by_seed = {r.get("seed"): r for r in merge.rows}
    shared = sorted(set(mix_by_seed) & set(merge_by_seed), key=str)
    if not shared:
        return (
            f"{merge.label} (seeds {sorted(map(str, merge_by_seed))}) and {mix.label} (seeds "
            f"{sorted(map(str, mix_by_seed))}) share no seed: nothing to pair"
        )
    per_seed: list[list[tuple[float, list[float]]]] = []
    items_per_task: dict[str, int] = {}
    weights: dict[str, float] = {}
    for s in shared:
        a, b = merge_by_seed[s], mix_by_seed[s]
        ctx = []
        for r in (a, b):
            c = row_context(r)
            if c is None:
                eval_dir = (r.get("artifacts") or {}).get("eval_dir")
                where = f"no items.jsonl in {eval_dir}" if eval_dir else "no eval folder recorded"
                return (
                    f"row {r.get('row_key')!r} has no per-item values ({where}); evaluate it "
                    "with eval.log_samples=true"
                )
            ctx.append(c)
        columns = {**(b.get("extra_columns") or {}), **(a.get("extra_columns") or {})}
        try:
            check_comparable(a, b)
            parts = column_item_values("average", row_specs(a), ctx[0], ctx[1], columns=columns)
            diffs = [(c, t, paired_differences(va, vb, label=t)) for c, t, va, vb in parts]
        except ValueError as e:
            return str(e)
        per_seed.append([(c, d) for c, _, d in diffs])
        for c, t, d in diffs:
            items_per_task.setdefault(t, len(d))
            weights.setdefault(t, c)
    diff, low, high = hierarchical_bootstrap_ci(per_seed, level=1 - alpha, iters=iters, seed=seed)

    def mean_average(by_seed: Mapping[Any, Mapping[str, Any]]) -> float:
        return sum(float(by_seed[s]["average"]) for s in shared) / len(shared)

    return {
        "mixture": mix.label,
        "merge": merge.label,
        "mixture_family": mix.family,
        "merge_family": merge.family,
        "mixture_mean": mean_average(mix_by_seed),
        "merge_mean": mean_average(merge_by_seed),
        "diff": diff,
        "ci_low": low,
        "ci_high": high,
        "level": 1 - alpha,
        "seeds": shared,
        "n_seeds": len(shared),
        "items_per_task": items_per_task,
        "weights": weights,
        "n_items": sum(items_per_task.values()),
        "verdict": verdict(low, high),
    }


def mix_vs_merge(
    entries: Sequence[Entry], *, alpha: float = 0.05, iters: int = ITERS, seed: int = 0
) -> dict[str, Any] | None:
    """:func:`compare`'s result, None when there is no answer."""
    out = compare(entries, alpha=alpha, iters=iters, seed=seed)
    return out if isinstance(out, dict) else None


def answer_line(result: Mapping[str, Any] | str) -> str:
    """The one-line answer of a :func:`compare` result (or the reason there is none)."""
    if isinstance(result, str):
        return f"Mix or merge? No answer: {result}."
    r = result
    seeds = f"{r['n_seeds']} seed{'s' if r['n_seeds'] != 1 else ''}"
    return (
        f"Mix or merge? best merge {r['merge']} {r['merge_mean']:.3f} vs best mixture "
        f"{r['mixture']} {r['mixture_mean']:.3f} ({seeds}): merge − mix = {r['diff']:+.3f}, "
        f"{r['level']:.0%} CI [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] (paired bootstrap over "
        f"items and seeds): {r['verdict']}"
    )


def answer_section(
    entries: Sequence[Entry], *, alpha: float = 0.05, iters: int = ITERS, seed: int = 0
) -> tuple[list[str], dict[str, Any] | None, str]:
    """The report's last section (Markdown lines ending with the answer line), the
    :func:`compare` result (None without an answer) and the answer line."""
    result = compare(entries, alpha=alpha, iters=iters, seed=seed)
    line = answer_line(result)
    md = [
        "## Mix or merge?",
        "",
        "The best data-mixture row of the main table against the best model-merging row (by "
        "mean average over seeds, each family at the configuration the table shows), on the "
        "seeds both were evaluated with: the difference of their average (merge − mix) with "
        f"a {1 - alpha:.0%} percentile interval from a paired bootstrap that redraws seeds and, "
        f"within each, every task's items ({iters} resamples, seed {seed}). Merging or mixing "
        "wins when the interval excludes 0. The two rows are the best of their groups on this "
        "split; the interval does not account for that pick. Mean ± std over seeds of every "
        "family: the main table.",
        "",
    ]
    if isinstance(result, dict):
        md += ["| Task | Weight in the average | Paired items per seed |", "|---|---:|---:|"]
        md += [
            f"| {md_text(t)} | {result['weights'][t]:.3f} | {n} |"
            for t, n in result["items_per_task"].items()
        ]
        md.append("")
    # the user's names in the report as literal text (issue 27): no heading, HTML or link
    shown = (
        {**result, "merge": md_text(result["merge"]), "mixture": md_text(result["mixture"])}
        if isinstance(result, dict)
        else md_text(result)
    )
    md.append(answer_line(shown))
    return md, result if isinstance(result, dict) else None, line
