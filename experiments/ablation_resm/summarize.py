"""Summarise the RESM ablation from a results store: scores per RESM variant (mean ± std over
seeds) and how far each variant's merged weights are from TSV-M's.

    python experiments/ablation_resm/summarize.py runs/ablation_resm/results.jsonl

For every seed, the relative difference of a variant's weights from TSV-M's is
``‖θ_variant − θ_tsv‖_F / ‖θ_tsv − θ_0‖_F`` over all parameters (θ_0: that seed's base), i.e.
measured against the size of TSV-M's merged task vector. ``reweight=none, rank=uniform`` is TSV-M
itself, so its difference is 0 up to float noise: a check of the setup.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open

from hhh_bench.tracking.store import load_results

DIMS = ("helpful", "honest", "harmless", "average")


def _weights(folder: str | Path) -> dict[str, Path]:
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}")
    out = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():  # noqa: SIM118 - safe_open handles are not mappings
                out[k] = f
    return out


def relative_difference(a: str | Path, b: str | Path, base: str | Path) -> float:
    """‖θ_a − θ_b‖_F / ‖θ_b − θ_0‖_F over every parameter, streamed tensor by tensor."""
    wa, wb, w0 = _weights(a), _weights(b), _weights(base)
    num = den = 0.0
    for name, fb in wb.items():
        with safe_open(str(fb), framework="pt") as h:
            tb = h.get_tensor(name).double()
        with safe_open(str(wa[name]), framework="pt") as h:
            ta = h.get_tensor(name).double()
        with safe_open(str(w0[name]), framework="pt") as h:
            t0 = h.get_tensor(name).double()
        num += float(torch.sum((ta - tb) ** 2))
        den += float(torch.sum((tb - t0) ** 2))
    return math.sqrt(num) / math.sqrt(den) if den > 0 else float("nan")


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path, help="results.jsonl of the ablation run")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    df = load_results(args.results)
    df = df[df["split"] == args.split]
    base_of = {
        int(r["seed"]): r["artifacts"]["model"] for _, r in df[df["kind"] == "base"].iterrows()
    }
    if len(set(base_of.values())) == 1:  # one θ0 for every seed (pipeline.base_seed)
        only = next(iter(base_of.values()))
        base_of = {int(s): only for s in df["seed"].dropna().unique()}
    merges = df[(df["kind"] == "merge") & (df["method"].isin(["tsv", "resm"]))]
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    paths: dict[str, dict[int, str]] = defaultdict(dict)
    for _, r in merges.iterrows():
        label = str(r["name"])
        if label == "resm":  # the variant chosen on validation also has its own row
            continue
        for d in DIMS:
            scores[label][d].append(float(r[d]))
        paths[label][int(r["seed"])] = r["artifacts"]["model"]
    if "tsv" not in paths:
        raise SystemExit(f"no TSV-M rows on split {args.split!r} in {args.results}")
    lines = [
        f"| model | {' | '.join(DIMS)} | ‖θ − θ_TSV‖ / ‖θ_TSV − θ0‖ | seeds |",
        "| --- | " + " | ".join("---:" for _ in DIMS) + " | ---: | ---: |",
    ]
    for label in sorted(scores, key=lambda s: (s != "tsv", s)):
        diffs = [
            relative_difference(p, paths["tsv"][seed], base_of[seed])
            for seed, p in sorted(paths[label].items())
            if seed in paths["tsv"] and seed in base_of
        ]
        cells = " | ".join(_fmt(scores[label][d]) for d in DIMS)
        lines.append(f"| {label} | {cells} | {_fmt(diffs)} | {len(scores[label]['average'])} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
