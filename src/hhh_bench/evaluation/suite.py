"""An evaluation suite resolved against a run: which lm-eval tasks, which data files they read,
and the content key of an evaluation (what decides the metrics, nothing that only scores them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hhh_bench.core.partition import Partition
from hhh_bench.core.provenance import config_hash, file_hash
from hhh_bench.core.scoring import SPLIT_SUFFIX, TaskSpec, suite_tasks
from hhh_bench.evaluation.standin_tasks import eval_standins_on, standin_eval_tasks

# Eval-config fields that only steer selection and reporting, never the numbers of one model.
REPORT_ONLY = ("name", "select_split", "report_split", "select_by", "model")
# Fields that decide the scores but not the lm-eval metrics (recomputed on every call).
SCORING_ONLY = ("dimensions", "metric", "metrics", "columns", "summary_bootstrap_iters")


def data_paths(eval_cfg: Mapping[str, Any], data: Mapping[str, Any] | None) -> dict[str, Path]:
    """Placeholder name -> data path for :func:`materialize_tasks`."""
    paths: dict[str, Path] = {}
    if data and data.get("dir") and (Path(data["dir"]) / "eval").is_dir():
        paths["toy3h_eval"] = Path(data["dir"]) / "eval"
    for name, path in (eval_cfg.get("data_files") or {}).items():
        if path:
            paths[name] = Path(path)
    return paths


def eval_partitions(eval_cfg: Mapping[str, Any]) -> dict[str, Partition]:
    """``eval.partitions`` checked: name (a data placeholder, e.g. ``halueval_qa``) -> its seeded
    partition (:mod:`hhh_bench.core.partition`)."""
    given = eval_cfg.get("partitions") or {}
    return {name: Partition.from_config(name, cfg) for name, cfg in given.items() if cfg}


def partition_values(eval_cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``eval.partitions`` as :func:`materialize_tasks` fills ``${hhh_partition:NAME}``."""
    return {name: p.as_dict() for name, p in eval_partitions(eval_cfg).items()}


def partitions_in_use(eval_cfg: Mapping[str, Any]) -> dict[str, Partition]:
    """The configured partitions that a task of the suite reads (the 3H tasks and the report
    columns, both splits; a shipped or user task YAML with ``${hhh_partition:NAME}``): what the
    data stage holds out of the training sources of that set (keyed by the name, which is the
    set's source adapter: ``halueval_qa``)."""
    from hhh_bench.evaluation.harness import shipped_tasks, user_tasks
    from hhh_bench.evaluation.judged_eval import column_specs

    configured = eval_partitions(eval_cfg)
    if not configured:
        return {}
    known = {**shipped_tasks(), **user_tasks(include_paths(eval_cfg))}
    names = {
        s.name
        for split in SPLIT_SUFFIX
        for s in suite_tasks(eval_cfg, split) + column_specs(eval_cfg, split)
    }
    read = {p for n in names for p in known.get(n, {}).get("partitions", [])}
    return {name: part for name, part in configured.items() if name in read}


def include_paths(eval_cfg: Mapping[str, Any]) -> list[str]:
    """``eval.include_paths`` as a list (None or absent: none)."""
    paths = eval_cfg.get("include_paths") or []
    if isinstance(paths, (str, Path)):
        raise ValueError(
            f"eval.include_paths must be a list of folders, got {paths!r}; write "
            f"eval.include_paths=[{paths}]"
        )
    return [str(p) for p in paths]


def known_tasks(
    eval_cfg: Mapping[str, Any], specs: list[TaskSpec], standins: Sequence[str] = ()
) -> dict[str, dict]:
    """Shipped and user tasks by name (and the built-ins a rehearsal replaces by ``standins``); a
    requested task found in none is an error naming it (unless lm-eval's built-ins are indexed
    too: ``include_defaults``, checked by lm-eval)."""
    from hhh_bench.evaluation.harness import shipped_tasks, user_tasks

    include = include_paths(eval_cfg)
    known = {**shipped_tasks(), **user_tasks(include), **{t: {} for t in standins}}
    if eval_cfg.get("include_defaults"):
        return known
    template = eval_cfg.get("task_template") or "{task}"
    for s in specs:
        if s.name not in known:
            where = f"eval.include_paths {include}" if include else "no eval.include_paths set"
            owner = (f"eval.{s.dimension}" if s.dimension.startswith("columns.")  # battery 14,
                     else f"eval.dimensions.{s.dimension}")  # F10: eval.columns.<name>  # fmt: skip
            raise ValueError(
                f"{owner} asks for lm-eval task {s.name!r} (task_template "
                f"{template!r}), which is neither a shipped task nor defined in a user task "
                f"folder ({where}); add the folder of its YAML to eval.include_paths, fix the "
                "name, or set eval.include_defaults=true for an lm-eval built-in"
            )
    return known


def needed_files(
    specs: list[TaskSpec], paths: Mapping[str, Path], known: Mapping[str, dict] | None = None
) -> dict[str, Path]:
    """The data files of the requested tasks (shipped, or the user's in ``known``); raises if
    one is missing on disk."""
    from hhh_bench.evaluation.harness import shipped_tasks

    known = shipped_tasks() if known is None else known
    needed: dict[str, Path] = {}
    for s in specs:
        for ph in known.get(s.name, {}).get("placeholders", []):
            if ph not in paths and ph == "toy3h_eval":
                raise ValueError(
                    f"eval task {s.name!r} reads the toy world's <data dir>/eval/ items, which "
                    "this data has not: use data=toy3h, or an eval suite for real data"
                )
            if ph not in paths:
                raise ValueError(
                    f"eval task {s.name!r} reads data '{ph}', but eval.data_files.{ph} is not set"
                )
            if not paths[ph].exists():
                raise FileNotFoundError(
                    f"eval task {s.name!r}: data path {paths[ph]} (eval.data_files.{ph}) does not "
                    "exist; point it at a JSONL file in the dataset's schema "
                    "(see src/hhh_bench/evaluation/tasks/real/)"
                )
            needed[ph] = paths[ph]
    return needed


def fingerprint(path: Path) -> str:
    """Content hash of a data file; for a folder (toy3h's eval/), of its JSONL files."""
    if path.is_file():
        return file_hash(path)
    return config_hash({p.name: file_hash(p) for p in sorted(path.glob("*.jsonl"))})


def eval_payload(
    ecfg: Mapping[str, Any],
    model: Mapping[str, Any],
    data: Mapping[str, Any] | None,
    split: str,
    dtype: str | None,
    standins: tuple[Sequence[str], str] | None = None,
) -> dict[str, Any]:
    """What the eval stage's cache key is made of: the model's key, the data's key, the split,
    the task list, the harness settings that change the numbers, the dtype, the custom data
    files' content and the user task folders' content (not where they are)."""
    from hhh_bench.evaluation.harness import tasks_fingerprint
    from hhh_bench.evaluation.judged_eval import column_specs, judges_key, validate_judged

    specs = suite_tasks(ecfg, split) + column_specs(ecfg, split)  # + extra report columns
    validate_judged(ecfg, specs)
    names = list(standins[0]) if standins else []
    files = needed_files(specs, data_paths(ecfg, data), known_tasks(ecfg, specs, names))
    harness = {k: v for k, v in ecfg.items() if k not in (*REPORT_ONLY, *SCORING_ONLY)}
    harness.pop("data_files", None)
    # batch_size stays in the key: batching changes the padding and the order of float sums, so
    # the last bits of log-likelihoods (measured on this CPU: 77 of 1,680 at 256 against 16)
    harness.pop("include_paths", None)  # by content below, not by where the folders are
    server = harness.pop("server", None)  # where it listens and how long to wait: not numbers
    if harness.get("backend") == "server":
        from hhh_bench.evaluation.serving import ServerSpec

        harness["server"] = ServerSpec.from_config(server).key()
    if harness.get("judges"):  # judges by identity (a local judge folder by content)
        harness["judges"] = judges_key(ecfg)
    payload = {
        "model": model["key"],
        "data": (data or {}).get("key"),
        "split": split,
        "tasks": sorted({s.name for s in specs}),
        "harness": harness,
        "dtype": dtype,
        "files": {k: fingerprint(v) for k, v in sorted(files.items())},
    }
    include = include_paths(ecfg)
    if include:  # absent when unused, so the keys of runs without user tasks do not change
        payload["user_tasks"] = tasks_fingerprint(include)
    if standins:  # a rehearsal's stand-ins of lm-eval built-ins: their definitions and data
        payload["standins"] = {"tasks": names, "fingerprint": standins[1]}
    return payload


PROMPT_FIELDS = ("question", "prompt", "query", "instruction", "text", "input", "goal")
"""Where a task's item keeps the text a model is asked (the first present field), for the leakage
guard: TruthfulQA, MMLU, ARC and HaluEval ``question``; IFEval, XSTest, PKU ``prompt``; ToxiGen
``text``."""


def eval_prompts(
    ecfg: Mapping[str, Any],
    data: Mapping[str, Any] | None,
    rehearsal: Mapping[str, Any] | None = None,
) -> dict[str, list[str]]:
    """Every item text of every task the suite evaluates (both splits, the 3H tasks and the
    extra report columns' tasks), by lm-eval task name:
    what the data stage's leakage guard compares the training prompts with.

    The tasks are built by lm-eval itself (our YAMLs, a rehearsal's stand-ins, or lm-eval's
    built-ins when ``include_defaults``), so the items are exactly those evaluated; the text is
    the first of :data:`PROMPT_FIELDS` an item has (else lm-eval's ``doc_to_text``).
    """
    import tempfile

    from lm_eval.tasks import TaskManager

    from hhh_bench.evaluation.harness import materialize_tasks, shipped_tasks
    from hhh_bench.evaluation.judged_eval import column_specs

    paths = data_paths(ecfg, data)
    shipped = shipped_tasks()
    names = [
        n
        for n in dict.fromkeys(
            s.name
            for split in SPLIT_SUFFIX
            # the report's diagnostic columns are evaluated too: guarded like the 3H tasks
            for s in suite_tasks(ecfg, split) + column_specs(ecfg, split)
        )
        # the toy world's synthetic items need its data folder and cannot leak into public sets
        if "toy3h_eval" not in shipped.get(n, {}).get("placeholders", []) or "toy3h_eval" in paths
    ]
    if not names:
        return {}
    with tempfile.TemporaryDirectory(prefix="hhh-eval-prompts-") as d:
        include = materialize_tasks(
            Path(d) / "tasks", data_paths(ecfg, data), include_paths=include_paths(ecfg),
            partitions=partition_values(ecfg),
        )  # fmt: skip
        if rehearsal is not None:
            standin_eval_tasks(rehearsal, names, Path(include) / "standins")
        tm = TaskManager(
            include_path=str(include), include_defaults=bool(ecfg.get("include_defaults"))
        )

        prompts: dict[str, list[str]] = {}
        for name, task in tm.load(names)["tasks"].items():  # leaf tasks, flat
            texts = []
            for doc in task.eval_docs:
                field = next((f for f in PROMPT_FIELDS if isinstance(doc.get(f), str)), None)
                texts.append(doc[field] if field else str(task.doc_to_text(doc)))
            prompts[name] = texts
    return prompts


def standin_names(
    rehearsal: Mapping[str, Any] | None, specs: list[Any]
) -> tuple[list[str], str] | None:
    """A rehearsal's stand-ins of the suite's lm-eval built-ins: (names, content fingerprint)."""
    if not eval_standins_on(rehearsal):
        return None
    import tempfile

    names = [s.name for s in specs]
    with tempfile.TemporaryDirectory(prefix="hhh-standins-") as d:
        st = standin_eval_tasks(rehearsal, names, d)
    return None if st is None else (sorted(st.names), st.fingerprint)
