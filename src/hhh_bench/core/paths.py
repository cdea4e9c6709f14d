"""Where the project's configuration lives: inside the package (shipped in the wheel), so an
installed hhh-bench has its configs wherever it runs."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # src/hhh_bench (this file is in core/)
CONF_DIR = PACKAGE_DIR / "conf"


def conf_dir() -> Path:
    """The Hydra config folder: ``$HHH_BENCH_CONF`` if set, else the package's ``conf/``."""
    env = os.environ.get("HHH_BENCH_CONF")
    path = Path(env) if env else CONF_DIR
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(
            f"no config.yaml in {path}; the package ships its configs in {CONF_DIR} "
            "(reinstall hhh-bench, or point HHH_BENCH_CONF at a conf/ folder)"
        )
    return path
