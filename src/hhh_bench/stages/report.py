"""The report stage: the results store -> ``<root>/report/`` (Markdown table, figures) + W&B.

    hhh-bench stage=report name=toy3h          # after the eval stage filled runs/toy3h/results.jsonl

The report folder is rewritten as a whole on every run (built in a temporary folder, then
swapped in), so it always matches the store it was made from.

In a multirun (``hhh-bench -m ...``) each job writes ``<root>/reports/<job>/``
(:func:`hhh_bench.cli.job_name`), its name in the report's title and W&B run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hhh_bench.core import console
from hhh_bench.core.codeid import code_identity
from hhh_bench.core.config import ReportConfig, load
from hhh_bench.core.content import verify, write_manifest
from hhh_bench.core.provenance import atomic_dir, config_hash
from hhh_bench.stages.common import log, to_dict
from hhh_bench.stages.eval import results_path
from hhh_bench.tracking.markdown import console_text


def report_dir(cfg: DictConfig, job: str | None = None) -> Path:
    """Where the report goes: ``<root>/report/``, or ``<root>/reports/<job>/`` for a job of a
    multirun (beside, not inside, the single run's folder, which is swapped as a whole)."""
    return Path(cfg.root) / "report" if job is None else Path(cfg.root) / "reports" / job


def run_report(cfg: DictConfig, job: str | None = None) -> dict[str, Any]:
    """Render the report of ``<root>/results.jsonl`` into :func:`report_dir` and log it to W&B
    (unless ``logger=none``). ``job``: the name of a multirun job
    (:func:`hhh_bench.cli.job_name`), None outside a multirun.

    Also draws the task-vector diagnostics of ``<root>/diagnostics.jsonl`` (heatmaps per
    statistic, tables per layer type) when the merges wrote any.

    Uses ``cfg.eval.report_split`` (the numbers shown), ``cfg.eval.select_split`` and
    ``cfg.eval.select_by`` (how a family's configuration is chosen), ``cfg.logger``,
    ``cfg.name`` and ``cfg.root``.

    The console shows the main table, the report's paths and, as its last line, the answer to
    "mix or merge?" (:mod:`hhh_bench.tracking.answer`).

    Returns:
        ``{"title", "dir", "report_md", "radar", "pareto", "conflict", "diagnostics_figures",
        "main_table", "summary", "answer", "answer_line", "n_rows", "wandb_dir"}`` (paths as
        strings; ``wandb_dir`` None when logging is off; ``answer`` None without an answer).

    Raises:
        FileNotFoundError: the store does not exist or holds no rows.
    """
    console.step_started("report")
    from hhh_bench.stages.diagnose import diagnostics_path
    from hhh_bench.tracking.report import build_report
    from hhh_bench.tracking.store import read_diagnostics, scan_results
    from hhh_bench.tracking.sweeps import sweep_table
    from hhh_bench.tracking.wandb_log import log_experiment

    store = results_path(cfg)
    rcfg = load(ReportConfig, to_dict(cfg.get("report") or {}))
    scan = scan_results(store, skip_invalid=rcfg.skip_invalid)  # an invalid line: named, or skipped
    rows = scan.latest()
    if scan.skipped:  # on the console too, not only under report.md's table
        n = len(scan.skipped)
        log.warning("report: skipped %d line(s) of %s: %s", n, store, "; ".join(
            f"line {s.line}: {s.reason}" for s in scan.skipped[:3]) + (" ..." if n > 3 else ""))  # fmt: skip
    if not rows:
        raise FileNotFoundError(
            f"no results in {store}; run the eval stage first (hhh-bench stage=eval ...)"
        )
    ecfg = to_dict(cfg.eval)
    check_scored_as_configured(rows, ecfg)
    out = report_dir(cfg, job)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise FileExistsError(
            f"{out} is {'a symbolic link' if out.is_symlink() else 'a file'}, not the report's "
            "folder: move it aside (the report replaces only a report folder it wrote)"
        )
    _check_only_report_files(out)
    key = _report_key(cfg, store, diagnostics_path(cfg), job, rcfg.skip_invalid,
                      rcfg.judge_failure_threshold, rcfg.interval)  # fmt: skip
    done = _cached(out, key)
    if done is not None:  # the same store, diagnostics and settings: the report on disk is theirs
        _show(cfg, store, done, cached=True)
        return done
    title = str(cfg.name) + (f" [{job}]" if job else "")
    from hhh_bench.core.scoring import suite_tasks
    from hhh_bench.tracking.entries import config_setup

    try:  # the setup this config scores with: its rows are the tables' (battery 14, F4)
        mine = config_setup(ecfg, suite_tasks(ecfg, ecfg.get("report_split", "test")))
    except ValueError:
        mine = None
    with atomic_dir(out, overwrite=True) as tmp:
        rep = build_report(
            rows, tmp, experiment=title, report_split=ecfg.get("report_split", "test"),
            select_split=ecfg.get("select_split"), select_by=ecfg.get("select_by", "average"),
            diagnostics=read_diagnostics(diagnostics_path(cfg)),
            skipped=[*scan.skipped, *scan.repeated()],
            judge_failure_threshold=rcfg.judge_failure_threshold, interval=rcfg.interval,
            config_setup=mine,
        )  # fmt: skip
    files = _files_in(rep, out)
    wandb_dir = log_experiment(
        rows, logger_cfg=to_dict(cfg.logger), root=cfg.root, name=str(cfg.name), job=job,
        summary=rep["summary"], config={"eval": ecfg, "n_rows": len(rows)},
        files=[files["radar"], files["pareto"], files["conflict"],
               *files["diagnostics_figures"].values(), *files["sweep_figures"].values()],
        tables={"sweeps": sweep_table(rep["sweeps"])} if rep["sweeps"] else None,
    )  # fmt: skip
    result = {
        "title": title, **files,
        **{k: rep[k] for k in ("main_table", "summary", "answer", "answer_line")},
        "n_rows": len(rows), "wandb_dir": str(wandb_dir) if wandb_dir else None,
        **({"skipped": len(scan.skipped)} if scan.skipped else {}),
        **({"setup_line": rep["setup_line"]} if rep.get("setup_line") else {}),
        **({"unverified_rows": rep["unverified_rows"]} if rep.get("unverified_rows") else {}),
        **({"untested_cells": True} if rep.get("untested_cells") else {}),
    }  # fmt: skip
    (out / _KEY_FILE).write_text(json.dumps({"key": key, "result": result}, default=str))
    write_manifest(out, None)  # last: a later reuse checks the report's files against it
    log.info("report: wrote %s", out)
    _show(cfg, store, result, cached=False)
    return result


def _check_only_report_files(out: Path) -> None:
    """The report folder is replaced whole: files a user put there (notes, a figure kept for a
    paper) would be deleted with it. Refuse, naming them, unless the folder holds only what an
    earlier report wrote (its ``checksums.json`` lists it)."""
    from hhh_bench.core.content import MANIFEST, _walk

    if not out.is_dir():
        return
    try:
        listed = set(json.loads((out / MANIFEST).read_text()).get("files") or {})
    except (OSError, ValueError, AttributeError):
        return  # an older report without its list of files: replaced as before
    theirs = sorted(
        f.relative_to(out).as_posix() for f in _walk(out)
        if f.name != MANIFEST and f.relative_to(out).as_posix() not in listed
    )  # fmt: skip
    if theirs:
        raise FileExistsError(
            f"{out} holds file(s) the report did not write ({', '.join(theirs[:3])}"
            f"{' ...' if len(theirs) > 3 else ''}): the report replaces its folder whole; move "
            "them aside first"
        )


def check_scored_as_configured(rows: list[dict[str, Any]], ecfg: dict[str, Any]) -> None:
    """The report shows the scores and choices the rows were made with: a config that scores
    (``eval.dimensions``, ``eval.metric(s)``) as no stored row of its suite was scored, or
    chooses (``eval.select_by``) otherwise than the pipeline chose, would have the report
    label them with what it says, not what they are. (Rows of several scorings are tables of
    their own: the report partitions the store by evaluation setup.) Raise ``ValueError``
    naming the first difference and how to get rows made that way."""
    from hhh_bench.core.scoring import suite_tasks

    select_by = ecfg.get("select_by", "average")
    chosen = sorted({str((r.get("extra") or {}).get("selected_by")) for r in rows
                     if (r.get("extra") or {}).get("selected_by")})  # fmt: skip
    if chosen and chosen != [select_by]:
        raise ValueError(
            f"eval.select_by={select_by}, but the pipeline chose each family's configuration by "
            f"{' and '.join(chosen)} (the rows' extra.selected_by): the report would call those "
            f"choices 'by {select_by}'. Run the pipeline with eval.select_by={select_by} (stage="
            "all; its stages are reused from the cache), or report with "
            f"eval.select_by={chosen[0]}"
        )
    select_split = ecfg.get("select_split")
    chosen_on = sorted({str((r.get("extra") or {}).get("selected_on")) for r in rows
                        if (r.get("extra") or {}).get("selected_on")})  # fmt: skip
    if chosen_on and select_split and chosen_on != [select_split]:
        raise ValueError(
            f"eval.select_split={select_split}, but the pipeline chose each family's "
            f"configuration on {' and '.join(chosen_on)} (the rows' extra.selected_on): the "
            f"report would say 'chosen on {select_split}' of choices made on {chosen_on[0]}. "
            f"Report with eval.select_split={chosen_on[0]}, or run the pipeline with "
            f"eval.select_split={select_split}"
        )
    now: dict[str, list[tuple[str, str, float, str]]] = {}
    stored: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
    for r in rows:
        split, specs = r.get("split"), r.get("task_specs")
        if r.get("suite") != ecfg.get("name") or not isinstance(specs, list) or not split:
            continue
        if split not in now:
            try:
                now[split] = sorted((t.name, t.dimension, t.weight, t.metric)
                                    for t in suite_tasks(ecfg, split))  # fmt: skip
            except ValueError:
                continue
        key = tuple(sorted((str(t.get("name")), str(t.get("dimension")), float(t.get("weight", 0)),
                            str(t.get("metric"))) for t in specs if isinstance(t, dict)))  # fmt: skip
        stored.setdefault(split, {}).setdefault(key, r)
    for split, setups in stored.items():
        if tuple(now[split]) in setups:
            continue  # rows scored as configured exist (others are tables of their own)
        key, r = next(iter(setups.items()))
        differ = sorted(set(now[split]) ^ set(key))[0]
        raise ValueError(
            f"no row of the store ({split}) was scored as this config scores "
            f"({_specs(now[split])}); row {r.get('name')!r}, for one, was scored with "
            f"{_specs(list(key))} (first difference: task {differ[0]}). The report shows scores "
            "as they were computed when each model was evaluated: run stage=all (or stage=eval) "
            "with these eval settings to score the models again (the evaluations are reused from "
            "the cache), or report with the settings the rows were scored with"
        )


def _specs(specs: list[tuple[str, str, float, str]]) -> str:
    return ", ".join(f"{d}.{n}={w:g} ({m})" for n, d, w, m in specs)


REPORT_CODE = (
    "hhh_bench.tracking",
    "hhh_bench.core.seedstats",
    "hhh_bench.core.stats",
    "hhh_bench.core.uncertainty",
    "hhh_bench.core.items",
    "hhh_bench.core.environment",
)
"""The code a report is computed by (in its key: a rerun after a change of it rebuilds)."""

_KEY_FILE = "report_key.json"
"""What the report in ``<root>/report/`` was built from, and what the stage returned."""


def _report_key(
    cfg: DictConfig,
    store: Path,
    diagnostics: Path,
    job: str | None,
    skip_invalid: bool = False,
    judge_failure_threshold: float = 0.05,
    interval: str = "t",
) -> str:
    from hhh_bench import __version__

    def digest(p: Path) -> str | None:
        return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None

    ecfg = to_dict(cfg.eval)
    return config_hash({
        "store": digest(store), "diagnostics": digest(diagnostics), "name": str(cfg.name),
        # the splits and choice, and the setup whose rows the tables show (battery 14, F4)
        "eval": {k: ecfg.get(k) for k in ("report_split", "select_split", "select_by", "limit",
                 "num_fewshot", "apply_chat_template", "backend", "dimensions", "metric",
                 "metrics", "task_template")},  # fmt: skip
        "logger": to_dict(cfg.logger), "version": __version__,
        "code": code_identity(*REPORT_CODE),  # a changed report or answer: built anew
        # and where W&B would write:
        "wandb_env": {k: os.environ.get(k) for k in ("WANDB_DIR", "WANDB_MODE", "WANDB_PROJECT")},
        **({"job": job} if job else {}), **({"skip_invalid": True} if skip_invalid else {}),
        **({"judge_failure_threshold": judge_failure_threshold}
           if judge_failure_threshold != 0.05 else {}),  # the default: keys as before
        **({"interval": interval} if interval != "t" else {}),
    })  # fmt: skip


REPORT_FILES = ("report_md", "radar", "pareto", "conflict")
REPORT_FIGURES = ("diagnostics_figures", "sweep_figures")


def _files_in(result: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """A report's files (:data:`REPORT_FILES`, the figure maps :data:`REPORT_FIGURES`, its
    ``dir``) as they are in ``out``, its folder once in place: what is recorded and shown,
    built or read back (a copied or moved root names its own files, never the old root's)."""
    files: dict[str, Any] = {
        k: str(out / Path(str(result[k])).name) for k in REPORT_FILES if result.get(k)
    }
    for k in REPORT_FIGURES:
        files[k] = {n: str(out / Path(str(p)).name) for n, p in (result.get(k) or {}).items()}
    return {**files, "dir": str(out)}


def _cached(out: Path, key: str) -> dict[str, Any] | None:
    try:
        saved = json.loads((out / _KEY_FILE).read_text())
    except (OSError, ValueError):
        return None
    result = dict(saved.get("result") or {})
    result.update(_files_in(result, out))  # a copied or moved root's own files, never the old's
    if saved.get("key") != key or not Path(str(result.get("report_md"))).is_file():
        return None
    problems = verify(out).problems
    if problems:  # edited since it was written: derived, so built again (never shown as is)
        console.say(f"report ({out}): {problems[0]}: rebuilding it")
        return None
    return result


def _show(cfg: DictConfig, store: Path, rep: dict[str, Any], *, cached: bool) -> None:
    """The console: the report's job line, the main table, the files, and the answer last."""
    paths = {k: rep[k] for k in REPORT_FILES}
    console.step_done("report", cached=cached, where=paths["report_md"],
                      note=f"{rep['n_rows']} rows"
                      + (" (unchanged since the store was last reported)" if cached else ""))  # fmt: skip
    lines = [
        "",
        f"== hhh-bench report: {rep.get('title', cfg.name)} ({rep['n_rows']} rows from {store}) ==",
        console_text(rep["main_table"]),  # no Markdown escapes on a terminal (battery 11)
        "",
        *(f"{k}: {v}" for k, v in paths.items()),
    ]
    if rep.get("wandb_dir"):
        lines.append(f"wandb run: {rep['wandb_dir']}")
    if rep.get("skipped"):
        # with skip_invalid false only a torn last write is skipped (battery 11, s05)
        why = ("report.skip_invalid=true" if bool((cfg.get("report") or {}).get("skip_invalid"))
               else "a torn last write, set aside by the next write; see report.md")  # fmt: skip
        lines.append(f"skipped {rep['skipped']} invalid line(s) of the store ({why})")
    if rep.get("setup_line"):
        lines.append(str(rep["setup_line"]))
    if rep.get("unverified_rows"):  # battery 14, F12: said on the console too
        lines.append(f"{rep['unverified_rows']} row(s) of the table carry no digest (read "
                     "unchecked; report.md names them)")  # fmt: skip
    if rep.get("untested_cells"):  # a cell marked entries.NO_TEST
        lines.append("?: no paired test for that cell, a row's eval folder is missing from this "
                     "root (report.md names them): run stage=eval again to rebuild it")  # fmt: skip
    console.say("\n".join(lines), level=console.QUIET)
    console.say(rep["answer_line"], level=console.QUIET)  # last: mix or merge, and how sure
