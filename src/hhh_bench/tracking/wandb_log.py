"""Weights & Biases logging: one run per experiment with a ``wandb.Table`` of every result row.

The results store stays the source of truth (offline W&B writes no summary file); W&B is a view.
The mode is the logger config's ``mode`` if set, else ``$WANDB_MODE`` if the user set it, else
``offline`` (files under ``$WANDB_DIR`` or ``<root>/wandb``, in ``wandb/offline-run-*``;
``wandb sync`` uploads them later). Every run of a job shares that folder and the experiment's
group; the report run has a fixed id per experiment root, so a rerun resumes it.
``logger.name: none`` (or no logger config) logs nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hhh_bench.core.provenance import config_hash


def wandb_mode(logger_cfg: Mapping[str, Any] | None) -> str | None:
    """The W&B mode to use, or None when logging is off (``logger=none``)."""
    if not logger_cfg or logger_cfg.get("name", "none") in ("none", None):
        return None
    mode = logger_cfg.get("mode") or os.environ.get("WANDB_MODE") or "offline"
    if mode not in ("online", "offline", "disabled"):
        # battery 11, env02: name where the value came from (the environment, when unset here)
        where = "logger.mode" if logger_cfg.get("mode") else "the environment variable WANDB_MODE"
        raise ValueError(f"{where} must be online | offline | disabled, got {mode!r}")
    return mode


def wandb_dir(root: str | Path) -> Path:
    """The W&B directory of every run of a job (trainers' and the report's; W&B writes its
    ``wandb/`` folder inside it): ``$WANDB_DIR`` when set (the user's choice), else
    ``<root>/wandb``; never the current folder."""
    env = os.environ.get("WANDB_DIR")
    path = Path(env) if env else Path(root).resolve() / "wandb"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # it, or a folder above it, is a file
        what = "$WANDB_DIR" if env else "the W&B folder <root>/wandb"
        raise NotADirectoryError(
            f"{what} {path} is not a folder (it or a folder above it is a file): point "
            "WANDB_DIR at a writable folder"
        ) from None
    return path


def report_run_id(root: str | Path, name: str, job: str | None = None) -> str:
    """The report run's W&B id: one per (experiment root, experiment name, multirun job), so
    that a rerun resumes and updates its report run instead of adding one, and the jobs of a
    multirun each keep their own."""
    key = {"root": str(Path(root).resolve()), "name": name, **({"job": job} if job else {})}
    return "report-" + config_hash(key, length=16)


def setup_trainer_env(
    root: str | Path, logger_cfg: Mapping[str, Any] | None, group: str | None = None
) -> None:
    """Environment for a trainer's W&B logging: files under :func:`wandb_dir`, project, entity
    and mode from the logger config (the user's own ``WANDB_*`` settings win for project/entity),
    the run in ``group`` (the experiment's name: one group per pipeline run, the report's too)."""
    os.environ["WANDB_DIR"] = str(wandb_dir(root))
    lg = dict(logger_cfg or {})
    if lg.get("project"):
        os.environ.setdefault("WANDB_PROJECT", str(lg["project"]))
    if lg.get("entity"):
        os.environ.setdefault("WANDB_ENTITY", str(lg["entity"]))
    if group:
        os.environ["WANDB_RUN_GROUP"] = str(group)
    mode = wandb_mode(lg)
    if mode:
        os.environ["WANDB_MODE"] = mode


@dataclass(frozen=True)
class TrainerRun:
    """A trainer's W&B run around its fit (:func:`hhh_bench.train.run.train_model`'s
    ``tracker``): :func:`setup_trainer_env` before, :func:`finish_run` after."""

    root: str | Path
    logger_cfg: Mapping[str, Any] | None
    group: str | None = None

    def start(self) -> None:
        setup_trainer_env(self.root, self.logger_cfg, group=self.group)

    def finish(self) -> None:
        finish_run()


def finish_run() -> None:
    """Close the trainer's W&B run, if one is open."""
    try:
        import wandb
    except ImportError:  # pragma: no cover
        return
    if wandb.run is not None:
        wandb.finish()


def _cell(value: Any) -> Any:
    """A table cell: scalars as they are, lists and dicts as JSON text, NaN as None."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def rows_to_table_data(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns and data of the results table: nested dicts flattened to dotted columns
    (``tasks.toy3h_known_qa_test.acc``, ``params.density``), lists as JSON text."""

    def flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, Mapping) and v:
                out.update(flat(v, key + "."))
            else:
                out[key] = v
        return out

    flats = [flat(r) for r in rows]
    columns: list[str] = []
    for f in flats:
        columns += [c for c in f if c not in columns]
    return columns, [[_cell(f.get(c)) for c in columns] for f in flats]


def log_experiment(
    rows: Sequence[Mapping[str, Any]],
    *,
    logger_cfg: Mapping[str, Any] | None,
    root: str | Path,
    name: str,
    summary: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    files: Sequence[str | Path] = (),
    job: str | None = None,
    tables: Mapping[str, tuple[Sequence[str], Sequence[Sequence[Any]]]] | None = None,
) -> Path | None:
    """Log an experiment's results table (and summary metrics, report files) as one W&B run.

    Args:
        rows: the result rows (:func:`hhh_bench.tracking.store.read_results`).
        logger_cfg: the ``logger`` config (``name``, ``project``, ``entity``, ``mode``).
        root: the experiment root; the run is written under :func:`wandb_dir` (``$WANDB_DIR``
            or ``<root>/wandb``) with the id :func:`report_run_id` (a rerun resumes it).
        name: the experiment name (the run's name and group).
        summary: scalar summary metrics (e.g. ``"TIES/average": 0.71``).
        config: the run config to record.
        files: report files to attach (images are logged as ``wandb.Image``).
        job: a multirun job's name: the run is ``<name>/<job>`` in the group ``name``, with an
            id of its own.
        tables: more tables to log, ``{key: (columns, data)}`` (the report's ``sweeps``).

    Returns:
        The run's local folder (``<wandb_dir>/wandb/<offline-run-...>``), or None when logging
        is off or disabled (``mode: disabled`` writes no folder).
    """
    mode = wandb_mode(logger_cfg)
    if mode is None:
        return None
    import wandb

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=logger_cfg.get("project") or "hhh-bench",  # type: ignore[union-attr]
        entity=logger_cfg.get("entity"),  # type: ignore[union-attr]
        name=f"{name}/{job}" if job else name,
        group=name,
        job_type="report",
        dir=str(wandb_dir(root)),
        id=report_run_id(root, name, job),
        resume="allow",
        mode=mode,
        config=dict(config or {}),
        reinit="create_new",
        settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
    )
    try:
        columns, data = rows_to_table_data(rows)
        payload: dict[str, Any] = {"results": wandb.Table(columns=columns, data=data)}
        for key, (cols, body) in (tables or {}).items():
            payload[key] = wandb.Table(columns=list(cols), data=[list(r) for r in body])
        for f in files:
            p = Path(f)
            if p.suffix.lower() == ".png" and p.is_file():
                payload[f"report/{p.stem}"] = wandb.Image(str(p))
        run.log(payload)
        if summary:
            run.summary.update({k: v for k, v in summary.items() if _cell(v) is not None})
        run_dir = Path(run.dir).parent if run.dir else None
    finally:
        run.finish()
    # a disabled run writes nothing: no folder to name (battery 16, B7: a path that never was)
    return run_dir if mode != "disabled" else None
