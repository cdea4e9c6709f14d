"""How fast can TSV-M be on this CPU? Per weight matrix, TSV-M needs T + 2 dense decompositions
of size r = min(m, n): the top k of each task vector, then the polar factors of the m × Tk and
n × Tk stacks. This times, on one matrix of the 270M bench shape (T = 3, k = r // 3):

- FusionBench's work: five float32 SVDs (``torch.linalg.svd``, ``full_matrices=False``: three of
  the task vectors, two of the stacks), what ``compute_and_sum_svd_mem_reduction`` computes;
- our kernel (``hhh_bench.merging.methods.tsv.tsv_factors`` and the compose);
- what five decompositions cost at the least, whatever else a kernel does: five float64 and
  five float32 symmetric eigendecompositions (``eigh``) of an r × r matrix, and five float32
  tridiagonal reductions alone (``eigvalsh``: the eigenvalues, no vectors), the step every
  dense symmetric eigensolver and SVD starts with.

    python benchmarks/bench_tsv_floor.py            # 1024 x 1024 (attention) and 2816 x 1024 (MLP)
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch

from hhh_bench.merging.methods.tsv import tsv_compose, tsv_factors

T = 3


def best(f: Callable[[], object], repeats: int) -> float:
    out = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        out = min(out, time.perf_counter() - t)
    return out


def fusionbench_like(taus: list[torch.Tensor], k: int) -> torch.Tensor:
    """Five float32 SVDs and the products between them, as FusionBench's TSV-M does."""
    us, ss, vs = [], [], []
    for tau in taus:
        u, s, vh = torch.linalg.svd(tau, full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vs.append(vh[:k].T)
    uu, _, uvh = torch.linalg.svd(torch.cat(us, 1), full_matrices=False)
    vu, _, vvh = torch.linalg.svd(torch.cat(vs, 1), full_matrices=False)
    return (uu @ uvh) @ torch.diag(torch.cat(ss)) @ (vu @ vvh).T


def ours(taus: list[torch.Tensor], k: int) -> torch.Tensor:
    u, s, v, task = tsv_factors(taus, k)
    w = torch.ones(T, dtype=torch.float32)
    return tsv_compose(u.float(), s.float(), v.float(), task, w)


def rows(m: int, n: int, g: torch.Generator) -> list[tuple[str, Callable[[], object]]]:
    """(what, work) for one m × n matrix: FusionBench's work first (the reference)."""
    r = min(m, n)
    k = r // T
    taus = [1e-3 * torch.randn(m, n, generator=g) for _ in range(T)]
    sym = torch.randn(r, r, generator=g, dtype=torch.float64)
    sym = sym @ sym.T
    sym32 = sym.float()
    return [
        ("FusionBench's work: 5 float32 SVDs", lambda: fusionbench_like(taus, k)),
        ("ours: tsv_factors + compose", lambda: ours(taus, k)),
        ("5 float64 eigh (r × r)", lambda: [torch.linalg.eigh(sym) for _ in range(5)]),
        ("5 float32 eigh (r × r)", lambda: [torch.linalg.eigh(sym32) for _ in range(5)]),
        ("5 float32 eigvalsh (no vectors)", lambda: [torch.linalg.eigvalsh(sym32) for _ in range(5)]),
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(
        f"T = {T}, k = r // {T}, float32 task vectors; {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}; best of "
        f"{args.repeats}\n"
    )
    print("| shape | what | seconds | × FusionBench's work |\n|---|---|---:|---:|")
    g = torch.Generator().manual_seed(0)
    for m, n in ((1024, 1024), (2816, 1024)):
        ref = None
        for what, f in rows(m, n, g):
            f()  # warm-up: first-call allocations and thread start-up
            s = best(f, args.repeats)
            ref = s if ref is None else ref
            print(f"| {m} × {n} | {what} | {s:.3f} | {s / ref:.2f} |", flush=True)


if __name__ == "__main__":
    main()
