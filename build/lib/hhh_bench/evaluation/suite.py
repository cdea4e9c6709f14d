"""An evaluation suite resolved against a run: which lm-eval tasks, which data files they read,
and the content key of an evaluation (what decides the metrics, nothing that only scores them)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hhh_bench.evaluation.scoring import TaskSpec, suite_tasks
from hhh_bench.provenance import config_hash, file_hash

# Eval-config fields that only steer selection and reporting, never the numbers of one model.
REPORT_ONLY = ("name", "select_split", "report_split", "select_by", "model")
# Fields that decide the scores but not the lm-eval metrics (recomputed on every call).
SCORING_ONLY = ("dimensions", "metric", "metrics")


def data_paths(eval_cfg: Mapping[str, Any], data: Mapping[str, Any] | None) -> dict[str, Path]:
    """Placeholder name -> data path for :func:`materialize_tasks`."""
    paths: dict[str, Path] = {}
    if data and data.get("dir") and (Path(data["dir"]) / "eval").is_dir():
        paths["toy3h_eval"] = Path(data["dir"]) / "eval"
    for name, path in (eval_cfg.get("data_files") or {}).items():
        if path:
            paths[name] = Path(path)
    return paths


def include_paths(eval_cfg: Mapping[str, Any]) -> list[str]:
    """``eval.include_paths`` as a list (None or absent: none)."""
    paths = eval_cfg.get("include_paths") or []
    if isinstance(paths, (str, Path)):
        raise ValueError(
            f"eval.include_paths must be a list of folders, got {paths!r}; write "
            f"eval.include_paths=[{paths}]"
        )
    return [str(p) for p in paths]


def known_tasks(eval_cfg: Mapping[str, Any], specs: list[TaskSpec]) -> dict[str, dict]:
    """Shipped and user tasks by name; a requested task found in neither is an error naming it
    (unless lm-eval's built-ins are indexed too: ``include_defaults``, checked by lm-eval)."""
    from hhh_bench.evaluation.harness import shipped_tasks, user_tasks

    include = include_paths(eval_cfg)
    known = {**shipped_tasks(), **user_tasks(include)}
    if eval_cfg.get("include_defaults"):
        return known
    template = eval_cfg.get("task_template") or "{task}"
    for s in specs:
        if s.name not in known:
            where = f"eval.include_paths {include}" if include else "no eval.include_paths set"
            raise ValueError(
                f"eval.dimensions.{s.dimension} asks for lm-eval task {s.name!r} (task_template "
                f"{template!r}), which is neither a shipped task nor defined in a user task "
                f"folder ({where}); add the folder of its YAML to eval.include_paths, fix the "
                "name, or set eval.include_defaults=true for an lm-eval built-in"
            )
    return known


def needed_files(
    specs: list[TaskSpec], paths: Mapping[str, Path], known: Mapping[str, dict] | None = None
) -> dict[str, Path]:
    """The data files of the requested tasks (shipped, or the user's in ``known``); raises if
    one is missing on disk."""
    from hhh_bench.evaluation.harness import shipped_tasks

    known = shipped_tasks() if known is None else known
    needed: dict[str, Path] = {}
    for s in specs:
        for ph in known.get(s.name, {}).get("placeholders", []):
            if ph not in paths and ph == "toy3h_eval":
                raise ValueError(
                    f"eval task {s.name!r} reads the toy world's <data dir>/eval/ items, which "
                    "this data has not: use data=toy3h, or an eval suite for real data"
                )
            if ph not in paths:
                raise ValueError(
                    f"eval task {s.name!r} reads data '{ph}', but eval.data_files.{ph} is not set"
                )
            if not paths[ph].exists():
                raise FileNotFoundError(
                    f"eval task {s.name!r}: data path {paths[ph]} (eval.data_files.{ph}) does not "
                    "exist; point it at a JSONL file in the dataset's schema "
                    "(see src/hhh_bench/evaluation/tasks/real/)"
                )
            needed[ph] = paths[ph]
    return needed


def fingerprint(path: Path) -> str:
    """Content hash of a data file; for a folder (toy3h's eval/), of its JSONL files."""
    if path.is_file():
        return file_hash(path)
    return config_hash({p.name: file_hash(p) for p in sorted(path.glob("*.jsonl"))})


def eval_payload(
    ecfg: Mapping[str, Any],
    model: Mapping[str, Any],
    data: Mapping[str, Any] | None,
    split: str,
    dtype: str | None,
) -> dict[str, Any]:
    """What the eval stage's cache key is made of: the model's key, the data's key, the split,
    the task list, the harness settings that change the numbers, the dtype, the custom data
    files' content and the user task folders' content (not where they are)."""
    from hhh_bench.evaluation.harness import tasks_fingerprint

    specs = suite_tasks(ecfg, split)
    files = needed_files(specs, data_paths(ecfg, data), known_tasks(ecfg, specs))
    harness = {k: v for k, v in ecfg.items() if k not in (*REPORT_ONLY, *SCORING_ONLY)}
    harness.pop("data_files", None)
    harness.pop("batch_size", None)  # padding only: does not change the numbers
    harness.pop("include_paths", None)  # by content below, not by where the folders are
    payload = {
        "model": model["key"],
        "data": (data or {}).get("key"),
        "split": split,
        "tasks": sorted({s.name for s in specs}),
        "harness": harness,
        "dtype": dtype,
        "files": {k: fingerprint(v) for k, v in sorted(files.items())},
    }
    include = include_paths(ecfg)
    if include:  # absent when unused, so the keys of runs without user tasks do not change
        payload["user_tasks"] = tasks_fingerprint(include)
    return payload
