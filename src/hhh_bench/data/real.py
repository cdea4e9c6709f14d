"""The data stage for ``data.kind=sources``: public preference sets written in the same layout
as the toy world (``prefs/<dimension>_<split>.jsonl`` + ``manifest.json``), so every later stage
reads real and toy data alike."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hhh_bench.core.schema import write_jsonl


def write_source_sets(
    data_cfg: Mapping[str, Any],
    out_dir: str | Path,
    eval_sets: Mapping[str, Sequence[str]] | None = None,
    conf_dir: str | Path | None = None,
    partitions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the per-dimension train/validation pairs from the configured sources and write them.

    Args:
        data_cfg: a ``kind: sources`` data config (``conf/data/paper_3h.yaml``).
        out_dir: the (temporary) stage folder.
        eval_sets: evaluation-set name -> prompts, for the leakage guards (None: skipped, and the
            manifest says so).
        conf_dir: the folder holding ``source/``; default the repository's ``conf/``.
        partitions: adapter name -> :class:`hhh_bench.core.partition.Partition` whose
            evaluation part the suite evaluates (its sources drop it; the manifest records it).

    Returns:
        The manifest (per-source counts after filtering, per-dimension split counts, leakage).
    """
    from hhh_bench.data.sources import build_preference_splits, source_counts_table

    out = Path(out_dir)
    splits, manifest = build_preference_splits(
        data_cfg, eval_sets=eval_sets, conf_dir=conf_dir, partitions=partitions
    )
    counts: dict[str, dict[str, int]] = {}
    for split, by_dim in splits.items():
        for dim, rows in by_dim.items():
            counts.setdefault(dim, {})[split] = write_jsonl(
                out / "prefs" / f"{dim}_{split}.jsonl", rows
            )
    manifest["counts"] = {"prefs": counts}
    manifest["source_table"] = source_counts_table(manifest)
    lines = [f"{data_cfg.get('name', 'sources')}: public 3H preference sets"]
    for rec in manifest["source_table"]:
        lines.append(
            f"  {rec['source']:28s} {rec['dimension']:9s} in={rec['rows_in']} kept={rec['rows_kept']}"
        )
    for name, part in manifest.get("partitions", {}).items():
        lines.append(
            f"  partition {name}: seed={part['seed']} eval_fraction={part['eval_fraction']} "
            f"eval={part['n_eval']} of {part['n_questions']} questions held out of training"
        )
    for dim, by_split in counts.items():
        lines.append(f"  pairs {dim:9s} " + "  ".join(f"{s}={n}" for s, n in by_split.items()))
    manifest["summary"] = "\n".join(lines)
    (out / "manifest.json").write_text(
        json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n"
    )
    return manifest
