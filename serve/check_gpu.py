"""A real-sized model through the server path (docs/evaluation.md, "On a GPU").

Builds a Llama with random weights (default 1.1 B parameters: hidden 2048, 18 layers) and the
project's word tokenizer, starts a server for it (default: vLLM from ``.venv-serve``, built by
``make serve-env``), and evaluates one generation task of the real suite (``harmful_gen`` on the
AdvBench-style prompts of tests/assets/eval) through ``eval.backend=server``. Prints the model's
size, the server's probed abilities, the number of answers and the seconds it took. Random
weights: the answers are noise; the check is that the path works at this size.

    make serve-env && .venv/bin/python serve/check_gpu.py               # a GPU machine
    .venv/bin/python serve/check_gpu.py --launch transformers --device cpu --small  # anywhere
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "tests" / "assets" / "eval"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--launch", default="vllm", choices=("vllm", "sglang", "transformers"))
    ap.add_argument("--python", default=str(REPO / ".venv-serve" / "bin" / "python"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="a 2-layer model of hidden 256 (CPU)")
    ap.add_argument("--out", default=None, help="folder for the model (default: a temporary one)")
    args = ap.parse_args()

    from hhh_bench.evaluation.harness import evaluate_model, materialize_tasks
    from hhh_bench.models import TinyModelSpec, build_tiny_model, build_word_tokenizer

    words = sorted({w for line in (ASSETS / "advbench.jsonl").read_text().splitlines()
                    for v in json.loads(line).values() if isinstance(v, str) for w in v.split()})  # fmt: skip
    tok = build_word_tokenizer(words, model_max_length=2048)
    spec = (TinyModelSpec(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048)
            if args.small else
            TinyModelSpec(hidden_size=2048, intermediate_size=8192, num_hidden_layers=18,
                          num_attention_heads=32, num_key_value_heads=8,
                          max_position_embeddings=2048))  # fmt: skip
    out = Path(args.out or tempfile.mkdtemp(prefix="serve-check-"))
    model = build_tiny_model(spec, tok, seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    del model
    include = materialize_tasks(out / "tasks", {"harmful_prompts": ASSETS / "advbench.jsonl"})
    server = {"launch": args.launch, "startup_timeout_s": 1200,
              **({"python": args.python} if args.launch != "transformers" else {})}  # fmt: skip
    t0 = time.perf_counter()
    res = evaluate_model(str(out / "model"), None, ["harmful_gen"], include_path=include,
                         apply_chat_template=True, backend="server", server=server,
                         server_dir=out, device=args.device, dtype="bfloat16",
                         gen_kwargs={"max_gen_toks": 32})  # fmt: skip
    answers = sum(len(v) for v in res["generations"].values())
    print(f"model: {n_params / 1e6:,.0f} M parameters, {out / 'model'}")
    print(f"server: {res['config']['server']}")
    print(f"harmful_gen: {answers} answers through the server in {time.perf_counter() - t0:.1f} s")
    if answers == 0:
        raise SystemExit("no answers came back")


if __name__ == "__main__":
    main()
