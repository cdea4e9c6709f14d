"""Hub references: what names a hub repository, what pins it, and what the cache resolved.

One concept: a hub id and its revision, read from a config without loading anything.

:func:`walk_revisions` finds every mapping of a config that pins a hub id with a ``revision``
key (a model, a judge, a scorer's model, a source); :func:`resolved_revisions` reads, from the
local Hugging Face cache, the commit a moving revision (``main``, null) resolved to when it was
loaded: what ``provenance.json`` records for a run with ``allow_unpinned=true``
(:mod:`hhh_bench.pins` refuses such a run otherwise).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

COMMIT = re.compile(r"[0-9a-f]{40}")
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
ID_KEYS = ("hub_id", "model", "path")
"""The keys beside a ``revision`` that name what it pins, in the order they are read."""


def is_commit(revision: Any) -> bool:
    """A full commit hash (40 lowercase hex characters): a branch or tag name moves."""
    return isinstance(revision, str) and COMMIT.fullmatch(revision) is not None


def is_hub_id(value: Any) -> bool:
    """``value`` names a hub repository (``owner/name``) rather than a local folder: not a
    path that exists here, not written as a path (``/``, ``.``, ``~`` in front)."""
    if not isinstance(value, str) or value.startswith(("/", ".", "~")):
        return False
    return HUB_ID.fullmatch(value) is not None and not Path(value).exists()


def split_ref(ref: str) -> tuple[str, str | None]:
    """``<id>@<revision>`` as ``(id, revision)``; a reference without ``@``: ``(ref, None)``.
    Only a hub id carries a revision this way (a local path may hold an ``@``)."""
    head, sep, rev = ref.rpartition("@")
    if sep and is_hub_id(head) and rev:
        return head, rev
    return ref, None


def walk_revisions(node: Any, where: str = "") -> list[tuple[str, str, Any, str]]:
    """``(where, id, revision, repo type)`` of every mapping below ``node`` that pins a hub id
    with a ``revision`` key (a model, a judge, a scorer's model: ``model``; a source, which
    names its ``hub_id``: ``dataset``)."""
    found: list[tuple[str, str, Any, str]] = []
    if isinstance(node, Mapping):
        if "revision" in node:
            ident = next((node[k] for k in ID_KEYS if node.get(k)), None)
            if "hub_id" in node and node.get("path"):
                ident = None  # a source read from its local copy (path) downloads nothing
            if node.get("endpoint"):
                ident = None  # a judge asked through an API: its model is the API's name
            if is_hub_id(ident):
                kind = "dataset" if "hub_id" in node else "model"
                found.append((where, str(ident), node.get("revision"), kind))
        for k, v in node.items():
            found += walk_revisions(v, f"{where}.{k}" if where else str(k))
    elif isinstance(node, Sequence) and not isinstance(node, str):
        for i, v in enumerate(node):
            found += walk_revisions(v, f"{where}[{i}]")
    return found


def cached_config(ident: str, revision: Any = None) -> Path | None:
    """The ``config.json`` of hub repository ``ident`` at ``revision`` (null: ``main``) in the
    local HF cache, or None when the cache does not hold it: whether a model or judge is on
    this machine, asked offline."""
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(ident, "config.json", revision=revision or None)
    return Path(hit) if isinstance(hit, str) else None


def resolved_commit(ident: str, revision: Any, repo_type: str = "model") -> str | None:
    """The commit the local HF cache holds for ``ident`` at ``revision`` (a branch or tag:
    its ``refs/<revision>`` file; null: ``main``), or None when the cache has no such ref."""
    if is_commit(revision):
        return str(revision)
    try:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return None
    folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=ident, repo_type=repo_type)
    try:
        sha = (folder / "refs" / str(revision or "main")).read_text().strip()
    except (OSError, ValueError):
        return None
    return sha if is_commit(sha) else None


def resolved_revisions(config: Any) -> dict[str, str | None]:
    """``{"<id>@<revision>": commit or None}`` for every hub id of ``config`` pinned by a
    moving revision: what the cache resolved it to (None: not in this machine's cache)."""
    out: dict[str, str | None] = {}
    for _where, ident, rev, kind in walk_revisions(config):
        if not is_commit(rev):
            out[f"{ident}@{rev or 'main'}"] = resolved_commit(ident, rev, kind)
    return out
