"""Compare two results stores row by row: every numeric field and the per-task scores.

    python experiments/redesign_check/compare.py ROOT_A ROOT_B

Rows are matched on (name, split, params); exit status 1 when a row or a number differs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(root: Path) -> dict[tuple[str, str, str], dict]:
    out = {}
    for line in (root / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[(r["name"], r["split"], json.dumps(r.get("params"), sort_keys=True))] = r
    return out


def numbers(r: dict) -> dict:
    nums = {k: v for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return {**nums, "tasks": r.get("tasks")}


def main() -> int:
    a, b = (rows(Path(p)) for p in sys.argv[1:3])
    if set(a) != set(b):
        print(
            f"different rows: only in A {sorted(set(a) - set(b))}, only in B {sorted(set(b) - set(a))}"
        )
        return 1
    diff = [k for k in a if numbers(a[k]) != numbers(b[k])]
    for k in diff:
        print("differs:", k)
    print(f"{len(a)} rows, {len(diff)} with a different number")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
