"""The base stage: θ0, the model every specialist, mixture and merge starts from.

For ``model.kind=tiny`` it builds the word-level tokenizer from the data's vocabulary, builds the
tiny Llama from ``model.spec`` and SFTs it on the toy world's SFT corpus; for ``model.kind=hub``
it records the hub id / path (optionally SFT'd too if ``model.base_sft.enabled``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hhh_bench.provenance import atomic_dir, set_seed, write_provenance
from hhh_bench.stages.common import CACHE, is_done, log, read_json, stage_dir, stage_key, to_dict
from hhh_bench.stages.data import run_data


def run_base(cfg: DictConfig, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build (or reuse) θ0; return ``{"path", "key", "cached", ...}``."""
    data = data or run_data(cfg)
    mcfg = to_dict(cfg.model)
    seed = int(cfg.seed)
    if mcfg["kind"] == "hub" and not mcfg["base_sft"].get("enabled", False):
        if not mcfg.get("path"):
            raise ValueError("model.path must be a hub id or folder when model.kind=hub")
        return {"path": mcfg["path"], "key": stage_key("base", mcfg), "cached": True, "hub": True}
    if mcfg["kind"] not in ("tiny", "hub"):
        raise ValueError(f"model.kind must be 'tiny' or 'hub', got {mcfg['kind']!r}")
    key = stage_key("base", {"data": data["key"], "model": mcfg, "seed": seed})
    out = stage_dir(cfg, "base", key)
    if is_done(out):
        CACHE.hit("base")
        log.info("base: cached %s", out)
        return {"path": str(out), "key": key, "cached": True, **read_json(out / "base_info.json")}

    from hhh_bench.data.schema import read_jsonl
    from hhh_bench.evaluation.choice import score_items
    from hhh_bench.models import (
        TinyModelSpec,
        build_tiny_model,
        build_word_tokenizer,
        load_causal_lm,
        load_tokenizer,
    )
    from hhh_bench.train.sft import train_sft, train_sft_plain

    data_dir = Path(data["dir"])
    set_seed(seed)
    t0 = time.time()
    if mcfg["kind"] == "tiny":
        vocab = (data_dir / "vocab.txt").read_text().split()
        spec = TinyModelSpec(**mcfg["spec"])
        tokenizer = build_word_tokenizer(vocab, model_max_length=spec.max_position_embeddings)
        model = build_tiny_model(spec, tokenizer, seed=seed)
    else:
        tokenizer = load_tokenizer(mcfg["path"], trust_remote_code=bool(cfg.trust_remote_code))
        model = load_causal_lm(
            mcfg["path"],
            dtype=mcfg.get("dtype"),
            device=mcfg.get("device", "cpu"),
            trust_remote_code=bool(cfg.trust_remote_code),
            revision=mcfg.get("revision"),
        )
    info: dict[str, Any] = {"n_parameters": sum(p.numel() for p in model.parameters())}
    known = (
        read_jsonl(data_dir / "eval" / "known_qa_test.jsonl")
        if (data_dir / "eval").exists()
        else []
    )
    if known:
        info["known_qa_test_before"] = score_items(model, tokenizer, known)
    with atomic_dir(out) as tmp:
        sft = mcfg.get("base_sft", {})
        if sft.get("enabled", False):
            rows = read_jsonl(data_dir / "sft" / "train.jsonl")
            log.info(
                "base: SFT of %d parameters on %d conversations", info["n_parameters"], len(rows)
            )
            common = {
                "epochs": sft["epochs"],
                "learning_rate": sft["learning_rate"],
                "batch_size": sft["batch_size"],
                "weight_decay": sft["weight_decay"],
                "warmup_ratio": sft["warmup_ratio"],
                "lr_scheduler_type": sft["lr_scheduler_type"],
                "max_length": sft["max_length"],
                "seed": seed,
                "device": mcfg.get("device", "cpu"),
                "logging_steps": 50,
            }
            trainer = sft.get("trainer", "plain")
            if trainer == "plain":
                model, curve = train_sft_plain(model, tokenizer, rows, **common)
            elif trainer == "trl":
                model, curve = train_sft(
                    model, tokenizer, rows, tmp / "trainer", logger=None, **common
                )
            else:
                raise ValueError(
                    f"model.base_sft.trainer must be 'plain' or 'trl', got {trainer!r}"
                )
            curve.write(tmp / "loss_curve.jsonl")
            info["sft_final_loss"] = curve.losses()[-1] if curve.losses() else None
            import shutil

            shutil.rmtree(tmp / "trainer", ignore_errors=True)
        model.eval()
        if known:
            info["known_qa_test_after"] = score_items(model, tokenizer, known)
        info["seconds"] = round(time.time() - t0, 1)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "base_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        write_provenance(
            tmp, to_dict(cfg.model), seed=seed, stage="base", extra={"data_key": data["key"]}
        )
    CACHE.miss("base")
    if known:
        log.info(
            "base: known-fact test accuracy %.3f -> %.3f (%s)",
            info["known_qa_test_before"]["acc"],
            info["known_qa_test_after"]["acc"],
            out,
        )
    return {"path": str(out), "key": key, "cached": False, **info}
