"""Helpers shared by the stages: keys, cached output folders, logging."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hhh_bench.provenance import config_hash

log = logging.getLogger("hhh_bench")

# Bump when a stage's output format or semantics change, so old cache entries are not reused.
STAGE_VERSIONS = {"data": 2, "base": 1, "train": 1, "merge": 1, "eval": 1, "diagnose": 1}


def to_dict(node: Any) -> Any:
    """Resolved plain-Python copy of a config node (or the value itself)."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def stage_key(stage: str, payload: Any) -> str:
    """The content key of a stage run: its version, its resolved config and its inputs' keys."""
    return config_hash(
        {"stage": stage, "version": STAGE_VERSIONS.get(stage, 1), "payload": payload}
    )


def model_identity(path: str) -> str:
    """Content identity of a model input for stage keys: the hash of a local folder's weight and
    JSON files (:func:`hhh_bench.merging.sources.input_identity`), or ``hub:<id>``."""
    from hhh_bench.merging.sources import input_identity

    p = Path(path)
    return input_identity(p) if p.is_dir() else f"hub:{path}"


def stage_dir(cfg: DictConfig, stage: str, key: str) -> Path:
    return Path(cfg.root) / stage / key


def is_done(path: Path) -> bool:
    """A stage folder is complete iff it exists (it is renamed into place only when complete)."""
    return (path / "provenance.json").is_file()


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


class CacheCounter:
    """Counts stages served from the cache vs computed, for the run's log line."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.misses: dict[str, int] = {}

    def hit(self, stage: str) -> None:
        self.hits[stage] = self.hits.get(stage, 0) + 1

    def miss(self, stage: str) -> None:
        self.misses[stage] = self.misses.get(stage, 0) + 1

    def summary(self) -> str:
        h, m = sum(self.hits.values()), sum(self.misses.values())
        return f"{h} stage(s) from the cache, {m} computed"


CACHE = CacheCounter()
