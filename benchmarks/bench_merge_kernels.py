"""Kernel-level merge timings on one large matrix (no I/O): every method on three 4096×4096
task vectors, bf16 inputs, float32 compute, on this machine's CPU (or --device cuda).

    python benchmarks/bench_merge_kernels.py            # 4096 x 4096, 3 task vectors
    python benchmarks/bench_merge_kernels.py --quick    # 1024 x 1024
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from hhh_bench.merging import merge_tensors

PARAMS = {"ties": {"density": 0.2}, "dare_ta": {"drop_rate": 0.5}, "dare_ties": {"drop_rate": 0.5}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="1024 x 1024")
    ap.add_argument("--methods", default="task_arithmetic,ties,dare_ties,tsv,resm")
    args = ap.parse_args()
    n = 1024 if args.quick else args.size
    g = torch.Generator().manual_seed(0)
    base = torch.randn(n, n, generator=g).to(torch.bfloat16)
    # low-rank structure + small dense noise + a few heavy outliers, as DPO deltas have
    fts = []
    for _ in range(args.tasks):
        u, v = torch.randn(n, 16, generator=g), torch.randn(16, n, generator=g)
        delta = 1e-3 * (u @ v) + 1e-4 * torch.randn(n, n, generator=g)
        idx = torch.randint(0, n * n, (n,), generator=g)
        delta.view(-1)[idx] += 0.05 * torch.randn(n, generator=g)
        fts.append((base.float() + delta).to(torch.bfloat16))
    print(f"{n}x{n}, T={args.tasks}, bf16 inputs, float32 compute, device={args.device}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")  # fmt: skip
    print("| method | seconds | output dtype |\n|---|---:|---|")
    for method in args.methods.split(","):
        t = time.perf_counter()
        out = merge_tensors(method, base, fts, name="model.layers.0.mlp.down_proj.weight",
                            device=args.device, **PARAMS.get(method, {}))  # fmt: skip
        dt = time.perf_counter() - t
        print(f"| {method} | {dt:.2f} | {out.dtype} |", flush=True)


if __name__ == "__main__":
    main()
