"""RESM against a planted corruption whose truth is known: how close does each method's merge of
corrupted task vectors come to the merge of the clean ones?

    python experiments/ablation_resm/planted.py runs/ablation_resm/results.jsonl
    python experiments/ablation_resm/planted.py runs/ablation_resm/results.jsonl --fraction 0.002

For every specialist seed in the store (its base and its three specialists) and every
corruption seed, each specialist's task vector τ_t gets, in every 2-D weight matrix, a sparse
heavy-tailed corruption: a share ``--fraction`` of its entries, drawn at random, receives
``scale · σ(τ_t) · x`` with x Student-t distributed (``--df`` degrees of freedom) and σ(τ_t) the
matrix's own standard deviation. The clean and the corrupted task vectors are then merged by each
method in memory (``hhh_bench.merging.merge_state_dicts``, the engine's arithmetic), and the
table reports, mean ± std over (specialist seed × corruption seed):

- ``err vs own clean``: ‖m(τ̃) − m(τ)‖_F / ‖m(τ) − θ0‖_F, how much the corruption moves the
  method's own merge;
- ``err vs TSV-M clean``: ‖m(τ̃) − TSV(τ)‖_F / ‖TSV(τ) − θ0‖_F, how close it comes to the clean
  TSV-M merge, the merge RESM's outlier handling is meant to recover.

Weight space only: the 3H scores of these merges are not evaluated by this script.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch
from safetensors.torch import load_file

from hhh_bench.merging import merge_state_dicts
from hhh_bench.tracking.store import load_results

VARIANTS: dict[str, tuple[str, dict]] = {
    "task_arithmetic": ("task_arithmetic", {}),
    "ties (d=0.2)": ("ties", {"density": 0.2}),
    "TSV-M": ("tsv", {}),
    "RESM reweight only": ("resm", {"reweight": "huber_mad", "rank": "uniform"}),
    "RESM rank rule only": ("resm", {"reweight": "none", "rank": "outlier_density"}),
    "RESM (both)": ("resm", {"reweight": "huber_mad", "rank": "outlier_density"}),
}


def _state(folder: str | Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    if not out:
        raise FileNotFoundError(f"no *.safetensors in {folder}")
    return out


def corrupt(
    base: dict[str, torch.Tensor],
    ft: dict[str, torch.Tensor],
    *,
    fraction: float,
    scale: float,
    df: float,
    seed: int,
) -> dict[str, torch.Tensor]:
    """``ft`` with a sparse Student-t corruption added to its task vector in every 2-D matrix."""
    g = torch.Generator().manual_seed(seed)
    t_dist = torch.distributions.StudentT(torch.tensor(float(df)))
    out = {}
    for k, w in ft.items():
        if w.dim() != 2 or not w.is_floating_point():
            out[k] = w
            continue
        tau = w.double() - base[k].double()
        n = tau.numel()
        m = max(1, int(fraction * n))
        idx = torch.randperm(n, generator=g)[:m]
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        noise = t_dist.sample((m,)).double() * scale * float(tau.std())
        flat = tau.reshape(-1).clone()
        flat[idx] += noise
        out[k] = (base[k].double() + flat.view_as(tau)).to(w.dtype)
    return out


def rel(a: dict, b: dict, base: dict) -> float:
    num = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in b)
    den = sum(float(((b[k].double() - base[k].double()) ** 2).sum()) for k in b)
    return math.sqrt(num / den) if den > 0 else float("nan")


def _fmt(v: list[float]) -> str:
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path, help="results.jsonl of a run with specialists")
    ap.add_argument("--fraction", type=float, default=0.001, help="share of entries corrupted")
    ap.add_argument("--scale", type=float, default=20.0, help="corruption size in σ(τ)")
    ap.add_argument("--df", type=float, default=2.0, help="Student-t degrees of freedom")
    ap.add_argument("--corruption-seeds", type=int, default=3)
    args = ap.parse_args()
    df = load_results(args.results)
    df = df[df["split"] == "test"]
    base_path = {
        int(r["seed"]): r["artifacts"]["model"] for _, r in df[df["kind"] == "base"].iterrows()
    }
    specs: dict[int, dict[str, str]] = {}
    for _, r in df[df["kind"] == "specialist"].iterrows():
        specs.setdefault(int(r["seed"]), {})[r["train_dimensions"][0]] = r["artifacts"]["model"]
    if len(set(base_path.values())) == 1:
        only = next(iter(base_path.values()))
        base_path = {s: only for s in specs}
    own: dict[str, list[float]] = {v: [] for v in VARIANTS}
    vs_tsv: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for seed, by_dim in sorted(specs.items()):
        if len(by_dim) != 3 or seed not in base_path:
            continue
        base = _state(base_path[seed])
        fts = [_state(by_dim[d]) for d in ("helpful", "honest", "harmless")]
        clean = {v: merge_state_dicts(m, base, fts, **p) for v, (m, p) in VARIANTS.items()}
        for c in range(args.corruption_seeds):
            bad = [
                corrupt(base, ft, fraction=args.fraction, scale=args.scale, df=args.df,
                        seed=1000 * seed + 10 * c + t)
                for t, ft in enumerate(fts)
            ]  # fmt: skip
            for v, (m, p) in VARIANTS.items():
                merged = merge_state_dicts(m, base, bad, **p)
                own[v].append(rel(merged, clean[v], base))
                vs_tsv[v].append(rel(merged, clean["TSV-M"], base))
    if not own["TSV-M"]:
        raise SystemExit(f"no seed with a base and three specialists in {args.results}")
    print(f"corruption: {args.fraction:g} of each matrix's entries, {args.scale:g}·σ(τ)·t(df={args.df:g}); "
          f"{len(own['TSV-M'])} (specialist seed × corruption seed) pairs")  # fmt: skip
    print("| method | err vs own clean merge | err vs clean TSV-M merge |")
    print("| --- | ---: | ---: |")
    for v in VARIANTS:
        print(f"| {v} | {_fmt(own[v])} | {_fmt(vs_tsv[v])} |")


if __name__ == "__main__":
    main()
