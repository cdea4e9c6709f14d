"""A composed run checked before any stage runs: every group against its typed schema
(:mod:`hhh_bench.core.config`), then what needs the registries and the libraries: the merge
method and its knobs (the merge registry), every grid point of the pipeline's merge grid, the
mixing strategies the tuning names (``conf/mix``), the toy world's knobs (:mod:`hhh_bench.data.toy3h`),
the metrics of the shipped evaluation tasks, and this machine (:func:`preflight`: devices, hub
reachability).

One concept: a run's inputs refused, by name, before any work.

This module sits on the pipeline floor (docs/architecture.md): the typed schema below it knows
no registry, so a check that needs one lives here, and :func:`hhh_bench.pipeline.run` calls
:func:`validate_run` and :func:`preflight` first.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hhh_bench.core.config import GROUPS, DataConfig, MergeConfig, ModelConfig, load
from hhh_bench.core.schema import DIMENSIONS
from hhh_bench.data.toy3h import Toy3HConfig
from hhh_bench.pins import check_pins
from hhh_bench.stages.common import load_option
from hhh_bench.tracking.wandb_log import wandb_mode


def check_world(data: DataConfig) -> None:
    """``data.world`` (``data.kind=toy3h``): the toy world's knobs, checked by the world's own
    config (:class:`~hhh_bench.data.toy3h.Toy3HConfig`: unknown keys and ranges)."""
    if data.kind == "toy3h":
        Toy3HConfig.from_mapping(dict(data.world or {}), complete=True)
    elif data.leakage:
        from hhh_bench.data.sources.build import leakage_settings

        leakage_settings(data.leakage)  # its values named before any stage (not at build)


def check_mix_of_specialist(cfg: Mapping[str, Any]) -> None:
    """``stage=train`` on one dimension trains its specialist on that dimension's pairs as they
    are: a ``mix`` other than the default's (another strategy, a budget, shares) would be read
    by nothing (battery 18, S2: ``mix.budget=50`` reused the 400-pair specialist), so it is
    refused."""
    import yaml

    from hhh_bench.core.paths import conf_dir
    from hhh_bench.stages.common import load_option

    dims = list((cfg.get("data") or {}).get("dimensions") or [])
    if cfg.get("stage") != "train" or len(dims) != 1 or not cfg.get("mix"):
        return
    defaults = yaml.safe_load((conf_dir() / "config.yaml").read_text(encoding="utf-8"))
    default = next((d["mix"] for d in defaults.get("defaults", [])
                    if isinstance(d, dict) and "mix" in d), None)  # fmt: skip
    if default is None or dict(cfg["mix"]) == load_option("mix", str(default)):
        return
    raise ValueError(
        f"mix={cfg['mix'].get('name')!r} (or its settings) with data.dimensions={dims}: "
        f"stage=train on one dimension trains the {dims[0]} specialist on its pairs as they "
        "are, and no mixing setting is read; drop the mix settings, or list several "
        "dimensions for a mixture (data.dimensions=[helpful,honest,harmless])"
    )


def check_wandb_project(project: str) -> None:
    """``logger.project`` as W&B's own settings check it (battery 18, F3: ``a/b`` ended in W&B's
    traceback after the report was written), before any stage."""
    from wandb.errors import UsageError
    from wandb.sdk.wandb_settings import Settings

    try:
        Settings(project=project)
    except (UsageError, ValueError) as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"logger.project={project!r}: {text}") from None


def check_toy_noise(cfg: Mapping[str, Any], data: DataConfig) -> None:
    """A noise rate that flips no pair of the toy world, whose pair counts the config fixes,
    refused before any stage (battery 18, U2: θ0 was trained first, then the train stage
    refused it): each dimension's ``pairs_per_dimension`` train pairs (a mixture's are flipped
    dimension by dimension, as its specialists' are)."""
    from hhh_bench.data.noise import n_flips
    from hhh_bench.data.toy3h import pairs_in_split

    rate, world = data.noise.flip_rate, dict(data.world or {})
    if data.kind != "toy3h" or not rate or not isinstance(world.get("pairs_per_dimension"), int):
        return
    n = pairs_in_split(world["pairs_per_dimension"], "train")
    if n_flips(rate, n) == 0:
        raise ValueError(
            f"data.noise.flip_rate={rate} flips no pair of the {n} it applies to (the rate times "
            "the pairs rounds to 0): the run would be the clean one, reported as a noisy "
            f"condition; give a rate of at least {0.5 / n:.2g}, or 0"
        )


def check_model_folder(value: str | None, where: str) -> None:
    """A model named by a local path (one that exists, or is written as a path: ``/``, ``.``;
    ``~`` is refused, not expanded) is a folder holding a model's ``config.json`` or a LoRA adapter's
    ``adapter_config.json``; refused naming ``where`` otherwise. A hub id is left to the
    stage (and to :func:`preflight` for ``model.path``)."""

    if not value:
        return
    if str(value).startswith("~"):
        raise ValueError(
            f"{where}={value!r}: '~' is not expanded (the stages would read it as a hub id); "
            f"write the full path: {Path(value).expanduser()}"
        )
    p = Path(value)
    if not p.exists() and not p.is_symlink():
        from hhh_bench.core.hubref import is_hub_id, split_ref

        if str(value).startswith(("/", ".")):
            raise ValueError(f"{where}={value!r} does not exist: give a model folder")
        if not is_hub_id(split_ref(str(value))[0]):  # `runs/x/train/abc`: a path, not an id
            raise ValueError(
                f"{where}={value!r} does not exist (a relative path is taken from "
                f"{Path.cwd()}) and is no hub id (owner/name): give a model folder"
            )
        return
    if not p.is_dir():
        raise ValueError(f"{where}={value!r} is a file, not a model folder")
    if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
        held = sorted(c.name for c in p.iterdir())[:8]
        if (p / "adapter" / "adapter_config.json").is_file():  # a LoRA train stage output
            raise ValueError(
                f"{where}={value!r} is a LoRA training output: its adapter is in "
                f"{p / 'adapter'}; give that folder (or train with train.merge_adapter=true "
                "for full weights beside it)"
            )
        if (p / "model" / "config.json").is_file():  # a merge stage output (battery 21, B-F5)
            raise ValueError(
                f"{where}={value!r} is a stage output: its model is in {p / 'model'}; give "
                "that folder"
            )
        raise ValueError(
            f"{where}={value!r} has no config.json (it holds {held}): give the folder a model's "
            "save_pretrained wrote, or a LoRA adapter's (adapter_config.json)"
        )
    from hhh_bench.merging.sources import two_checkpoints

    both = two_checkpoints(p)
    if both:
        raise ValueError(f"{where}={value!r}: {both}")


COLUMN_TABLES = ("main", "diagnostics")
"""Where an ``eval.columns`` entry is shown: beside the 3H scores in the main table, or in the
report's diagnostics table (issue 32: the likelihood probes apart from the scores)."""


def check_columns(columns: Mapping[str, Any] | None) -> None:
    """``eval.columns``: each extra column has a name no results-row field has (its value and
    ``<name>_stderr`` are written into the row: ``helpful_stderr`` or ``name`` would overwrite
    the row's own, battery 10), a ``task`` and a ``metric``, ``higher_is_better`` is
    true, false or null (descriptive), never a string such as "false", ``table`` is one of
    :data:`COLUMN_TABLES`, and no other key is given.

    Raises:
        ValueError: naming ``eval.columns.<name>`` and what is wrong.
    """
    from hhh_bench.tracking.store import ResultRow

    reserved = set(ResultRow.__annotations__)
    for name, col in (columns or {}).items():
        where = f"eval.columns.{name}"
        if name in reserved or f"{name}_stderr" in reserved or name.endswith("_stderr"):
            raise ValueError(
                f"{where}: {name!r} is a field of every results row (its column value would "
                "overwrite it); name the column otherwise, e.g. col_" + str(name)
            )
        if not isinstance(col, Mapping) or not col.get("task") or not col.get("metric"):
            raise ValueError(f"{where} needs `task` and `metric`, got {col!r}")
        higher = col.get("higher_is_better")
        if higher is not None and not isinstance(higher, bool):
            raise ValueError(
                f"{where}.higher_is_better must be true, false or null (descriptive: no best "
                f"marked), got {higher!r}"
            )
        if col.get("table", "main") not in COLUMN_TABLES:
            raise ValueError(
                f"{where}.table must be one of {list(COLUMN_TABLES)} (the report table the "
                f"column is shown in), got {col.get('table')!r}"
            )
        unknown = sorted(set(col) - {"task", "metric", "higher_is_better", "table"})
        if unknown:  # a misspelt key would silently fall back to its default
            raise ValueError(
                f"{where}: unknown key(s) {unknown}; a column takes task, metric, "
                "higher_is_better and table"
            )
        if "higher_is_better" not in col:  # battery 14, F9: it became true unsaid
            raise ValueError(
                f"{where} needs higher_is_better: true, false, or null (descriptive: no best "
                "marked); the report marks the best cell by it"
            )


def check_eval(ecfg: Any) -> None:
    """``eval.model`` (``stage=eval`` of a given model) is a model folder or a hub id, and the
    suite's dimensions and task weights score (:func:`hhh_bench.core.scoring.suite_tasks`: a
    NaN or negative weight is refused now, not after the evaluation)."""
    from hhh_bench.core.scoring import suite_tasks

    if ecfg.model is not None and not str(ecfg.model).strip():
        raise ValueError(
            "eval.model is empty: give the model folder or hub id to evaluate, or leave "
            "+eval.model out to evaluate the pipeline's models"
        )
    check_model_folder(ecfg.model, "eval.model")
    if ecfg.model is not None:  # the eval stage loads safetensors only: said before any work
        from hhh_bench.core.paths import check_safetensors_weights

        check_safetensors_weights(Path(str(ecfg.model)).expanduser(), "eval.model")
    from hhh_bench.evaluation.harness import user_folders
    from hhh_bench.evaluation.suite import include_paths

    try:  # before the base is trained, not when the eval stage reads them
        user_folders(include_paths({"include_paths": getattr(ecfg, "include_paths", None)}))
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
    suite_tasks(dataclasses.asdict(ecfg) if dataclasses.is_dataclass(ecfg) else dict(ecfg),
                "test")  # fmt: skip
    check_columns(getattr(ecfg, "columns", None))
    gen = getattr(ecfg, "gen_kwargs", None) or {}
    toks = gen.get("max_gen_toks") if isinstance(gen, Mapping) else None
    if toks is not None and (isinstance(toks, bool) or not isinstance(toks, int) or toks < 1):
        raise ValueError(
            f"eval.gen_kwargs.max_gen_toks={toks!r} must be an integer >= 1 (the most tokens an "
            "answer may have)"
        )
    from hhh_bench.evaluation.serving import ServerSpec

    spec = ServerSpec.from_config(getattr(ecfg, "server", None))  # keys and values, before work
    if getattr(ecfg, "backend", "hf") != "server":  # set up but not used: run in process, unsaid
        changed = [k for k in ("url", "launch", "python", "args", "data_parallel_size")
                   if getattr(spec, k) != getattr(ServerSpec(), k)]  # fmt: skip
        if changed:
            raise ValueError(
                f"eval.server.{changed[0]} is set but eval.backend={ecfg.backend}: the models "
                "would be evaluated in this process, not by that server; add "
                "eval.backend=server (or drop the eval.server setting)"
            )
    if getattr(ecfg, "backend", "hf") != "hf" or getattr(ecfg, "backend_args", None):
        from hhh_bench.evaluation.backends import check_backend

        check_backend(ecfg.backend, ecfg.backend_args)


NLTK_DATA_OF_TASKS = {"ifeval": ("punkt_tab", "tokenizers/punkt_tab/english/")}
"""lm-eval tasks whose scoring needs NLTK data: task -> (the NLTK package, the path it is found
at). lm-eval's IFEval downloads ``punkt_tab`` when the module is imported and, offline, prints
the failure and goes on until a sentence or word count needs it."""


def check_nltk_data(ecfg: Any) -> None:
    """Every NLTK package the suite's tasks need (:data:`NLTK_DATA_OF_TASKS`) is on this machine
    (``$NLTK_DATA`` or NLTK's default folders); refused before any work otherwise, naming the
    task, the package and how to bring it, instead of a download mid-run."""
    dims = (dataclasses.asdict(ecfg) if dataclasses.is_dataclass(ecfg) else dict(ecfg)).get(
        "dimensions"
    ) or {}
    needed = [
        (dim, task, *NLTK_DATA_OF_TASKS[task])
        for dim, tasks in dims.items()
        for task in (tasks or {})
        if task in NLTK_DATA_OF_TASKS
    ]
    if not needed:
        return
    import nltk

    for dim, task, package, path in needed:
        try:
            nltk.data.find(path)
        except LookupError:
            raise ValueError(
                f"eval task {task} (eval.dimensions.{dim}.{task}) needs NLTK's {package} data, "
                f"which is not on this machine (looked in $NLTK_DATA and {nltk.data.path[0]} ...); "
                f"lm-eval would try to download it mid-run. On a machine with access run "
                f"`python -m nltk.downloader -d DIR {package}`, copy DIR here and set "
                f"NLTK_DATA=DIR; or leave the task out: ~eval.dimensions.{dim}.{task}"
            ) from None


def check_merge_inputs(merge: MergeConfig) -> None:
    """``merge.base`` is none of ``merge.models``: a specialist equal to θ0 has τ = 0, so the
    merge would silently drop it (or dilute the others). The same local folder is found through
    symbolic links and trailing slashes; hub ids are compared as written. Then each local
    folder holds a model or an adapter (:func:`check_model_folder`), before the data stage."""
    _check_base_not_among_models(merge)
    check_model_folder(merge.base, "merge.base")
    for i, model in enumerate(merge.models or []):
        check_model_folder(model, f"merge.models[{i}]")


def _check_base_not_among_models(merge: MergeConfig) -> None:
    if not merge.base or not merge.models:
        return

    def same(a: str, b: str) -> bool:
        pa, pb = Path(a).expanduser(), Path(b).expanduser()
        if pa.exists() and pb.exists():
            return pa.resolve() == pb.resolve()
        return str(a).rstrip("/") == str(b).rstrip("/")

    for i, model in enumerate(merge.models):
        if same(merge.base, model):
            raise ValueError(
                f"merge.models[{i}]={model!r} is merge.base={merge.base!r}: a specialist equal "
                "to the base has task vector τ = 0 and would merge as nothing; give θ0 as "
                "merge.base and only the finetuned models in merge.models"
            )


def check_training_dtype(cfg: Mapping[str, Any]) -> None:
    """``model.dtype=float16`` in a stage that trains is refused: the model is trained in pure
    half precision (no float32 master weights, AdamW's second moments underflow to 0), and two
    steps at lr 2e-4 moved weights by 51 (battery 20, A-F6). Evaluating or merging in float16
    stays allowed."""
    stage = cfg.get("stage", "all")
    trains = stage in ("base", "train") or (
        stage == "all" and not (cfg.get("merge") or {}).get("models")
    )
    if trains and (cfg.get("model") or {}).get("dtype") == "float16":
        raise ValueError(
            f"model.dtype=float16 with stage={stage}: the model would be trained in pure half "
            "precision (no float32 master weights; AdamW's state underflows and the weights "
            "blow up without an error); train in float32 (model.dtype=float32) or bfloat16, "
            "and evaluate or merge in float16 with stage=eval / stage=merge if you need it"
        )


def check_model(model: ModelConfig) -> None:
    """``model.spec`` (``model.kind=tiny``): the tiny model's shape, checked by its own spec
    (:class:`~hhh_bench.models.tiny.TinyModelSpec`: unknown keys and ranges), before the data
    stage rather than when the base stage builds the model."""
    if model.kind == "hub":
        check_model_folder(model.path, "model.path")
    if model.kind == "tiny":
        from hhh_bench.models.spec import TinyModelSpec

        spec = dict(model.spec or {})
        names = {f.name for f in dataclasses.fields(TinyModelSpec)}
        unknown = sorted(set(spec) - names)
        if unknown:
            raise ValueError(f"model.spec: unknown key(s) {unknown}; valid: {sorted(names)}")
        TinyModelSpec(**spec)


GROUP_CHECKS: dict[str, Callable[[Any], None]] = {
    "data": check_world,
    "model": check_model,
    "eval": check_eval,
    "merge": check_merge_inputs,
}
"""Checks of a typed group that need a library (run by :func:`validate_run` right after the
group's schema, so a run's first error is the same as when the schema held them)."""


def method_knobs(method: str, params: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``params`` for ``method``, less the knobs the composed merge option left behind
    (``merge.method=median_tv`` on the default ``merge=resm`` option leaves RESM's knobs): the
    keys ``method`` does not declare are dropped when they are exactly the knobs of one merge
    option (``conf/merge/<option>.yaml``'s ``params`` that ``method`` does not declare); one of
    them whose value is not that option's was set by the user and is kept. Anything else unknown
    is kept, so that the method refuses it by name (``merge=dare_ties
    ++merge.params.density=0.5``: one knob a user added; ``merge.method=ties
    merge.params.kappa=2`` on the ``resm`` option: ``kappa`` alone). Returns ``(kept,
    dropped keys)``; an unknown method: ``params`` unchanged (its lookup fails later, named)."""
    from hhh_bench.core.paths import conf_dir
    from hhh_bench.merging import get_method
    from hhh_bench.stages.common import load_option

    try:
        own = {f.name for f in dataclasses.fields(get_method(method).params_cls)}
    except ValueError:
        return dict(params), []
    unknown = {k: v for k, v in params.items() if k not in own}
    if not unknown:
        return dict(params), []
    for option in sorted(p.stem for p in (conf_dir() / "merge").glob("*.yaml")):
        left = {k: v for k, v in (load_option("merge", option).get("params") or {}).items()
                if k not in own}  # fmt: skip
        if set(left) == set(unknown):  # that option's knobs; a value changed is the user's
            user = {k for k, v in unknown.items() if v != left[k]}
            kept = {k: v for k, v in params.items() if k in own or k in user}
            return kept, sorted(set(unknown) - user)
    return dict(params), []


def _check_positions(groups: Mapping[str, Any]) -> None:
    """A tiny model's ``max_position_embeddings`` holds the sequences it is trained on
    (``model.base_sft.max_length``, ``train.max_length``); shorter, the base trains on
    truncated conversations and lm-eval stops mid-evaluation."""
    model = groups.get("model")
    if model is None or model.kind != "tiny" or not model.spec:
        return
    positions = dict(model.spec).get("max_position_embeddings")
    if positions is None:
        return
    needs = [("model.base_sft.max_length", getattr(model.base_sft, "max_length", None))]
    if groups.get("train") is not None:
        needs.append(("train.max_length", groups["train"].max_length))
    for where, length in needs:
        if length is not None and int(positions) < int(length):
            raise ValueError(
                f"model.spec.max_position_embeddings={positions} is shorter than {where}="
                f"{length}: the model cannot read the sequences it is trained on; raise it to "
                f">= {length} or lower {where}"
            )


def check_tiny_world(cfg: Mapping[str, Any], groups: Mapping[str, Any]) -> None:
    """``model=tiny`` builds its vocabulary from the toy world: with other data (``paper_3h``)
    a stage that builds θ0 stopped at a missing ``vocab.txt`` (battery 11, d26). Asked by
    :func:`hhh_bench.pipeline.prepare` (a run, ``plan``), not by :func:`validate_run`: a
    config's groups are checked one by one on any data (test_config)."""
    model, data = groups.get("model"), groups.get("data")
    if model is None or data is None or model.kind != "tiny" or data.kind == "toy3h":
        return
    stage = cfg.get("stage") or "all"
    if stage in ("data", "report"):  # no θ0 needed
        return
    if stage == "eval" and (cfg.get("eval") or {}).get("model"):  # a given model is evaluated
        return
    if stage in ("merge", "merge_eval", "diagnose") and (cfg.get("merge") or {}).get("base"):
        return  # a given θ0
    raise ValueError(
        f"model=tiny with data={data.name} (data.kind={data.kind}): the tiny model builds its "
        "vocabulary from the toy world, so it is built for data=toy3h only; use data=toy3h, or "
        "a hub model with this data (model=llama3_8b_instruct, or model.kind=hub model.path=...)"
    )


def validate_run(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Check every group of a composed run (a plain mapping) before any stage runs: unknown
    keys, types, ranges, the merge method and its knobs, every grid point of the pipeline's
    merge grid and the mixing strategies. Returns the typed groups by name."""
    check_seeds(cfg)  # first: a group may take its seed from ${seed} (data.noise.seed)
    check_top_level(cfg)
    out: dict[str, Any] = {}
    for group, cls in GROUPS.items():
        if group in cfg and cfg[group] is not None:
            out[group] = load(cls, cfg[group], group)
            if group in GROUP_CHECKS:
                GROUP_CHECKS[group](out[group])
    check_mix_knobs(cfg)
    check_mix_of_specialist(cfg)
    check_training_dtype(cfg)
    if "data" in out:
        check_toy_noise(cfg, out["data"])
    check_mix_scorers(cfg)
    check_mix_reference(cfg)
    _check_positions(out)
    check_pins(cfg)  # after the groups' own checks: a source config that cannot load is named first
    if "eval" in out:
        check_metrics(cfg["eval"])
        e = out["eval"]
        if cfg.get("stage") == "merge_eval" and (
            not e.select_split or e.select_split == e.report_split
        ):
            raise ValueError(
                f"stage=merge_eval scores on eval.select_split, which is {e.select_split!r} "
                f"(eval.report_split: {e.report_split!r}): a search must not read the split it "
                "reports on; use an eval suite with a separate selection split (eval=toy3h: "
                "validation)"
            )
    from hhh_bench.merging import get_method, method_defaults

    # the finetuned models a merge of this run takes: merge.models, else one specialist per
    # dimension (known before any is trained)
    given = (cfg.get("merge") or {}).get("models") or []
    n_models = len(given) or (len(out["data"].dimensions) if "data" in out else 0)
    if "merge" in out:
        m = out["merge"]
        kept, dropped = method_knobs(m.method, m.params)
        if dropped:
            logging.getLogger("hhh_bench").info(
                "merge.method=%s: left out the composed merge option's knobs %s (defaults of "
                "another method, not parameters of %s)", m.method, dropped, m.method,
            )  # fmt: skip
            m = out["merge"] = dataclasses.replace(m, params=kept)
        engine = out.get("merge_engine")
        params = dict(m.params)
        if engine is not None:
            params.setdefault("device", engine.device)
        try:
            checked = get_method(m.method).make_params(**params)
        except ValueError as e:
            raise ValueError(f"merge (method {m.method!r}): {e}") from None
        if n_models and cfg.get("stage") in ("merge", "merge_eval", "diagnose"):
            try:
                get_method(m.method).check_models(n_models, checked)
            except ValueError as e:
                where = "merge.models" if m.models else "data.dimensions: one specialist each"
                raise ValueError(f"merge (method {m.method!r}, {where}): {e}") from None
        check_weights(cfg, m)
    if "pipeline" in out:
        for method, spec in out["pipeline"].merge_grid.items():
            if spec is None:
                continue
            keys = sorted(spec)
            values = [v if isinstance(v, (list, tuple)) else [v] for v in (spec[k] for k in keys)]
            empty = [k for k, v in zip(keys, values, strict=True) if not v]
            if empty:  # the product would be empty: the method silently left out of the grid
                raise ValueError(
                    f"pipeline.merge_grid.{method}.{empty[0]} is an empty list: give at least one "
                    f"value, or drop the method with pipeline.merge_grid.{method}=null"
                )
            for k, v in zip(keys, values, strict=True):
                seen = [json.dumps(x, sort_keys=True, default=str) for x in v]
                if len(set(seen)) != len(seen):  # a point tried twice counts twice in "best of N"
                    raise ValueError(
                        f"pipeline.merge_grid.{method}.{k}={list(v)!r} repeats a value: each "
                        "configuration is tried once (the report counts the configurations "
                        "searched); list each value once"
                    )
            defaults = method_defaults(method)
            for combo in itertools.product(*values):
                point = dict(zip(keys, combo, strict=True))
                try:
                    checked = get_method(method).make_params(**{**defaults, **point})
                    if n_models and cfg.get("stage", "all") == "all":
                        get_method(method).check_models(n_models, checked)
                except ValueError as e:
                    raise ValueError(f"pipeline.merge_grid.{method} {point}: {e}") from None
        _check_tuning(cfg)
    check_mixes(cfg)
    return out


def mix_entries(cfg: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The mixtures a run trains, resolved against conf/mix/: ``mix`` and, under ``stage=all``,
    every entry of ``pipeline.mixtures``, as ``(where, settings)``. An unknown option is left
    out (the pipeline's own check names it)."""
    from hhh_bench.stages.common import load_option

    entries: list[tuple[str, Any]] = []
    if isinstance(cfg.get("mix"), Mapping):
        entries.append(("mix", cfg["mix"]))
    pipeline = cfg.get("pipeline") or {}
    trains_mixtures = cfg.get("stage", "all") == "all"  # stage=train trains `mix` only
    if trains_mixtures and isinstance(pipeline, Mapping):
        for i, entry in enumerate(pipeline.get("mixtures") or []):
            entries.append((f"pipeline.mixtures[{i}]", entry))
    out = []
    for where, entry in entries:
        if isinstance(entry, str):
            try:
                out.append((where, load_option("mix", entry)))
            except ValueError:
                continue
        elif isinstance(entry, Mapping):
            name = entry.get("name")
            try:
                out.append((where, {**(load_option("mix", str(name)) if name else {}),
                                    **dict(entry)}))  # fmt: skip
            except ValueError:
                out.append((where, dict(entry)))
    return out


def check_mix_reference(cfg: Mapping[str, Any]) -> None:
    """A curriculum whose phases each take the model at the phase's start as the DPO reference
    (``reference: phase``) needs full fine-tuning: with LoRA the reference is θ0 with the
    adapter off. Refused before any stage."""
    train = cfg.get("train") or {}
    if not isinstance(train, Mapping) or train.get("method") != "lora":
        return
    for where, mix in mix_entries(cfg):
        if mix.get("reference") == "phase":
            raise ValueError(
                f"{where} ({mix.get('name')}) has reference: phase, which needs full "
                f"fine-tuning, but train.method=lora (the DPO reference of a LoRA run is θ0 "
                f"with the adapter off). Use reference: base, or train.method=full"
            )


def check_mix_knobs(cfg: Mapping[str, Any]) -> None:
    """The knobs a strategy reads only when it trains (battery 15, F14: named after data, θ0
    and the specialists): a scored mixture's ``scorer``, a curriculum's ``schedule`` and
    ``reference``, checked before any stage (and by ``plan``)."""
    from hhh_bench.data.mixing.scorers import SCORERS

    scorers = sorted({*SCORERS, "toy3h"})  # toy3h: registered by the train stage
    for where, mix in mix_entries(cfg):
        name = mix.get("name")
        if "scorer" in mix and mix["scorer"] not in scorers:
            raise ValueError(f"{where} ({name}): scorer {mix['scorer']!r} is not one of {scorers}")
        if mix.get("scorer") in SCORERS:  # its arguments bind (battery 16, A15: a TypeError
            import inspect  # naming a constructor, after the data, θ0 and the specialists)

            args = mix.get("scorer_args") or {}
            try:
                inspect.signature(SCORERS[mix["scorer"]]).bind(**dict(args))
            except TypeError as e:
                raise ValueError(
                    f"{where} ({name}): scorer {mix['scorer']!r} does not take scorer_args "
                    f"{dict(args)!r} ({e}): set {where}.scorer_args (conf/mix/reward_select.yaml "
                    "shows a reward model's)"
                ) from None
        if "schedule" in mix and mix["schedule"] not in ("per_phase", "one"):
            raise ValueError(
                f"{where} ({name}): schedule must be 'per_phase' or 'one', got {mix['schedule']!r}"
            )
        if "reference" in mix and mix["reference"] not in ("base", "phase"):
            raise ValueError(
                f"{where} ({name}): reference must be 'base' or 'phase', got {mix['reference']!r}"
            )
        if mix.get("reference") == "phase" and mix.get("schedule", "per_phase") != "per_phase":
            raise ValueError(f"{where} ({name}): reference: phase needs schedule: per_phase")
        _check_curriculum(cfg, where, mix)


def _check_curriculum(cfg: Mapping[str, Any], where: str, mix: Mapping[str, Any]) -> None:
    """A curriculum (a mix with a ``schedule``: ``sequential``) the training recipe trains as
    configured (battery 16, A19): SFT trains the phases one after another under one schedule
    and has no reference model (``per_phase`` and ``reference: phase`` were recorded, not
    done). Under one schedule (``schedule: one``, SFT's only one) ``train.max_steps`` stops
    the ordered rows part way: the later phases got few or no steps (battery 21, A-F1)."""
    train = cfg.get("train") or {}
    steps = train.get("max_steps", -1)
    one = mix.get("schedule", "per_phase") == "one" or train.get("kind") == "sft"
    if "schedule" in mix and one and isinstance(steps, int) and steps > 0:
        raise ValueError(
            f"{where} ({mix.get('name')}): train.max_steps={steps} under one schedule trains the "
            f"curriculum's rows in order and stops after {steps} steps: the later phases would "
            "get few or no steps (and more steps than rows would start it over); give the "
            "passes instead (train.epochs, train.max_steps=-1), or with DPO schedule: per_phase, "
            "which shares max_steps out over the phases"
        )
    if "schedule" not in mix or train.get("kind") != "sft":
        return
    if mix.get("schedule", "per_phase") == "per_phase" or mix.get("reference") == "phase":
        raise ValueError(
            f"{where} ({mix.get('name')}): train.kind=sft trains the phases one after another "
            "under one learning-rate schedule, with no reference model: give it schedule: one "
            "and reference: base (mix.schedule=one), or use train=dpo"
        )


def check_mix_scorers(cfg: Mapping[str, Any]) -> None:
    """A mixture scored by the toy world's exact reward (``scorer: toy3h``) on data that is not
    the toy world is refused: every real pair would get margin 0 (a random selection, no
    conflicts, and no error). Checked for ``mix`` and, when the run trains them
    (``stage=all``), every entry of ``pipeline.mixtures``."""
    data = cfg.get("data") or {}
    if not isinstance(data, Mapping) or data.get("kind", "toy3h") == "toy3h":
        return
    for where, mix in mix_entries(cfg):
        if mix.get("scorer") == "toy3h":
            raise ValueError(
                f"{where} ({mix.get('name')}) scores pairs with the toy world's reward "
                f"(scorer: toy3h), but data={data.get('name')!r} is not the toy world "
                f"(data.kind={data.get('kind')!r}): every pair would score 0 and the selection "
                "would be random. Give a reward model: {name: "
                f"{mix.get('name')}, scorer: reward_model, scorer_args: {{model: ..., "
                "output_dimensions: [...]}} (conf/mix/reward_select.yaml shows ArmoRM's)"
            )


def check_weights(cfg: Mapping[str, Any], merge: MergeConfig) -> None:
    """``merge.params.weights`` has one weight per model merged, known before any stage: the
    entries of ``merge.models``, else one specialist per dimension of ``data.dimensions`` (the
    merges of ``stage=merge|merge_eval|diagnose|all``)."""
    weights = merge.params.get("weights")
    if weights is None or cfg.get("stage") not in ("merge", "merge_eval", "diagnose", "all"):
        return
    if merge.models:
        n, what = len(merge.models), "merge.models"
    else:
        n = len((cfg.get("data") or {}).get("dimensions") or DIMENSIONS)
        what = "the pipeline's specialists (one per data.dimensions entry)"
    if len(weights) != n:
        raise ValueError(
            f"merge.params.weights={list(weights)}: merge parameter 'weights' has {len(weights)} "
            f"entries but {n} finetuned models are merged ({what}); give one weight per model, "
            "in their order"
        )


def check_threads(threads: Any) -> None:
    """``threads``: an integer >= 1, or null (torch's default)."""
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(f"threads={threads!r} must be an integer >= 1, or null (torch's default)")


def check_top_level(cfg: Mapping[str, Any]) -> None:
    """The run's own scalars: ``trust_remote_code`` a boolean (``maybe`` would read as true:
    code from a model's repository would run), ``threads`` an integer >= 1 or null, ``workers``
    an integer >= 1, ``name`` one folder name (it names the run's folder under ``runs/``)."""
    check_top_level_keys(cfg)
    trust = cfg.get("trust_remote_code", False)
    if not isinstance(trust, bool):
        raise ValueError(f"trust_remote_code={trust!r} must be true or false")
    check_threads(cfg.get("threads"))
    workers = cfg.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(
            f"workers={workers!r} must be an integer >= 1 (the processes stage=all runs its "
            "seeds in; 1: this one)"
        )
    root = cfg.get("root")
    if isinstance(root, str) and (not root.strip() or root != root.strip()):
        raise ValueError(
            f"root={root!r} is empty or begins or ends with a space; name the folder the run "
            "writes to (root=runs/my_experiment)"
        )  # battery 13, F10: root='' wrote into the current folder, root=' ' a folder ' '

    name = cfg.get("name")
    if isinstance(name, str) and ("/" in name or "\\" in name or name in ("", ".", "..")):
        raise ValueError(
            f"name={name!r} must be one folder name (it names the run's folder, runs/<name>); "
            "give root= for a folder elsewhere"
        )


@functools.lru_cache(maxsize=1)
def known_top_level_keys() -> frozenset[str]:
    """The keys a composed run may hold at its top level: ``conf/config.yaml``'s own, a config
    group's (a folder of ``conf/``, ``rehearsal`` among them) and those the shipped experiments
    add (``design_seeds``, ...). Read from the config folder, so a new group or experiment key
    needs no edit here."""
    import yaml

    from hhh_bench.core.paths import conf_dir

    root = conf_dir()
    keys = {p.name for p in root.iterdir() if p.is_dir()}
    keys |= set(yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8")) or {})
    for exp in sorted((root / "experiment").glob("*.yaml")):
        text = exp.read_text(encoding="utf-8")
        if "@package _global_" in text:
            keys |= set(yaml.safe_load(text) or {})
    return frozenset(keys - {"defaults"})


def check_top_level_keys(cfg: Mapping[str, Any]) -> None:
    """A top-level key no config defines is a typo (battery 13, F4: ``+sead=5`` ran seed 0
    without a word; Hydra checks nested keys, not ``+`` at the top): refused with the closest
    key."""
    import difflib

    known = known_top_level_keys()
    for key in cfg:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
            hint = (
                f"did you mean {close[0]}?"
                if close
                else f"the keys are: {', '.join(sorted(known))}"
            )
            raise ValueError(
                f"{key} is not a setting ({hint}); no config reads a top-level {key!r}"
            )


def check_seeds(cfg: Mapping[str, Any]) -> None:
    """``seed`` is an integer in [0, 2**32 - 1]; ``seeds`` is null, or a list of distinct such
    integers (``[]`` or null: the one seed ``seed``). A scalar is refused: ``seeds=2`` could mean seed 2 or two
    seeds, so the message asks for ``seeds=[2]`` or ``seeds=[0,1]``."""

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if "seed" in cfg and not is_int(cfg["seed"]):
        raise ValueError(f"seed={cfg['seed']!r} must be an integer")
    if "seed" in cfg and not 0 <= cfg["seed"] < 2**32:
        raise ValueError(
            f"seed={cfg['seed']!r} must be in [0, 2**32 - 1] (numpy's and torch's generators "
            "take no other seed)"
        )
    seeds = cfg.get("seeds")
    if seeds is None:
        return
    if not isinstance(seeds, (list, tuple)):
        hint = (
            f"seeds=[{seeds}] for the one seed {seeds}, or seeds=[{', '.join(map(str, range(seeds)))}] "
            f"for {seeds} seeds"
            if is_int(seeds) and 0 < seeds <= 10
            else "seeds=[0,1,2]"
        )
        raise ValueError(f"seeds={seeds!r} must be a list of integers: write {hint}")
    bad = [s for s in seeds if not is_int(s)]
    if bad:
        raise ValueError(f"seeds={list(seeds)!r}: {bad} not integer(s); e.g. seeds=[0,1,2]")
    out = [s for s in seeds if not 0 <= s < 2**32]
    if out:
        raise ValueError(f"seeds={list(seeds)!r}: {out} outside [0, 2**32 - 1]")
    dup = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if dup:
        raise ValueError(
            f"seeds={list(seeds)!r} repeats {dup}: a seed run twice is not a second replicate"
        )
    stage = cfg.get("stage", "all")
    # stage=data builds every seed's data (a cluster's CPU job before the GPU one); other single
    # stages run one seed
    if seeds and stage not in ("all", "report", "data") and list(seeds) != [cfg.get("seed", 0)]:
        raise ValueError(
            f"stage={stage} runs one seed, seed={cfg.get('seed', 0)}, but seeds={list(seeds)} "
            f"lists {'others' if len(seeds) > 1 else 'another'}: run stage={stage} seed=N for "
            "each (or stage=all, which runs every seed of seeds), or leave seeds unset"
        )


def task_metrics() -> dict[str, tuple[str, ...]]:
    """The metrics of each task YAML shipped with hhh-bench whose metrics are all in its
    ``metric_list`` (the judged generation tasks, which add their judges' metrics, left out):
    ``{lm-eval task name: metrics}``. Read once."""
    if _TASK_METRICS:
        return _TASK_METRICS

    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("!", lambda loader, tag, node: None)
    folder = Path(__file__).parent / "evaluation" / "tasks"
    docs = {}
    for path in sorted(folder.rglob("*.yaml")):
        doc = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (SafeLoader subclass)
        if isinstance(doc, dict):
            docs[path.name] = (path, doc)
    for path, doc in docs.values():
        if "task" not in doc or "hhh_judge" in path.read_text():
            continue
        full = dict(doc)
        inc = doc.get("include")
        while inc and inc in docs:
            parent = docs[inc][1]
            if "hhh_judge" in docs[inc][0].read_text():
                full = {}
                break
            full = {**parent, **full}
            inc = parent.get("include") if parent.get("include") != inc else None
        metrics = [m.get("metric") for m in full.get("metric_list") or [] if isinstance(m, dict)]
        if metrics:
            _TASK_METRICS[str(doc["task"])] = tuple(str(m) for m in metrics)
    return _TASK_METRICS


_TASK_METRICS: dict[str, tuple[str, ...]] = {}


def check_metrics(ecfg: Mapping[str, Any]) -> None:
    """Each scored task's primary metric (``eval.metric``, or ``eval.metrics.<task>``) is one
    its task computes, for the tasks shipped with hhh-bench (:func:`task_metrics`); a task of
    the harness or of the user's ``include_paths`` is checked when it is scored."""
    known = task_metrics()
    template = str(ecfg.get("task_template") or "{task}")
    default = ecfg.get("metric") or "acc"
    overrides = {k: v for k, v in (ecfg.get("metrics") or {}).items() if v}
    suffixes = ("val", "test") if "{split}" in template else ("",)
    suite = {t for tasks in (ecfg.get("dimensions") or {}).values() for t in tasks or {}}
    suite |= {c.get("task") for c in (ecfg.get("columns") or {}).values() if isinstance(c, Mapping)}
    shipped = {n.removesuffix("_val").removesuffix("_test") for n in known} | set(known)
    from hhh_bench.core.paths import conf_dir

    for option in (p.stem for p in (conf_dir() / "eval").glob("*.yaml")):  # lm-eval built-ins
        shipped |= set(load_option("eval", option).get("metrics") or {})  # the suites name
    for task in overrides:
        if task not in suite and task not in shipped:  # `+eval.metrics.nosuch=acc`: a typo
            import difflib

            close = difflib.get_close_matches(task, sorted(suite), n=1)
            hint = (
                f"did you mean eval.metrics.{close[0]}?" if close else f"its tasks: {sorted(suite)}"
            )
            raise ValueError(
                f"eval.metrics.{task}: no task {task!r} in the suite or shipped with hhh-bench, "
                f"so the setting would do nothing ({hint})"
            )
    for dim, tasks in (ecfg.get("dimensions") or {}).items():
        for task in tasks or {}:
            metric = overrides.get(task, default)
            where = f"eval.metrics.{task}" if task in overrides else "eval.metric"
            for suffix in suffixes:
                name = template.format(task=task, split=suffix)
                have = known.get(name)
                if have is not None and metric not in have:
                    raise ValueError(
                        f"{where}={metric!r} is not a metric of task {name!r} ({dim}); its "
                        f"metrics: {', '.join(have)}"
                    )


def check_mixes(cfg: Mapping[str, Any]) -> None:
    """Every mix config the run trains with, before any stage: ``mix`` (``stage=train`` with
    several dimensions, and ``stage=all`` when ``pipeline.mixtures`` names it),
    ``pipeline.mixtures``' entries (names of ``conf/mix`` or mappings) and
    ``pipeline.oracle.mix`` (:func:`hhh_bench.data.mixing.registry.check_mix`). Each error
    names the setting; the toy world's reward scorer is never loaded here."""
    from hhh_bench.data.mixing.registry import check_mix

    stage = cfg.get("stage")
    dims = list((cfg.get("data") or {}).get("dimensions") or DIMENSIONS)
    mix = cfg.get("mix")
    if isinstance(mix, Mapping) and (stage == "all" or (stage == "train" and len(dims) > 1)):
        check_mix(mix, dims, "mix")
    pcfg = cfg.get("pipeline")
    if stage != "all" or not isinstance(pcfg, Mapping):
        return

    def option(name: Any, where: str) -> Mapping[str, Any]:
        if isinstance(mix, Mapping) and mix.get("name") == name:
            return mix
        try:
            return load_option("mix", str(name))
        except ValueError as e:
            raise ValueError(f"{where}={name!r}: {e}") from None

    seen: dict[str, int] = {}
    for i, entry in enumerate(pcfg.get("mixtures") or []):
        where = f"pipeline.mixtures[{i}]"
        name = entry.get("name") if isinstance(entry, Mapping) else entry
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where} names no strategy (give a conf/mix name, or a mapping "
                             f"with its 'name'): {entry!r}")  # fmt: skip
        if name in seen:  # both rows would be "mix: <name>", one hiding the other
            raise ValueError(
                f"{where} names {name!r} again (pipeline.mixtures[{seen[name]}]): each mixture "
                "is one row named by its strategy; list a strategy once (to try several of "
                "its settings, use pipeline.tuning or a sweep: -m mix.<knob>=a,b)"
            )
        seen[name] = i
        check_mix(entry if isinstance(entry, Mapping) else option(entry, where), dims, where)
    oracle = pcfg.get("oracle") or {}
    if oracle.get("enabled", True):
        name = oracle.get("mix", "uniform")
        check_mix({**option(name, "pipeline.oracle.mix"), "budget": oracle.get("budget")},
                  dims, f"pipeline.oracle.mix={name!r}")  # fmt: skip


def _check_tuning(cfg: Mapping[str, Any]) -> None:
    """``pipeline.tuning``: every emphasis has one weight > 0 per dimension, and every tuned
    mixture strategy has a ``shares`` knob (one not in ``pipeline.mixtures`` is not run)."""
    pcfg = cfg["pipeline"]
    if cfg.get("stage") == "all":  # the stage that merges and mixes data.dimensions
        emphases(pcfg, list((cfg.get("data") or {}).get("dimensions") or DIMENSIONS))
    for name in (pcfg.get("tuning") or {}).get("mixtures") or []:
        if "shares" not in load_option("mix", name):
            raise ValueError(
                f"pipeline.tuning.mixtures names {name!r}, a strategy without a 'shares' knob"
            )


def folder_or_creatable(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` (named ``what`` in the message) is a folder or can be created as one: refused
    when it, or the nearest part of it that exists, is a regular file. Returns that nearest
    existing folder."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what}={str(path)!r} is a regular file, not a folder: give a folder")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(
            f"{what}={str(path)!r} cannot be created: {str(probe)!r} is a regular file"
        )
    return probe


def writable_folder(path: str | os.PathLike[str], what: str) -> None:
    """``path`` (named ``what`` in the message) is a folder this process can write to, or can
    be created as one: refused when it, or the nearest part of it that exists, is a regular
    file (:func:`folder_or_creatable`), or when a file cannot be made there. Nothing is left
    behind (the probe file is removed; a missing folder is not created)."""
    import tempfile

    probe = folder_or_creatable(path, what)
    try:
        fd, name = tempfile.mkstemp(prefix=".hhh-bench-write-check-", dir=probe)
    except OSError as e:
        raise ValueError(
            f"{what}={str(path)!r} is not writable ({e.strerror} in {str(probe)!r}): give a "
            "folder this user can write to"
        ) from None
    os.close(fd)
    os.unlink(name)


def check_hf_folders() -> None:
    """The Hugging Face folders named in the environment are folders: ``$HF_HOME`` and
    ``$HF_HUB_CACHE`` (a shared hub cache may be read-only) are not regular files, and the
    datasets cache (``$HF_DATASETS_CACHE``, else ``$HF_HOME/datasets``), which every
    evaluation writes to, is a writable folder. Raises naming the variable."""
    for var in ("HF_HOME", "HF_HUB_CACHE"):
        if os.environ.get(var):
            folder_or_creatable(os.environ[var], var)
    if os.environ.get("HF_DATASETS_CACHE"):
        writable_folder(os.environ["HF_DATASETS_CACHE"], "HF_DATASETS_CACHE")
    elif os.environ.get("HF_HOME"):
        datasets = str(Path(os.environ["HF_HOME"]).expanduser() / "datasets")
        writable_folder(datasets, "the datasets cache $HF_HOME/datasets")


def wandb_key_set() -> bool:
    """Whether W&B finds an API key without asking: ``$WANDB_API_KEY``, or an entry for its
    host (``$WANDB_BASE_URL``, default api.wandb.ai) in the netrc file (``$NETRC``, else
    ``~/.netrc``) that ``wandb login`` writes. The key itself is never read out."""
    import netrc
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    try:
        entry = netrc.netrc(str(path)).authenticators(host or "api.wandb.ai")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def check_device_here(where: str, dev: str) -> None:
    """``dev`` is a device the stages accept (:func:`hhh_bench.core.config.check_device`) and
    this machine has; raise ``ValueError`` naming ``where`` otherwise."""
    import torch

    from hhh_bench.core.config import check_device

    check_device(where, dev)
    if dev == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"{where}=mps but this machine has no usable MPS device (Apple GPU); use {where}=cpu"
        )
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"{where}={dev} but this machine has no usable CUDA device (torch "
            f"{torch.__version__}); use {where}=cpu, or install a CUDA build of torch"
        )


def preflight(groups: Mapping[str, Any], *, loads_models: bool = True) -> None:
    """What can be checked before any work: every device the run will use exists, every
    folder the run writes to that the user named (``merge_engine.cache_dir``,
    ``data.cache_dir``, ``$WANDB_DIR`` when W&B logs) is a writable folder, the Hugging Face
    folders are folders, W&B in online mode has an API key, and a hub model is reachable
    (offline: in the local cache). The NLTK data of the suite's tasks is checked by the stages
    that evaluate (:func:`check_nltk_data`). ``loads_models=False``: a stage that loads no
    model (``stage=data``, ``stage=report``: a CPU job of a GPU experiment on a cluster) skips
    the device checks and the hub model's."""

    for name, attr in (("model", "device"), ("train", "device"), ("merge_engine", "device")):
        if not loads_models:
            break
        g = groups.get(name)
        dev = str(getattr(g, attr, "cpu") or "cpu") if g is not None else "cpu"
        check_device_here(f"{name}.{attr}", dev)
    from hhh_bench.core.stagecache import held_by_a_run

    for name in ("merge_engine", "data"):
        folder = getattr(groups.get(name), "cache_dir", None)
        if folder:
            why = held_by_a_run(folder)
            if why is not None:  # battery 12, F10: the sweep cache written into a specialist
                raise ValueError(
                    f"{name}.cache_dir={str(folder)!r} {why}: its cache files would be written "
                    "among files whose checksums a later reuse verifies; give a folder of its "
                    "own (the default lies under the run root)"
                )
            writable_folder(folder, f"{name}.cache_dir")
    logger = groups.get("logger")
    mode = wandb_mode(dataclasses.asdict(logger)) if logger is not None else None
    if mode in ("online", "offline") and os.environ.get("WANDB_DIR"):
        why = held_by_a_run(os.environ["WANDB_DIR"])
        if why is not None:  # battery 12, F20: W&B's files written into a finished output
            raise ValueError(
                f"WANDB_DIR={os.environ['WANDB_DIR']!r} {why}: W&B's files would be written "
                "among files whose checksums a later reuse verifies; point WANDB_DIR elsewhere"
            )
        writable_folder(os.environ["WANDB_DIR"], "WANDB_DIR")
    if mode in ("online", "offline") and logger.project is not None:
        check_wandb_project(str(logger.project))
    if mode == "online" and not wandb_key_set():
        where = "logger.mode=online" if logger.mode == "online" else "WANDB_MODE=online"
        raise ValueError(
            f"{where} but W&B has no API key here (no WANDB_API_KEY, no api.wandb.ai entry in "
            "~/.netrc): run `wandb login` first, or log offline (WANDB_MODE=offline, then "
            "`wandb sync`)"
        )
    check_hf_folders()
    model = groups.get("model")
    if loads_models and model is not None and model.kind == "hub" and model.path:
        check_hub_model(model.path, model.revision)


HUB_TIMEOUT_S = 10.0
"""How long :func:`check_hub_model` waits for the hub to answer before naming it unreachable."""


def check_hub_model(path: str, revision: str | None) -> None:
    """``model.path`` as a hub id (not a local folder) is in the HF cache at its revision, or,
    online, the hub answers for it: otherwise refused before any work, naming the id (offline,
    the command that fetches it; online, the error and the offline switch), instead of
    transformers' own error from deep inside the base stage."""
    from hhh_bench.core.hubref import cached_config, split_ref

    if Path(path).expanduser().exists():
        return
    ident, pinned = split_ref(str(path))
    rev = revision or pinned
    if cached_config(ident, rev) is not None:
        return
    fetch = f"`hf download {ident}{f' --revision {rev}' if rev else ''}`"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ValueError(
            f"model.path={path!r} is not a local folder and is not in the HF cache, and this "
            f"machine is offline (HF_HUB_OFFLINE=1): on a machine with access run {fetch} (or "
            "`hhh-bench prefetch` with the run's overrides) and copy the cache (HF_HOME), or pass "
            "a local folder"
        )
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(ident, revision=rev, timeout=HUB_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - any failure to reach it: named, with what to do
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise ValueError(
            f"model.path={path!r} is not a local folder, not in the HF cache, and the hub did "
            f"not answer for it ({type(e).__name__}: {first}): check the id and the network, "
            f"or on a machine with access run {fetch} and copy the cache (HF_HOME) here, then "
            "run with HF_HUB_OFFLINE=1"
        ) from None


def emphases(pcfg: Mapping[str, Any], dims: Sequence[str]) -> list[list[float]]:
    """``pipeline.tuning.emphasis``: the per-dimension weightings (one weight per dimension of
    ``dims``, each > 0) that merges and mixtures alike try on the selection split besides the
    equal one; checked here (a wrong length or a non-positive weight names the entry)."""
    out = []
    for i, w in enumerate((pcfg.get("tuning") or {}).get("emphasis") or []):
        if not isinstance(w, Sequence) or len(w) != len(dims):
            raise ValueError(
                f"pipeline.tuning.emphasis[{i}] = {w!r}: expected one weight per dimension {list(dims)}"
            )
        if any(not isinstance(x, int | float) or isinstance(x, bool) or x <= 0 for x in w):
            raise ValueError(f"pipeline.tuning.emphasis[{i}] = {w!r}: weights must be numbers > 0")
        out.append([float(x) for x in w])
    # an emphasis is used scaled (merge weights summing to the specialists, mixture shares
    # summing to 1): one that is another's multiple, or equal weights, is the same configuration
    # tried twice (battery 14, F13: [2,1,1] and [4,2,2] counted as two of "best of N")
    shapes = [tuple(round(x / sum(w), 12) for x in w) for w in out]
    equal = tuple(round(1 / len(dims), 12) for _ in dims) if dims else ()
    for i, shape in enumerate(shapes):
        j = shapes.index(shape)
        if j < i or shape == equal:
            same = (f"emphasis[{j}] = {list(out[j])} scaled" if j < i
                    else "equal weights, which are always tried")  # fmt: skip
            raise ValueError(
                f"pipeline.tuning.emphasis[{i}] = {list(out[i])} is {same}: an emphasis is "
                "used scaled, so it is the same configuration tried twice; drop it"
            )
    return out
