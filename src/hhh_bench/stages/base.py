"""The base stage: θ0, the model every specialist, mixture and merge starts from.

For ``model.kind=tiny`` it builds the word-level tokenizer from the data's vocabulary, builds the
tiny Llama from ``model.spec`` and SFTs it on the toy world's SFT corpus; for ``model.kind=hub``
it records the hub id / path (SFT'd too if ``model.base_sft.enabled`` is true; ``auto``,
tiny.yaml's, SFTs a tiny model only). Output,
``<root>/base/<key>/``: the model and tokenizer, ``loss_curve.jsonl``, ``base_info.json`` (known-
fact accuracy before and after the SFT, parameter count, seconds), ``provenance.json``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hhh_bench.core.config import ModelConfig
from hhh_bench.core.provenance import set_seed
from hhh_bench.core.schema import read_jsonl
from hhh_bench.stages.common import (
    cached_stage,
    code_identity,
    content_of,
    group,
    keyed,
    log,
    model_identity,
    stage_key,
    to_dict,
)
from hhh_bench.stages.data import run_data

BASE_CODE = ("hhh_bench.stages.base", "hhh_bench.models", "hhh_bench.train.sft",
             "hhh_bench.train.common", "hhh_bench.evaluation.choice")  # fmt: skip
"""The code the base stage runs (its key holds these files' content)."""


def run_base(cfg: DictConfig, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build (or reuse) θ0; return ``{"path", "key", "cached", ...}``."""
    data = data or run_data(cfg)
    mcfg = group(cfg, "model", ModelConfig)
    if mcfg.kind == "hub" and not mcfg.sft_enabled:
        content = model_identity(str(mcfg.path), mcfg.revision)
        return {
            "path": mcfg.path,
            "key": stage_key("base", {"model": keyed(cfg.model), "content": content}),
            "content": content,
            "cached": True,
            "hub": True,
        }
    seed = int(cfg.seed)
    payload = {"data": content_of(data), "model": keyed(cfg.model), "seed": seed,
               "code": code_identity(*BASE_CODE)}  # fmt: skip

    def compute(tmp: Path) -> dict[str, Any]:
        from hhh_bench.evaluation.choice import score_items
        from hhh_bench.train.sft import sft_base

        data_dir = Path(data["dir"])
        set_seed(seed)
        t0 = time.time()
        model, tokenizer = _build_or_load(cfg, mcfg, data_dir, seed)
        info: dict[str, Any] = {"n_parameters": sum(p.numel() for p in model.parameters())}
        known_file = data_dir / "eval" / "known_qa_test.jsonl"
        known = read_jsonl(known_file) if known_file.is_file() else []
        if known:
            info["known_qa_test_before"] = score_items(model, tokenizer, known)
        if mcfg.sft_enabled:
            rows = read_jsonl(data_dir / "sft" / "train.jsonl")
            log.info(
                "base: SFT of %d parameters on %d conversations", info["n_parameters"], len(rows)
            )
            model, curve = sft_base(
                model, tokenizer, rows, mcfg.base_sft, seed=seed, device=mcfg.device,
                scratch=tmp / "trainer",
            )  # fmt: skip
            curve.write(tmp / "loss_curve.jsonl")
            info["sft_final_loss"] = curve.losses()[-1] if curve.losses() else None
            info["sft_timings"] = curve.timings
            shutil.rmtree(tmp / "trainer", ignore_errors=True)
        model.eval()
        if known:
            info["known_qa_test_after"] = score_items(model, tokenizer, known)
            log.info(
                "base: known-fact test accuracy %.3f -> %.3f",
                info["known_qa_test_before"]["acc"], info["known_qa_test_after"]["acc"],
            )  # fmt: skip
        info["seconds"] = round(time.time() - t0, 1)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        return info

    run = cached_stage(
        cfg.root, "base", payload, compute, result_file="base_info.json", seed=seed,
        provenance=to_dict(cfg.model), extra={"data_key": data["key"]}, inputs=[data["dir"]],
    )  # fmt: skip
    return {"path": str(run.dir), "key": run.key, "content": run.identity, "cached": run.cached,
            **run.info}  # fmt: skip


def _build_or_load(
    cfg: DictConfig, mcfg: ModelConfig, data_dir: Path, seed: int
) -> tuple[Any, Any]:
    """The tiny model built from the world's vocabulary, or the hub model loaded."""
    from hhh_bench.models import (
        TinyModelSpec,
        build_tiny_model,
        build_word_tokenizer,
        load_causal_lm,
        load_tokenizer,
    )

    if mcfg.kind == "tiny":
        vocab = (data_dir / "vocab.txt").read_text().split()
        spec = TinyModelSpec(**(mcfg.spec or {}))
        tokenizer = build_word_tokenizer(vocab, model_max_length=spec.max_position_embeddings)
        return build_tiny_model(spec, tokenizer, seed=seed), tokenizer
    trust = bool(cfg.trust_remote_code)
    tokenizer = load_tokenizer(mcfg.path, trust_remote_code=trust)
    model = load_causal_lm(
        mcfg.path, dtype=mcfg.dtype, device=mcfg.device, trust_remote_code=trust,
        revision=mcfg.revision,
    )  # fmt: skip
    return model, tokenizer
