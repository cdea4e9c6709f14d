"""The ``hhh-bench`` command: a thin Hydra wrapper around :func:`hhh_bench.pipeline.run`.

hhh-bench --cfg job                      # print the composed config
hhh-bench stage=data data=toy3h          # one stage alone
hhh-bench experiment=toy3h               # the whole pipeline
hhh-bench -m merge=ties,tsv merge.params.scaling=0.5,1.0   # a sweep (multirun)
hhh-bench -m experiment=merge_optuna     # an Optuna search (pip install -e '.[optuna]')
hhh-bench cache verify runs/default      # a subcommand by name (SUBCOMMANDS); Hydra otherwise
"""

from __future__ import annotations

import hashlib
import os
import re
import sys


def _offline_defaults() -> None:
    # Quiet, deterministic defaults; a user's own settings win.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")


VERBOSE_FLAGS = ("--verbose", "-v")


def _verbose() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("HHH_VERBOSE") == "1"


def console_settings(cfg) -> dict:
    """``console.verbosity`` (at least 2 under ``--verbose``) and ``console.progress`` of the
    run (docs/console.md), checked, and its root (where a log file goes if Hydra writes none)."""
    from hhh_bench.config import ConsoleConfig, load

    c = load(ConsoleConfig, dict(cfg.get("console") or {}), "console")
    verbosity = max(c.verbosity, 2) if _verbose() else c.verbosity
    return {"verbosity": verbosity, "progress": c.progress, "root": cfg.get("root")}


def job_name(override_dirname: str, num: int) -> str:
    """A multirun job's folder name: Hydra's ``override_dirname`` of the job (its overrides,
    ``merge=ties,merge.params.scaling=0.5``; ``root`` left out, conf/config.yaml), characters
    other than letters, digits and ``._,=+~@-`` as ``_``; a name over 96 characters is cut to 80
    and the full name's hash appended; ``job<num>`` when the job has no overrides."""
    name = re.sub(r"[^A-Za-z0-9._,=+~@-]", "_", override_dirname)
    if not name:
        return f"job{num}"
    if len(name) > 96:
        return f"{name[:80]}-{hashlib.sha256(override_dirname.encode()).hexdigest()[:12]}"
    return name


def multirun_job() -> str | None:
    """This Hydra job's name when it is a job of a multirun (``-m``), else None: its overrides
    (:func:`job_name`), the folder of its report."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    return job_name(str(hc.job.override_dirname), int(hc.job.num))


def task(cfg) -> float | None:
    """What one Hydra job runs: the pipeline, returning its objective (``stage=merge_eval``'s
    selection score) so a sweeper such as Optuna can optimize it; None for other stages.

    A bad input (a wrong path, value, file or model) ends the run with its message on stderr and
    exit status 2, no traceback (the traceback goes to the job's log file; ``--verbose`` or
    ``HYDRA_FULL_ERROR=1`` shows it). The console: :func:`hhh_bench.console.session`."""
    from hhh_bench import console
    from hhh_bench.pipeline import run

    bad_input = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, OSError)
    try:
        settings = console_settings(cfg)
    except ValueError as e:
        if _verbose():
            raise
        print(f"hhh-bench: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    with console.session(**settings):
        try:
            objective = run(cfg, job=multirun_job()).get("objective")
        except bad_input as e:
            if _verbose():
                raise
            console.log.error("the run stopped", exc_info=True)  # the log file only
            console.error(f"hhh-bench: error: {e}")
            console.error("(full traceback: rerun with --verbose)")
            raise SystemExit(2) from None
    return None if objective is None else float(objective)


def _cache(argv: list[str]) -> int:
    from hhh_bench.cachetool import main as cache_main

    return cache_main(argv)


SUBCOMMANDS = {"cache": _cache}
"""Subcommands by name (``hhh-bench cache verify ROOT``), each with its own ``--help``; any other
first argument is the Hydra form (``hhh-bench experiment=toy3h stage=...``), the default."""


def main() -> None:
    """Entry point of the console script and of ``python -m hhh_bench``."""
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        raise SystemExit(SUBCOMMANDS[sys.argv[1]](sys.argv[2:]))
    import hydra
    from omegaconf import DictConfig

    from hhh_bench.paths import conf_dir

    _offline_defaults()
    for flag in VERBOSE_FLAGS:  # ours, not Hydra's: tracebacks on errors, console.verbosity 2
        while flag in sys.argv:
            sys.argv.remove(flag)
            os.environ["HHH_VERBOSE"] = "1"

    @hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
    def _app(cfg: DictConfig) -> float | None:
        return task(cfg)

    _app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
