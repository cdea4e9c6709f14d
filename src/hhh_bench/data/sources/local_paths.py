"""Point every source of a ``kind: sources`` data config at a local raw-schema file.

A source config's ``path:`` replaces its hub download (:func:`~.loader.load_raw`); this module
sets it for every entry of a data config at once, from a mapping source name -> file, as the
rehearsal does with its fixtures (``rehearsal.source_paths``)::

    data = with_source_paths(paper_3h, {"hh_rlhf_helpful": "fixtures/hh_helpful.jsonl", ...})
    data["sources"]["helpful"][0]  # {"name": "hh_rlhf_helpful", "path": "fixtures/hh_helpful.jsonl"}

Each entry becomes the ``{name: ..., path: ...}`` form the data config already accepts (other
keys of a mapping entry are kept), so the source's own config, adapter and options still apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hhh_bench.data.sources.loader import SourceConfigError


def with_source_paths(
    data_cfg: Mapping[str, Any], paths: Mapping[str, str | Path]
) -> dict[str, Any]:
    """A copy of ``data_cfg`` whose every source entry reads ``paths[<source name>]``.

    A ``kind`` other than ``sources`` (the toy world) is returned unchanged. An entry that
    already has a ``path`` keeps it (it is local already).

    Raises:
        SourceConfigError: a listed source has no entry in ``paths`` (the message names it and
            the key to set), or its file does not exist.
    """
    out = dict(data_cfg)
    if out.get("kind") != "sources":
        return out
    sources = out.get("sources")
    if not isinstance(sources, Mapping):
        raise SourceConfigError("data config: `sources` must map each dimension to a list")
    new: dict[str, list[Any]] = {}
    for dim, entries in sources.items():
        new[dim] = []
        for entry in entries or []:
            if isinstance(entry, str):
                entry = {"name": entry}
            elif not isinstance(entry, Mapping) or "name" not in entry:
                raise SourceConfigError(
                    f"data config: entry {entry!r} under {dim!r} has no source `name` to look "
                    "up a local file for"
                )
            entry = dict(entry)
            if not entry.get("path"):
                name = entry["name"]
                if name not in paths:
                    raise SourceConfigError(
                        f"source {name!r} (data.sources.{dim}) has no local file: add "
                        f"rehearsal.source_paths.{name}=<raw-schema JSONL> (known: "
                        f"{sorted(paths)})"
                    )
                path = Path(paths[name])
                if not path.is_file():
                    raise SourceConfigError(
                        f"source {name!r}: local file {path} (rehearsal.source_paths.{name}) "
                        "does not exist"
                    )
                entry["path"] = str(path)
            new[dim].append(entry)
    out["sources"] = new
    return out
