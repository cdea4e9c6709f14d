"""Peer re-check of consensus_ta, consensus_ties and pcb: the peers' own code against ours on the
same random state dicts, as the max |Δθ| per method.

- Consensus merging: FusionBench's own functions (``fusion_bench.method.tall_mask.utils``:
  ``generate_task_masks``, ``construct_consensus_mask`` with the TALL masks handed to it in
  memory instead of loaded from disk; ``fusion_bench.method.ties_merging.ties_merging_utils``:
  ``ties_merging``) over the whole flattened model, as the authors' code runs them.
- PCB: FusionBench has none; the authors' ``PCB_merge`` from ``pcb-merging.py``
  (github.com/duguodong7/pcb-merging; pass the file with ``--pcb-merging``; its definitions are
  executed, the script part after them is not), run per tensor (what ``pcb`` claims to match) and
  over the whole flattened model (the stated deviation: its size is printed, not held to a bar).

The peers run in their own virtualenv (``make bench-peers``: ``.venv-bench``; another with
``--peer-python``) in a subprocess; ours here. Tensors travel through a temporary ``.pt`` file.

    PYTHONPATH=src .venv/bin/python benchmarks/peercheck_consensus_pcb.py --pcb-merging pcb-merging.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

from hhh_bench.merging import merge_state_dicts

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "model.embed_tokens.weight": (96, 32),
    "model.layers.0.self_attn.q_proj.weight": (32, 32),
    "model.layers.0.mlp.up_proj.weight": (80, 32),
    "model.layers.0.mlp.up_proj.bias": (80,),
    "model.norm.weight": (32,),
}
T = 3
LAMBDA, K = 0.5, 2  # consensus: tall_mask_lambda, min_agreement
PCB_RATIO = 0.1

WORKER = textwrap.dedent(
    """
    import sys, io, contextlib
    import torch
    data = torch.load(sys.argv[1])
    out = {}
    flat_ptm, flat_ft = data["flat_ptm"], data["flat_ft"]
    tvs = flat_ft - flat_ptm
    with contextlib.redirect_stdout(io.StringIO()):  # the peers print progress
        try:
            from fusion_bench.method.tall_mask import utils as tu
            from fusion_bench.method.ties_merging.ties_merging_utils import ties_merging

            def consensus(ptm, ft, merged_tv):
                masks = tu.generate_task_masks(
                    ft - ptm, ft, ptm, tv=merged_tv, tall_mask_lambda=data["lambda"]
                )
                given = {f"task{t}": {"flat": m} for t, m in enumerate(masks)}
                tu.load_tall_mask = lambda remove_keys, ptm_check, config: given
                keep = tu.construct_consensus_mask({"flat": ptm}, data["k"], None, [])
                return ptm + merged_tv * keep

            out["consensus_ta"] = consensus(flat_ptm, flat_ft, tvs.sum(dim=0))
            zero, g_ft = torch.zeros_like(flat_ptm), data["global_ft"]  # about θ0 = 0
            g_tv = ties_merging(g_ft - zero, reset_thresh=20, merge_func="dis-sum")
            out["consensus_ties"] = consensus(zero, g_ft, g_tv)
        except ImportError as e:
            out["fusion_bench_error"] = repr(e)
        if data["pcb_source"]:
            source = data["pcb_source"].split("### With Evolutionary Strategies")[0]
            space = {}
            exec(compile(source, "pcb-merging.py", "exec"), space)
            pieces = [
                space["PCB_merge"](tvs[:, a:b].clone(), pcb_ratio=data["pcb_ratio"])[0]
                for a, b in data["bounds"]
            ]
            out["pcb"] = flat_ptm + torch.cat(pieces)
            whole = space["PCB_merge"](tvs.clone(), pcb_ratio=data["pcb_ratio"])[0]
            out["pcb_whole_model"] = flat_ptm + whole
    torch.save(out, sys.argv[2])
    """
)


def flat(sd: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([sd[key].flatten() for key in SHAPES])


def unflat(vector: torch.Tensor) -> dict[str, torch.Tensor]:
    sizes = [torch.Size(s).numel() for s in SHAPES.values()]
    return {
        key: part.view(shape)
        for (key, shape), part in zip(SHAPES.items(), vector.split(sizes), strict=True)
    }


def bf16_key(x: torch.Tensor) -> torch.Tensor:
    """|x| at bfloat16 resolution (the key ``ties`` ranks by with ``scope: global``)."""
    return x.abs().float().view(torch.int32) >> 16


def inputs(seed: int) -> tuple[dict, list[dict], list[dict], float]:
    """θ0 and T specialists with log-normal-tailed task vectors (for consensus_ta and pcb); and,
    for consensus_ties with ``scope: global``, T task vectors about θ0 = 0 whose k-th largest
    magnitude (k = int(0.2·n) + 1, what the peers keep) is alone in its bfloat16 bin below it
    (entries sharing the bin are moved 2% down, out of it), so our bfloat16 threshold keeps the
    same entries; the density that keeps k."""
    g = torch.Generator().manual_seed(seed)
    n = sum(torch.Size(s).numel() for s in SHAPES.values())
    k = int(0.2 * n) + 1
    base = torch.randn(n, generator=g, dtype=torch.float64)
    fts, global_fts = [], []
    for _ in range(T):
        noise = torch.randn(n, generator=g, dtype=torch.float64)
        tails = torch.randn(n, generator=g, dtype=torch.float64).exp()
        fts.append(unflat(base + 0.01 * noise * tails))
        tau = torch.randn(n, generator=g, dtype=torch.float64) * 0.01
        kth = tau.abs().sort(descending=True).values[k - 1]
        same_bin = (bf16_key(tau) == bf16_key(kth)) & (tau.abs() < kth)
        global_fts.append(unflat(torch.where(same_bin, tau * 0.98, tau)))
    return unflat(base), fts, global_fts, (k + 0.5) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-python", default=str(REPO / ".venv-bench" / "bin" / "python"))
    ap.add_argument("--pcb-merging", type=Path, help="the authors' pcb-merging.py")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    base, fts, global_fts, density = inputs(args.seed)
    zero = {key: torch.zeros_like(v) for key, v in base.items()}
    ours = {
        "consensus_ta": merge_state_dicts(
            "consensus_ta", base, fts, tall_mask_lambda=LAMBDA, min_agreement=K,
            compute_dtype="float64",
        ),
        "consensus_ties": merge_state_dicts(
            "consensus_ties", zero, global_fts, density=density, scope="global",
            tall_mask_lambda=LAMBDA, min_agreement=K, compute_dtype="float64",
        ),
        "pcb": merge_state_dicts("pcb", base, fts, pcb_ratio=PCB_RATIO, compute_dtype="float64"),
    }  # fmt: skip
    sizes = [torch.Size(s).numel() for s in SHAPES.values()]
    ends = torch.tensor(sizes).cumsum(0).tolist()
    data = {
        "flat_ptm": flat(base),
        "flat_ft": torch.stack([flat(sd) for sd in fts]),
        "global_ft": torch.stack([flat(sd) for sd in global_fts]),
        "lambda": LAMBDA,
        "k": K,
        "pcb_ratio": PCB_RATIO,
        "pcb_source": args.pcb_merging.read_text() if args.pcb_merging else "",
        "bounds": list(zip([0, *ends[:-1]], ends, strict=True)),
    }
    if not Path(args.peer_python).is_file():
        sys.exit(f"no peer python at {args.peer_python}: make bench-peers, or --peer-python")
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.pt", Path(tmp) / "out.pt"
        torch.save(data, src)
        subprocess.run([args.peer_python, "-c", WORKER, str(src), str(dst)], check=True)
        peer = torch.load(dst)
    if "fusion_bench_error" in peer:
        print(f"fusion_bench not importable in {args.peer_python}: {peer['fusion_bench_error']}")
    print(f"{'method':<34} {'max |Δθ| ours vs peer':>22} {'max |θ − θ0|':>14}")
    rows = [(m, m) for m in ours] + [("pcb_whole_model", "pcb")]
    for key, method in rows:
        label = key if key != "pcb_whole_model" else "pcb vs PCB_merge on the whole model"
        if key not in peer:
            print(f"{label:<34} {'not run':>22}")
            continue
        mine = flat(ours[method])
        origin = 0.0 if method == "consensus_ties" else data["flat_ptm"]
        diff = float((mine - peer[key]).abs().max())
        print(f"{label:<34} {diff:>22.3e} {float((mine - origin).abs().max()):>14.3e}")


if __name__ == "__main__":
    main()
