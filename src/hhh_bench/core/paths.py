"""Where the project's configuration lives: the top-level ``conf/`` of a checkout (an editable
install reads it there), shipped inside the wheel as ``hhh_bench/conf/`` (setup.py's build hook),
so an installed hhh-bench has its configs wherever it runs."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # src/hhh_bench (this file is in core/)
WHEEL_CONF_DIR = PACKAGE_DIR / "conf"  # an installed wheel
CHECKOUT_CONF_DIR = PACKAGE_DIR.parents[1] / "conf"  # a checkout: <repo>/conf


NOT_CHOICES = frozenset({"source"})
"""Folders of ``conf/`` that are no config group a run chooses from: ``source/`` holds the
public datasets a data option lists (``data.sources``). Left out of ``--help`` and
``hhh-bench list groups``; ``source=...`` on the command line is refused (:mod:`hhh_bench.cli`)."""


def conf_dir() -> Path:
    """The Hydra config folder: ``$HHH_BENCH_CONF`` if set, else the installed package's
    ``conf/``, else the checkout's top-level ``conf/``."""
    env = os.environ.get("HHH_BENCH_CONF")
    installed = WHEEL_CONF_DIR if WHEEL_CONF_DIR.is_dir() else CHECKOUT_CONF_DIR
    path = Path(env) if env else installed
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(
            f"no config.yaml in {path}; an installed hhh-bench ships its configs in "
            f"{WHEEL_CONF_DIR}, a checkout keeps them in {CHECKOUT_CONF_DIR} "
            "(reinstall hhh-bench, or point HHH_BENCH_CONF at a conf/ folder)"
        )
    return path
