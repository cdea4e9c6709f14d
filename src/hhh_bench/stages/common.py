"""What the stages share: typed config groups, option files, model identities; the cached-stage
helper itself is :mod:`hhh_bench.core.stagecache`."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from hhh_bench.core.codeid import code_identity
from hhh_bench.core.config import load
from hhh_bench.core.content import folder_identity, keyable
from hhh_bench.core.hubref import split_ref
from hhh_bench.core.provenance import config_hash
from hhh_bench.core.stagecache import CACHE, StageRun, cached_stage, is_done, stage_key

__all__ = ["CACHE", "StageRun", "cached_stage", "code_identity", "content_of", "group", "is_done", "keyed",
           "load_option", "log", "model_identity", "read_json", "stage_dir", "stage_key",
           "to_dict"]  # fmt: skip

log = logging.getLogger("hhh_bench")
T = TypeVar("T")


def to_dict(node: Any) -> Any:
    """Resolved plain-Python copy of a config node (or the value itself)."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def group(cfg: DictConfig, name: str, cls: type[T]) -> T:
    """The typed config of group ``name`` (:mod:`hhh_bench.core.config`): unknown keys refused."""
    return load(cls, to_dict(cfg.get(name)), name)


def load_option(group_name: str, option: str) -> dict[str, Any]:
    """The plain content of ``conf/<group>/<option>.yaml`` (the one place option files are read
    by hand, for the pipeline's grids and mixture lists): a fresh copy of the parse, which is
    remembered per file version (path, modification time, size)."""
    import copy

    from hhh_bench.core.paths import conf_dir

    path = conf_dir() / group_name / f"{option}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml") if not p.stem.startswith("_"))
        raise ValueError(f"unknown {group_name} option {option!r}: no {path}; available: {known}")
    st = path.stat()
    raw = copy.deepcopy(_read_option(str(path), st.st_mtime_ns, st.st_size))
    parents = [p for p in raw.pop("defaults", None) or [] if p != "_self_"]
    if not parents:
        return raw
    merged = OmegaConf.create({})
    for parent in parents:  # inheritance, _self_ last
        name = str(parent).split("@", 1)[0]  # /merge_common@_here_: a top-level file, here
        part = _root_option(name[1:]) if name.startswith("/") else load_option(group_name, name)
        merged = OmegaConf.merge(merged, part)
    # interpolations (${root}, ${seed}) stay as they are: they resolve in the run's config
    return OmegaConf.to_container(OmegaConf.merge(merged, raw), resolve=False)


def _root_option(name: str) -> Any:
    """A top-level ``conf/<name>.yaml`` an option extends (``conf/merge_common.yaml``: shared
    by every merge option, and no option of the merge group itself)."""
    from hhh_bench.core.paths import conf_dir

    path = conf_dir() / f"{name}.yaml"
    st = path.stat()
    return _read_option(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=256)
def _read_option(path: str, mtime_ns: int, size: int) -> Any:
    """One version of an option file, parsed (the arguments are the cache key)."""
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def run_config_hash(cfg: DictConfig) -> str | None:
    """The hash of the whole resolved config less ``stage`` and ``console`` (what is printed)
    (None where an interpolation only resolves inside a Hydra app)."""
    try:
        full = to_dict(cfg)
    except Exception:
        return None
    full.pop("stage", None)
    full.pop("console", None)
    return config_hash(full)


def run_facts(cfg: DictConfig) -> dict[str, Any]:
    """What a row says about the run that made it: :func:`run_config_hash` and
    :func:`world_key` (a caller that evaluates many models under one config computes them once
    and passes them to :func:`hhh_bench.stages.eval.run_eval`)."""
    return {"config_hash": run_config_hash(cfg), "world_key": world_key(cfg)}


def world_key(cfg: DictConfig) -> str:
    """What rows must share besides their configuration to be seeds of one another: the data
    config less the values that follow the seed (``data.world.seed: ${seed}``, a noise seed
    equal to it) and the splits that choose and report. Two runs of another world (a
    ``conflict_rate``) or another selection split are never pooled as seeds."""

    def strip(node: Any, raw: Any) -> Any:
        """``node`` less the entries whose unresolved value is ``${seed}``."""
        if isinstance(node, dict):
            raw = raw if isinstance(raw, dict) else {}
            return {k: strip(v, raw.get(k)) for k, v in node.items()
                    if not (isinstance(raw.get(k), str) and raw[k].strip() == "${seed}")}  # fmt: skip
        if isinstance(node, list):
            raw = raw if isinstance(raw, list) else [None] * len(node)
            return [strip(v, r) for v, r in zip(node, raw, strict=False)]
        return node

    raw = OmegaConf.to_container(cfg.data, resolve=False) if isinstance(cfg, DictConfig) else {}
    data = strip(to_dict(cfg.data), raw)
    splits = {k: cfg.eval.get(k) for k in ("select_split", "report_split")}
    return config_hash({"data": data, "splits": splits}, length=12)


def model_identity(path: str, revision: str | None = None) -> str:
    """Content identity of a model input for stage keys: a local folder's (or file's) content
    (:func:`hhh_bench.core.content.folder_identity`: every file it holds, verified against its
    manifest when it is a stage output), or ``hub:<id>@<revision>`` for a hub id (one written
    ``<id>@<commit>``: that commit)."""
    p = Path(path).expanduser()
    if p.exists():
        return folder_identity(p)
    ident, pinned = split_ref(str(path))
    return f"hub:{ident}@{revision or pinned or 'main'}"


def content_of(result: Mapping[str, Any]) -> str:
    """The content identity of an upstream stage's result: its ``content`` (what
    :func:`cached_stage` read from the output's manifest), else computed from the folder it names
    (``path`` or ``dir``: a result built by hand, in a notebook or a test)."""
    if result.get("content"):
        return str(result["content"])
    where = result.get("path") or result.get("dir")
    if not where:
        raise ValueError(f"an upstream result names no folder (keys: {sorted(result)})")
    return model_identity(str(where))


ENGINE_CODE = (*(f"hhh_bench.merging.{m}" for m in (
    "engine", "driver", "sources", "base", "taskvec", "linalg", "params", "cache", "api")),
    "hhh_bench.core.sizes")  # fmt: skip
"""The streaming engine every merge and diagnosis runs, with the shard-size parser it reads from
core (a merge adds its method's modules)."""

PATH_SETTINGS = frozenset({"cache_dir", "root", "scratch_dir", "output_dir"})
"""Config keys that say where a cache or scratch folder is, never what a stage computes: left out
of every key (:func:`keyed`)."""


def keyed(node: Any) -> Any:
    """A resolved config node as a key holds it: :data:`PATH_SETTINGS` left out, every path to an
    existing file or folder replaced by its content (:func:`hhh_bench.core.content.keyable`)."""
    return keyable(to_dict(node), PATH_SETTINGS)


def stage_dir(cfg: DictConfig, stage: str, key: str) -> Path:
    return Path(cfg.root) / stage / key


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def data_keys_of(path: str | Path) -> set[str]:
    """The data stage outputs (their keys) a stage output was computed from: ``path``'s
    enclosing output, then the inputs its ``key.json`` records, followed back to the data
    stage (a merge: its specialists, their base, their data). Empty for a folder the cache did
    not write (a user's model): nothing is known of its data."""
    from hhh_bench.core.content import KEY_FILE, enclosing_output

    held = enclosing_output(path)
    if held is None:
        return set()
    root = held[0].parent.parent
    keys: set[str] = set()
    seen: set[Path] = set()
    stack = [held[0]]
    while stack:
        out = stack.pop()
        if out in seen:
            continue
        seen.add(out)
        if out.parent.name == "data":
            keys.add(out.name)
            continue
        try:
            record = json.loads((out / KEY_FILE).read_text())
        except (OSError, ValueError):
            continue
        for inp in record.get("inputs") or []:
            p = Path(inp) if Path(inp).is_absolute() else root / inp
            up = enclosing_output(p)
            if up is not None:
                stack.append(up[0])
    return keys


def train_record(model: str | Path) -> Path | None:
    """The ``key.json`` of the stage output holding ``model`` (its folder, or the folder above
    an ``adapter/``), or None."""
    folders = (Path(model), Path(model).parent)
    return next((f / "key.json" for f in folders if (f / "key.json").is_file()), None)


def recorded_input(record: Path, entry: str) -> Path:
    """Where an entry of a ``key.json``'s ``inputs`` lies: absolute as written, else under the
    root of the output the record belongs to (``<root>/<stage>/<key>/key.json``)."""
    p = Path(entry)
    return p if p.is_absolute() else record.parent.parent.parent / p
