"""Pinned hub revisions: every hub model, dataset and judge a run loads names a commit.

One concept: a hub id without a commit hash is refused before any work, unless the run says
``allow_unpinned=true`` (then the commit the hub resolved is what provenance records).

A hub repository's default branch moves: a model card fix, a re-upload or a new tokenizer
changes what ``revision: main`` loads, and a number computed last month is no longer
reproducible. So :func:`unpinned` walks a composed run for every hub id it would load (a
mapping holding a ``revision`` beside its ``model``/``path``/``hub_id``, the data sources of a
``data.kind=sources`` config, ``merge.base``/``merge.models`` and ``eval.model`` written ``<id>@<commit>``) and
:func:`check_pins` refuses any whose revision is not a 40-hex commit. A local folder (one that
exists, or a path written with ``/``, ``.`` or ``~`` in front) has no revision and is never
asked for one. This module sits on the pipeline floor beside :mod:`hhh_bench.validation`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hhh_bench.core.hubref import is_commit, is_hub_id, split_ref, walk_revisions


def merge_refs(merge: Any) -> list[tuple[str, str, Any]]:
    """``merge.base`` and ``merge.models`` hub ids, each pinned as ``<id>@<commit>``."""
    if not isinstance(merge, Mapping):
        return []
    refs = [("merge.base", merge.get("base"))]
    refs += [(f"merge.models[{i}]", m) for i, m in enumerate(merge.get("models") or [])]
    out = []
    for where, ref in refs:
        if isinstance(ref, str):
            ident, rev = split_ref(ref)
            if is_hub_id(ident):
                out.append((where, ident, rev))
    return out


def hub_sources(data: Any) -> list[tuple[str, dict[str, Any]]]:
    """``(where, source config)`` of every hub dataset of a ``data.kind=sources`` config (each
    source config resolved, its overrides applied; a source with a local ``path`` downloads
    nothing)."""
    if not isinstance(data, Mapping) or data.get("kind") != "sources":
        return []
    from hhh_bench.data.sources.build import resolve_source_entries

    return [(f"data.sources.{dim}: {src['name']}", src)
            for dim, src, _cap in resolve_source_entries(data)
            if src.get("hub_id") and not src.get("path")]  # fmt: skip


def unpinned(cfg: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """Every hub id the composed run ``cfg`` (a plain mapping) would load without a commit
    hash: ``(where, id, revision)``, in config order, each id and place once."""
    found = [
        w[:3] for w in walk_revisions({k: v for k, v in cfg.items() if k not in ("merge", "hydra")})
    ]
    found += merge_refs(cfg.get("merge"))
    ev = cfg.get("eval")
    model = ev.get("model") if isinstance(ev, Mapping) else None
    if isinstance(model, str):  # `+eval.model=<id>@<commit>`: a given model (battery 9)
        ident, rev = split_ref(model)
        if is_hub_id(ident):
            found.append(("eval.model", ident, rev))
    found += [(where, s["hub_id"], s.get("revision")) for where, s in hub_sources(cfg.get("data"))]
    out, seen = [], set()
    for where, ident, rev in found:
        if not is_commit(rev) and (where, ident) not in seen:
            seen.add((where, ident))
            out.append((where, ident, rev))
    return out


def check_pins(cfg: Mapping[str, Any]) -> None:
    """Refuse a run that would load a hub id at a moving revision (``allow_unpinned=true``:
    allowed; provenance records the commit each load resolved)."""
    allow = cfg.get("allow_unpinned", False)
    if not isinstance(allow, bool):
        raise ValueError(f"allow_unpinned={allow!r} must be true or false")
    bad = unpinned(cfg)
    if not bad or allow:
        return
    named = "; ".join(
        f"{where}: {ident} at revision {rev!r} (its commits: https://huggingface.co/"
        f"{'datasets/' if where.startswith('data.sources') else ''}{ident}/commits/main"
        + (
            ""
            if where.startswith("data.sources")
            else f"; read as a hub id: no folder {ident!r} exists under {Path.cwd()}, if a local "
            "folder was meant"  # battery 12, F1: a mistyped relative folder
        )
        + ")"
        for where, ident, rev in bad
    )
    raise ValueError(
        f"{len(bad)} hub id(s) not pinned to a commit, so the run could not be reproduced once "
        f"the branch moves: {named}. Pin each to a 40-hex commit sha (its `revision:`; a "
        "merge.base, merge.models or eval.model entry as <id>@<sha>), or run with allow_unpinned=true "
        "(each stage's provenance.json then records the commit the hub cache resolved)"
    )
