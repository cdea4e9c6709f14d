"""The pipeline: stage selection and the order of the stages.

``run(cfg)`` is what ``hhh-bench`` calls after Hydra composed ``cfg``; it is importable and
testable without Hydra (compose a config with ``hydra.compose`` or build one with OmegaConf).
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from hhh_bench.stages.common import CACHE

log = logging.getLogger("hhh_bench")

STAGES = ("data", "base", "train", "merge", "eval", "report", "diagnose", "all")
# Stages whose implementation has not landed yet: selecting one says so instead of failing late.
PENDING: dict[str, str] = {
    "train": "the training stage (issue 5)",
    "eval": "the evaluation stage (issue 6)",
    "report": "the report stage (issue 6)",
    "diagnose": "task-vector diagnostics (issue 9)",
}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the selected ``cfg.stage`` (and the stages it needs, from the cache where done)."""
    stage = cfg.stage
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {list(STAGES)}")
    out: dict[str, Any] = {}
    if stage in PENDING:
        raise NotImplementedError(f"stage={stage}: {PENDING[stage]} is not implemented yet")
    from hhh_bench.stages.data import run_data

    out["data"] = run_data(cfg)
    if stage in ("base", "all"):
        from hhh_bench.stages.base import run_base

        out["base"] = run_base(cfg, out["data"])
    if stage == "merge":
        from hhh_bench.stages.merge import run_merge

        out["merge"] = run_merge(cfg)
    if stage == "all":
        _summary(out)
    log.info("hhh-bench: %s", CACHE.summary())
    print(f"hhh-bench: {CACHE.summary()}")
    return out


def _summary(out: dict[str, Any]) -> None:
    base = out.get("base", {})
    lines = ["", "== hhh-bench summary ==", f"data: {out['data']['dir']}"]
    if base:
        lines.append(f"base model (θ0): {base['path']}")
        if "known_qa_test_after" in base:
            lines.append(
                "  known-fact test accuracy: untrained "
                f"{base['known_qa_test_before']['acc']:.3f} -> after SFT {base['known_qa_test_after']['acc']:.3f}"
            )
    print("\n".join(lines))
