"""The report's answer to "mix data or merge models?", in one line.

One concept: the mix-or-merge comparison (representatives, pairing by seed within one
condition, the interval and its verdict, and the line that says it).

**Representatives, chosen on validation.** Each group of the main table (data mixture, model
merging) speaks through one row: the family with the best mean ``average`` over seeds on the
*selection* split (``eval.select_split``, validation), looked up in the store by each test row's
model (``model_key``, seed, suite and data): the same models, scored on the items the choice may
see. The comparison is then made on the report split (test). Every family is a candidate
(``conflict_aware`` and RESM included when run; a family's own knobs were already chosen on
validation by the pipeline, its row says "best of N"), and every family keeps its own row in the
main table. When a candidate of a group has no selection-split score in the store, the group's
representative is picked on the report split itself, and the answer says so.

**One condition.** A merge is paired only with a mixture trained in the same condition: the
same world (``world_key``) and preference noise (``noise_rate``). A store holding several
(a noise sweep in one root) is answered for the newest condition that has both, and the line
names the others (:func:`one_condition`).

**The seed is the unit.** On the seeds both representatives were evaluated with (the same world
and training seed for both), each seed gives one difference ``D_k`` of their ``average`` (merge −
mix); the headline is their mean with a Student t interval over seeds (n − 1 degrees of
freedom) and the t test's two-sided p (:func:`hhh_bench.core.seedstats.seed_interval`; with
``report.interval=bca`` the BCa bootstrap over seeds instead). The verdict: merging wins when the
whole interval is above 0, mixing wins when it is below, and otherwise *inconclusive*, with the
number of seeds a ±0.02 interval would need at the observed per-seed SD
(:func:`hhh_bench.core.seedstats.seeds_needed`). One seed has no interval: the line says so::

    Mix or merge? merge − mix = -0.075, 95% t interval over 3 paired seeds [-0.181, +0.032],
    p = 0.094: inconclusive (±0.02 needs 20 seeds at the per-seed SD 0.043); best merge
    task_arithmetic (best of 6 on validation) 0.861 (chosen on validation from 6 merge methods) vs
    best mixture mix: uniform 0.935 (chosen on validation from 4 mixing strategies); env
    3f1c0a9e5b2d

(one line in the report and on the console; ``env`` is the environment fingerprint recorded in
the evaluations' ``provenance.json``, :func:`hhh_bench.core.environment.fingerprint`, ``mixed``
when they disagree). The report section adds, from the items (``items.jsonl``), a mixed-effects
view (a linear probability model with the seed as random effect and items clustered by entity,
:func:`hhh_bench.core.seedstats.mixed_effects`) and, as a diagnostic, the paired bootstrap over
items and seeds (:func:`hhh_bench.core.stats.hierarchical_bootstrap_ci`), which ignores the
clustering and understates the seed-to-seed spread with few seeds. A table decomposes the
margin by task (each task's weight in the average times its merge − mix difference,
:func:`decomposition`); when one task carries more than half of it (:data:`DOMINANT_SHARE`),
the answer line says so, naming the task and its share. Nothing here is specific to the toy
world: the real path's seeds go through the same functions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hhh_bench.core.environment import fingerprint
from hhh_bench.core.items import item_clusters
from hhh_bench.core.seedstats import BCA_MIN_SEEDS, HALF_WIDTH, mixed_effects, seed_interval
from hhh_bench.core.stats import hierarchical_bootstrap_ci, paired_differences
from hhh_bench.core.uncertainty import column_item_values, column_parts
from hhh_bench.tracking.entries import Entry
from hhh_bench.tracking.markdown import md_text
from hhh_bench.tracking.paired import check_comparable, no_items_reason, row_context, row_specs

ITERS = 2000
"""Resamples of the item-level bootstrap diagnostic and of the BCa interval."""

VERDICTS = ("merging wins", "mixing wins", "inconclusive")

GROUPS = (("mixture", "data-mixture", "mixtures"), ("merge", "model-merging", "merges"))


def verdict(low: float | None, high: float | None) -> str:
    """``merging wins`` when the interval (of merge − mix) lies above 0, ``mixing wins`` when
    below, ``inconclusive`` when it contains 0 (an end at 0 included) or there is none."""
    if low is not None and low > 0:
        return VERDICTS[0]
    if high is not None and high < 0:
        return VERDICTS[1]
    return VERDICTS[2]


def _select_index(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[Any, ...], Mapping[str, Any]]:
    """Selection-split rows by the model and setting they score (later rows win, as in the
    store)."""
    return {
        (r.get("model_key"), str(r.get("seed")), r.get("suite"), r.get("data_key")): r
        for r in rows
        if r.get("model_key") is not None
    }


def _select_score(e: Entry, index: Mapping[tuple[Any, ...], Mapping[str, Any]]) -> float | None:
    """The mean ``average`` of an entry's models on the selection split, None unless every seed
    of it was scored there."""
    vals = []
    for r in e.rows:
        v = index.get((r.get("model_key"), str(r.get("seed")), r.get("suite"), r.get("data_key")))
        if v is None or v.get("average") is None:
            return None
        vals.append(float(v["average"]))
    return sum(vals) / len(vals)


def _extra(e: Entry) -> Mapping[str, Any]:
    return e.rows[0].get("extra") or {}


def _method(e: Entry) -> str:
    r = e.rows[0]
    return str(r.get("mix_strategy" if e.kind == "mixture" else "method") or e.family)


def _is_grid_point(e: Entry) -> bool:
    """One configuration of a tuned family reported as its own row (its rows carry the grid's
    knobs and no choice)."""
    return all("grid_params" in (r.get("extra") or {}) and not (r.get("extra") or {}).get(
        "selected_on") for r in e.rows)  # fmt: skip


def pick(
    entries: Sequence[Entry],
    kind: str,
    select_rows: Sequence[Mapping[str, Any]] = (),
    select_split: str | None = None,
) -> tuple[Entry, dict[str, Any]] | None:
    """The representative of one group (``mixture`` or ``merge``) and how it was chosen:
    ``{"on", "candidates", "select_scores", "missing", "left_out", "fewer_seeds", "fallback"}``:
    the split the choice was made on, the number of candidates it was made among, each
    candidate's selection-split score, the candidates without one, those of them left out of
    the choice (when others have one), the candidates left out for rows on fewer seeds than the
    others', and whether the choice fell back to the reported split (none has one). None when
    the group has no entry."""
    group = [e for e in entries if e.kind == kind]
    chosen = {_method(e) for e in group if _extra(e).get("selected_on")}
    # a grid point shown as its own row (pipeline.report_every_grid_point) is one of its
    # method's configurations, already among those the chosen row was chosen from: not another
    # candidate (battery 9: "from 12 merge methods" for 3 methods)
    group = [e for e in group if not (_is_grid_point(e) and _method(e) in chosen)]
    if not group:
        return None
    # a candidate evaluated on fewer seeds than the others is no rival of theirs (battery 18,
    # F5: one method run on one seed, lucky there, turned an 8-seed answer into a 1-seed one)
    n_seeds = {e.label: len({r.get("seed") for r in e.rows}) for e in group}
    most = max(n_seeds.values())
    fewer = [e.label for e in group if n_seeds[e.label] < most]
    group = [e for e in group if n_seeds[e.label] == most]
    index = _select_index(select_rows) if select_split else {}
    scores = {e.label: _select_score(e, index) for e in group}
    missing = [label for label, s in scores.items() if s is None]
    scored = [e for e in group if scores[e.label] is not None]
    if select_split and scored:  # candidates never scored there (a model evaluated with
        # stage=eval on the report split only) are left out, and said: choosing them on the
        # reported split would move the whole group's choice there
        best = max(scored, key=lambda e: scores[e.label])  # type: ignore[arg-type,return-value]
        on = select_split
    else:
        best = max(group, key=lambda e: e.mean["average"])
        on = str(best.rows[0].get("split") or "the report split")
    pool = scored if on == select_split else group
    return best, {"on": on, "candidates": len(pool),
                  "methods": len({_method(e) for e in pool}),  # of which configurations
                  "select_scores": scores, "missing": missing,
                  "left_out": missing if on == select_split else [],
                  "fewer_seeds": fewer, "fallback": on != select_split}  # fmt: skip


def environment_fingerprint(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The environment fingerprint recorded in the rows' ``<eval_dir>/provenance.json`` (one
    value when they agree, ``mixed`` when they do not); None when no row has one."""
    seen: set[str] = set()
    for r in rows:
        eval_dir = (r.get("artifacts") or {}).get("eval_dir")
        path = Path(eval_dir) / "provenance.json" if eval_dir else None
        if path is None or not path.is_file():
            continue
        try:
            env = json.loads(path.read_text()).get("environment")
        except (OSError, ValueError):
            continue
        if isinstance(env, Mapping):
            seen.add(str(env.get("fingerprint") or fingerprint(env)))
    if not seen:
        return None
    return seen.pop() if len(seen) == 1 else "mixed"


def _item_parts(
    merge_by_seed: Mapping[Any, Mapping[str, Any]],
    mix_by_seed: Mapping[Any, Mapping[str, Any]],
    shared: Sequence[Any],
) -> tuple[list[Any], list[Any], dict[str, int], dict[str, float]] | str:
    """Per seed: the bootstrap's ``[(c_t, diffs)]`` and the mixed model's ``[(w_i, d_i,
    cluster)]``; tasks' item counts and weights. A sentence when a row has no per-item values."""
    per_seed: list[list[tuple[float, list[float]]]] = []
    seed_items: list[list[tuple[float, float, Any]]] = []
    items_per_task: dict[str, int] = {}
    weights: dict[str, float] = {}
    for s in shared:
        a, b = merge_by_seed[s], mix_by_seed[s]
        ctx = []
        for r in (a, b):
            c = row_context(r)
            if c is None:
                return no_items_reason(r)
            ctx.append(c)
        columns = {**(b.get("extra_columns") or {}), **(a.get("extra_columns") or {})}
        try:
            parts = column_item_values("average", row_specs(a), ctx[0], ctx[1], columns=columns)
            diffs = [(c, t, va, paired_differences(va, vb, label=t)) for c, t, va, vb in parts]
        except ValueError as e:
            return str(e)
        per_seed.append([(c, d) for c, _, _, d in diffs])
        items: list[tuple[float, float, Any]] = []
        for c, t, va, d in diffs:
            clusters = item_clusters(ctx[0]["items"], t, groups=ctx[0].get("groups"))
            keys = sorted(va, key=str)  # the order of paired_differences
            items += [(c / len(d), x, clusters.get(k)) for k, x in zip(keys, d, strict=True)]
            items_per_task.setdefault(t, len(d))
            weights.setdefault(t, c)
        seed_items.append(items)
    return per_seed, seed_items, items_per_task, weights


DOMINANT_SHARE = 0.5
"""A task whose contribution to the margin, in the margin's direction, is above this share of
it is named in the answer line (issue 29: one task deciding the verdict)."""


def decomposition(
    merge_by_seed: Mapping[Any, Mapping[str, Any]],
    mix_by_seed: Mapping[Any, Mapping[str, Any]],
    shared: Sequence[Any],
) -> dict[str, Any] | str:
    """The margin (merge − mix of the average) as a sum over tasks: the average is
    ``Σ_t c_t·score_t`` (:func:`hhh_bench.core.uncertainty.column_parts`: a task's weight in
    its dimension over 3), so the margin is ``Σ_t c_t·(merge_t − mix_t)``, each term averaged
    over the paired seeds. ``{"tasks": [{"task", "weight", "merge", "mixture",
    "contribution"}], "residual"}`` (the margin minus the terms' sum: rounding, or columns that
    are not task means); a sentence when a row lacks a task's score."""
    a0 = merge_by_seed[shared[0]]
    columns = {**(mix_by_seed[shared[0]].get("extra_columns") or {}),
               **(a0.get("extra_columns") or {})}  # fmt: skip
    try:
        parts = column_parts("average", row_specs(a0), columns)
    except ValueError as e:
        return str(e)
    tasks = []
    for c, task, metric in parts:
        vals: dict[str, list[float]] = {"merge": [], "mixture": []}
        for s in shared:
            for side, row in (("merge", merge_by_seed[s]), ("mixture", mix_by_seed[s])):
                v = ((row.get("tasks") or {}).get(task) or {}).get(metric)
                if not isinstance(v, int | float) or isinstance(v, bool):
                    return f"row {row.get('row_key')!r} has no {metric} for task {task!r}"
                vals[side].append(float(v))
        n = len(shared)
        mean_a, mean_b = sum(vals["merge"]) / n, sum(vals["mixture"]) / n
        tasks.append({"task": task, "weight": c, "merge": mean_a, "mixture": mean_b,
                      "contribution": c * (mean_a - mean_b)})  # fmt: skip
    diff = sum(
        float(merge_by_seed[s]["average"]) - float(mix_by_seed[s]["average"]) for s in shared
    ) / len(shared)
    return {"tasks": tasks, "residual": diff - sum(t["contribution"] for t in tasks)}


def dominant_task(decomp: Mapping[str, Any] | str | None, diff: float) -> dict[str, Any] | None:
    """The task carrying more than :data:`DOMINANT_SHARE` of the margin in its direction (the
    largest such), with its ``share``; None when none does or there is no margin."""
    if not isinstance(decomp, Mapping) or diff == 0:
        return None
    best = max(decomp["tasks"], key=lambda t: t["contribution"] / diff, default=None)
    if best is None or best["contribution"] / diff <= DOMINANT_SHARE:
        return None
    return {**best, "share": best["contribution"] / diff}


def condition_of(e: Entry) -> tuple[str, str]:
    """The condition an entry's models were trained in: its world (``world_key``) and its
    preference noise (``noise_rate``). A merge and a mixture are paired only within one."""
    r = e.rows[0]
    noise = r.get("noise_rate") or 0.0  # none recorded is none, as the table's configurations
    if isinstance(noise, int | float) and not isinstance(noise, bool):  # read it (0 is 0.0)
        noise = float(noise)
    return str(r.get("world_key") or ""), json.dumps(noise)


def _condition_text(rows: Sequence[Mapping[str, Any]]) -> str:
    r = rows[0]
    world = str(r.get("world_key") or "not recorded")[:12]
    return (
        f"noise_rate {r.get('noise_rate') if r.get('noise_rate') is not None else 0}, world {world}"
    )


def one_condition(entries: Sequence[Entry]) -> tuple[list[Entry], list[str]] | str:
    """The entries of the condition (:func:`condition_of`) the answer is about, and the
    conditions of the table's mixtures and merges, that one first (battery 13, F7: a clean
    merge was paired with a mixture trained on flipped labels as one seed). Of the conditions
    that hold both a mixture and a merge, the one of the most recently written row is answered
    (as the main table's setup); entries of neither kind (the base, specialists) stay. A
    sentence when no condition holds both."""
    by: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        if e.kind in ("mixture", "merge"):
            by.setdefault(condition_of(e), []).append(e)
    if len(by) <= 1:
        return list(entries), []

    def newest(c: tuple[str, str]) -> str:
        return max(str(r.get("created_at") or "") for e in by[c] for r in e.rows)

    order = sorted(by, key=newest, reverse=True)
    both = [c for c in order if {e.kind for e in by[c]} >= {"mixture", "merge"}]
    texts = {c: _condition_text(by[c][0].rows) for c in order}
    if not both:
        return (
            "the table's merges and mixtures were trained in different conditions ("
            + "; ".join(f"{', '.join(sorted({e.kind for e in by[c]}))} at {texts[c]}"
                        for c in order)
            + "): a merge is paired with a mixture of its own condition only"
        )  # fmt: skip
    keep = both[0]
    mine = [e for e in entries if e.kind not in ("mixture", "merge") or condition_of(e) == keep]
    return mine, [texts[keep], *(texts[c] for c in order if c != keep)]


def budget_mismatch(
    entries: Sequence[Entry], mix_by_seed: Mapping[Any, Mapping[str, Any]], shared: Sequence[Any]
) -> tuple[int, int] | None:
    """``(the chosen mixture's training pairs, the specialists' pairs in all)`` on a paired seed
    where they differ (the merge is made of the specialists: the data each arm saw), None when
    they agree or are not recorded (battery 15, F5: a mixture of 5.6x the data won the answer,
    unsaid)."""
    for s in shared:
        mix = (mix_by_seed[s].get("extra") or {}).get("train_pairs")
        by_dim: dict[str, Any] = {}  # one specialist per dimension (a re-evaluation: the same)
        for e in entries:
            for r in e.rows if e.kind == "specialist" else ():
                dims = r.get("train_dimensions") or []
                if r.get("seed") == s and len(dims) == 1:
                    by_dim.setdefault(str(dims[0]), (r.get("extra") or {}).get("train_pairs"))
        mixed = [str(d) for d in mix_by_seed[s].get("train_dimensions") or []]
        specs = [by_dim.get(d) for d in mixed]
        if not isinstance(mix, int) or not specs or not all(isinstance(p, int) for p in specs):
            continue
        if mix != sum(specs):
            return mix, sum(specs)
    return None


def compare(
    entries: Sequence[Entry],
    *,
    select_rows: Sequence[Mapping[str, Any]] = (),
    select_split: str | None = None,
    interval: str = "t",
    alpha: float = 0.05,
    iters: int = ITERS,
    seed: int = 0,
) -> dict[str, Any] | str:
    """The two groups' representatives compared on paired seeds (see the module docstring).

    Args:
        entries: the main table's entries (:func:`hhh_bench.tracking.entries.table_entries`).
        select_rows: the store's rows of the selection split (the choice of representatives).
        select_split: its name (None: no selection split; the choice is made on the report
            split, which the answer says).
        interval: ``t`` (Student t over seeds) or ``bca`` (BCa bootstrap over seeds).
        alpha: 1 − the intervals' coverage (0.05: 95%).
        iters, seed: resamples and seed of the bootstraps (BCa, the item-level diagnostic).

    Returns:
        ``{"mixture", "merge"`` (labels), ``"mixture_family", "merge_family", "mixture_mean",
        "merge_mean"`` (means of ``average`` over the paired seeds), ``"mixture_choice",
        "merge_choice"`` (:func:`pick`'s record), ``"diff"`` (merge − mix), ``"per_seed"``,
        ``"ci_low", "ci_high", "p_value", "sd", "interval", "level", "seeds_needed",
        "half_width", "seeds", "n_seeds", "verdict"``, ``"mixed"`` (the mixed-effects view as
        a dict, or None), ``"item_bootstrap"`` (``{"diff", "low", "high"}`` or None),
        ``"items_note"`` (why there is no item-level view, or None), ``"items_per_task",
        "weights", "n_items"``, ``"environment"`` (fingerprint or None), ``"decomposition"``
        (:func:`decomposition`: the margin per task, or why not) and ``"dominant_task"``
        (:func:`dominant_task`, or None)}``; or, when there is no
        answer, a sentence saying why (no mixture or merge row, no shared seed, rows of
        different items).
    """
    chosen = one_condition(entries)
    if isinstance(chosen, str):
        return chosen
    candidates, conditions = chosen
    picked: dict[str, tuple[Entry, dict[str, Any]]] = {}
    for kind, what, _ in GROUPS:
        p = pick(candidates, kind, select_rows, select_split)
        if p is None:
            return f"the main table has no {what} row"
        picked[kind] = p
    (mix, mix_how), (merge, merge_how) = picked["mixture"], picked["merge"]
    mix_by_seed = {r.get("seed"): r for r in mix.rows}
    merge_by_seed = {r.get("seed"): r for r in merge.rows}
    shared = sorted(set(mix_by_seed) & set(merge_by_seed), key=str)
    if not shared:
        return (
            f"{merge.label} (seeds {sorted(map(str, merge_by_seed))}) and {mix.label} (seeds "
            f"{sorted(map(str, mix_by_seed))}) share no seed: nothing to pair"
        )
    try:
        for s in shared:
            check_comparable(merge_by_seed[s], mix_by_seed[s])
    except ValueError as e:
        return str(e)
    per_seed = [
        float(merge_by_seed[s]["average"]) - float(mix_by_seed[s]["average"]) for s in shared
    ]
    # seeds of the table that a representative has no row of (battery 9: said, not dropped
    # silently): the headline is over fewer seeds than the table's
    every = {r.get("seed") for e in entries for r in e.rows}
    unpaired = {
        str(s): [f"best {w} {e.label}" for w, e in (("merge", merge), ("mixture", mix))
                 if s not in {r.get("seed") for r in e.rows}]
        for s in sorted(every - set(shared), key=str)
    }  # fmt: skip
    level = 1 - alpha
    si = seed_interval(per_seed, level=level, method=interval, iters=iters, seed=seed)
    out: dict[str, Any] = {
        "mixture": mix.label, "merge": merge.label,
        "mixture_family": mix.family, "merge_family": merge.family,
        "mixture_mean": sum(float(mix_by_seed[s]["average"]) for s in shared) / len(shared),
        "merge_mean": sum(float(merge_by_seed[s]["average"]) for s in shared) / len(shared),
        "mixture_choice": mix_how, "merge_choice": merge_how,
        "diff": si.diff, "per_seed": per_seed, "ci_low": si.low, "ci_high": si.high,
        "p_value": si.p_value, "sd": si.sd, "interval": si.method, "level": level,
        "interval_requested": si.requested,
        "seeds_needed": si.seeds_needed, "half_width": si.half_width,
        "seeds": shared, "n_seeds": len(shared),
        "verdict": VERDICTS[2] if si.inconclusive else verdict(si.low, si.high),
        "unpaired": unpaired, "split": str(merge.rows[0].get("split") or "the report split"),
        "mixed": None, "item_bootstrap": None, "items_note": None,
        "items_per_task": {}, "weights": {}, "n_items": 0,
        "environment": environment_fingerprint(
            [*(merge_by_seed[s] for s in shared), *(mix_by_seed[s] for s in shared)]
        ),
        "condition": conditions[0] if len(conditions) > 1 else None,
        "other_conditions": conditions[1:],
    }  # fmt: skip
    out["budget"] = budget_mismatch(entries, mix_by_seed, shared)
    # battery 20, B-F10: a root rerun with another recipe holds two of each name ("ties [2]");
    # the representatives are chosen across them, so a merge of one recipe can meet a mixture
    # of the other: said, with the names
    out["generations"] = sorted(
        e.label for e in candidates if e.kind in ("merge", "mixture") and e.numbered
    )
    out["decomposition"] = decomposition(merge_by_seed, mix_by_seed, shared)
    out["dominant_task"] = dominant_task(out["decomposition"], si.diff)
    parts = _item_parts(merge_by_seed, mix_by_seed, shared)
    if isinstance(parts, str):
        out["items_note"] = parts
        return out
    boot_parts, seed_items, items_per_task, weights = parts
    d, low, high = hierarchical_bootstrap_ci(boot_parts, level=level, iters=iters, seed=seed)
    out["item_bootstrap"] = {"diff": d, "low": low, "high": high}
    out["mixed"] = mixed_effects(seed_items, level=level).as_dict()
    out.update(items_per_task=items_per_task, weights=weights,
               n_items=sum(items_per_task.values()))  # fmt: skip
    return out


def mix_vs_merge(entries: Sequence[Entry], **kwargs: Any) -> dict[str, Any] | None:
    """:func:`compare`'s result, None when there is no answer."""
    out = compare(entries, **kwargs)
    return out if isinstance(out, dict) else None


def _how(choice: Mapping[str, Any], plural: str) -> str:
    n = choice["candidates"]
    m = choice.get("methods", n)
    singular = plural.replace("methods", "method").replace("strategies", "strategy")
    if m != n:  # configurations shown one by one (no recorded choice, or every grid point)
        kinds = plural if m != 1 else singular
        of = f"chosen on {choice['on']} from {n} configurations of {m} {kinds}"
    else:
        of = f"chosen on {choice['on']} from {n} {plural if n != 1 else singular}"
    left = choice.get("left_out") or []
    if left:
        of += f"; {len(left)} without a {choice['on']} score left out: {', '.join(left[:3])}"
        of += " ..." if len(left) > 3 else ""
    fewer = choice.get("fewer_seeds") or []
    if fewer:
        of += f"; {len(fewer)} on fewer seeds left out: {', '.join(fewer[:3])}"
        of += " ..." if len(fewer) > 3 else ""
    return f"{of}, the reported split" if choice["fallback"] else of


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def headline(r: Mapping[str, Any]) -> str:
    """The difference with its seed-level interval, p and verdict (the answer line's head)."""
    n = r["n_seeds"]
    if n == 1:
        return (
            f"merge − mix = {r['diff']:+.3f} on 1 seed: no interval (one seed has no "
            f"seed-to-seed spread to measure; run more seeds): {r['verdict']}"
        )
    name = "t interval" if r["interval"] == "t" else "BCa bootstrap interval"
    if r.get("interval_requested") == "bca":
        name += f" (report.interval=bca needs ≥ {BCA_MIN_SEEDS} paired seeds)"
    if r["ci_low"] is None:
        ci = f"no {name} (undefined on these {n} seeds)"
    else:
        ci = f"{r['level']:.0%} {name} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
    power = ""
    if r["verdict"] == VERDICTS[2] and r["seeds_needed"] is not None:
        power = (
            f" (±{r['half_width']:g} needs {r['seeds_needed']} seeds at the per-seed SD "
            f"{r['sd']:.3f})"
        )
        if r["seeds_needed"] <= n:  # battery 20, B-F5: "needs 2 seeds" said of a 2-seed run
            hw, lo, hi = r["half_width"], r["ci_low"], r["ci_high"]
            within = lo is not None and -hw <= lo and hi <= hw
            power = (
                f" (the interval lies within ±{hw:g}: any difference is smaller)" if within else ""
            )
    backed = ""
    bca_alone = r["interval"] == "bca" and r["verdict"] == VERDICTS[2]
    if bca_alone and r["ci_low"] is not None and not r["ci_low"] <= 0 <= r["ci_high"]:
        backed = f" (the interval excludes 0 but the t test's p ≥ {1 - r['level']:.2g})"
    return (
        f"merge − mix = {r['diff']:+.3f}, {ci} over {n} paired seeds, p = {_p(r['p_value'])} "
        f"(t test): {r['verdict']}{backed}{power}"
    )


def unpaired_text(r: Mapping[str, Any]) -> str:
    """The seeds of the table left out of the comparison, and which representative has no row
    of each (empty when none is)."""
    parts = [f"seed {s} ({' and '.join(who)} {'have' if len(who) > 1 else 'has'} no "
             f"{r.get('split', 'report-split')} row of it)"
             for s, who in (r.get("unpaired") or {}).items()]  # fmt: skip
    return f"; not paired: {'; '.join(parts)}" if parts else ""


def answer_line(result: Mapping[str, Any] | str) -> str:
    """The one-line answer of a :func:`compare` result (or the reason there is none)."""
    if isinstance(result, str):
        return f"Mix or merge? No answer: {result}."
    r = result
    env = r["environment"] or "not recorded"
    one = r.get("dominant_task")
    carried = ""
    if one and one["share"] > 1:  # battery 13, F14: "600% of the margin" read as an error
        carried = (
            f"; one task outweighs the whole margin: {one['task']} alone is "
            f"{one['contribution']:+.3f} while the margin is {r['diff']:+.3f} (other tasks "
            "pull the other way)"
        )
    elif one:
        carried = (
            f"; one task carries more than half the margin: {one['task']} "
            f"{one['contribution']:+.3f} of {r['diff']:+.3f} ({one['share']:.0%})"
        )
    if r.get("budget"):
        mix_pairs, spec_pairs = r["budget"]
        carried += (
            f"; not budget-matched: the chosen mixture trained on {mix_pairs:,} pairs, the "
            f"specialists the merge is made of on {spec_pairs:,} in all"
        )
    if r.get("generations"):
        carried += (
            f"; the table holds other configurations of the same names "
            f"({', '.join(r['generations'][:3])}{' ...' if len(r['generations']) > 3 else ''}: "
            "a rerun with other settings in this root?), and the best merge and mixture were "
            "chosen across them: give each configuration its own root (or name) to compare "
            "within one"
        )
    if r.get("other_conditions"):
        carried += (
            f"; of the rows at {r['condition']} only (merges and mixtures are paired within one "
            f"condition; the table also holds {'; '.join(r['other_conditions'])})"
        )
    return (
        f"Mix or merge? {headline(r)}; best merge {r['merge']} {r['merge_mean']:.3f} "
        f"({_how(r['merge_choice'], 'merge methods')}) vs best mixture {r['mixture']} "
        f"{r['mixture_mean']:.3f} ({_how(r['mixture_choice'], 'mixing strategies')}){carried}"
        f"{unpaired_text(r)}; env {env}"
    )


def mixed_line(m: Mapping[str, Any] | None) -> str:
    """The mixed-effects view in one sentence (or why there is none)."""
    if m is None:
        return "Mixed-effects view: none."
    clusters = {
        "entity": "items clustered by entity",
        "item": "no item has an entity id, so each item is its own cluster",
        "mixed": "items clustered by entity where they name one, else each its own cluster",
    }[m["clusters"]]
    said = "; ".join(w.rstrip(". ") for w in m["warnings"])  # statsmodels ends them with "."
    warned = f" statsmodels warned: {said}." if m["warnings"] else ""
    if m["error"]:
        return f"Mixed-effects view: no estimate: {m['error']} ({clusters}).{warned}"
    return (
        f"Mixed-effects view (linear probability model on the item scores; seed as random "
        f"effect, {clusters}; {m['n_seeds']} seeds, {m['n_clusters']} clusters): merge − mix = "
        f"{m['estimate']:+.3f}, SE {m['se']:.3f}, {m['level']:.0%} Wald CI [{m['low']:+.3f}, "
        f"{m['high']:+.3f}], p = {_p(m['p_value'])}; seed variance {m['seed_var']:.2g}, "
        f"cluster variance {m['cluster_var']:.2g}.{warned}"
    )


def _choice_table(entries: Sequence[Entry], r: Mapping[str, Any]) -> list[str]:
    md = ["| Group | Candidate | Selection-split average | Reported average | Chosen |",
          "|---|---|---:|---:|---|"]  # fmt: skip
    for kind, _, plural in GROUPS:
        choice, chosen = r[f"{kind}_choice"], r[kind]
        for e in (e for e in entries if e.kind == kind):
            s = choice["select_scores"].get(e.label)
            md.append(
                f"| {plural} | {md_text(e.label)} | {'-' if s is None else f'{s:.3f}'} | "
                f"{e.mean['average']:.3f} | {'yes' if e.label == chosen else ''} |"
            )
    return md


def _decomposition_table(r: Mapping[str, Any]) -> list[str]:
    dec = r.get("decomposition")
    if not isinstance(dec, Mapping):
        return [f"No per-task decomposition: {md_text(str(dec))}.", ""]
    diff = r["diff"]
    md = ["Where the margin comes from: the average is a weighted sum of task scores, so the "
          "margin is the sum of each task's weight times its merge − mix difference (means "
          "over the paired seeds).", "",
          "| Task | Weight | Merge | Mixture | Contribution | Share of the margin |",
          "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for t in sorted(dec["tasks"], key=lambda t: -abs(t["contribution"])):
        share = f"{round(t['contribution'] / diff, 2) + 0.0:.0%}" if diff else "-"
        md.append(f"| {md_text(t['task'])} | {t['weight']:.3f} | {t['merge']:.3f} | "
                  f"{t['mixture']:.3f} | {t['contribution']:+.3f} | {share} |")  # fmt: skip
    if abs(dec["residual"]) > 1e-9:
        md.append(f"| (not a task mean) | | | | {dec['residual']:+.3f} | |")
    return [*md, ""]


def answer_section(
    entries: Sequence[Entry],
    *,
    select_rows: Sequence[Mapping[str, Any]] = (),
    select_split: str | None = None,
    interval: str = "t",
    alpha: float = 0.05,
    iters: int = ITERS,
    seed: int = 0,
) -> tuple[list[str], dict[str, Any] | None, str]:
    """The report's last section (Markdown lines ending with the answer line), the
    :func:`compare` result (None without an answer) and the answer line."""
    result = compare(entries, select_rows=select_rows, select_split=select_split,
                     interval=interval, alpha=alpha, iters=iters, seed=seed)  # fmt: skip
    line = answer_line(result)
    how = "a Student t interval over the per-seed differences (n − 1 degrees of freedom)"
    if interval == "bca":
        how = (
            f"a BCa bootstrap interval over the per-seed differences ({iters} resamples; on "
            f"≥ {BCA_MIN_SEEDS} paired seeds, the t interval below that, and a verdict only "
            "where the t test's p agrees)"
        )
    md = [
        "## Mix or merge?",
        "",
        "Each group's representative is the family with the best mean average over seeds on "
        f"the selection split ({select_split or 'none'}), compared on this split: the "
        "difference of their average (merge − mix) on the seeds both were evaluated with "
        f"(the same world and training seed for both). The seed is the unit: {how}, with the "
        f"t test's two-sided p. The verdict is inconclusive when the {1 - alpha:.0%} interval "
        f"contains 0, with the seeds a ±{HALF_WIDTH:g} interval would need at the observed "
        "per-seed SD (smallest n with t(n − 1) · SD / √n ≤ 0.02).",
        "",
        "*Multiplicity.* Every family keeps its own row in the main table; the representatives "
        "are the best of several candidates (and each family's knobs the best of its grid), "
        "chosen on the selection split so that the reported difference is not the maximum of "
        "many noisy test-split comparisons. Where a group was chosen on the reported split "
        "(no selection-split scores), the difference is biased in its favour and the interval "
        "does not account for the choice.",
        "",
    ]
    if isinstance(result, dict):
        md += [*_choice_table(entries, result), ""]
        seeds = ", ".join(
            f"{s}: {d:+.3f}" for s, d in zip(result["seeds"], result["per_seed"], strict=True)
        )
        md += [f"Per-seed differences (merge − mix of the average): {seeds}.", ""]
        md += _decomposition_table(result)
        md += [mixed_line(result["mixed"]), ""]
        b = result["item_bootstrap"]
        if b is not None:
            md += [
                f"Diagnostic, not the headline: the paired bootstrap over items and seeds "
                f"({iters} resamples) gives {result['level']:.0%} CI [{b['low']:+.3f}, "
                f"{b['high']:+.3f}]; it treats items as independent (no entity clustering) and, "
                "with few seeds, understates the seed-to-seed spread.",
                "",
                "| Task | Weight in the average | Paired items per seed |",
                "|---|---:|---:|",
                *(f"| {md_text(t)} | {result['weights'][t]:.3f} | {n} |"
                  for t, n in result["items_per_task"].items()),
                "",
            ]  # fmt: skip
        else:
            md += [f"No item-level view: {md_text(result['items_note'])}.", ""]
    # the user's names in the report as literal text (issue 27): no heading, HTML or link
    shown = (
        {**result, "merge": md_text(result["merge"]), "mixture": md_text(result["mixture"])}
        if isinstance(result, dict)
        else md_text(result)
    )
    md.append(answer_line(shown))
    return md, result if isinstance(result, dict) else None, line
