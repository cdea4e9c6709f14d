"""Run the one-at-a-time sweep of the toy world's knobs (issue 29, part 5): each world of
:data:`WORLDS` with ``experiment=toy3h_sensitivity`` in its own root, ``<root>/<world>/``.

    python experiments/toy3h_sensitivity/sweep.py runs/toy3h_sensitivity --jobs 2
    python experiments/toy3h_sensitivity/draw.py runs/toy3h_sensitivity     # the figure and table

Each knob takes three values, 0, the default and a higher one, with the other two at their
defaults; the default world is run once (``default/``) and shared by the three panels: 7 worlds.
A world is one ``hhh-bench`` process (its console in ``<root>/<world>/sweep.log``); a rerun
reuses every finished stage from each root's cache. ``--jobs 2`` runs two worlds at a time (one
torch thread each: a 2-core machine).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEFAULTS = {"conflict_rate": 0.2, "story_share": 0.25, "two_sided_share": 0.25}
"""The world's defaults (conf/data/toy3h.yaml), the point every panel shares."""

VALUES = {
    "conflict_rate": (0.0, 0.2, 0.4),
    "story_share": (0.0, 0.25, 0.5),
    "two_sided_share": (0.0, 0.25, 0.5),
}
"""The values of each knob: off, the default, twice the default."""


def world_name(knob: str | None, value: float | None = None) -> str:
    """The folder of a world: ``default``, or ``<knob>-<value>`` (no ``=``: Hydra's override
    grammar refuses it unquoted in ``root=``)."""
    return "default" if knob is None else f"{knob}-{value:g}"


def worlds() -> list[tuple[str, list[str]]]:
    """``(folder, overrides)`` of every world, the default first."""
    out: list[tuple[str, list[str]]] = [(world_name(None), [])]
    for knob, values in VALUES.items():
        out += [(world_name(knob, v), [f"data.world.{knob}={v:g}"])
                for v in values if v != DEFAULTS[knob]]  # fmt: skip
    return out


def run_world(
    hhh_bench: str, root: Path, folder: str, overrides: list[str], extra: list[str]
) -> str:
    """One world, start to report; its console to ``<root>/<folder>/sweep.log``."""
    where = root / folder
    where.mkdir(parents=True, exist_ok=True)
    cmd = [hhh_bench, "experiment=toy3h_sensitivity", *overrides, f"root={where}", *extra]
    t0 = time.time()
    with open(where / "sweep.log", "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    took = time.time() - t0
    return f"{folder}: {'done' if rc == 0 else f'FAILED (exit {rc}, see {where}/sweep.log)'} in {took:.0f} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="the sweep's folder: one root per world inside it")
    ap.add_argument("--jobs", type=int, default=1, help="worlds run at a time (default 1)")
    ap.add_argument("--hhh-bench", default=shutil.which("hhh-bench") or "hhh-bench",
                    help="the hhh-bench executable (default: the one on PATH)")  # fmt: skip
    ap.add_argument("overrides", nargs="*", help="more overrides for every world (seeds=[0])")
    args = ap.parse_args(argv)
    todo = worlds()
    t0 = time.time()
    print(f"{len(todo)} worlds into {args.root}, {args.jobs} at a time", flush=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_world, args.hhh_bench, args.root, f, o, args.overrides)
                   for f, o in todo]  # fmt: skip
        lines = []
        for fut in futures:
            lines.append(fut.result())
            print(lines[-1], flush=True)
    print(f"sweep: {time.time() - t0:.0f} s wall", flush=True)
    return 1 if any("FAILED" in line for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
