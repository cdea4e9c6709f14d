"""Iso-C and Iso-CTS: ours against FusionBench's own implementation, on the same random tensors.

    PYTHONPATH=src .venv/bin/python benchmarks/peercheck_iso.py
    PYTHONPATH=src .venv/bin/python benchmarks/peercheck_iso.py --hidden 1024 --repeats 3

Builds a random float32 "model" (a base and T = 3 specialists: matrices of a few shapes, a bias,
a norm and an embedding table), saves it to a temporary safetensors file, then merges it

- with FusionBench's ``iso_c`` / ``iso_cts`` (``fusion_bench.method.isotropic_merging.iso_utils``,
  as ``ISO_C_Merge`` / ``ISO_CTS_Merge`` run them: task vectors from ``state_dict_sub``, the
  embedding in ``exclude_keys``, θ0 + 1.0·τ_m) in a subprocess of the peer python
  (``--peer-python``, default ``.venv-bench/bin/python``), and
- with ours (``merge_state_dicts``, embeddings by the mean: the same rule) in this process,

in float32 (FusionBench's usual dtype; ours decomposes in float64 and casts) and in float64 (both
then compute in float64: the two must agree to float64 rounding). Prints, per method and dtype,
the largest |θ_ours − θ_fb| and ‖Δ‖/‖θ_fb − θ0‖ over all tensors, and the seconds each tool's
merge call took (best of ``--repeats``, the same process and threads for both).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
EMBED = "model.embed_tokens.weight"
T = 3

PEER = r"""
import json, sys, time
import torch
from safetensors.torch import load_file, save_file
from fusion_bench.method.isotropic_merging.iso_utils import iso_c, iso_cts
from fusion_bench.utils.state_dict_arithmetic import state_dict_add, state_dict_mul, state_dict_sub

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
dtype = getattr(torch, args["dtype"])
sds = [{k: v.to(dtype) for k, v in load_file(p).items()} for p in args["inputs"]]
base, fts = sds[0], sds[1:]
times = {}
for method in ("iso_c", "iso_cts"):
    best = None
    for _ in range(args["repeats"]):
        t = time.perf_counter()
        with torch.no_grad():
            tvs = [state_dict_sub(ft, base) for ft in fts]
            if method == "iso_c":
                merged_tv = iso_c(tvs, accelerator="cpu", exclude_keys=[args["embed"]])
            else:
                merged_tv = iso_cts(tvs, common_space_fraction=0.8, accelerator="cpu",
                                    exclude_keys=[args["embed"]])
            out = state_dict_add(base, state_dict_mul(merged_tv, 1.0))
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    times[method] = best
    save_file({k: v.contiguous() for k, v in out.items()}, args["out"] + f".{method}.safetensors")
print("PEER_TIMES " + json.dumps(times))
"""


def build(hidden: int, seed: int) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """A base N(0, 0.02²) and T specialists base + dense N(0, 1e-3²) deltas (full rank)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        EMBED: (4 * hidden, hidden),
        "model.layers.0.self_attn.q_proj.weight": (hidden, hidden),
        "model.layers.0.self_attn.k_proj.weight": (hidden // 4, hidden),
        "model.layers.0.mlp.up_proj.weight": (3 * hidden, hidden),
        "model.layers.0.mlp.down_proj.weight": (hidden, 3 * hidden),
        "model.layers.0.mlp.down_proj.bias": (hidden,),
        "model.norm.weight": (hidden,),
    }
    base = {k: 0.02 * torch.randn(s, generator=g) for k, s in shapes.items()}
    fts = [
        {k: v + 1e-3 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(T)
    ]
    return base, fts


def compare(
    ours: dict[str, torch.Tensor], peer: dict[str, torch.Tensor], base
) -> tuple[float, float]:
    max_abs, sq, ref = 0.0, 0.0, 0.0
    for k, b in base.items():
        d = (ours[k].double() - peer[k].double()).abs()
        max_abs = max(max_abs, float(d.max()))
        sq += float(d.square().sum())
        ref += float((peer[k].double() - b.double()).square().sum())
    return max_abs, (sq / ref) ** 0.5


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--hidden", type=int, default=96, help="hidden size (matrices up to 4h × h)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per tool (best kept)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--peer-python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    args = ap.parse_args()
    if not Path(args.peer_python).exists():
        print(f"peercheck: no peer python at {args.peer_python}; FusionBench not checked")
        return 0
    from hhh_bench.merging import merge_state_dicts

    torch.set_num_threads(args.threads)
    base32, fts32 = build(args.hidden, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [str(Path(tmp) / f"m{i}.safetensors") for i in range(T + 1)]
        for p, sd in zip(paths, [base32, *fts32], strict=True):
            save_file(sd, p)
        print(
            f"peercheck: T = {T}, hidden {args.hidden}, {args.threads} threads, torch {torch.__version__}"
        )
        for dtype in ("float32", "float64"):
            spec = {"inputs": paths, "out": str(Path(tmp) / f"fb-{dtype}"), "dtype": dtype,
                    "embed": EMBED, "repeats": args.repeats, "threads": args.threads}  # fmt: skip
            proc = subprocess.run(
                [args.peer_python, "-c", PEER, json.dumps(spec)], capture_output=True, text=True
            )
            if proc.returncode != 0:
                print(proc.stderr[-3000:])
                return 1
            line = next(x for x in proc.stdout.splitlines() if x.startswith("PEER_TIMES "))
            peer_times = json.loads(line.removeprefix("PEER_TIMES "))
            dt = getattr(torch, dtype)
            base = {k: v.to(dt) for k, v in load_file(paths[0]).items()}
            fts = [{k: v.to(dt) for k, v in load_file(p).items()} for p in paths[1:]]
            for method in ("iso_c", "iso_cts"):
                best = None
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    ours = merge_state_dicts(method, base, fts, compute_dtype=dtype)
                    s = time.perf_counter() - t
                    best = s if best is None else min(best, s)
                peer = load_file(spec["out"] + f".{method}.safetensors")
                max_abs, rel = compare(ours, peer, base)
                print(
                    f"  {method:8s} {dtype}: max |Δ| {max_abs:.2e}, ‖Δ‖/‖τ_m‖ {rel:.2e}; "
                    f"seconds ours {best:.2f}, FusionBench {peer_times[method]:.2f} "
                    f"(ours/FusionBench {best / peer_times[method]:.2f}×)"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
