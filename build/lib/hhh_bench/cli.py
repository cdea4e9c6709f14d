"""The ``hhh-bench`` command: a thin Hydra wrapper around :func:`hhh_bench.pipeline.run`.

hhh-bench --cfg job                      # print the composed config
hhh-bench stage=data data=toy3h          # one stage alone
hhh-bench experiment=toy3h               # the whole pipeline
hhh-bench -m merge=ties,tsv merge.params.scaling=0.5,1.0   # a sweep (multirun)
hhh-bench -m experiment=merge_optuna     # an Optuna search (pip install -e '.[optuna]')
"""

from __future__ import annotations

import os
import sys


def _offline_defaults() -> None:
    # Quiet, deterministic defaults; a user's own settings win.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")


def task(cfg) -> float | None:
    """What one Hydra job runs: the pipeline, returning its objective (``stage=merge_eval``'s
    selection score) so a sweeper such as Optuna can optimize it; None for other stages."""
    from hhh_bench.pipeline import run

    objective = run(cfg).get("objective")
    return None if objective is None else float(objective)


def main() -> None:
    """Entry point of the console script and of ``python -m hhh_bench``."""
    import hydra
    from omegaconf import DictConfig

    from hhh_bench.paths import conf_dir

    _offline_defaults()

    @hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
    def _app(cfg: DictConfig) -> float | None:
        return task(cfg)

    _app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
