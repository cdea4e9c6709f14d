"""Offline stand-ins of lm-eval's built-in tasks: lm-eval's own task definitions on small local data.

The real 3H suite (``conf/eval/harness_3h.yaml``) scores lm-eval built-ins whose data lives on
the Hugging Face Hub (``truthfulqa_mc2``, ``mmlu``, ``arc_challenge``, ``ifeval``, ``toxigen``).
For a rehearsal without the hub, :func:`materialize_standin_tasks` writes one YAML per built-in
task (and group) that ``include:``-s the *installed* lm-eval YAML by absolute path -- prompt,
choices, target, metrics, ``process_results``, filters, generation settings, group aggregation
all stay lm-eval's -- and overrides only where the data comes from::

    include: <site-packages>/lm_eval/tasks/truthfulqa/truthfulqa_mc2.yaml
    task: truthfulqa_mc2
    dataset_path: json
    dataset_name: null
    dataset_kwargs: {data_files: {validation: <data_dir>/truthfulqa_mc.jsonl}}

The task and group names are kept (``truthfulqa_mc2`` stays ``truthfulqa_mc2``), so the eval
config's task list, primary metrics and scoring, and the results' keys, are those of the real
run; :data:`STANDIN_NAMES` is that (identity) mapping, built-in name -> stand-in name. Index the
folder with ``TaskManager(include_path=..., include_defaults=False)``: with lm-eval's own tasks
indexed too, both would define the same names (lm-eval lets the include path win, with a
warning).

``mmlu`` keeps lm-eval's group tree (``mmlu`` -> ``mmlu_stem``/``mmlu_other``/
``mmlu_social_sciences``/``mmlu_humanities`` -> the ``mmlu_*_tasks`` tags, aggregated by
``weight_by_size``) with one subject per category (:data:`MMLU_SUBJECTS`) instead of 57.

The data files (``data_dir``, e.g. ``tests/assets/rehearsal/eval/``) are small files in the real
datasets' schemas, one per split the task definition loads (lm-eval also loads the few-shot
split at task build time, e.g. ARC's ``train`` and MMLU's ``dev``); their names are in
:data:`STANDINS`. Each file's rows are checked for the columns the real schema has, so a
malformed file fails here, naming the file, row and column, not deep inside lm-eval.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Columns every row must have, per dataset schema (the real datasets' column names).
SCHEMAS: dict[str, tuple[str, ...]] = {
    "truthfulqa_mc": ("question", "mc1_targets", "mc2_targets"),
    "mmlu": ("question", "subject", "choices", "answer"),
    "ai2_arc": ("id", "question", "choices", "answerKey"),
    "ifeval": ("key", "prompt", "instruction_id_list", "kwargs"),
    "toxigen_annotated": ("text", "target_group", "toxicity_ai", "toxicity_human"),
}

# One MMLU subject per lm-eval category, so every group of the mmlu tree has a member.
MMLU_SUBJECTS: dict[str, str] = {
    "high_school_physics": "stem",
    "global_facts": "other",
    "human_sexuality": "social_sciences",
    "world_religions": "humanities",
}
MMLU_GROUP_YAMLS = (
    "mmlu/default/_mmlu.yaml",
    "mmlu/default/_mmlu_stem.yaml",
    "mmlu/default/_mmlu_other.yaml",
    "mmlu/default/_mmlu_social_sciences.yaml",
    "mmlu/default/_mmlu_humanities.yaml",
)


@dataclass(frozen=True)
class StandinTask:
    """One stand-in lm-eval task.

    Attributes:
        name: the lm-eval task name (kept).
        yaml: the installed task YAML, relative to ``lm_eval/tasks/``.
        schema: key of :data:`SCHEMAS` its rows follow.
        files: split -> data file relative to the data folder (every split the task loads).
    """

    name: str
    yaml: str
    schema: str
    files: dict[str, str]


def _mmlu_tasks() -> list[StandinTask]:
    return [
        StandinTask(
            f"mmlu_{subject}",
            f"mmlu/default/mmlu_{subject}.yaml",
            "mmlu",
            {"test": f"mmlu/{subject}_test.jsonl", "dev": f"mmlu/{subject}_dev.jsonl"},
        )
        for subject in MMLU_SUBJECTS
    ]


# Built-in name (task or group) -> the stand-in tasks it needs.
STANDINS: dict[str, list[StandinTask]] = {
    "truthfulqa_mc2": [
        StandinTask(
            "truthfulqa_mc2",
            "truthfulqa/truthfulqa_mc2.yaml",
            "truthfulqa_mc",
            {"validation": "truthfulqa_mc.jsonl"},
        )
    ],
    "truthfulqa_mc1": [
        StandinTask(
            "truthfulqa_mc1",
            "truthfulqa/truthfulqa_mc1.yaml",
            "truthfulqa_mc",
            {"validation": "truthfulqa_mc.jsonl"},
        )
    ],
    "arc_challenge": [
        StandinTask(
            "arc_challenge",
            "arc/arc_challenge.yaml",
            "ai2_arc",
            {"train": "arc_challenge_train.jsonl", "test": "arc_challenge_test.jsonl"},
        )
    ],
    "ifeval": [StandinTask("ifeval", "ifeval/ifeval.yaml", "ifeval", {"train": "ifeval.jsonl"})],
    "toxigen": [
        StandinTask(
            "toxigen",
            "toxigen/toxigen.yaml",
            "toxigen_annotated",
            {"train": "toxigen_train.jsonl", "test": "toxigen_test.jsonl"},
        )
    ],
    "mmlu": _mmlu_tasks(),
}
# Built-in name -> the name under which its stand-in runs: the same (see the module docstring).
STANDIN_NAMES: dict[str, str] = {name: name for name in STANDINS}


@dataclass(frozen=True)
class StandinTasks:
    """What :func:`materialize_standin_tasks` wrote.

    Attributes:
        include_path: the folder to give lm-eval's ``TaskManager(include_path=...)``.
        names: built-in name -> stand-in name, for the built-ins written.
        fingerprint: content hash of the written definitions and data files, for cache keys
            (lm-eval's version included: the definitions are its).
    """

    include_path: Path
    names: dict[str, str]
    fingerprint: str


def lm_eval_tasks_dir() -> Path:
    """The installed lm-eval's ``tasks/`` folder."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


def _check_rows(path: Path, schema: str) -> None:
    """Every row of ``path`` is a JSON object with the schema's columns; raise naming the row."""
    need = SCHEMAS[schema]
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"stand-in data {path} is empty; it needs rows in the {schema} schema")
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"stand-in data {path}: row {i} is not valid JSON ({e})") from None
        missing = [c for c in need if not isinstance(row, dict) or c not in row]
        if missing:
            raise ValueError(
                f"stand-in data {path}: row {i} lacks column(s) {missing} of the {schema} "
                f"schema (needs {list(need)})"
            )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def materialize_standin_tasks(
    out_dir: str | Path,
    data_dir: str | Path,
    tasks: Sequence[str] | None = None,
) -> StandinTasks:
    """Write the stand-in task YAMLs for lm-eval built-ins into ``out_dir``.

    Args:
        out_dir: folder to write (created; existing YAMLs of the same names are overwritten). It
            may be a subfolder of a per-run include folder (lm-eval indexes recursively).
        data_dir: folder of the data files named in :data:`STANDINS` (real schemas).
        tasks: built-in names to write (default: every one of :data:`STANDINS`); names that are
            not built-ins with a stand-in are an error, so a suite's task list can be passed
            after filtering out its custom tasks.

    Returns:
        A :class:`StandinTasks`.

    Raises:
        ValueError: an unknown built-in name, or a data file with a row missing a column of
            its schema.
        FileNotFoundError: a data file or an installed lm-eval YAML is missing.
    """
    import lm_eval
    import yaml

    wanted = list(STANDINS) if tasks is None else list(dict.fromkeys(tasks))
    unknown = [t for t in wanted if t not in STANDINS]
    if unknown:
        raise ValueError(
            f"no offline stand-in for lm-eval task(s) {unknown}; stand-ins exist for "
            f"{sorted(STANDINS)} (hhh_bench.evaluation.standin_tasks.STANDINS)"
        )
    src = lm_eval_tasks_dir()
    data = Path(data_dir).expanduser().resolve()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256(f"lm_eval {getattr(lm_eval, '__version__', '?')}\0".encode())

    def include_of(rel: str) -> Path:
        path = src / rel
        if not path.is_file():
            raise FileNotFoundError(
                f"lm-eval {getattr(lm_eval, '__version__', '?')} has no task file {path}; the "
                "stand-ins are written for lm-eval 0.4.13's task layout"
            )
        h.update(rel.encode() + b"\0" + _sha(path.read_bytes()).encode())
        return path

    def write(name: str, body: dict[str, Any]) -> None:
        text = yaml.safe_dump(body, sort_keys=False, allow_unicode=True)
        (out / f"{name}.yaml").write_text(text)

    for builtin in wanted:
        for task in STANDINS[builtin]:
            files: dict[str, str] = {}
            for split, rel in task.files.items():
                path = data / rel
                if not path.is_file():
                    raise FileNotFoundError(
                        f"stand-in of lm-eval task {task.name!r}: no data file {path} (split "
                        f"{split!r}, {task.schema} schema); see tests/assets/rehearsal/README.md"
                    )
                _check_rows(path, task.schema)
                h.update(f"{task.name}/{split}\0".encode() + _sha(path.read_bytes()).encode())
                files[split] = str(path)
            write(
                task.name,
                {
                    "include": str(include_of(task.yaml)),
                    "task": task.name,
                    "dataset_path": "json",
                    "dataset_name": None,
                    "dataset_kwargs": {"data_files": files},
                },
            )
        if builtin == "mmlu":
            for rel in MMLU_GROUP_YAMLS:
                group = yaml.safe_load(include_of(rel).read_text())["group"]
                write(group, {"include": str(include_of(rel)), "group": group})
    return StandinTasks(
        include_path=out,
        names={b: STANDIN_NAMES[b] for b in wanted},
        fingerprint=h.hexdigest()[:12],
    )


def eval_standins_on(rehearsal: Mapping[str, Any] | None) -> bool:
    """Whether a config's ``rehearsal`` block asks for stand-ins of lm-eval's built-ins."""
    return bool(rehearsal) and bool(rehearsal.get("eval_standins", False))  # type: ignore[union-attr]


def standin_builtins(task_names: Sequence[str]) -> list[str]:
    """The names of ``task_names`` that are built-ins with a stand-in (in order, no duplicates);
    what an eval stage passes as ``tasks`` to :func:`materialize_standin_tasks`."""
    return [t for t in dict.fromkeys(task_names) if t in STANDINS]


def standin_eval_tasks(
    rehearsal: Mapping[str, Any] | None, task_names: Sequence[str], include_dir: str | Path
) -> StandinTasks | None:
    """Write the stand-ins of the lm-eval built-ins among ``task_names`` into ``include_dir``.

    Args:
        rehearsal: the config's ``rehearsal`` block (None or ``eval_standins: false``: nothing
            is written and None is returned).
        task_names: the suite's lm-eval task names (custom tasks among them are skipped).
        include_dir: where to write, e.g. ``<per-run include folder>/standins`` (lm-eval
            indexes the include folder recursively).

    Returns:
        The :class:`StandinTasks` (its ``fingerprint`` belongs in the eval cache key), or None.
    """
    if not eval_standins_on(rehearsal):
        return None
    builtins = standin_builtins(task_names)
    if not builtins:
        return None
    if not rehearsal.get("eval_data"):
        raise ValueError(
            "rehearsal.eval_data is not set: it names the folder of the stand-in tasks' data "
            "(conf/rehearsal/small.yaml: ${rehearsal.fixtures}/rehearsal/eval)"
        )
    return materialize_standin_tasks(include_dir, rehearsal["eval_data"], builtins)
