"""The data stage: write the preference sets (toy world or public sources) with a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hhh_bench.provenance import atomic_dir, write_provenance
from hhh_bench.stages.common import CACHE, is_done, log, read_json, stage_dir, stage_key, to_dict


def data_key(cfg: DictConfig) -> str:
    """Key of the data stage: the world / sources config (noise is applied at training time)."""
    d = to_dict(cfg.data)
    payload = {k: v for k, v in d.items() if k not in ("noise", "dimensions")}
    return stage_key("data", payload)


def run_data(cfg: DictConfig) -> dict[str, Any]:
    """Generate (or reuse) the data folder; return ``{"dir", "key", "manifest", "cached"}``."""
    key = data_key(cfg)
    out = stage_dir(cfg, "data", key)
    if is_done(out):
        CACHE.hit("data")
        log.info("data: cached %s", out)
        return {
            "dir": str(out),
            "key": key,
            "manifest": read_json(out / "manifest.json"),
            "cached": True,
        }
    kind = cfg.data.kind
    with atomic_dir(out) as tmp:
        if kind == "toy3h":
            from hhh_bench.data.toy3h import Toy3HConfig, describe, generate

            world = Toy3HConfig.from_mapping(to_dict(cfg.data.world))
            manifest = generate(world, tmp)
            summary = describe(manifest)
        elif kind == "sources":
            from hhh_bench.data.real import write_source_sets

            manifest = write_source_sets(to_dict(cfg.data), tmp)
            summary = manifest.get("summary", "")
        else:
            raise ValueError(f"data.kind must be 'toy3h' or 'sources', got {kind!r}")
        write_provenance(tmp, to_dict(cfg.data), seed=int(cfg.seed), stage="data")
    CACHE.miss("data")
    log.info("data: wrote %s", out)
    print(summary)
    return {"dir": str(out), "key": key, "manifest": manifest, "cached": False}


def data_paths(data_dir: str | Path) -> dict[str, Path]:
    d = Path(data_dir)
    return {
        "sft": d / "sft" / "train.jsonl",
        "prefs": d / "prefs",
        "eval": d / "eval",
        "vocab": d / "vocab.txt",
    }
