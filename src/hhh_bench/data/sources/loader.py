"""Source configs and loading through ``datasets``, with an actionable error when offline.

A source config (``conf/source/<name>.yaml``) names one public dataset split and how to map it::

    name: hh_rlhf_helpful          # the source's name: the file stem, the rows' `source`
    hub_id: Anthropic/hh-rlhf      # dataset repo on the Hugging Face Hub
    config: null                   # `name=` of load_dataset (a subset), or null
    data_dir: helpful-base         # `data_dir=` of load_dataset, or null
    split: train
    revision: <commit sha>         # pinned, so the rows never change under us
    dimension: helpful             # which 3H dimension its pairs train
    adapter: hh_rlhf               # registered adapter (hhh_bench.data.sources.list_adapters())
    adapter_opts: {}               # keyword options of the adapter
    path: null                     # a local JSONL/parquet file (or list/glob) of the *raw* schema
    max_rows: null                 # cap on pairs kept (null: all)

``path`` replaces the hub download (tests run that way; so can a machine with a manual copy).
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import json
import logging
import lzma
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hhh_bench.core.jsonl import json_lines
from hhh_bench.core.paths import conf_dir
from hhh_bench.core.schema import DIMENSIONS, PreferenceRow, validate_rows
from hhh_bench.data.sources.base import adapter_options, get_adapter, run_adapter

SOURCE_KEYS: tuple[str, ...] = (
    "name",
    "hub_id",
    "config",
    "data_dir",
    "split",
    "revision",
    "dimension",
    "adapter",
    "adapter_opts",
    "path",
    "max_rows",
)
_TRUE = {"1", "ON", "YES", "TRUE"}
T = TypeVar("T")


class SourceUnavailableError(ValueError):
    """A source's dataset is neither reachable nor cached; the message says how to fetch it."""


class SourceConfigError(ValueError):
    """A source config is incomplete or inconsistent; the message names the file and the key."""


# ----------------------------------------------------------------------------- configs


def default_conf_dir() -> Path:
    """The config folder holding ``source/``: the package's (or ``$HHH_BENCH_CONF``)."""
    return conf_dir()


def list_sources(conf_dir: str | Path | None = None) -> list[str]:
    """Names of the source configs in ``<conf_dir>/source/`` (file stems), sorted."""
    folder = Path(conf_dir) if conf_dir else default_conf_dir()
    return sorted(p.stem for p in (folder / "source").glob("*.yaml"))


def load_source_config(name: str, conf_dir: str | Path | None = None) -> dict[str, Any]:
    """Read and validate ``<conf_dir>/source/<name>.yaml`` (OmegaConf, interpolations resolved).

    Args:
        name: source name (the file stem).
        conf_dir: the ``conf/`` folder; default: :func:`default_conf_dir`.

    Returns:
        The validated config as a plain dict (see :func:`validate_source_config`).
    """
    import yaml

    folder = Path(conf_dir) if conf_dir else default_conf_dir()
    path = folder / "source" / f"{name}.yaml"
    if not path.is_file():
        known = list_sources(folder) if (folder / "source").is_dir() else []
        raise SourceConfigError(f"no source config {path}; known sources: {known}")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SourceConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(cfg, dict):
        raise SourceConfigError(f"{path}: expected a mapping at the top level")
    if cfg.get("name") != name:
        raise SourceConfigError(
            f"{path}: `name` is {cfg.get('name')!r}; it must equal the file stem {name!r}"
        )
    return validate_source_config(cfg, origin=str(path))


def validate_source_config(cfg: Mapping[str, Any], origin: str | None = None) -> dict[str, Any]:
    """Check a source config and return it as a plain dict with every key present.

    Checks: every key of :data:`SOURCE_KEYS` present (``max_rows``/``path``/``config``/
    ``data_dir`` may be null), no unknown key, ``hub_id`` or ``path`` given, a known
    ``dimension``, a registered ``adapter``, ``adapter_opts`` the adapter accepts.
    """
    where = origin or f"source {cfg.get('name', '?')!r}"
    if not isinstance(cfg, Mapping):
        raise SourceConfigError(f"{where}: a source config must be a mapping")
    out = {k: cfg.get(k) for k in SOURCE_KEYS}
    unknown = sorted(set(cfg) - set(SOURCE_KEYS))
    if unknown:
        raise SourceConfigError(f"{where}: unknown key(s) {unknown}; allowed: {list(SOURCE_KEYS)}")
    missing = [k for k in ("name", "split", "dimension", "adapter") if not out[k]]
    if missing:
        raise SourceConfigError(f"{where}: missing value for {missing}")
    many = isinstance(out["path"], Sequence) and not isinstance(out["path"], str)
    paths = list(out["path"]) if many else [out["path"]]
    if out["path"] is not None and any(not isinstance(p, str) or not p.strip() for p in paths):
        # battery 16, A13: an empty path read the Hub split instead, without a word
        raise SourceConfigError(
            f"{where}: `path` is empty or not a path ({out['path']!r}): give the local file(s), "
            "or null to read `hub_id`"
        )
    if many and len(paths) > 1:
        kinds = {_format_of(str(p)) for p in paths}
        if (
            len(kinds) > 1 and None not in kinds
        ):  # battery 16, A14: read with the first file's reader
            raise SourceConfigError(
                f"{where}: `path` lists files of different formats ({sorted(kinds)}: "
                f"{list(paths)}); one source reads one format: split them into two sources"
            )
    if not out["hub_id"] and not out["path"]:
        raise SourceConfigError(
            f"{where}: give `hub_id` (a Hub dataset) or `path` (local raw files)"
        )
    if out["hub_id"] and not out["revision"]:
        raise SourceConfigError(f"{where}: `revision` is required with `hub_id` (pin a commit sha)")
    if out["dimension"] not in DIMENSIONS:
        raise SourceConfigError(
            f"{where}: unknown dimension {out['dimension']!r}; expected one of {list(DIMENSIONS)}"
        )
    try:
        get_adapter(out["adapter"])
    except (KeyError, ValueError) as e:
        raise SourceConfigError(f"{where}: {e.args[0]}") from None
    opts = dict(out["adapter_opts"] or {})
    bad = sorted(set(opts) - set(adapter_options(out["adapter"])))
    if bad:
        raise SourceConfigError(
            f"{where}: adapter {out['adapter']!r} does not take {bad}; it takes "
            f"{adapter_options(out['adapter'])}"
        )
    out["adapter_opts"] = opts
    if out["max_rows"] is not None and (
        not isinstance(out["max_rows"], int) or isinstance(out["max_rows"], bool)
        or out["max_rows"] < 1
    ):  # fmt: skip
        raise SourceConfigError(
            f"{where}: `max_rows` must be null (all pairs) or an integer >= 1 (a cap of 0 keeps "
            f"no pair), got {out['max_rows']!r}"
        )
    return out


# ----------------------------------------------------------------------------- offline


def offline_requested() -> bool:
    """Whether ``HF_DATASETS_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to a true value *now*."""
    return any(
        os.environ.get(v, "").upper() in _TRUE for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    )


@contextlib.contextmanager
def respect_offline_env() -> Iterator[None]:
    """Make ``datasets``/``huggingface_hub`` honour the offline variables as set *now*.

    Both libraries read them once, at import; a variable set later (a notebook, a test) would
    otherwise be ignored and a load would try the network. This only ever switches offline mode
    *on*, for the duration of the block.
    """
    if not offline_requested():
        yield
        return
    import datasets.config as dconf
    import huggingface_hub.constants as hconst

    saved = (dconf.HF_HUB_OFFLINE, dconf.HF_DATASETS_OFFLINE, hconst.HF_HUB_OFFLINE)
    dconf.HF_HUB_OFFLINE = dconf.HF_DATASETS_OFFLINE = hconst.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dconf.HF_HUB_OFFLINE, dconf.HF_DATASETS_OFFLINE, hconst.HF_HUB_OFFLINE = saved


def fetch_commands(cfg: Mapping[str, Any], cache_dir: str | Path) -> list[str]:
    """Shell commands that fetch a source's dataset on a machine with network access."""
    hub_id, rev = cfg["hub_id"], cfg["revision"]
    load_args = ", ".join(
        f"{k}={v!r}"
        for k, v in (
            ("name", cfg.get("config")),
            ("data_dir", cfg.get("data_dir")),
            ("split", cfg["split"]),
            ("revision", rev),
            ("cache_dir", str(cache_dir)),
        )
        if v is not None
    )
    include = f" --include '{cfg['data_dir']}/*'" if cfg.get("data_dir") else ""
    return [
        f"python -m hhh_bench.data.sources fetch {cfg['name']} --cache-dir {cache_dir}",
        f'python -c "import datasets; datasets.load_dataset({hub_id!r}, {load_args})"',
        f"hf download {hub_id} --repo-type dataset --revision {rev}{include} "
        f"--local-dir hf_raw/{hub_id}",
        f"huggingface-cli download --repo-type dataset {hub_id} --revision {rev}",
    ]


def _unavailable(
    cfg: Mapping[str, Any], cache_dir: str | Path, err: BaseException
) -> SourceUnavailableError:
    offline = offline_requested()
    try:
        import datasets.config as dconf

        offline = offline or bool(dconf.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
    why = (
        "offline mode is on (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)"
        if offline
        else "the Hugging Face Hub could not be reached or did not have it"
    )
    cmds = fetch_commands(cfg, cache_dir)
    where = "" if not cfg.get("config") else f", config {cfg['config']!r}"
    where += "" if not cfg.get("data_dir") else f", data_dir {cfg['data_dir']!r}"
    return SourceUnavailableError(
        f"source {cfg['name']!r}: dataset {cfg['hub_id']!r} (revision {cfg['revision']!r}{where}, "
        f"split {cfg['split']!r}) is not available: {why}, and no copy is cached in "
        f"{str(cache_dir)!r}.\n"
        "Fetch it on a machine with network access into the same cache folder, then copy that "
        "folder here:\n"
        f"    {cmds[0]}\n"
        f"  or, with `datasets` alone:\n    {cmds[1]}\n"
        f"  or download the raw files and point `path:` of conf/source/{cfg['name']}.yaml "
        "at the split's file(s) there:\n"
        f"    {cmds[2]}\n"
        f"    (older huggingface_hub: {cmds[3]}; without --local-dir the files land under "
        "$HF_HOME/hub, default ~/.cache/huggingface/hub)\n"
        f"Underlying error: {type(err).__name__}: {err}"
    )


# ----------------------------------------------------------------------------- loading


_FORMATS = ((".jsonl", "json"), (".json", "json"), (".jsonl.gz", "json"), (".json.gz", "json"),
            (".jsonl.xz", "json"), (".parquet", "parquet"), (".csv", "csv"))  # fmt: skip
"""A local file's suffix and the ``datasets`` builder that reads it."""


def _format_of(path: str) -> str | None:
    """The builder of ``path``'s suffix (:data:`_FORMATS`), None for another suffix."""
    low = path.lower()
    return next((builder for suffix, builder in _FORMATS if low.endswith(suffix)), None)


def _builder_for(paths: Sequence[str]) -> str:
    found = _format_of(paths[0])
    if found is not None:
        return found
    raise SourceConfigError(
        f"cannot tell the format of {paths[0]!r}: use .jsonl, .json, .parquet or .csv"
    )


def _open_text(path: Path) -> Any:
    """A local JSON file opened for reading bytes, decompressed (``.gz``, ``.xz``)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".xz"):
        return lzma.open(path, "rb")
    return open(path, "rb")


def _causes(e: BaseException, most: int = 3) -> str:
    """An exception and what caused it (``__cause__`` / ``__context__``, innermost last): a
    ``DatasetGenerationError`` says only "An error occurred while generating the dataset", its
    cause says what (battery 12, F9: Arrow's "The surrogate pair in string is invalid. in row
    0")."""
    parts, seen = [], set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen and len(parts) < most:
        seen.add(id(cur))
        parts.append(f"{type(cur).__name__}: {cur}")
        cur = cur.__cause__ or cur.__context__
    return "; caused by ".join(parts)


def check_local_file(path: str | Path, source: str) -> None:
    """Check one local raw file of a source before ``datasets`` reads it, so that a bad file
    fails naming the file (and the line) instead of deep inside ``datasets``.

    Every format: the file is not empty. JSON lines (``.jsonl``, ``.json`` not holding one JSON
    document; also compressed): each non-blank line is UTF-8 and one JSON object; a compressed
    file is read to its end (a truncated ``.gz`` or ``.xz`` is named).

    Raises:
        SourceConfigError: the problem, naming the source, the file and the line.
    """
    path = Path(path)
    where = f"source {source!r}: {path}"
    if path.stat().st_size == 0:
        raise SourceConfigError(f"{where} is empty (0 bytes): point `path` at the raw data file")
    name = path.name.lower()
    if not any(name.endswith(s) for s in (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.xz")):
        return
    try:
        with _open_text(path) as f:
            data = f.read()
    except (EOFError, OSError, lzma.LZMAError) as e:
        raise SourceConfigError(
            f"{where} cannot be decompressed ({type(e).__name__}: {e}): the file is truncated "
            "or not in the format its name says; download it again"
        ) from None
    if not data.strip():
        raise SourceConfigError(f"{where} holds no data (only white space after decompression)")
    if name.endswith((".json", ".json.gz")):  # one JSON document (a list of records) is fine
        try:
            json.loads(data)
            return
        except ValueError:
            pass  # JSON lines, checked below
    for line in json_lines(data):
        i, value = line.number, line.value
        if line.error:
            hint = "; re-encode the file as UTF-8" if not line.utf8 else ""
            raise SourceConfigError(f"{where}, line {i}: {line.error}{hint}")
        if not isinstance(value, dict):
            what = {list: "a JSON array", str: "a JSON string"}.get(type(value), "not an object")
            raise SourceConfigError(
                f"{where}, line {i}: {what}, where each line must be one JSON object (a record)"
            )


def drop_duplicate_rows(rows: list[PreferenceRow]) -> tuple[list[PreferenceRow], int]:
    """``rows`` without the repeats of an earlier row (same prompt, chosen and rejected: the same
    pair in the raw file more than once), in order, and how many were dropped. A repeated pair
    would weigh that pair more in training and, as one prompt group, could fill the held-out
    validation part alone."""
    seen: set[str] = set()
    out = []
    for r in rows:
        key = json.dumps([r["prompt"], r["chosen"], r["rejected"]], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out, len(rows) - len(out)


def _local_paths(raw: Any) -> list[str]:
    return [str(p) for p in (raw if isinstance(raw, (list, tuple)) else [raw])]


def load_raw(cfg: Mapping[str, Any], cache_dir: str | Path) -> Any:
    """The raw rows of a source as a ``datasets.Dataset`` (iterates as dicts).

    Local ``path`` (a file, glob or list): ``load_dataset("json"|"parquet"|"csv", data_files=...)``.
    Otherwise ``load_dataset(hub_id, name=config, data_dir=..., split=..., revision=...,
    cache_dir=cache_dir)``, honouring ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE``.

    Raises:
        SourceUnavailableError: offline (or the Hub unreachable) and nothing cached, or the
            repository/revision not found; the message gives the commands that fetch it.
        FileNotFoundError: a local ``path`` that matches no file.
        SourceConfigError: a local file that is empty, not UTF-8, not JSON lines of objects, or
            truncated (:func:`check_local_file`), or that ``datasets`` cannot read (the files
            named).
    """
    import datasets

    cache_dir = str(cache_dir)
    if cfg.get("path"):
        paths = _local_paths(cfg["path"])
        for p in paths:
            if not any(ch in p for ch in "*?[") and not Path(p).exists():
                raise FileNotFoundError(
                    f"source {cfg['name']!r}: local path {p!r} does not exist (set `path: null` to "
                    "load from the Hub, or point it at the raw JSONL/parquet file)"
                )
            matched = sorted(glob.glob(p)) if any(ch in p for ch in "*?[") else [p]
            if not matched:
                raise FileNotFoundError(
                    f"source {cfg['name']!r}: local path pattern {p!r} matches no file"
                )
            for f in matched:
                if Path(f).is_dir():  # battery 20, A-F3: datasets said "Unable to find" it
                    raise SourceConfigError(
                        f"source {cfg['name']!r}: local path {f!r} is a folder; give its raw "
                        f"file(s), or a glob of them ({str(Path(f) / '*.jsonl')!r})"
                    )
                if Path(f).is_file():
                    check_local_file(f, cfg["name"])
        try:
            return datasets.load_dataset(
                _builder_for(paths), data_files=paths, split="train", cache_dir=cache_dir
            )
        except (SourceConfigError, FileNotFoundError):
            raise
        except Exception as e:  # datasets' own errors name neither the file nor the line
            raise SourceConfigError(
                f"source {cfg['name']!r}: `datasets` cannot read {paths} ({_causes(e)})"
            ) from e
    try:
        with respect_offline_env():
            return datasets.load_dataset(
                cfg["hub_id"],
                name=cfg.get("config"),
                data_dir=cfg.get("data_dir"),
                split=cfg["split"],
                revision=cfg["revision"],
                cache_dir=cache_dir,
            )
    except (ConnectionError, FileNotFoundError) as e:  # incl. DatasetNotFoundError
        raise _unavailable(cfg, cache_dir, e) from e


def cap_rows(rows: list[T], max_rows: int | None, seed: int | None) -> list[T]:
    """At most ``max_rows`` of ``rows``: the first ones (``seed`` None) or a seeded uniform
    sample kept in the original order. ``None`` means no cap."""
    if max_rows is None or len(rows) <= max_rows:
        return list(rows)
    if seed is None:
        return list(rows[:max_rows])
    keep = sorted(random.Random(f"cap/{seed}").sample(range(len(rows)), max_rows))
    return [rows[k] for k in keep]


def load_source(
    cfg: Mapping[str, Any],
    cache_dir: str | Path,
    max_rows: int | None = None,
    *,
    seed: int | None = None,
) -> tuple[list[PreferenceRow], dict[str, Any]]:
    """Load one source and map it to canonical, validated preference rows.

    Args:
        cfg: a source config (see the module docstring); validated here.
        cache_dir: the ``datasets`` cache folder.
        max_rows: cap on the pairs kept (overrides ``cfg["max_rows"]``; ``None``: use the
            config's, which may be null = all). Without ``seed`` the adapter stops after the
            first ``max_rows`` pairs (cheap); with ``seed`` every pair is built and a seeded
            uniform sample is kept, in dataset order.
        seed: see ``max_rows``.

    Returns:
        ``(rows, stats)``; ``stats`` holds the source's identity (hub id, revision, split,
        adapter and options) and the adapter's counts (:class:`~.base.AdapterStats`) plus
        ``dropped_duplicates`` (pairs repeating an earlier one, dropped with a warning in the
        log: :func:`drop_duplicate_rows`; before the cap) and ``rows_kept`` (after the cap).
    """
    cfg = validate_source_config(cfg)
    cap = max_rows if max_rows is not None else cfg["max_rows"]
    raw = load_raw(cfg, cache_dir)
    rows, adapter_stats = run_adapter(
        cfg["adapter"],
        raw,
        source=cfg["name"],
        dimension=cfg["dimension"],
        split=cfg["split"],
        limit=cap if seed is None else None,
        **cfg["adapter_opts"],
    )
    n_built = len(rows)
    rows, n_dup = drop_duplicate_rows(rows)
    if n_dup:
        where = (", ".join(_local_paths(cfg["path"])) if cfg.get("path")
                 else f"{cfg['hub_id']}@{cfg['revision']}")  # fmt: skip
        logging.getLogger("hhh_bench").warning(
            "source %r (%s): dropped %d repeated pair(s) of %d (same prompt, chosen and rejected "
            "as an earlier row; each pair is kept once)", cfg["name"], where, n_dup, n_built,
        )  # fmt: skip
    rows = cap_rows(rows, cap, seed)
    validate_rows(rows, origin=f"source {cfg['name']!r}")
    stats = {k: cfg[k] for k in SOURCE_KEYS if k != "max_rows"}
    stats.update(adapter_stats.as_dict())
    stats.update({"max_rows": cap, "dropped_duplicates": n_dup, "rows_kept": len(rows)})
    return rows, stats
