"""Throughput of a merge sweep with 1, 2 and 4 local workers sharing one run root (docs/scale.md).

    .venv/bin/python benchmarks/bench_workers.py                 # 8 jobs, workers 1 2 4
    .venv/bin/python benchmarks/bench_workers.py --jobs 12 --workers 1 2

What runs: a small toy world's data, θ0 and three specialists are trained once into a prepared
root (``.cache/bench_workers/prepared``, reused). For each worker count a copy of that root gets
``--jobs`` jobs, each ``hhh-bench stage=merge_eval merge=task_arithmetic merge.params.scaling=λ``
(a merge, then its evaluation on the validation split: one store row), run by that many worker
processes at once, each taking the next job when it finishes one (what a cluster's array of
workers on a shared filesystem does). Timed: the wall clock of the whole sweep. Checked: every
job exited 0 and the store holds one row per job, no more (concurrent appends are locked).

One thread per job. On a machine with C cores, more than C workers only queue for them: the
table shows where throughput stops growing, not a cluster's speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORLD = [
    "data.world.n_known.train=10", "data.world.n_known.validation=8", "data.world.n_known.test=8",
    "data.world.n_unknown.sft=4", "data.world.n_unknown.train=8",
    "data.world.n_unknown.validation=8", "data.world.n_unknown.test=8",
    "data.world.n_benign_objects=6", "data.world.n_harmful_objects=6",
    "data.world.pairs_per_dimension=32", "data.world.eval_items_per_kind=16",
    "model.base_sft.enabled=false", "logger=none", "threads=1", "seeds=[0]", "train.max_steps=4",
]  # fmt: skip


def hhh(root: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "hhh-bench"
    return subprocess.run(
        [str(exe), f"root={root}", *WORLD, *args], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False,
    )  # fmt: skip


def prepared(cache: Path) -> Path:
    """The root with data, θ0 and three specialists (built once)."""
    root = cache / "prepared"
    if not (root / ".complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        for dim in ("helpful", "honest", "harmless"):
            done = hhh(root, "stage=train", f"data.dimensions=[{dim}]")
            if done.returncode:
                sys.exit(f"preparing the root failed:\n{done.stderr[-2000:]}")
        (root / ".complete").touch()
    return root


def sweep(root: Path, jobs: int, workers: int) -> tuple[float, int, list[int]]:
    """Run ``jobs`` merge_eval jobs with ``workers`` at once; (wall s, store rows, exit codes)."""
    scalings = [round(0.2 + 0.1 * i, 2) for i in range(jobs)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = list(pool.map(lambda s: hhh(root, "stage=merge_eval", "merge=task_arithmetic",
                                           f"merge.params.scaling={s}"), scalings))  # fmt: skip
    wall = time.perf_counter() - t0
    store = root / "results.jsonl"
    rows = [json.loads(x) for x in store.read_text().splitlines()] if store.is_file() else []
    for d in done:
        if d.returncode:
            print(d.stderr[-1500:], file=sys.stderr)
    return wall, len(rows), [d.returncode for d in done]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--cache", type=Path, default=REPO / ".cache" / "bench_workers")
    args, _ = ap.parse_known_args()  # `make bench` passes its own arguments to every script
    base = prepared(args.cache)
    print(f"bench_workers: {args.jobs} merge_eval jobs on a toy world, {os.cpu_count()} CPU cores, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")  # fmt: skip
    print("| workers | wall s | jobs / min | speed-up | store rows | failed |")
    print("|---:|---:|---:|---:|---:|---:|")
    first = None
    ok = True
    for k in args.workers:
        root = args.cache / f"sweep-{k}"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(base, root, ignore=shutil.ignore_patterns("results.jsonl", "hydra"))
        wall, rows, codes = sweep(root, args.jobs, k)
        first = first or wall
        failed = sum(1 for c in codes if c)
        ok &= failed == 0 and rows == args.jobs
        print(f"| {k} | {wall:.1f} | {60 * args.jobs / wall:.1f} | {first / wall:.2f}× | {rows} "
              f"| {failed} |", flush=True)  # fmt: skip
    if not ok:
        print("MISSED: every job exits 0 and lands one store row")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
