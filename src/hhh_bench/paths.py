"""Where the project's configuration lives."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]


def conf_dir() -> Path:
    """The Hydra config folder: ``$HHH_BENCH_CONF`` if set, else ``<repo>/conf``."""
    env = os.environ.get("HHH_BENCH_CONF")
    path = Path(env) if env else REPO_ROOT / "conf"
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(
            f"no config.yaml in {path}; install hhh-bench from a checkout (pip install -e .) "
            "or point HHH_BENCH_CONF at a conf/ folder"
        )
    return path
