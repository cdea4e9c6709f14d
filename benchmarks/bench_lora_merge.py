"""LoRA specialists merged from their factors vs the same specialists as dense checkpoints.

    python benchmarks/bench_lora_merge.py                  # the 270M shape, all 16 layers
    python benchmarks/bench_lora_merge.py --layers 2 --methods tsv

Issue 13: a TSV-M (or RESM) merge of LoRA specialists reads each adapter's factors and takes
the exact thin SVD of τ = s·B·A from them (QR of B and Aᵀ, then an r × r SVD), never forming
the m × n matrix; the goal is at most 0.1× the time of the dense path, i.e. of merging the same
specialists saved as full weights (what a user gets from peft's ``merge_and_unload``).

The specialists are real peft adapters (``LoraConfig(r, lora_alpha, target_modules=every
projection)``, random B so that τ ≠ 0) on the synthetic base of ``bench_merge.py``; their dense
twins are ``merge_and_unload()`` of the same adapters, saved in bf16. Both merges run with
hhh-bench's engine, each in its own process (wall time and peak RSS as in ``bench_merge.py``).
The two outputs differ by the bf16 rounding of the dense twins (θ0 + s·B·A rounded to bf16 loses
most of a small update; the factor path is exact): the table gives that difference too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_merge as bm  # noqa: E402  (the synthetic base, the child runner, the comparison)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_lora(folder: Path, base: Path, r: int, alpha: int, seed: int) -> list[tuple[Path, Path]]:
    """(adapter folder, dense twin folder) of each specialist under ``folder`` (reused)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    pairs = [(folder / f"specialist_{t}" / "adapter", folder / f"specialist_{t}" / "full")
             for t in range(bm.T)]  # fmt: skip
    if (folder / "COMPLETE").is_file():
        return pairs
    shutil.rmtree(folder, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    for t in range(bm.T):
        torch.manual_seed(seed * 100 + t)  # peft's A initialisation
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, lora_dropout=0.0)
        peft_model = get_peft_model(model, cfg)
        g = torch.Generator().manual_seed(seed * 100 + t)
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.copy_(2e-3 * torch.randn(p.shape, generator=g))
        out = tmp / f"specialist_{t}"
        peft_model.save_pretrained(out / "adapter")
        peft_model.merge_and_unload().to(torch.bfloat16).save_pretrained(out / "full")
        del model, peft_model
    (tmp / "COMPLETE").write_text(f"r={r} alpha={alpha} seed={seed}\n")
    tmp.rename(folder)
    return pairs


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--layers", type=int, default=16, help="decoder layers of the 270M shape")
    ap.add_argument("--methods", default="tsv,resm", help="comma-separated: tsv, resm, ...")
    ap.add_argument("--r", type=int, default=16, help="LoRA rank")
    ap.add_argument("--alpha", type=int, default=32, help="lora_alpha")
    ap.add_argument("--repeats", type=int, default=1, help="runs per path (best kept)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=7200.0, help="seconds per child")
    ap.add_argument(
        "--cache",
        default=str(bm.ROOT / ".cache" / "bench_merge"),
        help="folder of the synthetic checkpoints and adapters (reused)",
    )
    ap.add_argument("--json", help="also write the measurements to this JSON file")
    args = ap.parse_args()

    shape = dict(bm.SHAPES["270m"], layers=args.layers)
    cache = Path(args.cache)
    recipe = hashlib.sha256(bm.RECIPE.encode()).hexdigest()[:8]
    tag = f"270m-L{args.layers}-s{args.seed}-{recipe}"
    base = bm.build_models(cache / "data" / tag, shape, args.seed)[0]
    t0 = time.perf_counter()
    pairs = build_lora(
        cache / "data" / f"{tag}-lora-r{args.r}", base, args.r, args.alpha, args.seed
    )
    build_s = time.perf_counter() - t0
    adapters, dense = [p[0] for p in pairs], [p[1] for p in pairs]
    n_params = sum(torch.Size(s).numel() for _, s in bm.tensor_shapes(shape))
    print(
        f"bench_lora_merge: 270M Llama shape, {args.layers} layers ({n_params / 1e6:.0f}M "
        f"parameters), T = {bm.T} LoRA specialists (r = {args.r}, alpha = {args.alpha}, "
        f"targets {', '.join(TARGETS)}); adapters and dense twins "
        f"{'built in ' + format(build_s, '.0f') + ' s' if build_s > 1 else 'reused'}"
    )
    print(
        f"{bm.machine_line()}; torch {torch.__version__}, hhh-bench {bm.git_rev()}; threads "
        f"{args.threads}; {dt.datetime.now():%Y-%m-%d %H:%M}",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="lora-run-", dir=cache))
    rows: list[dict[str, Any]] = []
    for method in [m for m in args.methods.split(",") if m]:
        best: dict[str, tuple[float, int, Path]] = {}
        for _ in range(max(1, args.repeats)):
            for path, models in (("factors", adapters), ("dense", dense)):
                out = workdir / f"out-{method}-{path}"
                shutil.rmtree(out, ignore_errors=True)
                spec = {
                    "tool": "ours",
                    "method": method,
                    "base": str(base),
                    "models": [str(m) for m in models],
                    "out": str(out),
                    "threads": args.threads,
                    "params": bm.OURS.get(method, {}),
                }
                print(f"  {method} / {path} ...", end=" ", flush=True)
                wall, rss, rc, log = bm.run_child(
                    sys.executable, spec, workdir, [base, *models], args.timeout
                )
                if rc != 0:
                    print(f"failed (exit {rc})\n" + log.read_text()[-2000:], flush=True)
                    return 1
                res = json.loads(Path(spec["result"]).read_text())
                rss = res.get("vmhwm_bytes", rss)
                print(f"{wall:.1f} s, {rss / bm.GiB:.2f} GiB", flush=True)
                prev = best.get(path)
                best[path] = (
                    min(wall, prev[0]) if prev else wall,
                    min(rss, prev[1]) if prev else rss,
                    out,
                )
        diff = bm.compare(best["factors"][2], best["dense"][2])
        rows.append(
            {
                "method": method,
                "factors_s": best["factors"][0],
                "dense_s": best["dense"][0],
                "ratio": best["factors"][0] / best["dense"][0],
                "factors_gib": best["factors"][1] / bm.GiB,
                "dense_gib": best["dense"][1] / bm.GiB,
                "rel_diff": diff.get("rel"),
            }
        )
    print("\n| method | LoRA factors: wall s | dense twins: wall s | factors/dense | peak RSS GiB "
          "(factors, dense) | ‖Δ‖/‖θ‖ between the outputs |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        rel = f"{r['rel_diff']:.2e}" if isinstance(r["rel_diff"], float) else "-"
        print(f"| {r['method']} | {r['factors_s']:.1f} | {r['dense_s']:.1f} | **{r['ratio']:.3f}** "
              f"| {r['factors_gib']:.2f}, {r['dense_gib']:.2f} | {rel} |")  # fmt: skip
    print("\nGoal (issue 13): a LoRA-specialist merge at most 0.1× the dense path's time:")
    for r in rows:
        print(f"- {'held' if r['ratio'] <= 0.1 else 'MISSED'}: {r['method']} {r['ratio']:.3f}×")
    if args.json:
        Path(args.json).write_text(json.dumps({"shape": shape, "rows": rows}, indent=2))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
