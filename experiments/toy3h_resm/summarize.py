"""Summarise the RESM setting (``hhh-bench experiment=toy3h_resm``) from its results store: what
RESM's mechanisms did to each seed's merge, each specialist's own-dimension score, and RESM
against TSV-M with a t interval over seeds.

    python experiments/toy3h_resm/summarize.py runs/toy3h_resm/results.jsonl

Per seed (test split): the chosen configuration of each merge method (its grid, then the
emphases, on validation: the rows of the report's main table) and, where the store has them
(``pipeline.report_every_grid_point=true``), every grid point with equal weights, so RESM and
TSV-M can also be compared at the same λ. The mechanisms are read from the chosen RESM merge's
``diagnostics.json`` (written next to the merged model): per decomposed layer, how far the
reweighting moves the merged task vector (``reweight_merge_change``, TSV-M's merge at the
uniform k with and without it), and the ranks RESM keeps against TSV-M's uniform k (the k, and
the directions kept once each task's numerical rank caps it).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from hhh_bench.core.seedstats import t_ends
from hhh_bench.tracking.store import read_results

DIMS = ("helpful", "honest", "harmless", "average")
_GRID = re.compile(r"[(, ]scaling=([0-9.]+)\)$")


def _interval(diffs: list[float]) -> str:
    if len(diffs) < 2:
        return f"{diffs[0]:+.3f} (one seed: no interval)" if diffs else "-"
    t = t_ends(diffs)
    return (
        f"{float(t['mean']):+.3f}, 95% t interval [{float(t['low']):+.3f}, "
        f"{float(t['high']):+.3f}] over {len(diffs)} seeds, p = {float(t['p_value']):.2g}"
    )


def mechanism(model_dir: str | Path) -> dict[str, Any]:
    """What RESM's two mechanisms did, from a merge's ``diagnostics.json``."""
    rep = json.loads((Path(model_dir) / "diagnostics.json").read_text())
    r = rep["resm"]
    moved = sorted(r["reweight_merge_change"].values())
    return {
        "layers": r["decomposed_layers"],
        "moved": r["layers_reweight_moved"],
        "moved_min": moved[0],
        "moved_median": statistics.median(moved),
        "moved_max": moved[-1],
        "k_changed": r["layers_with_changed_rank"],
        "kept_changed": r["layers_with_changed_kept"],
        "ks": sorted(set(r["ranks"].values())),
        "uniform_ks": sorted(set(r["uniform_ranks"].values())),
        "rank_ratio": statistics.mean(r["ranks"][n] / r["uniform_ranks"][n] for n in r["ranks"]),
        "kept_ratio": sum(map(sum, r["kept"].values())) / sum(map(sum, r["uniform_kept"].values())),
    }


def collect(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """From a store's rows: ``chosen`` {method: {seed: row}} (the configurations chosen on
    validation, test split), ``grid`` {(method, λ): {seed: row}} (grid points with equal weights,
    test split) and ``own`` {dimension: {seed: the specialist's score on it}}."""
    chosen: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    grid: dict[tuple[str, float], dict[int, dict[str, Any]]] = defaultdict(dict)
    own: dict[str, dict[int, float]] = defaultdict(dict)
    for r in rows:
        if r["split"] != "test":
            continue
        seed = int(r["seed"])
        if r["kind"] == "specialist":
            dim = r["name"].split()[0]
            own[dim][seed] = float(r[dim])
        elif r["kind"] == "merge":
            if (r.get("extra") or {}).get("selected_on"):
                chosen[r["method"]][seed] = r
            m = _GRID.search(r["name"])
            if m and not (r.get("params") or {}).get("weights"):
                grid[(r["method"], float(m.group(1)))][seed] = r
    return {"chosen": chosen, "grid": grid, "own": own}


def paired(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]], dim: str) -> list[float]:
    """a − b on ``dim`` for each seed both have, in seed order."""
    return [float(a[s][dim]) - float(b[s][dim]) for s in sorted(set(a) & set(b))]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="results.jsonl of an experiment=toy3h_resm root")
    args = ap.parse_args(argv)
    got = collect(read_results(args.results))
    chosen, grid, own = got["chosen"], got["grid"], got["own"]

    print("## Specialists, own dimension (test)\n")
    for dim, by_seed in own.items():
        vals = ", ".join(f"seed {s}: {v:.3f}" for s, v in sorted(by_seed.items()))
        print(f"- {dim}: {vals}")

    print("\n## Merges, chosen on validation (test; mean ± sd over seeds)\n")
    print("| method | " + " | ".join(DIMS) + " | seeds |")
    print("|---|" + "---:|" * (len(DIMS) + 1))
    for method, by_seed in sorted(chosen.items()):
        cells = []
        for d in DIMS:
            v = [float(r[d]) for r in by_seed.values()]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.mean(v):.3f} ± {sd:.3f}")
        print(f"| {method} | " + " | ".join(cells) + f" | {len(by_seed)} |")

    seeds = sorted(set(chosen.get("resm", {})) & set(chosen.get("tsv", {})))
    print("\n## RESM − TSV-M (test average; per seed, then a t interval over seeds)\n")
    diffs = paired(chosen["resm"], chosen["tsv"], "average")
    per = ", ".join(f"seed {s}: {d:+.3f}" for s, d in zip(seeds, diffs, strict=True))
    print(f"- chosen on validation: {per}; mean {_interval(diffs)}")
    for d in ("helpful", "honest", "harmless"):
        dd = paired(chosen["resm"], chosen["tsv"], d)
        print(f"  - {d}: {_interval(dd)}")
    for (method, lam), by_seed in sorted(grid.items()):
        if method != "resm" or (("tsv", lam) not in grid):
            continue
        dd = paired(by_seed, grid[("tsv", lam)], "average")
        hh = paired(by_seed, grid[("tsv", lam)], "harmless")
        print(f"- at λ = {lam:g} (equal weights): {_interval(dd)}; harmless {_interval(hh)}")

    print("\n## RESM's mechanisms in its chosen merge (per seed)\n")
    print(
        "| seed | layers moved ≥ 1% | move min / median / max | layers k ≠ uniform | "
        "RESM k | uniform k | layers kept ≠ uniform | kept ratio |"
    )
    print("|---:|---:|---|---:|---|---|---:|---:|")
    for s in seeds:
        m = mechanism(chosen["resm"][s]["artifacts"]["model"])
        print(
            f"| {s} | {m['moved']} / {m['layers']} | {m['moved_min']:.3f} / "
            f"{m['moved_median']:.3f} / {m['moved_max']:.3f} | {m['k_changed']} / {m['layers']} | "
            f"{m['ks']} | {m['uniform_ks']} | {m['kept_changed']} / {m['layers']} | "
            f"{m['kept_ratio']:.3f} |"
        )


if __name__ == "__main__":
    main()
