"""Merge sweeps you can read: score against knob, one figure per swept method.

A *sweep* is a merge method evaluated at several configurations on the selection split (the
pipeline's ``pipeline.merge_grid``, a Hydra multirun of ``stage=merge_eval``): rows of kind
``merge`` without the pipeline's choice (``extra.selected_on``), one per configuration and seed.
For each method (the row's ``method``, else its name):

- a **knob** is a merge parameter whose value differs between that method's configurations of
  one seed (``params`` minus ``seed``, the merge's own randomness: a row's seed is its run's);
- a knob with numbers for values (not booleans) is an **axis**: one panel per axis, its values
  on x; the method's other knobs (say ``weights``, or ``density`` in a density x scaling grid)
  tell the **series** of that panel apart;
- each point is the mean of ``select_by`` (the average by default) over the seeds that have
  the configuration, with a 95% Student-t interval over them (n - 1 degrees of freedom); one
  seed has no seed-to-seed spread, and its point shows ± 1.96 item standard errors instead
  (the row's ``<score>_stderr``), which the caption says;
- the configuration the pipeline chose on the selection split (the report split's row with
  ``extra.selected_on``, per seed) is circled, with how many seeds chose it.

A method with one configuration, or whose knobs are all non-numeric, has no figure (its
configurations are in the report's all-models table). :func:`sweep_points` holds the numbers,
:func:`sweep_figures` draws them as ``sweep_<method>.png``, :func:`sweep_section` writes the
report's *Merge sweeps* section (a table per method: the numbers behind each figure).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NOT_KNOBS = frozenset({"seed"})
"""Parameters never treated as knobs: a merge's ``seed`` follows its run's seed."""

LEVEL = 0.95
"""Coverage of the seed intervals drawn."""


@dataclass
class SweepPoint:
    """One configuration of a swept method: its knobs, its score over seeds and interval."""

    knobs: dict[str, Any]
    values: list[float]
    seeds: list[Any]
    mean: float
    low: float
    high: float
    interval: str  # "t over seeds" | "items (one seed)" | "none"
    chosen: int = 0  # seeds whose pipeline chose this configuration


@dataclass
class Sweep:
    """A swept method: its knobs, the numeric ones among them (axes), its points."""

    method: str
    knobs: list[str]
    axes: list[str]
    points: list[SweepPoint] = field(default_factory=list)
    score: str = "average"
    split: str = "validation"
    repeated: int = 0  # rows left out: a configuration's seed evaluated again (the latest kept)
    differs: str = ""  # a method's second sweep ("ties [2]"): what tells its rows apart


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))


def _key(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval of the mean of ``values`` (n >= 2)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def method_of(row: Mapping[str, Any]) -> str:
    return str(row.get("method") or row.get("name"))


def _params(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in (row.get("params") or {}).items() if k not in NOT_KNOBS}


def _condition(row: Mapping[str, Any]) -> dict[str, Any]:
    """What a sweep's rows must share besides the method (:func:`hhh_bench.tracking.entries.
    configuration` without the knobs, name and kind: the world, noise, merged dimensions):
    rows of another world or data are another sweep, never pooled as seeds (battery 13, F6)."""
    from hhh_bench.tracking.entries import configuration

    cond = json.loads(configuration(row))
    for k in ("params", "selected", "n_configs", "name", "kind", "method"):
        cond.pop(k, None)
    return cond


CONDITION_WORDS = {"world": "world (world_key)", "noise_rate": "preference noise (noise_rate)",
                   "train_dimensions": "merged dimensions", "mix_strategy": "mix_strategy",
                   "family": "family", "setup": "evaluation setup"}  # fmt: skip


def sweep_points(
    rows: Sequence[Mapping[str, Any]],
    *,
    split: str = "validation",
    score: str = "average",
    chosen_rows: Sequence[Mapping[str, Any]] = (),
) -> list[Sweep]:
    """The swept merge methods of ``rows`` on ``split`` (module doc), in the order their first
    row appears. ``chosen_rows``: rows that carry the pipeline's choice (``extra.selected_on
    == split``, on any split), to mark the chosen configuration of each seed."""
    from hhh_bench.tracking.store import setup_key

    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("kind") != "merge" or r.get("split") != split:
            continue
        if (r.get("extra") or {}).get("selected_on") or r.get(score) is None:
            continue
        cond = _key({**_condition(r), "setup": setup_key(r)})
        groups.setdefault((method_of(r), cond), []).append(r)
    chosen_seeds: dict[tuple[str, str, str], set[str]] = {}
    for r in chosen_rows:  # each seed counted once, whichever splits' rows record the choice
        if r.get("kind") == "merge" and (r.get("extra") or {}).get("selected_on") == split:
            k = (method_of(r), _key(_condition(r)), _key(_params(r)))
            chosen_seeds.setdefault(k, set()).add(_key(r.get("seed")))
    chosen = {k: len(v) for k, v in chosen_seeds.items()}
    sweeps = []
    conds_of: dict[str, list[str]] = {}
    for (method, cond), rs in groups.items():
        conds_of.setdefault(method, []).append(cond)
        i = conds_of[method].index(cond)
        label, differs = method, ""
        if i:  # another world, noise or setup of a method: a sweep of its own, said
            first = json.loads(conds_of[method][0])
            mine = json.loads(cond)
            fields = sorted(k for k in set(first) | set(mine) if first.get(k) != mine.get(k))
            label = f"{method} [{i + 1}]"
            differs = ", ".join(CONDITION_WORDS.get(f, f) for f in fields)
        latest: dict[tuple[str, str], Mapping[str, Any]] = {}
        for r in rs:  # one row per configuration and seed: a later evaluation replaces it
            latest[(_key(_params(r)), _key(r.get("seed")))] = r
        repeated = len(rs) - len(latest)
        rs = list(latest.values())
        per_seed: dict[str, list[dict[str, Any]]] = {}
        for r in rs:
            per_seed.setdefault(_key(r.get("seed")), []).append(_params(r))
        knobs = sorted(
            {
                k
                for ps in per_seed.values()
                for p in ps
                for k in p
                if len({_key(q.get(k)) for q in ps}) > 1
            }  # fmt: skip
        )
        if not knobs:
            continue
        configs: dict[str, list[Mapping[str, Any]]] = {}
        for r in rs:
            configs.setdefault(_key({k: _params(r).get(k) for k in knobs}), []).append(r)
        axes = [k for k in knobs
                if all(_is_number(_params(r).get(k)) for r in rs)
                and len({_key(_params(r).get(k)) for r in rs}) > 1]  # fmt: skip
        if not axes:
            continue
        sweep = Sweep(method=label, knobs=knobs, axes=axes, score=score, split=split,
                      repeated=repeated, differs=differs)  # fmt: skip
        plain = _key({k: v for k, v in json.loads(cond).items() if k != "setup"})
        for members in configs.values():
            values = [float(r[score]) for r in members]
            knob_values = {k: _params(members[0]).get(k) for k in knobs}
            if len(values) >= 2:
                mean, low, high = t_interval(values)
                how = "t over seeds"
            else:
                se = members[0].get(f"{score}_stderr")
                mean = values[0]
                if _is_number(se):
                    low, high, how = mean - 1.96 * float(se), mean + 1.96 * float(se), "items"
                else:
                    low, high, how = mean, mean, "none"
            full = _key(_params(members[0]))
            sweep.points.append(SweepPoint(
                knobs=knob_values, values=values, seeds=[r.get("seed") for r in members],
                mean=mean, low=low, high=high, interval=how,
                chosen=chosen.get((method, plain, full), 0),
            ))  # fmt: skip
        sweeps.append(sweep)
    return sweeps


def _text(v: Any) -> str:
    return json.dumps(v) if isinstance(v, list | dict) or v is None else str(v)


def series_label(point: SweepPoint, axis: str) -> str:
    """The knobs of ``point`` other than ``axis`` (``weights=[1, 1, 2]``), or ``""``."""
    return ", ".join(f"{k}={_text(v)}" for k, v in point.knobs.items() if k != axis)


def file_name(method: str) -> str:
    return "sweep_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", method) + ".png"


def sweep_figure(sweep: Sweep) -> Any:
    """One panel per axis knob: each series (the other knobs' values) as a line through its
    points' means, the intervals as error bars, the chosen configuration circled."""
    from hhh_bench.tracking.plots import SERIES_COLORS, _figure

    n = len(sweep.axes)
    fig = _figure((3.4 * n + 0.6, 3.2))
    for i, axis in enumerate(sweep.axes):
        ax = fig.add_subplot(1, n, i + 1)
        series: dict[str, list[SweepPoint]] = {}
        for p in sweep.points:
            series.setdefault(series_label(p, axis), []).append(p)
        for j, (label, pts) in enumerate(series.items()):
            pts = sorted(pts, key=lambda p: float(p.knobs[axis]))
            xs = [float(p.knobs[axis]) for p in pts]
            ys = [p.mean for p in pts]
            err = [[p.mean - p.low for p in pts], [p.high - p.mean for p in pts]]
            color = SERIES_COLORS[j % len(SERIES_COLORS)]
            ax.errorbar(xs, ys, yerr=err, color=color, marker="o", ms=4, lw=1.2, capsize=3,
                        label=label or sweep.method)  # fmt: skip
            for p, x in zip(pts, xs, strict=True):
                if p.chosen:
                    ax.plot([x], [p.mean], marker="o", ms=11, mfc="none", mec="black", lw=0)
                    ax.annotate(f"chosen ({p.chosen})", (x, p.mean), textcoords="offset points",
                                xytext=(6, 6), fontsize=6)  # fmt: skip
        ax.set_xlabel(axis, fontsize=8)
        ax.set_ylabel(f"{sweep.score} ({sweep.split})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(series) > 1 or next(iter(series)):
            ax.legend(fontsize=6, frameon=False)
    hows = sorted({p.interval for p in sweep.points})
    fig.suptitle(f"{sweep.method}: {sweep.score} vs {', '.join(sweep.axes)} "
                 f"(bars: {_interval_words(hows)})", fontsize=8)  # fmt: skip
    return fig


def _interval_words(hows: Sequence[str]) -> str:
    words = {"t over seeds": "95% t interval over seeds",
             "items": "±1.96 item standard errors (one seed)", "none": "no interval"}  # fmt: skip
    return "; ".join(words[h] for h in hows)


def sweep_figures(sweeps: Sequence[Sweep], out_dir: str | Path) -> dict[str, Path]:
    """Save :func:`sweep_figure` of each sweep as ``<out_dir>/sweep_<method>.png``."""
    out = {}
    for s in sweeps:
        path = Path(out_dir) / file_name(s.method)
        sweep_figure(s).savefig(path, bbox_inches="tight")
        out[s.method] = path
    return out


def sweep_section(sweeps: Sequence[Sweep], figures: Mapping[str, Path]) -> list[str]:
    """The report's *Merge sweeps* section: per swept method its figure and a table of its
    points (knobs, mean, interval, seeds, chosen)."""
    if not sweeps:
        return []
    first = sweeps[0]
    md = ["", "## Merge sweeps", "",
          f"Each swept merge method's {first.score} on the {first.split} split against its "
          f"knobs (bars: 95% Student-t interval over the seeds that have the configuration; "
          f"one seed: ±1.96 item standard errors). Circled: the configuration the pipeline "
          f"chose on {first.split}, with how many seeds chose it."]  # fmt: skip
    for s in sweeps:
        md += ["", f"### {s.method}", ""]
        if s.differs:
            md += [f"Rows of another {s.differs} than the first {s.method.split(' [')[0]} "
                   "sweep: a sweep of their own, never pooled with it.", ""]  # fmt: skip
        if s.repeated:
            md += [f"{s.repeated} row(s) of a configuration's seed evaluated again left out: "
                   "the latest evaluation of each seed is the one counted.", ""]  # fmt: skip
        if s.method in figures:
            md += [f"![{s.method} sweep]({Path(figures[s.method]).name})", ""]
        md += ["| " + " | ".join([*s.knobs, s.score, "95% interval", "seeds", "chosen"]) + " |",
               "|" + "---|" * len(s.knobs) + "---:|---|---:|---:|"]  # fmt: skip
        for p in sorted(s.points, key=lambda p: [_key(p.knobs[k]) for k in s.knobs]):
            iv = "-" if p.interval == "none" else f"[{p.low:.3f}, {p.high:.3f}]"
            if p.interval == "items":
                iv += " (items)"
            md.append("| " + " | ".join([*(_text(p.knobs[k]) for k in s.knobs), f"{p.mean:.3f}",
                                         iv, str(len(p.values)), str(p.chosen or "")]) + " |")  # fmt: skip
    return md


def sweep_table(sweeps: Sequence[Sweep]) -> tuple[list[str], list[list[Any]]]:
    """The sweeps as one table (for W&B): method, knobs (JSON), score, mean, low, high, seeds,
    interval, chosen."""
    columns = ["method", "knobs", "score", "mean", "low", "high", "seeds", "interval", "chosen"]
    data = [[s.method, json.dumps(p.knobs, sort_keys=True, default=str), s.score, p.mean, p.low,
             p.high, len(p.values), p.interval, p.chosen]
            for s in sweeps for p in s.points]  # fmt: skip
    return columns, data
