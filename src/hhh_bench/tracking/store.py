"""The results store: one append-only JSONL file per experiment, one row per evaluated model.

One concept: the results store (its row schema, writing, reading and validating rows).

Rows are :class:`ResultRow` dicts (see its fields). :func:`append_result` writes a whole line,
flushes and fsyncs under an exclusive lock, so concurrent writers (a Hydra multirun) never
interleave and a crash loses at most the line being written. :func:`read_results` skips a torn
last line (an unfinished write: no closing brace) with a warning; the next append moves it to
``<store>.torn`` first, so a line cut short in the middle of a store is damage, refused like any
invalid line. The same model evaluated again
(same ``row_key`` and configuration: :func:`row_identity`) supersedes its earlier row: the last one wins on load, and the file itself is
never rewritten.

Rows are validated on read as on write (:func:`check_row`): a line that is not a JSON object, a
missing or unknown ``kind``, a score (``helpful``, ``honest``, ``harmless``, ``average``,
``min``, a per-task metric, a stderr or delta) that is NaN, infinite, a boolean, a string or (a
required score) null, a 3H score outside [0, 1], an ``average`` or ``min`` that is not that of
the three scores, or a ``schema_version`` newer than :data:`SCHEMA_VERSION` is a
:class:`StoreError` naming the file and the line; :func:`scan_results` with ``skip_invalid``
skips such lines instead and says which and why (``report.skip_invalid=true``).

Beside it, ``diagnostics.jsonl`` holds one row per diagnosed set of task vectors (the base and
specialists a merge read, see :mod:`hhh_bench.merging.diagnostics`): :func:`append_diagnostics`
and :func:`read_diagnostics`, with the same locking, torn-line and superseding rules.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from hhh_bench.core.jsonl import json_lines
from hhh_bench.core.provenance import config_hash
from hhh_bench.core.stagecache import output_root, relocated

KINDS = ("base", "oracle", "specialist", "mixture", "merge", "external")
"""``external``: a model given with ``+eval.model`` that is no merge stage output (a folder or
hub id of the user's); the report shows it in a group of its own, never as a merge or mixture
the answer compares."""
SCHEMA_VERSION = 1
"""The version of the row format this code writes (``schema_version``) and reads; rows written
before versions were recorded read as version 1."""


class StoreError(ValueError):
    """A line of a results store that is not a valid row: the message names the file and line."""


class ResultRow(TypedDict, total=False):
    """One evaluated model (one split of one model) in the results store.

    Identity: ``row_key`` (unique per model x data x eval config x split x name x configuration:
    the eval key, the model's name, its explicit family, if any, and ``#cfg=`` the hash of the
    configuration that defines it, if any: :func:`row_identity`), ``experiment``,
    ``split`` (``validation`` | ``test``), ``suite`` (``toy3h`` | ``harness_3h``), ``metric``
    (the primary metric behind the scores), ``created_at``.

    What it is: ``name`` (display name; rows of the same configuration over seeds share it),
    ``family`` (the report groups configurations into families), ``kind`` (one of
    :data:`KINDS`), ``method`` (``dpo``, ``ties``, ...), ``params`` (hyperparameters),
    ``mix_strategy``, ``noise_rate``, ``train_dimensions`` (what a specialist was trained on),
    ``seed``, ``config_hash``, ``model_key``, ``data_key``, ``eval_key``.

    Numbers: ``tasks`` (per task ``{metric: value, "<metric>_stderr": value, "n": int}``; a
    judged task also ``n_empty``, its empty answers, and ``n_unparsed``, the judge's answers that
    were neither label: :data:`COUNT_FIELDS`, checked on read), the
    scores ``helpful``, ``honest``, ``harmless`` (+ ``_stderr``), ``average``, ``min``, and vs
    the base ``delta_helpful``, ``delta_honest``, ``delta_harmless``, ``delta_average``,
    ``delta_min``, ``max_drop`` (None without a base).

    Where and how long: ``timings`` (seconds per phase, e.g. ``eval_s``, ``train_s``),
    ``artifacts`` (paths: ``model``, ``eval_dir``, ``results``).

    Setup: ``setup`` (what makes two rows comparable: suite, split, metric, each scored task's
    dimension, weight, metric and version, the harness's ``limit``, chat template and few-shot
    settings; :func:`eval_setup`) and ``setup_key`` (its hash). The report never aggregates
    rows of different setups.

    Also: ``task_specs`` (each task's dimension, weight and primary metric behind the scores) and
    ``extra`` (any other field the caller's model dict carried, e.g. ``selection_score``).

    Uncertainty and judges (issue 17): ``average_stderr``, ``min_stderr``; the extra columns
    (``over_refusal``, capability tasks, each with ``<name>_stderr``) and ``extra_columns``
    (each one's task, metric and direction); ``paired_vs_base`` (per dimension and the average:
    the paired test over items against the base, :class:`hhh_bench.core.stats.PairedTest`
    as a dict); ``judges`` (per judged task: role, judge model, revision, protocol,
    fingerprint); ``reference`` (whose answers a win rate is against: its eval folder).
    """

    row_key: str
    schema_version: int
    experiment: str
    split: str
    suite: str
    metric: str
    created_at: str
    name: str
    family: str | None
    kind: str
    method: str | None
    params: dict[str, Any]
    mix_strategy: str | None
    noise_rate: float | None
    train_dimensions: list[str]
    seed: int | None
    config_hash: str | None
    model_key: str
    data_key: str | None
    eval_key: str
    setup: dict[str, Any]
    setup_key: str
    tasks: dict[str, dict[str, Any]]
    helpful: float
    honest: float
    harmless: float
    helpful_stderr: float | None
    honest_stderr: float | None
    harmless_stderr: float | None
    average: float
    min: float
    delta_helpful: float | None
    delta_honest: float | None
    delta_harmless: float | None
    delta_average: float | None
    delta_min: float | None
    max_drop: float | None
    timings: dict[str, float]
    artifacts: dict[str, str]
    task_specs: list[dict[str, Any]]
    extra: dict[str, Any]
    average_stderr: float | None
    min_stderr: float | None
    extra_columns: dict[str, dict[str, Any]]
    paired_vs_base: dict[str, dict[str, Any]] | None
    judges: dict[str, dict[str, Any]]
    reference: dict[str, Any] | None


REQUIRED = ("row_key", "name", "kind", "helpful", "honest", "harmless", "average", "min")
SCORE_COLUMNS = ("helpful", "honest", "harmless", "average", "min")
SCORE_TOLERANCE = 1e-3
"""How far a row's ``average`` and ``min`` may be from those of its three scores: a row written
by hand or by another program with its numbers rounded to three decimals (ours are exact)."""


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python, paths -> str, tuples -> lists."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, (str, bytes)):
        with contextlib.suppress(Exception):
            obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def validate_row(row: Mapping[str, Any]) -> None:
    """Check the fields every consumer relies on.

    Raises:
        ValueError: a required field is missing, ``kind`` is unknown, a score is not a finite
            number in [0, 1], or ``average`` / ``min`` are not those of the three scores.
    """
    missing = [k for k in REQUIRED if k not in row or row[k] is None]
    if missing:
        raise ValueError(f"result row {row.get('row_key', '?')!r} lacks field(s) {missing}")
    if row["kind"] not in KINDS:
        raise ValueError(f"result row {row['row_key']!r}: kind {row['kind']!r} not in {KINDS}")
    split = row.get("split")
    if split is not None and split not in ("validation", "test"):  # the eval splits
        raise ValueError(
            f"result row {row['row_key']!r}: split {split!r} is not validation or test (a row "
            "of another split would be left out of every table, its deltas with it)"
        )
    for k in SCORE_COLUMNS:
        v = row[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(
                f"result row {row['row_key']!r}: {k} = {v!r} is not a finite number (a NaN, "
                "Inf or boolean score would break every report built from the store)"
            )
    key = row["row_key"]
    for k in SCORE_COLUMNS:
        if not 0.0 <= row[k] <= 1.0:
            raise ValueError(
                f"result row {key!r}: {k} = {row[k]!r} is outside [0, 1] (the 3H scores are "
                "rates, higher is better; a metric on another scale belongs in an extra column)"
            )
    dims = [float(row[d]) for d in SCORE_COLUMNS[:3]]
    for k, want in (("average", sum(dims) / 3), ("min", min(dims))):
        if abs(float(row[k]) - want) > SCORE_TOLERANCE:
            raise ValueError(
                f"result row {key!r}: {k} = {row[k]!r} is not the {k} of its three scores "
                f"({want!r}): a row edited by hand, or written by another program"
            )


_OPTIONAL_NUMBERS = re.compile(r"^(delta_\w+|max_drop|\w+_stderr)$")


def _number_problem(value: Any, *, allow_none: bool) -> str | None:
    """Why ``value`` is not a finite number (None when it is, or when it is None and allowed)."""
    if value is None:
        return None if allow_none else "null"
    if isinstance(value, bool):
        return f"a boolean ({value!r})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if not isinstance(value, (int, float)):
        return f"a {type(value).__name__}"
    if not math.isfinite(value):
        return f"{value!r}"
    return None


def check_row(row: Any) -> None:
    """Check a row as read back from the store: what :func:`validate_row` checks on write, plus
    the schema version, the optional numbers (stderrs, deltas, extra columns: a finite number
    or null) and every per-task metric (a finite number or null; a scored task's primary
    metric a finite number).

    Raises:
        ValueError: the first problem found, in words (without the file and line, which the
            reader adds).
    """
    if not isinstance(row, Mapping):
        what = {list: "a JSON array", str: "a JSON string"}.get(type(row), f"JSON {row!r:.40}")
        raise ValueError(f"not a JSON object but {what}")
    version = row.get("schema_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"schema_version {version!r} is not a positive integer")
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"schema_version {version} is newer than this hhh-bench reads ({SCHEMA_VERSION}): "
            "written by a newer version; upgrade hhh-bench to report this store"
        )
    if "kind" not in row or row["kind"] is None:
        raise ValueError(f"the row lacks `kind` (one of {KINDS})")
    validate_row(row)
    key = row["row_key"]
    if row.get("split") is None:  # battery 11, s07: such a row vanished from every table
        raise ValueError(
            f"result row {key!r}: split is {'null' if 'split' in row else 'missing'}: a row "
            "belongs to the validation or test split (each table shows one), so it would be left "
            "out of every table without a word; write the split it was evaluated on, or delete "
            "the line"
        )
    seed = row.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"result row {key!r}: seed = {seed!r} is not an integer or null")
    if seed is not None and not 0 <= seed < 2**32:  # battery 13, F12: a run refuses it too
        raise ValueError(
            f"result row {key!r}: seed = {seed!r} is outside [0, 2**32 - 1], the seeds a run "
            "takes: a row edited by hand, or written by another program"
        )
    if row["kind"] == "merge" and not (isinstance(row.get("method"), str) and row["method"]):
        raise ValueError(  # battery 13, F12: counted as a merge method of its own
            f"result row {key!r}: a merge row without its merge method (method = "
            f"{row.get('method')!r}): a row edited by hand, or written by another program"
        )
    if DIGEST in row and row[DIGEST] != row_digest(row):
        raise ValueError(
            f"result row {key!r} was changed after hhh-bench wrote it (its {DIGEST} does not "
            "match its content): run the stage that wrote it again (stage=eval) or delete the line"
        )
    _check_shapes(key, row)
    columns = set(row.get("extra_columns") or {})
    for k, v in row.items():
        if k in SCORE_COLUMNS or not (_OPTIONAL_NUMBERS.match(k) or k in columns):
            continue
        why = _number_problem(v, allow_none=True)
        if why:
            raise ValueError(f"result row {key!r}: {k} = {why} is not a finite number or null")
        if k.endswith("_stderr") and v is not None and v < 0:
            raise ValueError(f"result row {key!r}: {k} = {v!r} is negative (a standard error)")
    primary = {s.get("name"): s.get("metric") for s in row.get("task_specs") or []
               if isinstance(s, Mapping)}  # fmt: skip
    tasks = row.get("tasks") or {}
    if not isinstance(tasks, Mapping):
        raise ValueError(f"result row {key!r}: tasks is not a mapping of task -> metrics")
    for task, metrics in tasks.items():
        if not isinstance(metrics, Mapping):
            raise ValueError(f"result row {key!r}: tasks.{task} is not a mapping of metrics")
        for m, v in metrics.items():
            why = _number_problem(v, allow_none=m != primary.get(task))
            if why:
                raise ValueError(
                    f"result row {key!r}: tasks.{task}.{m} = {why} is not a finite number"
                )
            if str(m).endswith("_stderr") and v is not None and v < 0:
                raise ValueError(
                    f"result row {key!r}: tasks.{task}.{m} = {v!r} is negative (a standard error)"
                )
        _check_counts(key, task, metrics)
    if DIGEST not in row:  # no digest vouches for it: its scores must follow from its tasks
        _check_recomputed(key, row)


def _check_recomputed(key: Any, row: Mapping[str, Any]) -> None:
    """A row's dimension scores are the weighted means of its tasks' primary metrics
    (:func:`hhh_bench.core.scoring.dimension_scores` over its ``task_specs``); not checked when
    a task's primary metric is not stored (a judged win rate is scored against the base)."""
    from hhh_bench.core.scoring import DIMENSIONS, TaskSpec, dimension_scores

    specs = row.get("task_specs") or []
    tasks = row.get("tasks") or {}
    try:
        ts = [TaskSpec(str(s["name"]), str(s["dimension"]), float(s["weight"]), str(s["metric"]))
              for s in specs]  # fmt: skip
        if not ts or any(tasks.get(t.name, {}).get(t.metric) is None for t in ts):
            return
        dims = dimension_scores(tasks, ts)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return  # the shapes' own checks name what is wrong there
    for d in DIMENSIONS:
        if abs(float(row[d]) - float(dims[d] or 0.0)) > SCORE_TOLERANCE:
            raise ValueError(
                f"result row {key!r}: {d} = {row[d]!r} is not the weighted mean of its tasks' "
                f"{d} scores ({dims[d]!r}, from tasks and task_specs): a row edited by hand or "
                "written by another program; evaluate the model again (stage=eval) or fix the line"
            )


MAPPING_FIELDS = ("params", "extra", "artifacts", "extra_columns", "reference", "judges")
"""Row fields that are JSON objects (or null) when present: the report reads them as mappings."""
EXTRA_COUNTS = ("n_configs",)
"""``extra`` fields the report reads as counts (a non-negative integer or null)."""


def _check_shapes(key: Any, row: Mapping[str, Any]) -> None:
    """The structured fields the report reads hold what it reads: mappings where it iterates
    items, a list of task specs, integer counts (a hand-edited ``params="x"`` crashed the
    report with a traceback; ``extra.n_configs="four"`` gave an error naming nothing)."""
    for name in MAPPING_FIELDS:
        v = row.get(name)
        if v is not None and not isinstance(v, Mapping):
            raise ValueError(f"result row {key!r}: {name} = {v!r:.60} is not a JSON object")
    specs = row.get("task_specs")
    if specs is not None and (
        not isinstance(specs, list) or not all(isinstance(t, Mapping) for t in specs)
    ):
        raise ValueError(f"result row {key!r}: task_specs = {specs!r:.60} is not a list of objects")
    for i, spec in enumerate(specs or []):
        _check_spec(key, i, spec)
    extra = row.get("extra") or {}
    for name in EXTRA_COUNTS:
        v = extra.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"result row {key!r}: extra.{name} = {v!r} is not a count")


def _check_spec(key: Any, i: int, spec: Mapping[str, Any]) -> None:
    """A task spec of ``task_specs`` is what the scores were computed with: a task name, one of
    the three dimensions, a weight that is a finite number >= 0 and a metric name (a hand-written
    ``"weight": "heavy"`` stopped the report with ``could not convert string to float``)."""
    from hhh_bench.core.scoring import DIMENSIONS

    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"result row {key!r}: task_specs[{i}].name = {name!r} is not a task name")
    where = f"result row {key!r}: task_specs[{i}]"
    task = f"(task {name!r})"
    if spec.get("dimension") not in DIMENSIONS:
        raise ValueError(
            f"{where}.dimension {task} = {spec.get('dimension')!r} is not one of {list(DIMENSIONS)}"
        )
    why = _number_problem(spec.get("weight"), allow_none=False)
    if why is None and spec["weight"] < 0:
        why = repr(spec["weight"])
    if why:
        raise ValueError(f"{where}.weight {task} = {why} is not a finite number >= 0")
    metric = spec.get("metric")
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"{where}.metric {task} = {metric!r} is not a metric name")


COUNT_FIELDS = ("n", "n_empty", "n_unparsed")
"""A task's item counts (``tasks.<task>``): items, and of a judged task the empty answers and the
judge's unparsed answers (:mod:`hhh_bench.evaluation.judged`)."""


def _check_counts(key: Any, task: str, metrics: Mapping[str, Any]) -> None:
    """A task's counts are non-negative integers (or null), the parts no more than ``n``."""
    for c in COUNT_FIELDS:
        v = metrics.get(c)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"result row {key!r}: tasks.{task}.{c} = {v!r} is not a count")
    n = metrics.get("n")
    for c in COUNT_FIELDS[1:]:
        if n is not None and metrics.get(c) is not None and metrics[c] > n:
            raise ValueError(
                f"result row {key!r}: tasks.{task}.{c} = {metrics[c]} is more than its n = {n}"
            )


@contextlib.contextmanager
def _locked(f: Any) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: rely on O_APPEND alone
        yield
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


SKIP_SWITCH = "report.skip_invalid=true"
"""How a refusal of an invalid store line names the switch (``hhh-bench export`` says its
``--skip-invalid``)."""
DIGEST = "digest"
"""A row's own hash, written with it: a line edited by hand no longer matches (:func:`check_row`).
A row without one (written by hand, or by hhh-bench before 0.4) is read unchecked."""


def row_digest(row: Mapping[str, Any]) -> str:
    """The hash of a row's content less its own digest."""
    return config_hash({k: v for k, v in row.items() if k != DIGEST}, length=16)


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    skip = {"created_at", "timings", DIGEST}
    return {k: v for k, v in a.items() if k not in skip} == {
        k: v for k, v in b.items() if k not in skip
    }


def append_result(path: str | Path, row: Mapping[str, Any], *, skip_unchanged: bool = True) -> bool:
    """Append one row to the store (created with its folder if missing), crash-safely.

    The line is written with a single ``write`` on a file opened for appending, under an
    exclusive ``flock``, then flushed and fsynced. If the file ends in a torn line (a crash
    mid-write), that fragment is moved to ``<store>.torn`` first (:func:`_set_aside_torn_tail`).

    Args:
        path: the store file (``<root>/results.jsonl``).
        row: a :class:`ResultRow`; ``created_at`` is filled in if absent.
        skip_unchanged: do not append when the latest row with the same ``row_key`` has the same
            content (ignoring ``created_at`` and ``timings``): a cached stage re-run adds nothing.

    Returns:
        True if a line was written.
    """
    validate_row(row)
    row = _clean({**row, "schema_version": SCHEMA_VERSION})
    check_row(row)  # what a reader checks (NaN/Inf were made null by _clean)
    return _append_row(path, row, skip_unchanged=skip_unchanged)


def _append_row(path: str | Path, row: Mapping[str, Any], *, skip_unchanged: bool) -> bool:
    """Append one JSON line under an exclusive lock, flushed and fsynced (see append_result)."""
    row = _clean(dict(row))
    row.setdefault("created_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    row.pop(DIGEST, None)
    # the digest of the row as a reader will see it: its JSON read back (a float or int subclass,
    # a str-keyed mapping, ... are what they serialise to)
    row = json.loads(json.dumps(row, sort_keys=True, allow_nan=False))
    row[DIGEST] = row_digest(row)
    line = json.dumps(row, sort_keys=True, allow_nan=False) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f, _locked(f):
        if skip_unchanged:
            latest = _dedupe(_rows_of(f, path, warn=False), memo=True)
            prev = latest.get(row_identity(row))
            if prev is not None and _same(prev, row):
                return False
        _set_aside_torn_tail(f, path)
        f.seek(0, os.SEEK_END)
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    return True


def _set_aside_torn_tail(f: Any, path: Path) -> None:
    """A store that does not end in a newline ends in a write a crash cut short: its fragment is
    appended to ``<store>.torn`` (kept, not lost) and cut off the store, so that the next row
    starts a line of its own and a cut-short line is only ever the last one: one in the middle
    of a store is damage, which a reader refuses (:func:`scan_results`)."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if size == 0:
        return
    f.seek(-1, os.SEEK_END)
    if f.read(1) == b"\n":
        return
    f.seek(max(0, size - (1 << 20)))
    tail = f.read()
    cut = size - len(tail) + tail.rfind(b"\n") + 1 if b"\n" in tail else size - len(tail)
    f.seek(cut)
    fragment = f.read()
    aside = path.with_name(path.name + ".torn")
    with open(aside, "ab") as out:
        out.write(fragment + b"\n")
        out.flush()
        os.fsync(out.fileno())
    f.truncate(cut)
    warnings.warn(
        f"{path}: its last line was cut short (a write interrupted by a crash); moved to {aside} "
        "before appending",
        RuntimeWarning,
        stacklevel=4,
    )


_PARSED: dict[str, tuple[tuple[int, int, int], bytes, list[_Line]]] = {}
"""The lines of each store read in this process, by path, with the file's (inode, size, mtime)
and bytes when read: a pipeline checks the store once per evaluated model, so an unchanged file
is parsed once, and a file that only grew by whole lines (an append) has only its new lines
parsed; any other change, the file parsed again, whole."""


@dataclass(frozen=True)
class _Line:
    """One non-blank line of a store: its number, the parsed value (when it parsed), whether it
    is torn (an unfinished write: no closing brace) and why it did not parse. ``verdict`` holds
    :func:`check_row`'s outcome once asked (:func:`_verdict`), so that a line is checked once
    per process, not once per read of the store."""

    number: int
    value: Any = None
    torn: bool = False
    error: str | None = None
    verdict: list[str | None] = field(default_factory=list, compare=False, repr=False)


def _verdict(line: _Line) -> str | None:
    """Why ``line``'s row is invalid (:func:`check_row`'s message), or None: computed on the
    first call, remembered on the line (its value is not changed by readers, who get copies)."""
    if not line.verdict:
        try:
            check_row(line.value)
            line.verdict.append(None)
        except ValueError as e:
            line.verdict.append(str(e))
    return line.verdict[0]


REPEATED = "a later line repeats its row key (the latest is used)"
"""The reason of a line :meth:`StoreScan.repeated` lists (the report says these apart)."""


@dataclass(frozen=True)
class SkippedLine:
    """A line of the store :func:`scan_results` skipped (``skip_invalid``): number and reason."""

    line: int
    reason: str


@dataclass
class StoreScan:
    """What :func:`scan_results` read: the valid rows in file order, their line numbers, and the
    lines skipped as invalid (torn last writes are not counted here: they warn)."""

    path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    skipped: list[SkippedLine] = field(default_factory=list)

    def latest(self) -> list[dict[str, Any]]:
        """The last row per ``row_key``, in first-seen order."""
        return list(_dedupe(self.rows).values())

    def repeated(self) -> list[SkippedLine]:
        """The lines whose ``row_key`` a later line repeats (left out by :meth:`latest`), with
        the reason :data:`REPEATED`."""
        last = {row_identity(row): i for i, row in enumerate(self.rows)}
        return [
            SkippedLine(n, REPEATED)
            for i, (row, n) in enumerate(zip(self.rows, self.lines, strict=False))
            if last[row_identity(row)] != i
        ]


def _lines_of(f: Any, path: Path) -> list[_Line]:
    """The parsed lines of the open store ``f`` (the memo when the file is unchanged)."""
    st = os.fstat(f.fileno())
    ident = (st.st_ino, st.st_size, st.st_mtime_ns)
    memo = _PARSED.get(str(path))
    if memo is not None and memo[0] == ident:
        return memo[2]
    f.seek(0)
    data = f.read()
    if (
        memo is not None
        and memo[0][0] == st.st_ino
        and memo[1].endswith(b"\n")
        and data.startswith(memo[1])
    ):  # whole lines appended: parse them only
        old = memo[1]
        lines = memo[2] + _parse(data[len(old) :], start=old.count(b"\n") + 1)
    else:
        lines = _parse(data)
    _PARSED[str(path)] = (ident, data, lines)
    return lines


def _rows_of(f: Any, path: Path, warn: bool = True) -> list[dict[str, Any]]:
    """The rows of the open store ``f`` that have a ``row_key`` (unvalidated, torn and invalid
    lines left out): what an append compares a new row with. A copy of the list, whose rows
    the caller must not modify."""
    lines = _lines_of(f, path)
    if warn:
        _warn_torn(lines, path)
    return [ln.value for ln in lines if isinstance(ln.value, dict) and "row_key" in ln.value]


def _parse(data: bytes, start: int = 1) -> list[_Line]:
    """The store's lines (``start``: the number of ``data``'s first line); a line that is valid
    UTF-8 but not valid JSON, begun as a row (``{``) and lacking its closing brace is torn (an
    unfinished write); one that is no row at all (``not json``) is not (battery 18, U10)."""
    return [
        _Line(ln.number, ln.value, error=ln.error,
              torn=bool(ln.error) and ln.utf8 and ln.text.lstrip().startswith("{")
              and not ln.text.rstrip().endswith("}"))
        for ln in json_lines(data, start)
    ]  # fmt: skip


TORN = "a torn line (no closing brace): a write interrupted by a crash"
"""Why a torn line was skipped (:func:`scan_results`)."""


def _warn_torn(lines: list[_Line], path: Path) -> None:
    if lines and lines[-1].torn:
        warnings.warn(
            f"{path}: ignoring its last line, cut short (no closing brace): a write interrupted "
            "by a crash",
            RuntimeWarning,
            stacklevel=4,
        )


CUT_SHORT = (
    "cut short (no closing brace) in the middle of the store: a crash cuts only the last line "
    "(the next write sets it aside), so this line was damaged"
)


def experiment_lines(path: str | Path) -> dict[str, list[int]]:
    """The line numbers of a store's rows per experiment name, in first-seen order (lines that
    do not parse are left to :func:`scan_results`); none for a missing store."""
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, "rb") as f:
        lines = _lines_of(f, path)
    out: dict[str, list[int]] = {}
    for ln in lines:
        if isinstance(ln.value, dict) and "experiment" in ln.value:
            out.setdefault(str(ln.value["experiment"]), []).append(ln.number)
    return out


def experiments_in(path: str | Path) -> set[str]:
    """The experiment names of a store's rows (see :func:`experiment_lines`)."""
    return set(experiment_lines(path))


def _line_list(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:5]) + (", ..." if len(numbers) > 5 else "")
    return f"{len(numbers)} row{'s' if len(numbers) != 1 else ''}, line{'s' if len(numbers) != 1 else ''} {shown}"


def check_one_experiment(path: str | Path, name: str) -> None:
    """One results store holds one experiment: rows of another ``name`` in it would be pooled
    into this one's tables and answer, and its report folder replaced. Raise ``ValueError``
    naming the store, the names it holds (with their rows' lines when it holds several) and
    what to do."""
    held = experiment_lines(path)
    others = sorted(set(held) - {str(name)})
    if not others:
        return
    if len(held) > 1:  # a mixed store (battery 11, r06: each name's error advised the other)
        parts = "; ".join(f"{e}: {_line_list(n)}" for e, n in held.items())
        raise ValueError(
            f"{path} holds rows of {len(held)} experiments ({parts}): one store holds one "
            "experiment; delete the lines that do not belong to it, or run each under a root of "
            "its own (root=...)"
        )
    raise ValueError(
        f"{path} holds the results of experiment {others[0]!r}; name={name} would pool its rows "
        f"with them in one report, and replace that report: run it under a root of its own "
        f"(root=...), or keep name={others[0]}"
    )


def scan_results(path: str | Path, *, skip_invalid: bool = False) -> StoreScan:
    """Read and check every line of a store (:func:`check_row`), in file order.

    A torn line (an unfinished write, see the module docstring) is skipped with a
    :class:`RuntimeWarning` and recorded in ``StoreScan.skipped`` (the report says so under
    its table). A missing file reads as no rows.

    Args:
        path: the store file.
        skip_invalid: skip an invalid line, recording its number and reason in
            ``StoreScan.skipped``, instead of raising.

    Raises:
        StoreError: an invalid line (``skip_invalid`` false), naming the file and line.
    """
    scan = _scan(Path(path), skip_invalid)
    # a caller may change its rows, nested fields too: never the memo's (_PARSED)
    scan.rows = [_rebased(copy.deepcopy(r), scan.path.parent) for r in scan.rows]
    return scan


def _scan(path: Path, skip_invalid: bool) -> StoreScan:
    """:func:`scan_results` with the memo's own row objects (never to be changed or handed out)."""
    scan = StoreScan(path)
    if path.exists() and not path.is_file():
        raise StoreError(f"results store {path} is not a file (a folder?): move it aside")
    if not path.is_file():
        return scan
    with open(path, "rb") as f:
        lines = _lines_of(f, path)
    _warn_torn(lines, path)
    last = lines[-1].number if lines else 0
    for ln in lines:
        if ln.torn and ln.number == last:  # an unfinished write: skipped whatever
            scan.skipped.append(SkippedLine(ln.number, TORN))  # skip_invalid says, and said
            continue
        reason = CUT_SHORT if ln.torn else ln.error
        if reason is None:
            reason = _verdict(ln)
        if reason is None:
            scan.rows.append(ln.value)
            scan.lines.append(ln.number)
        elif skip_invalid:
            scan.skipped.append(SkippedLine(ln.number, reason))
        else:
            raise StoreError(
                f"{path}, line {ln.number}: {reason}. Fix or delete that line, or skip invalid "
                f"rows with {SKIP_SWITCH} (the report then says how many it skipped)"
            )
    return scan


REBASED = {"artifacts": None, "reference": ("eval_dir",)}
"""The path fields of a row that :func:`_rebased` reads under the store's root: every entry of
``artifacts``, the reference's ``eval_dir`` (its ``row_key`` may hold a path: a key, left alone)."""


def _rebased(row: dict[str, Any], root: Path) -> dict[str, Any]:
    """A row's artifact paths as they are under the store's own root (:func:`relocated`): a moved
    or copied root reads its own eval folders, never the old root's; one the copy lacks is
    missing (the report says so, as of a deleted one), not read from where the row was written."""
    eval_dir = (row.get("artifacts") or {}).get("eval_dir")
    origin = output_root(eval_dir) if isinstance(eval_dir, str) and eval_dir else None
    for field_name, keys in REBASED.items():
        paths = row.get(field_name)
        if isinstance(paths, dict):
            for k, v in paths.items():
                if (keys is None or k in keys) and isinstance(v, str) and v:
                    paths[k] = relocated(v, root, origin)
    return row


_CONFIG_SUFFIX = re.compile(r"#cfg=[0-9a-f]+$")
_CONFIG_FIELDS = ("method", "params", "mix_strategy", "noise_rate", "train_dimensions")
_RUNTIME_PARAMS = ("device",)  # where a merge ran, not what it is


def config_id(row: Mapping[str, Any]) -> str | None:
    """The hash of the configuration that defines a row's model (its method, params without
    runtime ones, mixing strategy, noise, training dimensions and grid knobs); None for a model
    with no configuration (a base, a specialist, a given model), whose weights and name say
    what it is."""
    raw, extra = row.get("params"), row.get("extra")
    # (a diagnostics row's params are its parameter table: no configuration)
    params = (
        {k: v for k, v in raw.items() if k not in _RUNTIME_PARAMS}
        if isinstance(raw, Mapping)
        else {}
    )
    grid = extra.get("grid_params") if isinstance(extra, Mapping) else None
    if not (params or row.get("mix_strategy") or grid):
        return None
    cfg = {k: row.get(k) for k in _CONFIG_FIELDS}
    return config_hash({**cfg, "params": params, "grid_params": grid}, length=8)


def row_identity(row: Mapping[str, Any]) -> str:
    """What a later row must share to supersede a row: its ``row_key`` (eval key, name, family)
    and its configuration (:func:`config_id`). Two configurations whose merges are byte-identical
    (a knob with no effect; emphasis weights equal to the default) share an eval key but are two
    rows (battery 11, sw01/pe03: the later one replaced the earlier, which then had "no
    validation score"); a row written before configurations were in its key is matched by the
    configuration its fields record, so a re-evaluation still supersedes it."""
    key = _CONFIG_SUFFIX.sub("", str(row["row_key"]))
    cid = config_id(row)
    return key if cid is None else f"{key}#cfg={cid}"


_IDENTITIES: dict[int, tuple[Mapping[str, Any], str]] = {}
""":func:`row_identity` of the rows of :data:`_PARSED` (by ``id``, with the row itself, so that
the id is never another row's): a pipeline reads its store once per evaluated model, and
hashing every row's configuration on every read made a cached rerun quadratic in its rows.
Only rows that the memo parsed are remembered (readers get copies, which are hashed anew)."""


def _dedupe(rows: list[dict[str, Any]], *, memo: bool = False) -> dict[str, dict[str, Any]]:
    """The last row per :func:`row_identity`, in first-seen order (``memo``: the rows are
    :data:`_PARSED`'s own, never changed, so their identities are remembered)."""
    latest: dict[str, dict[str, Any]] = {}
    if memo and len(_IDENTITIES) > 500_000:  # rows of files parsed anew since: let them go
        _IDENTITIES.clear()
    for r in rows:  # insertion order is the first occurrence; the value is the last one
        if not memo:
            latest[row_identity(r)] = r
            continue
        known = _IDENTITIES.get(id(r))
        if known is None or known[0] is not r:
            known = _IDENTITIES[id(r)] = (r, row_identity(r))
        latest[known[1]] = r
    return latest


def read_results(
    path: str | Path,
    *,
    dedupe: bool = True,
    skip_invalid: bool = False,
    where: Callable[[Mapping[str, Any]], bool] | None = None,
) -> list[dict[str, Any]]:
    """All rows of a store, in file order; with ``dedupe`` the last row per ``row_key``.

    Every line is checked (:func:`scan_results`): an invalid one raises :class:`StoreError`
    naming the file and line, or with ``skip_invalid`` is left out. A torn line is skipped with
    a :class:`RuntimeWarning`. A missing file reads as no rows. ``where``: keep only the rows
    it is true of (asked after ``dedupe``, of the row as stored, before its paths are rebased),
    and copy only those: a reader that needs a few rows of a long store (the base's, once per
    evaluated model) then does not copy all of them.
    """
    scan = _scan(Path(path), skip_invalid)
    rows = list(_dedupe(scan.rows, memo=True).values()) if dedupe else scan.rows
    if where is not None:
        rows = [r for r in rows if where(r)]
    return [_rebased(copy.deepcopy(r), scan.path.parent) for r in rows]


DIAGNOSTICS_REQUIRED = ("row_key", "label", "num_models", "model", "layer_types", "params")


def append_diagnostics(
    path: str | Path, row: Mapping[str, Any], *, skip_unchanged: bool = True
) -> bool:
    """Append one diagnostics row (``<root>/diagnostics.jsonl``) crash-safely, as
    :func:`append_result` does; the latest row per ``row_key`` wins on load.

    A row holds ``row_key`` (the diagnose stage's key), ``label`` (how the report names the set),
    ``experiment``, ``seed``, ``num_models``, ``inputs``, ``options``, ``resm``, the summaries
    ``model`` and ``layer_types`` and ``params`` (one value per statistic and parameter, see
    :func:`hhh_bench.merging.diagnostics.parameter_table`), ``artifacts``.

    Raises:
        ValueError: a required field is missing.
    """
    missing = [k for k in DIAGNOSTICS_REQUIRED if row.get(k) is None]
    if missing:
        raise ValueError(f"diagnostics row {row.get('row_key', '?')!r} lacks field(s) {missing}")
    return _append_row(path, row, skip_unchanged=skip_unchanged)


def read_diagnostics(path: str | Path) -> list[dict[str, Any]]:
    """The diagnostics rows of a store (the last per ``row_key``, in first-seen order); a missing
    file reads as no rows, a torn line is skipped with a :class:`RuntimeWarning`, a row edited
    after it was written (its digest) is a :class:`StoreError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, "rb") as f:
        lines = _lines_of(f, path)
    _warn_torn(lines, path)
    rows = []
    for ln in lines:
        row = ln.value
        if ln.torn:  # an unfinished write: skipped, and said where the user looks
            logging.getLogger("hhh_bench").warning(
                "%s, line %d: skipped a torn line (no closing brace: a write interrupted by a "
                "crash); rerun stage=diagnose to write its row again",
                path,
                ln.number,
            )
            continue
        if ln.error is not None or not isinstance(row, dict) or "row_key" not in row:
            why = ln.error or "not a diagnostics row (a JSON object with a row_key)"
            raise StoreError(
                f"{path}, line {ln.number}: {why}; delete the line (stage=diagnose writes its "
                "rows again)"
            )
        if DIGEST in row and row[DIGEST] != row_digest(row):  # as results rows (check_row)
            raise StoreError(
                f"{path}, line {ln.number}: diagnostics row {row['row_key']!r} was changed after "
                f"hhh-bench wrote it (its {DIGEST} does not match its content): run "
                "stage=diagnose again or delete the line"
            )
        rows.append(copy.deepcopy(row))
    return list(_dedupe(rows).values())


def load_results(path: str | Path, *, flatten: bool = False, dedupe: bool = True) -> Any:
    """The store as a :class:`pandas.DataFrame`, one row per evaluated model.

    Args:
        path: the store file.
        flatten: expand nested fields into dotted columns (``tasks.toy3h_known_qa_test.acc``,
            ``params.density``); otherwise they stay dicts in object columns.
        dedupe: keep only the last row per ``row_key``.

    Returns:
        The DataFrame (empty, with the core columns, when the store has no rows); every row
        has its ``setup_key`` (older rows: computed), to group by before averaging seeds.
    """
    import pandas as pd

    rows = [{**r, "setup_key": setup_key(r)} for r in read_results(path, dedupe=dedupe)]
    if not rows:
        return pd.DataFrame(columns=list(ResultRow.__annotations__))
    if flatten:
        return pd.json_normalize(rows, sep=".")
    return pd.DataFrame(rows)


RESM_PER_LAYER = ("ranks", "uniform_ranks", "kept", "uniform_kept", "reweight_merge_change")
"""The per-layer maps of a diagnostics report's ``resm`` block, left out of the store's row (the
row's ``params`` carry the per-parameter values; ``diagnostics.json`` has them all)."""


def diagnostics_row(
    report: Mapping[str, Any],
    *,
    key: str,
    experiment: str,
    seed: Any,
    label: str,
    base: str,
    models: list[str],
    path: str | Path,
) -> dict[str, Any]:
    """The diagnostics store's row of one report: what the report stage draws (model-wide and
    per-layer-type summaries, one value per parameter and statistic, the statistics' help)."""
    resm = report.get("resm") or {}
    return {
        "row_key": key,
        "experiment": experiment,
        "label": label,
        "seed": seed,
        "num_models": report["num_models"],
        "inputs": {"base": base, "models": models},
        "options": report["options"],
        "resm": {k: v for k, v in resm.items() if k not in RESM_PER_LAYER},
        "model": report["model"],
        "layer_types": report["layer_types"],
        "params": _parameter_table(report),
        "statistics": report["statistics"],
        "artifacts": {"diagnostics": str(path)},
    }


def _parameter_table(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One small dict per parameter: name, layer, type and each statistic's single value
    (per-task statistics averaged over tasks)."""
    stats = list(report.get("statistics") or {})
    out = []
    for r in report["params"]:
        row: dict[str, Any] = {"name": r["name"], "layer": r["layer"], "type": r["type"]}
        for s in stats:
            v = r.get(s)
            if isinstance(v, list):
                vals = [x for x in v if x is not None]
                v = sum(vals) / len(vals) if vals else None
            row[s] = None if v is None else float(v)
        out.append(row)
    return out


# Model-dict fields that have a column of their own in the row; the rest go to ``extra``.
_MODEL_FIELDS = (
    "path", "key", "kind", "name", "family", "method", "params", "mix_strategy", "noise_rate",
    "train_dimensions", "seed", "config_hash", "timings",
)  # fmt: skip


def eval_setup(
    suite: str,
    split: str,
    metric: str,
    specs: Sequence[Any],
    harness: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The evaluation setup of a row: what must be equal for two rows' scores to be averaged
    (over seeds) or compared. ``specs``: the scored tasks (:class:`TaskSpec` or their dicts);
    ``harness``: the harness settings recorded with the eval (``results.json``'s ``harness``)."""
    h = dict(harness or {})
    versions = dict(h.get("task_versions") or {})
    tasks = []
    for s in specs:
        d = s if isinstance(s, Mapping) else vars(s)
        name = str(d["name"])
        tasks.append([name, d["dimension"], float(d["weight"]), d["metric"], versions.get(name)])
    return {
        "suite": str(suite),
        "split": str(split),
        "metric": str(metric),
        "tasks": sorted(tasks, key=lambda t: (str(t[1]), t[0])),
        "limit": h.get("limit"),
        "apply_chat_template": h.get("apply_chat_template"),
        "num_fewshot": h.get("num_fewshot"),
        # another backend is another setup (a server's row is never pooled with, nor taken as
        # the base of, in-process rows); absent for hf, so earlier rows keep their keys
        **({"backend": str(h["backend"])} if h.get("backend") not in (None, "hf") else {}),
    }


def setup_key(row: Mapping[str, Any]) -> str:
    """The hash of a row's evaluation setup, from the setup itself (battery 18, F8: a row read
    without its digest kept a stale ``setup_key`` beside its ``setup``, and a 5-item evaluation
    was pooled with full ones); rows written before setups were recorded: their ``setup_key``,
    else from their suite, split, metric and task specs."""
    if row.get("setup"):
        return config_hash(row["setup"], length=10)
    if row.get("setup_key"):
        return str(row["setup_key"])
    setup = eval_setup(
        str(row.get("suite")), str(row.get("split")), str(row.get("metric")),
        row.get("task_specs") or [],
    )  # fmt: skip
    return config_hash(setup, length=10)


def build_row(
    run: Mapping[str, Any],
    model: Mapping[str, Any],
    data: Mapping[str, Any] | None,
    *,
    split: str,
    key: str,
    out_dir: Path,
    metrics: Mapping[str, Any],
    scores: Mapping[str, Any],
    specs: list[Any],
    eval_seconds: float,
    harness: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The results-store row of one evaluated model (fields: :class:`ResultRow`); ``harness``:
    the harness settings of the eval (for the row's ``setup``).

    ``run`` holds what the run says about itself: ``experiment``, ``suite``, ``metric``,
    ``seed`` (default of the model's) and ``config_hash``."""
    params = dict(model.get("params") or {})
    timings = {"eval_s": round(float(eval_seconds), 3)}
    timings.update({k: float(v) for k, v in (model.get("timings") or {}).items()})
    row: dict[str, Any] = {
        # the eval key is the weights' content: two names for the same weights (TSV-M and RESM
        # when RESM's reweighting does nothing) are two rows, one per name; one model reported
        # in an explicit family of its own (a grid point of an ablation) is a row apart from the
        # same model reported as its method's selected configuration
        "row_key": ":".join(
            [key, str(model.get("name") or model["key"])]
            + ([str(model["family"])] if model.get("family") else [])
        ),
        "experiment": str(run["experiment"]),
        "split": split,
        "suite": str(run["suite"]),
        "metric": str(run["metric"]),
        "name": str(model.get("name") or model["key"]),
        "family": model.get("family"),
        "kind": str(model.get("kind", "base")),
        "method": model.get("method"),
        "params": params,
        "mix_strategy": model.get("mix_strategy"),
        "noise_rate": model.get("noise_rate"),
        "train_dimensions": list(model.get("train_dimensions") or []),
        "seed": model.get("seed", run.get("seed")),
        "config_hash": model.get("config_hash") or run.get("config_hash"),
        "world_key": run.get("world_key"),
        "model_key": model["key"],
        "data_key": (data or {}).get("key"),
        "eval_key": key,
        "tasks": {k: dict(v) for k, v in metrics.items()},
        "task_specs": [
            {"name": s.name, "dimension": s.dimension, "weight": s.weight, "metric": s.metric}
            for s in specs
        ],
        "timings": timings,
        "extra": {k: v for k, v in model.items() if k not in _MODEL_FIELDS},
        "artifacts": {
            "model": str(model.get("path")),
            "eval_dir": str(out_dir),
            "results": str(out_dir / "results.json"),
        },
    }
    row["row_key"] = row_identity(row)  # the configuration too (two grid points, one model)
    row["setup"] = eval_setup(row["suite"], split, row["metric"], row["task_specs"], harness)
    row["setup_key"] = config_hash(row["setup"], length=10)
    for k in ("delta_helpful", "delta_honest", "delta_harmless", "delta_average", "delta_min"):
        row[k] = None
    row["max_drop"] = None
    row.update(scores)
    return row


def is_base_of(row: Mapping[str, Any], split: str, suite: str, data_key: str | None) -> bool:
    """Whether ``row`` is a base model's row of this split, suite and data (the reference of the
    deltas and win rates of the models evaluated there)."""
    return (
        row["kind"] == "base"
        and row.get("split") == split
        and row.get("suite") == suite
        and row.get("data_key") == data_key
    )


def base_scores(
    store: str | Path, *, split: str, suite: str, data_key: str | None, seed: Any
) -> dict[str, float] | None:
    """The base model's scores of this split, suite and data from the store (latest row; same
    seed preferred), or None."""
    rows = read_results(store, where=lambda r: is_base_of(r, split, suite, data_key))
    if not rows:
        return None
    same = [r for r in rows if r.get("seed") == seed]
    row = (same or rows)[-1]
    return {d: float(row[d]) for d in ("helpful", "honest", "harmless")}
