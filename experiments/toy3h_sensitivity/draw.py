"""The toy world's verdict as a function of its knobs (issue 29, part 5): read each world's root
of a sweep (``sweep.py``), compute merge − mix with its seed-level interval and verdict by the
report's own rule, draw one panel per knob and write a Markdown table.

    python experiments/toy3h_sensitivity/draw.py runs/toy3h_sensitivity \\
        --figure docs/figures/toy_sensitivity.png --table runs/toy3h_sensitivity/sensitivity.md

A world is a folder of the sweep holding a ``results.jsonl``: ``default`` (every knob at
:data:`DEFAULTS`, the point the three panels share) or ``<knob>-<value>`` (that knob moved, the
others at their defaults). Each is answered as ``stage=report`` answers it
(:func:`world_answer`: the same rows, the same representatives chosen on validation, the
same t interval over paired seeds and the same verdict, :func:`hhh_bench.tracking.answer.compare`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hhh_bench.tracking.answer import answer_line, compare
from hhh_bench.tracking.entries import by_setup, superseded, table_entries
from hhh_bench.tracking.markdown import md_text
from hhh_bench.tracking.store import scan_results

KNOBS = ("conflict_rate", "story_share", "two_sided_share")
"""The swept knobs of ``data.world``, one panel each, in this order."""

DEFAULTS = {"conflict_rate": 0.2, "story_share": 0.25, "two_sided_share": 0.25}
"""The world's defaults (conf/data/toy3h.yaml; a test checks they agree): the ``default``
world's place on every panel."""

MEANING = {
    "conflict_rate": "share of helpful pairs on contested prompts",
    "story_share": "share of helpful pairs asking a story of an unknown name",
    "two_sided_share": "share of honest / harmless pairs on the other side of the boundary",
}
"""What each knob is (conf/data/toy3h.yaml), for the panels' axes."""

DEFAULT_WORLD = "default"


def world_name(knob: str | None, value: float | None = None) -> str:
    """A world's folder: ``default``, or ``<knob>-<value>`` (no ``=``: Hydra's override grammar
    refuses it unquoted in ``root=``)."""
    return DEFAULT_WORLD if knob is None else f"{knob}-{value:g}"


def parse_world(name: str) -> tuple[str, float] | None:
    """``(knob, value)`` of a ``<knob>-<value>`` folder, None for ``default`` or any other."""
    knob, _, value = name.rpartition("-")
    if knob not in KNOBS:
        return None
    try:
        return knob, float(value)
    except ValueError:
        return None


def world_answer(
    root: str | Path, *, report_split: str = "test", select_split: str = "validation"
) -> dict[str, Any] | str:
    """The report's mix-or-merge answer for one root: its store read as ``stage=report`` reads
    it (the latest row per key, runs evaluated again superseded, the newest evaluation setup),
    the main table's entries (:func:`hhh_bench.tracking.entries.table_entries`) and the
    selection-split rows the representatives are chosen on; then
    :func:`hhh_bench.tracking.answer.compare`. A sentence when there is no answer."""
    store = Path(root) / "results.jsonl"
    rows, _ = superseded(scan_results(store).latest())
    report_rows = [dict(r) for r in rows if r.get("split", report_split) == report_split]
    if not report_rows:
        return f"no {report_split} rows in {store}"
    entries = table_entries(by_setup(report_rows)[0])
    select_rows = [r for r in rows if r.get("split") == select_split]
    return compare(entries, select_rows=select_rows, select_split=select_split)


@dataclass(frozen=True)
class Point:
    """One world's answer placed on a knob's panel."""

    knob: str
    value: float
    world: str
    answer: Mapping[str, Any] | str

    @property
    def is_default(self) -> bool:
        return self.world == DEFAULT_WORLD


def collect(sweep_root: str | Path) -> list[Point]:
    """Every world of the sweep with a store, answered; the default world once per knob. In
    panel order, by value within a panel."""
    points = []
    for folder in sorted(Path(sweep_root).iterdir()):
        if not (folder / "results.jsonl").is_file():
            continue
        if folder.name == DEFAULT_WORLD:
            answer = world_answer(folder)
            points += [Point(k, DEFAULTS[k], folder.name, answer) for k in KNOBS]
        elif (kv := parse_world(folder.name)) is not None:
            points.append(Point(kv[0], kv[1], folder.name, world_answer(folder)))
    return sorted(points, key=lambda p: (KNOBS.index(p.knob), p.value))


def _interval(a: Mapping[str, Any]) -> str:
    if a.get("ci_low") is None:
        return "-"
    return f"[{a['ci_low']:+.3f}, {a['ci_high']:+.3f}]"


def _largest_task(a: Mapping[str, Any]) -> str:
    """The task with the largest share of the margin in its direction (the answer line names
    it only above half)."""
    dec, diff = a.get("decomposition"), a["diff"]
    if not isinstance(dec, Mapping) or not diff:
        return "-"
    t = max(dec["tasks"], key=lambda t: t["contribution"] / diff)
    name = str(t["task"]).removeprefix("toy3h_").removesuffix("_test")
    return f"`{md_text(name)}` {t['contribution'] / diff:.0%}"


def table(points: Sequence[Point]) -> str:
    """The Markdown table: one row per world (the default first), then each world's answer
    line."""
    head = [
        "| world | seeds | merge − mix | 95% t interval | p | verdict | ±0.02 needs | best merge "
        "| best mixture | largest task share | per seed |",
        "|---|---:|---:|---|---:|---|---:|---|---|---|---|",
    ]
    seen: dict[str, Point] = {}
    for p in points:
        seen.setdefault(p.world, p)
    order = sorted(seen.values(), key=lambda p: (not p.is_default, KNOBS.index(p.knob), p.value))
    body, lines = [], []
    for p in order:
        label = "default" if p.is_default else f"`{p.knob}={p.value:g}`"
        a = p.answer
        lines.append(f"- {label}: {md_text(answer_line(a))}")
        if isinstance(a, str):
            body.append(f"| {label} | | | | | no answer: {md_text(a)} | | | | | |")
            continue
        needs = a["seeds_needed"] if a["verdict"] == "inconclusive" else None
        per_seed = ", ".join(f"{d:+.3f}" for d in a["per_seed"])
        pv = "-" if a.get("p_value") is None else f"{a['p_value']:.2g}"
        body.append(
            f"| {label} | {a['n_seeds']} | {a['diff']:+.3f} | {_interval(a)} | "
            f"{pv} | {a['verdict']} | {needs if needs is not None else '-'} | "
            f"{md_text(a['merge'])} {a['merge_mean']:.3f} | {md_text(a['mixture'])} "
            f"{a['mixture_mean']:.3f} | {_largest_task(a)} | {per_seed} |"
        )
    return "\n".join([*head, *body, "", "Answer lines:", "", *lines, ""])


def figure(points: Sequence[Point], path: str | Path) -> Path:
    """One panel per knob: merge − mix (test average) with its 95% t interval over seeds
    against the knob's value, the verdict under each point, the default world hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(KNOBS), figsize=(4.2 * len(KNOBS), 3.8), sharey=True)
    colors = {"merging wins": "tab:blue", "mixing wins": "tab:red", "inconclusive": "tab:gray"}
    shown = [p.answer for p in points if not isinstance(p.answer, str)]
    ends = [0.0, *(a["diff"] for a in shown),
            *(a[k] for a in shown for k in ("ci_low", "ci_high") if a.get(k) is not None)]  # fmt: skip
    span = (max(ends) - min(ends)) or 0.1
    for ax, knob in zip(axes, KNOBS, strict=True):
        ax.axhline(0.0, color="black", lw=0.8, ls="--")
        mine = [p for p in points if p.knob == knob and not isinstance(p.answer, str)]
        for p in mine:
            a = p.answer
            assert not isinstance(a, str)
            low, high = a.get("ci_low"), a.get("ci_high")
            err = [[a["diff"] - low], [high - a["diff"]]] if low is not None else None
            c = colors.get(a["verdict"], "black")
            ax.errorbar([p.value], [a["diff"]], yerr=err, fmt="o", color=c, capsize=4,
                        mfc="white" if p.is_default else c, ms=7)  # fmt: skip
            top = high if high is not None else a["diff"]
            ax.annotate(f"{a['verdict']}\n{a['diff']:+.3f}", (p.value, top),
                        textcoords="offset points", xytext=(0, 5), ha="center", va="bottom",
                        fontsize=8, color=c)  # fmt: skip
        if mine:
            xs = [p.value for p in mine]
            ys = [p.answer["diff"] for p in mine]  # type: ignore[index]
            ax.plot(xs, ys, color="gray", lw=0.6, zorder=0)
            ax.set_xticks(xs)
            pad = 0.2 * (max(xs) - min(xs) or 1.0)
            ax.set_xlim(min(xs) - pad, max(xs) + pad)
        ax.set_ylim(min(ends) - 0.08 * span, max(ends) + 0.3 * span)  # room for the words
        ax.set_title(f"{knob} (default {DEFAULTS[knob]:g})", fontsize=10)
        ax.set_xlabel(MEANING[knob], fontsize=8)
    axes[0].set_ylabel("merge − mix (average, test)\n95% t interval over seeds")
    seeds = {a["n_seeds"] for p in points if not isinstance(a := p.answer, str)}
    fig.suptitle(
        "Toy world: mix or merge? one knob at a time, the others at their defaults "
        f"({'/'.join(map(str, sorted(seeds)))} paired seeds; hollow: the default world)",
        fontsize=10,
    )
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_root", type=Path, help="the sweep's folder (one root per world)")
    ap.add_argument("--figure", type=Path, default=None,
                    help="the figure (default: <sweep_root>/sensitivity.png)")  # fmt: skip
    ap.add_argument("--table", type=Path, default=None,
                    help="the Markdown table (default: <sweep_root>/sensitivity.md)")  # fmt: skip
    args = ap.parse_args(argv)
    points = collect(args.sweep_root)
    if not points:
        print(f"no world with a results.jsonl under {args.sweep_root}", file=sys.stderr)
        return 1
    md = table(points)
    table_path = args.table or args.sweep_root / "sensitivity.md"
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table_path.write_text(md)
    fig = figure(points, args.figure or args.sweep_root / "sensitivity.png")
    print(md)
    print(f"table: {table_path}\nfigure: {fig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
