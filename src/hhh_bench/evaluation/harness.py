"""A thin wrapper around lm-evaluation-harness: our task YAMLs, one model, metrics with stderr.

One concept: running lm-evaluation-harness on one model (tasks materialized, metrics read).

Our tasks ship as lm-eval YAMLs under ``hhh_bench/evaluation/tasks/`` (``toy3h/``: the toy
world; ``real/``: HaluEval-QA, XSTest-style and PKU-SafeRLHF-style multiple choice). Their data
files are only known at run time, so the shipped YAMLs name them by placeholders
(``${hhh:toy3h_eval}``, ``${hhh:halueval_qa}``, ...) and :func:`materialize_tasks` writes a
per-run include folder with absolute paths filled in; ``${hhh_partition:NAME}`` is filled with the
seeded partition ``eval.partitions.NAME`` (``{"seed": .., "eval_fraction": ..}``, or ``null``:
none configured, the whole file), which a task's data hook applies
(:mod:`hhh_bench.core.partition`). :func:`evaluate_model` then runs
``lm_eval.simple_evaluate`` on an ``HFLM`` built around a model object, fully offline.

A user's own task folders (``include_paths``, the eval config's ``eval.include_paths``) are
templated into the same include folder under ``user/<i>_<folder name>/``: their YAMLs get the same
placeholders plus ``${hhh:source_dir}`` (the user folder itself, for data kept next to the YAMLs)
and ``${hhh:shipped_tasks}`` (this package's ``tasks/``, to ``include:`` a shipped template), and
their ``*.py`` files are copied beside them so ``!function my_utils.fn`` hooks resolve.
:func:`user_tasks` indexes them (a name clash with a shipped task or another folder is an error)
and :func:`tasks_fingerprint` hashes their content for a cache key.

Example::

    include = materialize_tasks("runs/x/tasks", {"toy3h_eval": "runs/x/data/abc/eval"})
    out = evaluate_model(model, tokenizer, ["toy3h_known_qa_test"], include_path=include,
                         apply_chat_template=True)
    out["metrics"]["toy3h_known_qa_test"]  # {"acc": .., "acc_stderr": .., "soft": .., "n": 60}
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from hhh_bench.core.items import metric_number, parse_items

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
PLACEHOLDER = re.compile(r"\$\{hhh:([A-Za-z0-9_]+)\}")
PARTITION = re.compile(r"\$\{hhh_partition:([A-Za-z0-9_]+)\}")
_NAME = re.compile(r"^(task|group):\s*([A-Za-z0-9_\-]+)\s*$", re.MULTILINE)
# Where user task folders land inside a materialized include folder.
USER_SUBDIR = "user"
# Placeholders every user YAML may use, filled in by materialize_tasks itself.
USER_PLACEHOLDERS = ("source_dir", "shipped_tasks")
_SKIP_PARTS = ("__pycache__", ".ipynb_checkpoints")

log = logging.getLogger("hhh_bench")


class HarnessResult(TypedDict):
    """What :func:`evaluate_model` returns.

    Attributes:
        metrics: per task (or group): ``{metric: value, "<metric>_stderr": value or None,
            "n": number of documents}``; the filter name is dropped when it is ``none`` and kept as
            ``metric,filter`` otherwise.
        samples: per multiple-choice task, one ``{"doc_id", "id", "gold", "lls"}`` per document
            (the choices' summed log-likelihoods, in choice order); empty if not logged.
        seconds: wall time of ``simple_evaluate``.
        config: what was run (tasks, chat template, batch size, limit, backend, lm-eval
            version).
        items: per task, the per-document metric values (:func:`hhh_bench.core.items.
            parse_items`); empty if not logged.
        generations: per ``generate_until`` task, the prompts and responses; empty if not
            logged.
        groups: lm-eval's ``group_subtasks`` (group -> member tasks).
    """

    metrics: dict[str, dict[str, Any]]
    samples: dict[str, list[dict[str, Any]]]
    seconds: float
    config: dict[str, Any]
    items: dict[str, list[dict[str, Any]]]
    generations: dict[str, list[dict[str, Any]]]
    groups: dict[str, list[str]]


def _files(folder: Path, pattern: str) -> list[Path]:
    """Files under ``folder`` matching ``pattern``, sorted, skipping caches and hidden folders."""
    return [
        p
        for p in sorted(folder.rglob(pattern))
        if p.is_file()
        and not any(
            part in _SKIP_PARTS or part.startswith(".") for part in p.relative_to(folder).parts
        )
    ]


def find_tasks(folder: str | Path) -> dict[str, dict[str, Any]]:
    """The task and group YAMLs under a folder: ``{name: {"path", "kind", "placeholders"}}``.

    A YAML is a task (group) if it has a top-level ``task: NAME`` (``group: NAME``) line;
    include-only templates are skipped. ``placeholders`` lists its ``${hhh:NAME}`` data
    placeholders, ``partitions`` its ``${hhh_partition:NAME}`` ones.

    Raises:
        ValueError: two YAMLs of the folder define the same name (lm-eval would silently keep
            one of them).
    """
    root = Path(folder)
    out: dict[str, dict[str, Any]] = {}
    for path in _files(root, "*.yaml"):
        text = path.read_text()
        m = _NAME.search(text)
        if not m:  # an include-only template
            continue
        name = m.group(2)
        if name in out:
            raise ValueError(
                f"lm-eval task {name!r} is defined twice under {root}: {out[name]['path']} and "
                f"{path}; rename one of them"
            )
        out[name] = {
            "path": path,
            "kind": m.group(1),
            "placeholders": sorted(set(PLACEHOLDER.findall(text))),
            "partitions": sorted(set(PARTITION.findall(text))),
        }
    return out


_SHIPPED: dict[str, dict[str, Any]] = {}


def shipped_tasks() -> dict[str, dict[str, Any]]:
    """Every task and group YAML we ship: ``{name: {"path", "kind", "placeholders"}}``.

    The package's own folder is walked once per process (an eval looks it up for every model;
    a cached rerun of the demo walked it 992 times); each call gets its own copy."""
    if not _SHIPPED:
        _SHIPPED.update(find_tasks(TASKS_DIR))
    return {name: dict(entry) for name, entry in _SHIPPED.items()}


def user_folders(include_paths: Sequence[str | Path]) -> list[Path]:
    """The user task folders as resolved paths; a missing one is an error that names it."""
    if isinstance(include_paths, (str, Path)):
        raise TypeError(
            f"include_paths must be a list of folders, got the single {include_paths!r}"
        )
    folders = []
    for entry in include_paths:
        path = Path(entry).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(
                f"eval.include_paths: {entry!r} is not a folder (resolved to {path}; a relative "
                "path is taken from the directory hhh-bench was started in)"
            )
        folders.append(path)
    return folders


def user_tasks(include_paths: Sequence[str | Path]) -> dict[str, dict[str, Any]]:
    """The tasks of the user's task folders, as :func:`find_tasks` plus ``"folder"``.

    ``placeholders`` lists only the data placeholders the caller must supply (not
    ``source_dir`` / ``shipped_tasks``, which :func:`materialize_tasks` fills in itself).

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: a folder holds no task YAML, or a name is defined twice (in one folder, in
            two folders, or by a user folder and a shipped task).
    """
    shipped = shipped_tasks()
    out: dict[str, dict[str, Any]] = {}
    for folder in user_folders(include_paths):
        found = find_tasks(folder)
        if not found:
            raise ValueError(
                f"eval.include_paths: no lm-eval task YAML under {folder} (a task YAML has a "
                "top-level `task: <name>` line)"
            )
        for name, info in found.items():
            clash = shipped.get(name) or out.get(name)
            if clash:
                raise ValueError(
                    f"lm-eval task {name!r} of {info['path']} is already defined by "
                    f"{clash['path']}; give your task another name"
                )
            _parses(Path(info["path"]))
            check_mc_items(name, Path(info["path"]), folder)
            placeholders = [p for p in info["placeholders"] if p not in USER_PLACEHOLDERS]
            out[name] = {**info, "placeholders": placeholders, "folder": folder}
    return out


def check_mc_items(name: str, yaml_path: Path, folder: Path) -> None:
    """A user task on the toy world's multiple-choice template (``_toy3h_template.yaml``: each
    item a ``question``, its ``choices`` and the ``gold`` index) has items of that shape, checked
    before any model loads: a gold out of range was "document ?: gold -1 out of range" after
    the run, naming no task, file or line; a gold of ``true`` or ``1.7`` was read as 1
    (battery 21, A-F2)."""
    if "_toy3h_template" not in yaml_path.read_text(errors="replace"):
        return
    values = {"source_dir": str(folder), "shipped_tasks": str(TASKS_DIR)}
    for _, data in named_data_files(yaml_path, values):
        for n, line in enumerate(data.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            where = f"task {name!r}: {data}, line {n}"
            try:
                doc = json.loads(line)
            except ValueError:
                raise ValueError(f"{where}: not a JSON object") from None
            choices = doc.get("choices") if isinstance(doc, dict) else None
            if not (
                isinstance(choices, list) and choices and all(isinstance(c, str) for c in choices)
            ):
                raise ValueError(f"{where}: `choices` must be a non-empty list of strings")
            gold = doc.get("gold")
            if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
                raise ValueError(
                    f"{where}: `gold` must be the index (0 to {len(choices) - 1}) of the right "
                    f"choice among its {len(choices)}, got {gold!r}"
                )


def _parses(path: Path) -> None:
    """A user's task YAML parses with lm-eval's own loader (``!function`` tags left unresolved),
    or ``ValueError`` naming the user's file, before the run copies it anywhere."""
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        load_yaml(str(path), resolve_func=False, recursive=False)
    except Exception as e:  # noqa: BLE001 - yaml's parser errors, named with the user's file
        raise ValueError(f"eval.include_paths: {path} does not parse as YAML: {e}") from None


def tasks_fingerprint(include_paths: Sequence[str | Path]) -> str:
    """A content hash of the user task folders (every file but caches and hidden ones, by
    relative path and folder order), for the eval stage's cache key.

    Where a folder lives does not enter the hash; what its files say does, so an edited YAML or
    hook gives a new key. So do the local files a task YAML names by path outside its folder
    (``dataset_path``, ``dataset_kwargs.data_files``: :func:`named_data_files`), by content
    (battery 20, F1: an edited data file named by absolute path was evaluated from the cache).
    """
    h = hashlib.sha256()
    for i, folder in enumerate(user_folders(include_paths)):
        for path in _files(folder, "*"):
            h.update(f"{i}/{path.relative_to(folder).as_posix()}\0".encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
            if path.suffix in (".yaml", ".yml"):
                for field, data in named_data_files(path):
                    h.update(f"{i}/{path.relative_to(folder).as_posix()}:{field}\0".encode())
                    h.update(hashlib.sha256(data.read_bytes()).digest())
    return h.hexdigest()[:12]


def named_data_files(
    yaml_path: Path, values: Mapping[str, str] | None = None
) -> list[tuple[str, Path]]:
    """The existing local files a task YAML names by path (``dataset_path``, or a file, folder
    or glob of ``dataset_kwargs.data_files``; relative to the working directory, as
    ``datasets`` reads them), as ``(field, file)`` in a stable order. A placeholder
    (``${hhh:...}``) is filled from ``values`` when it has one there, else names none; so do a
    hub name and a path that does not exist."""
    import glob

    import yaml

    class _Lenient(yaml.SafeLoader):  # lm-eval's `!function` tags: read as None
        pass

    _Lenient.add_multi_constructor("!", lambda *_: None)
    try:
        doc = yaml.load(yaml_path.read_text(), Loader=_Lenient)  # noqa: S506 - safe subclass
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return []  # lm-eval names an unparsable YAML when its task is asked for
    if not isinstance(doc, dict):
        return []
    named: list[tuple[str, Any]] = [("dataset_path", doc.get("dataset_path"))]
    kwargs = doc.get("dataset_kwargs")
    files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
    groups = files if isinstance(files, dict) else {"": files}
    for split, value in groups.items():
        for entry in value if isinstance(value, list) else [value]:
            named.append((f"data_files{'.' + str(split) if split else ''}", entry))
    out: list[tuple[str, Path]] = []
    for field, entry in named:
        if isinstance(entry, str) and values:
            entry = PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), entry)
        if not isinstance(entry, str) or "${" in entry or not entry.strip():
            continue
        path = Path(entry).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file())
        else:
            found = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
        out.extend((f"{field}:{p.name}", p) for p in found)
    return out


def _template(
    text: str, values: Mapping[str, str], partitions: Mapping[str, Mapping[str, Any]] | None = None
) -> str | None:
    """``text`` with its placeholders filled in, or None if a data placeholder has no value (a
    partition placeholder without one is ``null``: no partition)."""
    if set(PLACEHOLDER.findall(text)) - set(values):
        return None
    text = PARTITION.sub(lambda m: json.dumps((partitions or {}).get(m.group(1))), text)
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def _escaped(path: str | Path) -> str:
    """An absolute path JSON-escaped, safe inside the YAMLs' double-quoted strings."""
    return json.dumps(str(Path(path).resolve()))[1:-1]


def materialize_tasks(
    out_dir: str | Path,
    data_paths: Mapping[str, str | Path],
    *,
    source: str | Path | None = None,
    include_paths: Sequence[str | Path] = (),
    partitions: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write a per-run lm-eval include folder from the shipped task YAMLs and the user's.

    Each ``${hhh:NAME}`` placeholder is replaced by the absolute path ``data_paths[NAME]``. A YAML
    whose placeholders are not all given is left out (its data is not part of this run); include-
    only templates are always copied. Folder structure is kept, so ``include:`` still resolves.

    Each user folder ``include_paths[i]`` is written to ``user/<i>_<folder name>/`` the same way,
    with two more placeholders: ``${hhh:source_dir}`` (that user folder) and
    ``${hhh:shipped_tasks}`` (the shipped ``tasks/`` folder, e.g. ``include:
    "${hhh:shipped_tasks}/toy3h/_toy3h_template.yaml"``); its ``*.py`` files are copied as they
    are, so relative ``!function`` hooks resolve. Other files are not copied (reach them through
    ``${hhh:source_dir}``).

    Args:
        out_dir: the folder to write (created; existing files are overwritten).
        data_paths: placeholder name -> file or folder, e.g. ``{"toy3h_eval": <data>/eval,
            "halueval_qa": "halueval_qa.jsonl"}``.
        source: the folder of YAMLs to template (default: the shipped ``tasks/``).
        include_paths: folders of the user's own task YAMLs (checked by :func:`user_tasks`).
        partitions: ``eval.partitions``: name -> ``{"seed", "eval_fraction"}`` for the
            ``${hhh_partition:NAME}`` placeholders (an absent name: ``null``, the whole file).

    Returns:
        ``out_dir`` as a resolved path, to pass as ``include_path``.
    """
    src = Path(source) if source else TASKS_DIR
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    values = {k: _escaped(v) for k, v in data_paths.items()}
    parts = {k: dict(v) for k, v in (partitions or {}).items() if v is not None}
    for path in sorted(src.rglob("*.yaml")):
        text = _template(path.read_text(), values, parts)
        if text is None:
            continue
        dest = out / path.relative_to(src)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
    if include_paths:
        user_tasks(include_paths)  # missing folders and name clashes fail before any copy
    for i, folder in enumerate(user_folders(include_paths)):
        dest_root = out / USER_SUBDIR / f"{i}_{folder.name}"
        mine = {**values, "source_dir": _escaped(folder), "shipped_tasks": _escaped(TASKS_DIR)}
        for path in _files(folder, "*"):
            if path.suffix == ".yaml":
                text = _template(path.read_text(), mine, parts)
            elif path.suffix == ".py":
                text = path.read_text()
            else:
                continue
            if text is None:
                continue
            dest = dest_root / path.relative_to(folder)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
    return out


def check_tasks_available(tasks: Sequence[str], include_path: str | Path) -> None:
    """Raise a clear error for a requested shipped task whose data was not materialized.

    Tasks that are not ours (lm-eval built-ins such as ``truthfulqa_mc2``) are not checked here.

    Raises:
        ValueError: a shipped task is missing from ``include_path``, naming its data placeholder.
    """
    shipped = shipped_tasks()
    present = {
        m.group(2) for p in Path(include_path).rglob("*.yaml") if (m := _NAME.search(p.read_text()))
    }
    for name in tasks:
        if name in shipped and name not in present:
            need = ", ".join(shipped[name]["placeholders"]) or "?"
            raise ValueError(
                f"task {name!r} needs data path(s) {need} (set eval.data_files.<name> to the JSONL "
                f"file; see {shipped[name]['path'].name}), but none was given for this run"
            )


def _unloadable(names: Sequence[str], include_path: str | Path) -> str:
    """Why lm-eval skipped the YAMLs that define ``names`` (it drops a YAML it cannot load
    without a word), as text to append to an error; empty if no such YAML is found."""
    from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval's own loader, as its index uses

    try:
        found = find_tasks(include_path)
    except ValueError as e:  # a name defined twice
        return f"; {e}"
    notes = []
    for name in names:
        if name not in found:
            continue
        path = found[name]["path"]
        try:
            load_yaml(path, resolve_func=True, recursive=True)
        except Exception as e:  # what lm-eval swallowed
            notes.append(f"{path} defines {name!r} but lm-eval cannot load it: {e}")
        else:
            notes.append(f"{path} defines {name!r} and loads; check its fields")
    return ("; " + "; ".join(notes)) if notes else ""


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """lm-eval's INFO logs off for one call (its warnings still show)."""
    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval")]
    levels = [lg.level for lg in loggers]
    if enabled:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)


_ENV_INFO: dict[str, Any] = {}


@contextlib.contextmanager
def _env_info_once() -> Iterator[None]:
    """``simple_evaluate`` adds the machine's environment to every result through
    ``lm_eval.evaluator.add_env_info`` (torch's ``collect_env``: a dozen subprocesses, ~0.5 s
    per call, a sixth of a toy evaluation). It does not change within a process, so it is
    collected on the first call and copied into the later ones. Without that hook (another
    lm-eval version), nothing is patched."""
    import lm_eval.evaluator as ev

    original = getattr(ev, "add_env_info", None)
    if original is None:
        yield
        return

    def cached(storage: dict[str, Any]) -> None:
        if not _ENV_INFO:
            original(_ENV_INFO)
        storage.update(copy.deepcopy(_ENV_INFO))

    ev.add_env_info = cached
    try:
        yield
    finally:
        ev.add_env_info = original


# (the call's arguments, the data files' sha256) -> the DatasetDict datasets.load_dataset returned
_LOADED: OrderedDict[str, Any] = OrderedDict()
_LOADED_MAX = 256


def _local_load_key(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
    """The memo key of a ``datasets.load_dataset`` call whose data are local files only
    (``data_files``, every one an existing file): its other arguments and each file's sha256
    (never its path). None for any other call (a hub dataset, a folder, an argument that is
    not plain JSON): those are not remembered."""
    files = kwargs.get("data_files")
    if not files or any(isinstance(a, (bytes, bytearray)) for a in args):
        return None
    groups = files if isinstance(files, Mapping) else {"": files}
    digests: dict[str, list[str]] = {}
    for split, paths in groups.items():
        for path in [paths] if isinstance(paths, (str, Path)) else list(paths):
            if not isinstance(path, (str, Path)) or not Path(path).is_file():
                return None
            h = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            digests.setdefault(str(split), []).append(h)
    rest = {k: v for k, v in kwargs.items() if k != "data_files"}
    try:
        return json.dumps({"args": list(args), "kwargs": rest, "files": digests}, sort_keys=True)
    except (TypeError, ValueError):
        return None


@contextlib.contextmanager
def _local_datasets_once() -> Iterator[None]:
    """lm-eval builds every task anew for each evaluated model, and each build loads the task's
    items with ``datasets.load_dataset`` (the toy world's tasks: local JSON files, ~9 ms a load
    through datasets' builder and cache, 330 loads per seed). Within this context a load of
    local files only (:func:`_local_load_key`) is made once per content and the same
    ``DatasetDict`` handed out again: lm-eval only reads it (a split is indexed, or mapped into
    a new dataset by ``process_docs``). Any other load goes to ``datasets`` as it is."""
    import datasets

    original = datasets.load_dataset

    def load(*args: Any, **kwargs: Any) -> Any:
        key = _local_load_key(args, kwargs)
        if key is None:
            return original(*args, **kwargs)
        hit = _LOADED.get(key)
        if hit is None:
            hit = original(*args, **kwargs)
            _LOADED[key] = hit
            if len(_LOADED) > _LOADED_MAX:
                _LOADED.popitem(last=False)
        else:
            _LOADED.move_to_end(key)
        return hit

    datasets.load_dataset = load
    try:
        yield
    finally:
        datasets.load_dataset = original


def _sample_stderr(values: Sequence[float]) -> float | None:
    """Standard error of a mean (sample std with ddof=1 over sqrt(n)), as lm-eval's ``mean``."""
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1) / n)


def parse_results(raw: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, list]]:
    """Turn ``simple_evaluate``'s output into ``(metrics, samples)`` (see :class:`HarnessResult`).

    A stderr lm-eval did not compute (``bootstrap_iters=0`` gives ``"N/A"``) is filled from the
    logged per-document values when the metric is a mean of them, which is every metric of our
    tasks; otherwise it stays None.
    """
    n_samples = raw.get("n-samples", {})
    logged = raw.get("samples") or {}
    metrics: dict[str, dict[str, Any]] = {}
    for task, res in raw["results"].items():
        row: dict[str, Any] = {}
        for key, value in res.items():
            if key == "alias" or "," not in key:
                continue
            name, filt = key.split(",", 1)
            is_stderr = name.endswith("_stderr")
            base = name[: -len("_stderr")] if is_stderr else name
            label = base if filt == "none" else f"{base},{filt}"
            row[f"{label}_stderr" if is_stderr else label] = metric_number(value)
        for label in [k for k in row if not k.endswith("_stderr")]:
            if row.get(f"{label}_stderr") is None and task in logged:
                vals = [metric_number(s.get(label)) for s in logged[task]]
                row[f"{label}_stderr"] = (
                    _sample_stderr([v for v in vals if v is not None])
                    if vals and all(v is not None for v in vals)
                    else None
                )
        n = n_samples.get(task, {})
        if n:
            row["n"] = int(n.get("effective", n.get("original", 0)))
        elif task in logged:
            row["n"] = len(logged[task])
        metrics[task] = row
    subtasks = raw.get("group_subtasks") or {}

    def leaf_n(name: str, seen: frozenset[str] = frozenset()) -> int:
        # a group's items are its leaf tasks' (mmlu -> its categories -> their subjects),
        # whatever order lm-eval lists the groups in
        if name in subtasks and name not in seen:
            return sum(leaf_n(t, seen | {name}) for t in subtasks[name])
        return int(metrics.get(name, {}).get("n", 0))

    for group in subtasks:
        if group in metrics and "n" not in metrics[group]:
            metrics[group]["n"] = leaf_n(group)
    samples: dict[str, list[dict[str, Any]]] = {}
    for task, docs in logged.items():
        rows = []
        for s in docs:
            resps = s.get("filtered_resps") or s.get("resps") or []
            try:
                lls = [float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in resps]
            except (TypeError, ValueError, IndexError):
                break  # not a log-likelihood task (e.g. generate_until): keep no compact log
            doc = s.get("doc") or {}
            rows.append(
                {
                    "doc_id": s.get("doc_id"),
                    "id": doc.get("id"),
                    "gold": s.get("target"),
                    "lls": lls,
                }
            )
        else:
            samples[task] = rows
    return metrics, samples


def refuse_non_finite(raw: Mapping[str, Any], model: str) -> None:
    """Refuse lm-eval output holding NaN/Inf: log-likelihoods of logged items, or metric values.

    Finite weights can still overflow in the forward pass (a merge scaled by 1e30): lm-eval then
    returns NaN log-likelihoods, which argmax-style metrics would score as if they were answers.

    Raises:
        ValueError: naming ``model``, each task and how many of its items are not finite.
    """
    bad: list[str] = []
    for task, docs in (raw.get("samples") or {}).items():
        n_bad = 0
        for s in docs:
            resps = s.get("filtered_resps") or s.get("resps") or []
            lls = [r[0] if isinstance(r, (list, tuple)) and r else r for r in resps]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in lls):
                break  # not a log-likelihood task (a generated "nan" is text): metrics below
            n_bad += not all(math.isfinite(v) for v in lls)
        if n_bad:
            bad.append(f"{n_bad} of {len(docs)} items of {task}")
    for task, res in (raw.get("results") or {}).items():
        for key, value in res.items():
            name = key.split(",", 1)[0]
            if "," not in key or name.endswith("_stderr") or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and not math.isfinite(float(value)):
                bad.append(f"metric {name} of {task} = {value}")
    if bad:
        raise ValueError(
            f"model {model} gave non-finite (NaN/Inf) log-likelihoods or metrics: "
            f"{'; '.join(bad)}; its outputs overflow (are its weights scaled too far, e.g. "
            "merge.params.scaling?); no score was stored"
        )


def evaluate_model(
    model_or_path: Any,
    tokenizer: Any = None,
    tasks: Sequence[str] = (),
    *,
    include_path: str | Path | None = None,
    apply_chat_template: bool = False,
    batch_size: int | str = 32,
    limit: int | float | None = None,
    device: str = "cpu",
    include_defaults: bool = False,
    bootstrap_iters: int = 0,
    log_samples: bool = True,
    dtype: str | None = "auto",
    trust_remote_code: bool = False,
    quiet: bool = True,
    holdout: Mapping[str, Any] | None = None,
    backend: str = "hf",
    backend_args: Mapping[str, Any] | None = None,
    gen_kwargs: Mapping[str, Any] | None = None,
    server: Mapping[str, Any] | None = None,
    server_dir: str | Path | None = None,
    label: str | None = None,
) -> HarnessResult:
    """Evaluate one model on lm-eval tasks, offline; per-task metrics with stderr.

    Args:
        model_or_path: a loaded ``transformers`` causal LM, or a local folder / hub id (loaded
            with :func:`hhh_bench.models.load_causal_lm`, safetensors only).
        tokenizer: the model's tokenizer (loaded from ``model_or_path`` when None and it is a
            path).
        tasks: lm-eval task or group names (ours from ``include_path``, built-ins when
            ``include_defaults``).
        include_path: a folder of task YAMLs, usually from :func:`materialize_tasks`.
        apply_chat_template: render each prompt with the tokenizer's chat template (chat models;
            the toy tokenizer has one). lm-eval then drops the space between prompt and answer,
            which the template's trailing space supplies.
        batch_size: lm-eval batch size (an int, or ``"auto"``).
        limit: documents per task (int) or share of them (float < 1); None for all.
        device: torch device of the model.
        include_defaults: also index lm-eval's ~15k built-in YAMLs (needed for ``truthfulqa_mc2``,
            ``mmlu`` ...; costs seconds).
        bootstrap_iters: lm-eval's bootstrap draws for stderrs; 0 skips them (stderrs of mean
            metrics are then computed from the per-document values, exactly as lm-eval would).
        log_samples: keep per-document results (needed for the stderr fill and ``samples``).
        dtype: dtype policy when loading from a path.
        trust_remote_code: when loading from a path.
        quiet: lower lm-eval's log level to WARNING during the run.
        holdout: for suites with one split: ``{"fraction", "seed", "part"}`` evaluates only one
            of two disjoint parts of every task's items (:func:`holdout_indices`): ``select``
            (a seeded share ``fraction``, where configurations are chosen) or ``report`` (the
            rest). ``limit`` then caps the part.
        backend: ``hf`` (lm-eval's HFLM, default) or ``vllm`` (lm-eval's VLLM; ``model_or_path``
            must then be a folder or hub id), see :mod:`hhh_bench.evaluation.backends`.
        backend_args: options of the ``vllm`` backend (``tensor_parallel_size``,
            ``data_parallel_size``, ``gpu_memory_utilization``, ...).
        gen_kwargs: generation settings that override every ``generate_until`` task's own
            (lm-eval's ``gen_kwargs``), e.g. ``{"max_gen_toks": 64}``; None keeps the tasks'.
        server: ``backend=server`` only: ``eval.server`` (a URL, or the server to start for
            this model), see :mod:`hhh_bench.evaluation.serving`.
        server_dir: where a started server writes ``server.log``.
        label: how an error names the model (default: its path or ``name_or_path``).

    Returns:
        A :class:`HarnessResult`.

    Raises:
        ValueError: no tasks, a missing chat template, an unknown task name, or NaN/Inf
            log-likelihoods or metrics (:func:`refuse_non_finite`).
    """
    if not tasks:
        raise ValueError("evaluate_model: no tasks given")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from hhh_bench.evaluation.backends import check_backend, make_lm

    check_backend(backend, backend_args)
    model = model_or_path
    if backend in ("vllm", "server"):  # the weights are loaded elsewhere; the tokenizer here
        if not isinstance(model_or_path, (str, Path)):
            raise TypeError(f"evaluate_model: backend={backend} needs the model's folder or hub id")
        if tokenizer is None:
            from hhh_bench.models import load_tokenizer

            tokenizer = load_tokenizer(model_or_path, trust_remote_code=trust_remote_code)
    elif isinstance(model_or_path, (str, Path)):
        from hhh_bench.models import load_causal_lm, load_tokenizer

        model = load_causal_lm(
            model_or_path, dtype=dtype, device=device, trust_remote_code=trust_remote_code
        )
        if tokenizer is None:
            tokenizer = load_tokenizer(model_or_path, trust_remote_code=trust_remote_code)
    if tokenizer is None:
        raise ValueError("evaluate_model: pass the tokenizer of an in-memory model")
    if apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "apply_chat_template=True but the tokenizer has no chat template; set "
            "eval.apply_chat_template=false for a base (non-chat) model"
        )
    if include_path is not None:
        check_tasks_available(tasks, include_path)
    was_training = getattr(model, "training", False)
    if backend == "hf":
        model.eval()
    t0 = time.perf_counter()
    with _quiet(quiet), _env_info_once(), _local_datasets_once():
        tm = TaskManager(
            include_path=str(include_path) if include_path else None,
            include_defaults=include_defaults,
        )
        unknown = [t for t in tasks if t not in set(tm.all_tasks)]
        if unknown:
            where = f"{include_path}" + (" and lm-eval's built-ins" if include_defaults else "")
            broken = _unloadable(unknown, include_path) if include_path else ""
            raise ValueError(f"unknown lm-eval task(s) {unknown} (looked in {where}){broken}")
        samples_arg, parts = None, None
        if holdout is not None:
            parts = holdout_indices(tasks, tm, holdout, limit)
            samples_arg, limit = {t: p["indices"] for t, p in parts.items()}, None
        served: dict[str, Any] | None = None
        stack = contextlib.ExitStack()
        if backend == "server":
            from hhh_bench.evaluation.serving import served_lm

            lm, served = stack.enter_context(served_lm(
                server, str(model_or_path), tokenizer, tm, tasks,
                Path(server_dir) if server_dir else Path.cwd(), dtype=dtype, device=device,
                trust_remote_code=trust_remote_code,
            ))  # fmt: skip
        else:
            lm = make_lm(
                backend,
                model,
                tokenizer,
                batch_size=batch_size,
                device=device,
                dtype=dtype,
                backend_args=backend_args,
                trust_remote_code=trust_remote_code,
            )
        with stack:
            raw = simple_evaluate(
                model=lm,
                tasks=list(tasks),
                task_manager=tm,
                samples=samples_arg,
                limit=limit,
                bootstrap_iters=bootstrap_iters,
                log_samples=log_samples,
                apply_chat_template=apply_chat_template,
                batch_size=batch_size,
                device=device,
                gen_kwargs=dict(gen_kwargs) if gen_kwargs else None,
            )
    seconds = time.perf_counter() - t0
    if was_training:
        model.train()
    if raw is None:  # only on non-zero ranks of a distributed run
        raise RuntimeError("lm-eval returned no results (non-primary rank?)")
    refuse_non_finite(raw, label or str(getattr(model, "name_or_path", model_or_path)))
    metrics, samples = parse_results(raw)
    items, generations = parse_items(raw)
    import lm_eval

    config = {
        "tasks": list(tasks),
        "apply_chat_template": apply_chat_template,
        "batch_size": batch_size,
        "limit": limit,
        "bootstrap_iters": bootstrap_iters,
        "include_defaults": include_defaults,
        "backend": backend,
        "backend_args": dict(backend_args or {}),
        **({"server": served} if served is not None else {}),
        "gen_kwargs": dict(gen_kwargs or {}),
        "lm_eval_version": getattr(lm_eval, "__version__", None),
        "task_versions": {t: v for t, v in (raw.get("versions") or {}).items() if v is not None},
    }
    if parts is not None:  # which items were used for what (no index list: a hash of it)
        config["holdout"] = {
            **{k: holdout[k] for k in ("fraction", "seed", "part")},  # type: ignore[index]
            "tasks": {t: {k: v for k, v in p.items() if k != "indices"} for t, p in parts.items()},
        }
    groups = {g: list(m) for g, m in (raw.get("group_subtasks") or {}).items()}
    return {
        "metrics": metrics,
        "samples": samples,
        "seconds": round(seconds, 3),
        "config": config,
        "items": items,
        "generations": generations,
        "groups": groups,
    }


def holdout_indices(
    tasks: Sequence[str], task_manager: Any, holdout: Mapping[str, Any], limit: Any = None
) -> dict[str, dict[str, Any]]:
    """Per leaf task of ``tasks``: the item indices of one part of a seeded two-way split.

    For a task with N items, a permutation drawn by ``random.Random(f"{seed}:{task}")`` puts
    n = round(fraction·N) items (at least 1, at most N − 1) in ``select`` and the rest in
    ``report``: disjoint, the same in every run and process, and independent across tasks. An
    int ``limit`` keeps the first ``limit`` indices of the part (in increasing order).

    Returns ``{task: {"indices", "n_items", "n_part", "sha256"}}`` (``sha256`` of the indices:
    what a report records). Raises ``ValueError`` for a task with fewer than two items.
    """
    import hashlib
    import random

    fraction, seed, part = float(holdout["fraction"]), int(holdout["seed"]), holdout["part"]
    if part not in ("select", "report") or not 0.0 < fraction < 1.0:
        raise ValueError(
            f"holdout needs part select|report and fraction in (0, 1), got {dict(holdout)}"
        )

    out: dict[str, dict[str, Any]] = {}
    for name, task in task_manager.load(list(tasks))["tasks"].items():  # leaf tasks, flat
        n = len(task.eval_docs)
        if n < 2:
            raise ValueError(
                f"eval task {name!r} has {n} item(s): a selection holdout needs at least two "
                "(one to choose on, one to report)"
            )
        order = list(range(n))
        random.Random(f"{seed}:{name}").shuffle(order)
        n_sel = min(n - 1, max(1, int(fraction * n + 0.5)))
        idx = sorted(order[:n_sel] if part == "select" else order[n_sel:])
        if isinstance(limit, int) and not isinstance(limit, bool):
            idx = idx[:limit]
        digest = hashlib.sha256(",".join(map(str, idx)).encode()).hexdigest()[:16]
        out[name] = {"indices": idx, "n_items": n, "n_part": len(idx), "sha256": digest}
    return out
