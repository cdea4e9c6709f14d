"""Time evaluating one tiny model on all toy-world tasks (both splits) with lm-eval, offline.

    .venv/bin/python benchmarks/bench_eval.py            # default world, model=tiny shape
    .venv/bin/python benchmarks/bench_eval.py --repeats 3 --threads 2

What is timed (seconds, wall clock):
  import       importing lm-eval + transformers (once per process; not part of an evaluation)
  materialize  writing the per-run task YAMLs (hhh_bench.evaluation.harness.materialize_tasks)
  evaluate     evaluate_model on the 10 toy tasks: TaskManager(include_defaults=False), dataset
               loading (json builder), request building and the model's forward passes
  direct       the same items scored by hhh_bench.evaluation.choice (no lm-eval), for comparison
The model is untrained: its speed does not depend on its weights.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=2, help="timed evaluations (the first is cold)")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared CPU)"
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--no-direct", action="store_true", help="skip the choice.py comparison")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hhh-bench-eval-"))
    for k, v in {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_DATASETS_CACHE": str(work / "hf_datasets"),
    }.items():
        os.environ.setdefault(k, v)

    t0 = time.perf_counter()
    import lm_eval  # noqa: F401
    import torch
    import transformers  # noqa: F401

    t_import = time.perf_counter() - t0
    torch.set_num_threads(args.threads)

    from hhh_bench.core.schema import read_jsonl
    from hhh_bench.data.toy3h import EVAL_KINDS, Toy3HConfig, generate
    from hhh_bench.evaluation.choice import score_items
    from hhh_bench.evaluation.harness import evaluate_model, materialize_tasks
    from hhh_bench.models import TinyModelSpec, build_tiny_model, build_word_tokenizer

    world = Toy3HConfig()  # conf/data/toy3h.yaml defaults: 60 items per kind and split
    generate(world, work / "data")
    vocab = (work / "data" / "vocab.txt").read_text().split()
    spec = TinyModelSpec()  # conf/model/tiny.yaml's shape
    tok = build_word_tokenizer(vocab, model_max_length=spec.max_position_embeddings)
    model = build_tiny_model(spec, tok, seed=0).eval()
    n_params = sum(p.numel() for p in model.parameters())
    tasks = [f"toy3h_{k}_{s}" for k in EVAL_KINDS for s in ("val", "test")]

    rows = [("import (once per process)", t_import)]
    for i in range(args.repeats):
        t0 = time.perf_counter()
        include = materialize_tasks(work / f"tasks{i}", {"toy3h_eval": work / "data" / "eval"})
        t_mat = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = evaluate_model(
            model,
            tok,
            tasks,
            include_path=include,
            apply_chat_template=True,
            batch_size=args.batch_size,
        )
        t_eval = time.perf_counter() - t0
        label = "cold" if i == 0 else "warm"
        rows += [(f"materialize ({label})", t_mat), (f"evaluate 10 tasks ({label})", t_eval)]
    n_items = sum(m["n"] for m in out["metrics"].values())
    n_requests = sum(
        len(it["choices"])
        for split in ("validation", "test")
        for k in EVAL_KINDS
        for it in read_jsonl(work / "data" / "eval" / f"{k}_{split}.jsonl")
    )
    if not args.no_direct:
        t0 = time.perf_counter()
        for split in ("validation", "test"):
            for k in EVAL_KINDS:
                score_items(model, tok, read_jsonl(work / "data" / "eval" / f"{k}_{split}.jsonl"))
        rows.append(("direct choice.py scorer (same items)", time.perf_counter() - t0))

    print(
        f"\ntiny model: {n_params / 1e6:.2f}M parameters (hidden {spec.hidden_size}, "
        f"{spec.num_hidden_layers} layers); {n_items} items, {n_requests} log-likelihood requests; "
        f"torch threads {args.threads}, batch size {args.batch_size}; "
        f"torch {torch.__version__}, lm-eval {lm_eval.__version__}, python {sys.version.split()[0]}"
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'phase'.ljust(width)}  seconds")
    for name, sec in rows:
        print(f"{name.ljust(width)}  {sec:7.2f}")


if __name__ == "__main__":
    main()
