"""Peer re-check of Fisher merging and RegMean against FusionBench's own code (issue 31).

    PYTHONPATH=src .venv/bin/python benchmarks/peercheck_fisher_regmean.py [--bench-python PATH]

FusionBench lives in its own virtualenv (``make bench-peers``: ``.venv-bench``); this script runs
its functions there, in a subprocess, on tensors written to a temporary folder, and ours in this
process, then prints the largest absolute difference per method and setting:

A. The merges, given the same statistics: FusionBench's ``merging_with_fisher_weights``
   (``normalize_fisher_weight`` on and off) and ``merging_with_regmean_weights`` (α = 1, .9, .5,
   0) on random float64 weights, Fisher tensors and Gram matrices (three models), against our
   ``merge_state_dicts("fisher" | "regmean", ..., compute_dtype="float64")`` reading the same
   values from statistics files.
B. RegMean end to end, Gram matrices included: FusionBench's ``regmean_merging`` (its forward
   hooks on every ``nn.Linear``, fed one sample per batch through a minimal trainer) on three
   perturbed tiny Llama models, each with its own samples, against our
   ``datastats.compute_statistics(kinds=("gram",))`` then ``merge_state_dicts("regmean")``.
   Our statistics files store the Grams in float32, so the two differ by that rounding.

FusionBench's Fisher *estimator* is not compared: it is built for classification logits (it
squares the gradient of Σ_c √p_c·log p_c over a batch), ours is the per-sample empirical Fisher
of the response tokens' log-likelihood (docs/merging.md), so they differ by design.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hhh_bench.merging import merge_state_dicts
from hhh_bench.merging.statsfile import FISHER, GRAM, GRAM_ROWS

SHAPES = {
    "model.embed_tokens.weight": (11, 8),
    "model.layers.0.self_attn.q_proj.weight": (8, 8),
    "model.layers.0.mlp.up_proj.weight": (12, 8),
    "model.layers.0.mlp.up_proj.bias": (12,),
    "model.layers.0.mlp.down_proj.weight": (8, 12),
    "model.norm.weight": (8,),
    "lm_head.weight": (11, 8),
}
LINEAR = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight",
          "model.layers.0.mlp.down_proj.weight", "lm_head.weight"]  # fmt: skip
ALPHAS = (1.0, 0.9, 0.5, 0.0)
NUM = 3

FB_MERGES = textwrap.dedent(
    """
    import json, sys, torch
    from safetensors.torch import load_file, save_file
    from fusion_bench.method.fisher_merging.fisher_merging import merging_with_fisher_weights
    from fusion_bench.method.regmean.regmean import merging_with_regmean_weights
    d = sys.argv[1]
    linear = json.loads(open(f"{d}/linear.json").read())
    fts = [load_file(f"{d}/ft{t}.safetensors") for t in range(3)]
    stats = [load_file(f"{d}/stats{t}.safetensors") for t in range(3)]
    params = {k: [sd[k] for sd in fts] for k in fts[0]}
    fishers = [{k[len("fisher/"):]: v.double() for k, v in s.items() if k.startswith("fisher/")}
               for s in stats]
    grams = [{k[len("gram/"):-len(".weight")]: v.double() for k, v in s.items()
              if k.startswith("gram/")} for s in stats]
    out = {}
    for normalize in (True, False):
        merged = merging_with_fisher_weights(params, fishers, torch.ones(3) / 3,
                                             normalize_fisher_weight=normalize,
                                             minimal_fisher_weight=1e-6)
        out.update({f"fisher_{normalize}/{k}": v for k, v in merged.items()})
    for alpha in (1.0, 0.9, 0.5, 0.0):
        merged = merging_with_regmean_weights(params, grams, reduce_non_diagonal_ratio=alpha,
                                              weight_transpose=True)
        out.update({f"regmean_{alpha}/{k}": v.contiguous() for k, v in merged.items()})
    save_file(out, f"{d}/fb_merges.safetensors")
    """
)

FB_REGMEAN_E2E = textwrap.dedent(
    """
    import json, sys, torch
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM
    from fusion_bench.method.regmean.regmean import regmean_merging
    d = sys.argv[1]
    samples = json.loads(open(f"{d}/samples.json").read())
    alpha = float(sys.argv[2])

    class Trainer:  # what regmean_merging asks of a HF trainer: one sample per batch
        _train_batch_size = 1
        def __init__(self, seqs):
            self.seqs = seqs
        def get_train_dataloader(self):
            return [{"input_ids": torch.tensor([s])} for s in self.seqs]
        def _prepare_inputs(self, inputs):
            return inputs

    models = [LlamaForCausalLM.from_pretrained(f"{d}/ft{t}").double().eval() for t in range(3)]
    trainers = [Trainer(samples[t]) for t in range(3)]
    merged = regmean_merging(models, trainers, exclude_param_names_regex=[],
                             nums_regmean_examples=[len(s) for s in samples],
                             reduce_non_diagonal_ratio=alpha)
    save_file({k: v.contiguous() for k, v in merged.items()}, f"{d}/fb_e2e_{alpha}.safetensors")
    """
)


def _run(bench_python: str, code: str, *args: str) -> None:
    res = subprocess.run([bench_python, "-c", code, *args], capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"FusionBench side failed:\n{res.stderr[-3000:]}")


def part_a(d: Path, bench_python: str) -> dict[str, float]:
    """The merge functions on the same statistics."""
    g = torch.Generator().manual_seed(0)
    base = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in SHAPES.items()}
    fts = [{k: v + 0.1 * torch.randn(v.shape, generator=g, dtype=torch.float64)
            for k, v in base.items()} for _ in range(NUM)]  # fmt: skip
    paths = []
    for t in range(NUM):
        scale = 10.0**t  # models whose Fisher differ in scale: the normalisation matters
        stats = {FISHER + k: (scale * torch.rand(s, generator=g, dtype=torch.float64)).float()
                 for k, s in SHAPES.items()}  # fmt: skip
        for k in LINEAR:
            x = torch.randn(3 * SHAPES[k][1], SHAPES[k][1], generator=g, dtype=torch.float64)
            stats[GRAM + k] = (x.T @ x / x.shape[0] * (t + 1)).float()
            stats[GRAM_ROWS + k] = torch.tensor(x.shape[0])
        save_file(stats, str(d / f"stats{t}.safetensors"))
        save_file(fts[t], str(d / f"ft{t}.safetensors"))
        paths.append(str(d / f"stats{t}.safetensors"))
    (d / "linear.json").write_text(json.dumps(LINEAR))
    _run(bench_python, FB_MERGES, str(d))
    fb = load_file(str(d / "fb_merges.safetensors"))
    out = {}
    for normalize in (True, False):
        ours = merge_state_dicts("fisher", base, fts, statistics=paths, compute_dtype="float64",
                                 normalize_fisher_weight=normalize)  # fmt: skip
        out[f"fisher normalize={normalize}"] = max(
            float((ours[k] - fb[f"fisher_{normalize}/{k}"]).abs().max()) for k in SHAPES
        )
    for alpha in ALPHAS:
        ours = merge_state_dicts("regmean", base, fts, statistics=paths, compute_dtype="float64",
                                 reduce_non_diagonal_ratio=alpha)  # fmt: skip
        out[f"regmean α={alpha}"] = max(
            float((ours[k] - fb[f"regmean_{alpha}/{k}"]).abs().max()) for k in SHAPES
        )
    return out


def part_b(d: Path, bench_python: str) -> dict[str, float]:
    """RegMean with each side's own Gram matrices on tiny Llama models."""
    from hhh_bench.merging.datastats import Sample, StatsOptions, compute_statistics
    from hhh_bench.models import TinyModelSpec, build_tiny_model, build_word_tokenizer

    tok = build_word_tokenizer([chr(c) for c in range(ord("a"), ord("u"))])
    spec = TinyModelSpec(hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
    g = torch.Generator().manual_seed(1)
    base = build_tiny_model(spec, tok, seed=0).double()
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    fts, samples, paths = [], [], []
    for t in range(NUM):
        m = build_tiny_model(spec, tok, seed=0).double()
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=torch.float64))
        m.save_pretrained(d / f"ft{t}")
        seqs = [torch.randint(7, len(tok), (int(n),), generator=g).tolist()
                for n in torch.randint(8, 20, (6,), generator=g)]  # fmt: skip
        samples.append(seqs)
        path = d / f"e2e_stats{t}.safetensors"
        compute_statistics(m, [Sample(tuple(s), 1) for s in seqs], path,
                           StatsOptions(kinds=("gram",)))  # fmt: skip
        paths.append(str(path))
        fts.append({k: v.clone() for k, v in m.state_dict().items()})
    (d / "samples.json").write_text(json.dumps(samples))
    out = {}
    for alpha in (1.0, 0.9):
        _run(bench_python, FB_REGMEAN_E2E, str(d), str(alpha))
        fb = load_file(str(d / f"fb_e2e_{alpha}.safetensors"))
        ours = merge_state_dicts("regmean", base_sd, fts, statistics=paths,
                                 compute_dtype="float64", reduce_non_diagonal_ratio=alpha)  # fmt: skip
        diffs = [float((ours[k] - fb[k]).abs().max()) for k in fb]
        out[f"regmean end to end α={alpha} ({len(fb)} tensors)"] = max(diffs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench-python", default=str(Path(".venv-bench/bin/python")))
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="peercheck-datamerge-") as tmp:
        rows = {**part_a(Path(tmp), args.bench_python)}
        (Path(tmp) / "e2e").mkdir()
        rows.update(part_b(Path(tmp) / "e2e", args.bench_python))
    print("max |ours − FusionBench| (float64 unless noted)")
    for name, diff in rows.items():
        print(f"  {name:<45} {diff:.3e}")


if __name__ == "__main__":
    main()
