"""The pipeline: stage selection and the order of the stages.

One concept: what a run computes, in which order (the stages of one seed, then the report).

``run(cfg)`` is what ``hhh-bench`` calls after Hydra composed ``cfg``; it is importable and
testable without Hydra. It first checks the whole config (:func:`hhh_bench.validation.validate_run`:
unknown keys, ranges, the merge method's knobs, every grid point), then runs the stage.

``stage=all`` runs, for every seed in ``seeds``: data → base → one specialist per dimension →
the oracle → every data-mixture baseline → every merge method over its grid (chosen on the
selection split by :func:`choose`) → evaluation of every model on the report split → the
report. Every stage is cached by content, so a re-run or a sweep only computes what is new, and
a killed run resumes.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf, open_dict

from hhh_bench.core import console
from hhh_bench.core.content import enclosing_output
from hhh_bench.stages.common import (
    CACHE,
    data_keys_of,
    load_option,
    log,
    model_identity,
    run_facts,
    to_dict,
)
from hhh_bench.validation import (
    check_nltk_data,
    check_threads,
    check_tiny_world,
    emphases,
    preflight,
    validate_run,
)

STAGES = ("data", "base", "train", "merge", "merge_eval", "eval", "report", "diagnose", "all")
UPSTREAM = {
    "train": ("base",),
    # stats: fisher's and regmean's statistics, computed once per specialist
    "merge": ("base", "train", "stats"),
    "merge_eval": ("base", "train", "stats"),
    "diagnose": ("base", "train"),
    "eval": ("base",),
}
"""Earlier stages a stage computes first when their outputs are missing (the data stage, which
every stage runs, aside): each such run says so on the console before it starts
(:func:`hhh_bench.core.stagecache.cached_stage`)."""
T = TypeVar("T")


def run(cfg: DictConfig, *, job: str | None = None) -> dict[str, Any]:
    """:func:`_run`, the root marked as in use once the config passed its checks (``cache gc
    --yes`` refuses while it is)."""
    import contextlib

    with contextlib.ExitStack() as stack:
        return _run(cfg, job=job, stack=stack)


def _run(cfg: DictConfig, *, job: str | None, stack: Any) -> dict[str, Any]:
    """Run the selected ``cfg.stage`` (and the stages it needs, from the cache where done; one
    that is missing is computed first, after a console line saying so and why: :data:`UPSTREAM`).

    ``stage=merge_eval`` also puts its selection score under ``"objective"`` (a float), the value
    the ``hhh-bench`` task function returns to a Hydra sweeper (Optuna: experiment=merge_optuna).
    ``job``: the name of this job of a multirun (``hhh-bench`` passes it), so that its report
    goes to a folder of its own (:func:`hhh_bench.stages.report.report_dir`); None otherwise.
    The console's cache summary counts this run (this job) only.
    """
    stage = cfg.stage
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {list(STAGES)}")
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and stage != "train":
        raise ValueError(
            f"stage={stage} under a distributed launch ({world} processes, e.g. accelerate "
            f"launch) would run every stage but training {world} times (data, merges, "
            "evaluations, the report); start hhh-bench as one process and let the train stage "
            f"launch training: train.num_processes={world} "
            "train.accelerate_config=accelerate/fsdp.yaml (docs/training.md)"
        )
    t0 = time.time()
    CACHE.reset()
    console.reset()
    from hhh_bench.stages.eval import ROWS_OF_THIS_RUN

    ROWS_OF_THIS_RUN.clear()
    CACHE.asked, CACHE.upstream = stage, frozenset(UPSTREAM.get(stage, ()))
    set_threads(cfg.get("threads"))
    cfg, groups = prepare(cfg)
    # config, then this machine (devices, hub reachability); data and report load no model
    preflight(groups, loads_models=stage not in ("data", "report"))
    from hhh_bench.core.stagecache import run_marker

    stack.enter_context(run_marker(cfg.root))
    if "cache" in groups:
        CACHE.on_mismatch = groups["cache"].on_mismatch
    if stage not in ("data", "base", "train", "merge", "diagnose"):  # those write no rows
        from hhh_bench.stages.eval import results_path
        from hhh_bench.tracking.store import check_one_experiment

        check_one_experiment(results_path(cfg), str(cfg.name))
        if stage != "report":  # a damaged store takes no new row (battery 18, U10): the report
            from hhh_bench.tracking.store import scan_results  # checks it itself, below

            scan_results(results_path(cfg))
    if stage == "report":  # the store, before any stage work: an invalid line named up front
        from hhh_bench.stages.eval import results_path
        from hhh_bench.tracking.store import scan_results

        skip = bool(getattr(groups.get("report"), "skip_invalid", False))
        _check_report_seeds(cfg, scan_results(results_path(cfg), skip_invalid=skip).latest())
    if "eval" in groups and groups["eval"].judges:  # judges and their cache, before any work
        from hhh_bench.evaluation.judged_eval import check_judges_early

        check_judges_early(to_dict(cfg.eval), cfg.root)
    if stage in ("all", "eval", "merge_eval") and "eval" in groups:  # the stages that evaluate
        check_nltk_data(groups["eval"])  # after the config's checks: this machine's data
        if groups["eval"].judges:
            from hhh_bench.evaluation.judged_eval import check_judges_offline

            check_judges_offline(to_dict(cfg.eval))
    from hhh_bench.stages.data import run_data

    seeds = _seed_cfgs(cfg) if stage == "all" or (stage == "data" and cfg.get("seeds")) else []
    _check_base_seed(cfg, seeds)
    if stage == "all":
        console.plan(plan_all(cfg, seeds))
        e = cfg.get("eval") or {}
        if e.get("select_split") and e.get("select_split") == e.get("report_split"):
            console.say(  # battery 18, U8: said at the end only, in the answer line
                f"warning: eval.select_split={e.get('select_split')} is the report split: each "
                "family's configuration is chosen on the numbers the report shows (an optimistic "
                "pick); a split of its own (validation) is the fair choice"
            )
    out: dict[str, Any] = {}
    if stage in ("merge", "merge_eval", "diagnose") and cfg.merge.get("models"):
        _check_merge_models(cfg)  # before the data stage writes (battery 17, U3)
    # `seed`'s data: unless `seeds` leaves it out (battery 16, A12); the report reads the store
    # only (battery 17, U3: a refused report wrote a world first)
    if _own_data_used(seeds) and stage != "report":
        with console.job("data", _seeded(cfg, "")) if stage == "all" else _nothing():
            out["data"] = run_data(cfg)
    if stage == "data":  # every seed of `seeds` whose data is its own (a world that follows it)
        for scfg, same in seeds:
            if not same and int(scfg.seed) != int(cfg.seed):
                with console.job("data", _seeded(scfg, "")):
                    out[f"data_seed_{int(scfg.seed)}"] = run_data(scfg)
        if "data" not in out:
            out["data"] = out[f"data_seed_{int(seeds[0][0].seed)}"]
    data = out.get("data")
    if stage == "base":
        out["base"] = _base(cfg, data)
    elif stage == "train":
        from hhh_bench.stages.train import run_train

        out["train"] = run_train(cfg, _base(cfg, data), data)
    elif stage == "merge":
        from hhh_bench.stages.merge import run_merge

        base, models, names = _merge_inputs(cfg, data)
        out["merge"] = run_merge(cfg, base=base, models=models, names=names, data=data)
    elif stage == "merge_eval":
        out["merge_eval"] = _merge_eval(cfg, data)
        out["objective"] = out["merge_eval"]["objective"]
    elif stage == "eval":
        out["eval"] = _eval_one(cfg, data)
    elif stage == "report":
        from hhh_bench.stages.report import run_report

        _summary(t0)
        out["report"] = run_report(cfg, job=job)
    elif stage == "diagnose":
        out["diagnose"] = _diagnose(cfg, data)
    elif stage == "all":
        out.update(run_all(cfg, data, t0, job=job, seeds=seeds))
    if stage not in ("report", "all"):  # those print it before the report, which ends with
        _summary(t0)  # the answer line
    return out


def _check_base_seed(cfg: DictConfig, seeds: Sequence[tuple[DictConfig, bool]]) -> None:
    """``pipeline.base_seed`` promises one θ0 for every seed; a θ0 built or fine-tuned from the
    data (the tiny model, ``model.base_sft``) on a world that follows the seed is another model
    for each seed all the same, its SFT seeded alike: refused, before any work (battery 9)."""
    from hhh_bench.core.config import ModelConfig
    from hhh_bench.stages.common import group

    base_seed = cfg.pipeline.get("base_seed")
    if base_seed is None or len(seeds) < 2 or all(same for _, same in seeds):
        return
    m = group(cfg, "model", ModelConfig)
    if m.kind == "hub" and not m.sft_enabled:  # θ0 is the hub model whatever the data
        return
    raise ValueError(
        f"pipeline.base_seed={base_seed} asks for one θ0 for every seed, but each seed draws its "
        "own data (the data config follows seed, as data.world.seed: ${seed}) and θ0 is built "
        "from it (model.kind="
        f"{m.kind}{', base_sft' if m.sft_enabled else ''}): every seed would get another θ0, "
        "all fine-tuned with the same seed; set data.world.seed=N for one world (as "
        "experiment=ablation_resm does), or drop pipeline.base_seed for each seed's own θ0"
    )


def _check_report_seeds(cfg: DictConfig, rows: Sequence[Mapping[str, Any]]) -> None:
    """``stage=report`` reports every seed of the store: ``seeds`` naming fewer than it holds
    is refused (battery 9: ``seeds=[0]`` on a 2-seed store reported both, unsaid), and so is
    one naming a seed it does not hold."""
    if not cfg.get("seeds"):
        held = sorted({str(r.get("seed")) for r in rows}, key=lambda s: (len(s), s))
        if int(cfg.seed) != 0 and str(cfg.seed) not in held:  # battery 16, B5: seed=7 showed
            raise ValueError(  # the report of the store's seeds, as if of seed 7
                f"stage=report reports every seed of the results store ({', '.join(held) or 'none'}); "
                f"seed={cfg.seed} is not one of them and selects nothing: drop it, or run that seed "
                "first (stage=all seed=N)"
            )
        return
    asked = {str(s) for s in cfg.seeds}
    held = sorted({str(r.get("seed")) for r in rows}, key=lambda s: (len(s), s))
    absent = sorted(asked - set(held), key=lambda s: (len(s), s))
    if absent:  # battery 14, F2: a 3-seed answer under a 4-seed request, unsaid
        raise ValueError(
            f"stage=report seeds={list(cfg.seeds)} names seed(s) {', '.join(absent)}, which have "
            f"no row in the results store (it holds seeds {', '.join(held) or 'none'}): run "
            "those seeds first (stage=all with the same seeds), or drop seeds= to report the "
            "seeds the store holds"
        )
    others = [s for s in held if s not in asked]
    if others:
        raise ValueError(
            f"stage=report reports every seed of the results store ({', '.join(held)}), but "
            f"seeds={list(cfg.seeds)} leaves out {', '.join(others)}: the report would not be "
            "of those seeds only; drop seeds= to report them all, or report a root whose "
            "store holds only those seeds' rows"
        )


def prepare(cfg: DictConfig) -> tuple[DictConfig, dict[str, Any]]:
    """A composed config made ready for its stages: the plugins imported, the rehearsal's
    stand-ins built and put in place (``+rehearsal=small``), every group checked
    (:func:`validate_run`) and the merge option's knobs that are not the method's left out.
    Returns the config and its typed groups. What :func:`run` and ``hhh-bench plan`` share."""
    load_plugins(cfg.get("plugins") or [])
    if (
        "rehearsal" in cfg
    ):  # +rehearsal=small: build the offline stand-ins, point the config at them
        from hhh_bench.rehearsal import prepare_rehearsal

        cfg = with_values(cfg, prepare_rehearsal(to_dict(cfg)))
    groups = validate_run(to_dict(cfg))
    check_tiny_world(to_dict(cfg), groups)
    if "merge" in groups and dict(groups["merge"].params) != to_dict(cfg.merge.params):
        cfg = copy.deepcopy(cfg)  # the merge option's knobs that are not the method's, left out
        with open_dict(cfg):
            cfg.merge.params = dict(groups["merge"].params)
    return cfg, groups


def compose_run(overrides: Sequence[str]) -> Any:
    """The run config of ``overrides`` as ``hhh-bench`` composes it, made ready for its stages
    (:func:`prepare`: plugins, the rehearsal's stand-ins, every check);
    Hydra's refusal of an override as a ``ValueError`` naming it. What the subcommands that
    read a run's config without running it (``plan``, ``prefetch``) call."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from hhh_bench.core.paths import conf_dir

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        # battery 11, pn04: a mistyped key said as the main CLI says it (Hydra's cause holds it)
        typo = unknown_key_message(f"{e}\n{e.__cause__ or ''}", overrides)
        raise ValueError(
            typo or " ".join(x.strip() for x in str(e).splitlines() if x.strip())
        ) from None
    CACHE.reset()
    check_dict_overrides(cfg, overrides)
    return prepare(cfg)[0]


def check_dict_overrides(cfg: Any, lines: Sequence[str]) -> None:
    """A mapping given on the command line where the config holds one: Hydra merges it into the
    config's, so ``key={}`` empties nothing (``eval.dimensions.helpful={}``) and
    ``pipeline.merge_grid={tsv: ...}`` keeps every other method of the shipped grid (battery
    14, F2 of battery 15: the docs' "train the specialists once" ran the whole grid). Raise
    ``ValueError`` naming the override, what the config still holds and what to type."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import DictConfig

    args = [x for x in lines if not x.startswith("-") and "=" in x and not x.startswith("hydra")]
    deleted = {a[1:].split("=", 1)[0] for a in args if a.startswith("~")}
    for o in OverridesParser.create().parse_overrides(args):
        if o.is_sweep_override() or o.is_delete() or not isinstance(o.value(), dict):
            continue
        key = o.key_or_group
        if key in deleted:  # `~key +key={...}`: a replacement, as asked
            continue
        held = OmegaConf.select(cfg, key, default=None)
        if not isinstance(held, DictConfig) or not len(held):
            continue
        kept = sorted(str(k) for k in held if k not in o.value())
        if o.value() == {}:
            first = next(iter(held))
            raise ValueError(
                f"{o.input_line} empties nothing: Hydra merges a mapping given on the command "
                f"line into the config's, so {key} still holds {sorted(map(str, held))}; drop "
                f"an entry with ~{key}.{first}, or the whole key with ~{key}"
            )
        if kept:
            raise ValueError(
                f"{o.input_line} is merged into the config's {key}, which keeps {kept}: Hydra "
                f"merges a mapping given on the command line; to replace {key} write "
                f"'~{key}' '+{o.input_line.lstrip('+')}', or set one entry with {key}.<name>=..."
            )


def unknown_key_message(hydra_text: str, argv: Sequence[str]) -> str | None:
    """One sentence for Hydra's five lines about an override of a key the config lacks (``Key 'x' is not
    in struct``): the key, the closest existing one, and ``+`` for a new key on purpose; None
    for any other refusal (Hydra's text is then shown as it is)."""
    import difflib

    m = re.search(r"Key '([^']+)' is not in struct\s+full_key: (\S+)", hydra_text)
    if not m:
        return None
    full = m.group(2)
    parent, _, leaf = full.rpartition(".")
    keys: list[str] = []
    try:  # the parent's keys, from the config composed with the other overrides
        from hydra import compose, initialize_config_dir
        from omegaconf import DictConfig, OmegaConf

        from hhh_bench.core.paths import conf_dir

        others = [a for a in argv if not a.startswith("-") and "=" in a
                  and not f"{a.lstrip('+~').split('=', 1)[0]}.".startswith(f"{full}.")]  # fmt: skip
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=others)
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if isinstance(node, DictConfig):
            keys = [str(k) for k in node]
    except Exception:  # noqa: BLE001 - only the hint is lost
        keys = []
    where = f"{parent}." if parent else ""
    close = difflib.get_close_matches(leaf, keys, n=1, cutoff=0.6)
    hint = (
        f"did you mean {where}{close[0]}?"
        if close
        else (f"{parent or 'the config'} has: {', '.join(sorted(keys)[:15])}" if keys else "")
    )
    return (
        f"{full} is not a setting"
        + (f" ({hint})" if hint else "")
        + f"; to add a key on purpose, write +{full}=..."
    )


def _summary(t0: float) -> None:
    console.say(f"hhh-bench: {CACHE.summary()} in {time.time() - t0:.0f} s")


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op CPU threads (None: leave torch's default, one per core)."""
    check_threads(threads)  # before validate_run: the threads are set first
    if threads is None:
        return
    import torch

    torch.set_num_threads(int(threads))


def plugin_error(e: BaseException) -> str:
    """What went wrong importing a plugin, with its file and line where Python knows them (a
    ``SyntaxError``'s, else the innermost frame of the traceback)."""
    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg} ({e.filename}, line {e.lineno})"
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" ({tb.tb_frame.f_code.co_filename}, line {tb.tb_lineno})" if tb is not None else ""
    return f"{type(e).__name__}: {e}{where}"


def load_plugins(modules: list[str]) -> None:
    """Import user modules (``plugins=[my_pkg.my_methods]``) so their registrations run."""
    import importlib

    if isinstance(modules, str) or not isinstance(modules, Sequence):
        raise ValueError(
            f"plugins={modules!r} must be a list of module names: write plugins=[{modules}]"
        )
    for name in modules:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"plugins: {name!r} is not a module name (plugins=[my_pkg.my_mod])")
        try:
            importlib.import_module(str(name))
        except ImportError as e:
            raise ValueError(
                f"plugins: cannot import {name!r} ({e}); is it on PYTHONPATH?"
            ) from None
        except Exception as e:  # noqa: BLE001 - the user's module failed: named, exit 2
            raise ValueError(f"plugins: importing {name!r} failed: {plugin_error(e)}") from None


def choose(candidates: Sequence[tuple[float, T]]) -> tuple[float, T]:
    """The selection rule, in one place: the candidate with the highest score on the selection
    split (the first one on ties). Never called with report-split scores."""
    if not candidates:
        raise ValueError("nothing to choose from")
    best = candidates[0]
    for c in candidates[1:]:
        if c[0] > best[0]:
            best = c
    return best


# ---------------------------------------------------------------------------------------------
# Inputs shared by the single stages


def _base(cfg: DictConfig, data: dict[str, Any]) -> dict[str, Any]:
    """θ0 of this run: built with ``pipeline.base_seed`` when it is set (one θ0 for every seed),
    in every stage as in ``stage=all`` (battery 18, S4: ``stage=train`` used ``seed``'s θ0)."""
    from hhh_bench.stages.base import run_base

    base_seed = cfg.pipeline.get("base_seed") if "pipeline" in cfg else None
    if base_seed is not None and int(base_seed) != int(cfg.seed):
        cfg = with_values(cfg, {"seed": int(base_seed)})
    return run_base(cfg, data)


def _specialists(cfg: DictConfig, base: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    from hhh_bench.stages.train import run_train

    return {d: run_train(cfg, base, data, dimensions=[d]) for d in to_dict(cfg.data.dimensions)}


def merge_input(trained: Mapping[str, Any]) -> str:
    """The folder a merge reads for a trained model: the LoRA adapter when there is one (its
    exact factors; never weights rounded to the model's dtype), else the full weights."""
    return trained.get("adapter_path") or trained.get("model_path") or trained["path"]


def eval_input(trained: Mapping[str, Any]) -> str:
    """The folder the eval stage loads for a trained model: full weights when written, else
    the adapter (loaded on top of its base)."""
    return trained.get("model_path") or trained.get("adapter_path") or trained["path"]


def _merge_inputs(cfg: DictConfig, data: dict[str, Any]) -> tuple[str, list[str], list[str] | None]:
    """Base and finetuned inputs of a merge: explicit (``merge.base``/``merge.models``) or the
    pipeline's base and specialists (trained first when missing, said on the console)."""
    if cfg.merge.get("models"):
        if not cfg.merge.get("base"):
            _check_models_theta0(cfg, data)
        base = cfg.merge.get("base") or _base(cfg, data)["path"]
        return str(base), [str(m) for m in cfg.merge.models], None
    base = _base(cfg, data)
    dims = list(to_dict(cfg.data.dimensions))
    console.say(f"{cfg.stage}: merging the pipeline's specialists ({', '.join(dims)}); any not "
                "yet trained is trained first (stage=train), or give merge.models=[...]")  # fmt: skip
    specs = _specialists(cfg, base, data)
    return merge_input(base), [merge_input(specs[d]) for d in dims], dims


def _check_merge_models(cfg: DictConfig) -> None:
    """What can be known of ``merge.models`` (and ``merge.base``) before any stage runs: their
    order (:func:`_check_models_order`), one model listed twice (by content), and a given base
    that is not the θ0 they were trained from (:func:`~hhh_bench.stages.merge.check_same_base`)."""
    from hhh_bench.stages.common import model_identity
    from hhh_bench.stages.merge import check_same_base

    _check_models_order(cfg)
    models = [str(m) for m in cfg.merge.models]
    seen: dict[str, int] = {}
    for j, ident in enumerate(model_identity(m) for m in models):
        if ident in seen:
            i = seen[ident]
            raise ValueError(
                f"merge.models[{j}]={models[j]!r} is merge.models[{i}]={models[i]!r} (the same "
                "content): one model listed twice; to weigh a model more, give "
                "merge.params.weights instead"
            )
        seen[ident] = j
    if cfg.merge.get("base"):
        check_same_base(str(cfg.merge.base), models)


def _check_models_order(cfg: DictConfig) -> None:
    """``merge.models`` are matched to ``data.dimensions`` by position (a weight, a Fisher's or
    RegMean's data per model): a specialist whose record says it was trained on another
    dimension than its position's is refused (battery 16, B2: the honest specialist listed
    first had its Fisher computed on the helpful data, without a word)."""
    import json

    from hhh_bench.stages.common import train_record

    dims = list(to_dict(cfg.data.get("dimensions")) or [])
    models = [str(m) for m in cfg.merge.models]
    if len(models) != len(dims):
        return
    for i, (model, dim) in enumerate(zip(models, dims, strict=True)):
        record = train_record(model)
        try:
            trained = json.loads(record.read_text())["payload"]["dimensions"] if record else None
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(trained, list) and len(trained) == 1 and trained[0] != dim:
            raise ValueError(
                f"merge.models[{i}]={model!r} is the {trained[0]} specialist (its key.json), "
                f"but merge.models are matched to data.dimensions={dims} by position, and "
                f"position {i} is {dim!r}: list merge.models in data.dimensions' order (or "
                "reorder data.dimensions)"
            )


def _check_models_theta0(cfg: DictConfig, data: dict[str, Any]) -> None:
    """``merge.models`` without ``merge.base``: the base is this run's θ0. When that θ0 is not
    built yet and a model's record names another θ0 stage output, refuse before training it
    (battery 13, F15: a whole θ0 was trained, then the merge refused), naming the θ0 to give
    as ``merge.base``."""
    import json

    from hhh_bench.core.stagecache import CACHE, NotCached

    with console.silenced():
        CACHE.dry_run = True
        try:
            _base(cfg, data)
            return  # built already: the merge stage's own check compares by content
        except NotCached as e:
            if e.stage != "base":
                return
            ours = e.key
        finally:
            CACHE.dry_run = False
    from hhh_bench.stages.common import recorded_input, train_record

    for i, model in enumerate(cfg.merge.models):
        record = train_record(str(model))
        try:
            key = json.loads(record.read_text()) if record is not None else {}
        except ValueError:
            continue
        if key.get("stage") != "train":
            continue
        theirs = [str(x) for x in key.get("inputs") or [] if Path(str(x)).parent.name == "base"]
        if theirs and all(Path(t).name != ours for t in theirs):
            full = recorded_input(record, theirs[0])  # type: ignore[arg-type]
            give = (f"give merge.base={full}" if full.is_dir() else  # battery 18, F6: moved
                    f"give merge.base=<that θ0's folder> (the model lies outside the root it was "
                    f"trained in: {full} is not there)")  # fmt: skip
            raise ValueError(
                f"merge.models[{i}]={str(model)!r} was trained from the θ0 stage output "
                f"{Path(theirs[0]).parent.name}/{Path(theirs[0]).name}; merge.base is not given, "
                f"so the base would be this run's θ0, which is another one (base/{ours}, not "
                f"built yet): {give} instead of training a θ0 the models were not trained from"
            )


def _merged_model(merged: Mapping[str, Any], method: str, seed: int, params: Any) -> dict:
    return {"path": merged["out_dir"], "key": merged["key"], "kind": "merge", "name": method,
            "method": method, "params": params, "seed": seed}  # fmt: skip


def _merge_eval(cfg: DictConfig, data: dict[str, Any]) -> dict[str, Any]:
    """Merge with ``cfg.merge`` and score the merged model on ``eval.select_split``: the
    objective of a sweep. Never the report split (a search that reads it leaks it)."""
    from hhh_bench.stages.eval import run_eval
    from hhh_bench.stages.merge import run_merge

    split, select_by = cfg.eval.select_split, cfg.eval.select_by
    if not split or split == cfg.eval.report_split:
        raise ValueError(
            f"stage=merge_eval scores on eval.select_split, which is {split!r} (report split: "
            f"{cfg.eval.report_split!r}): a search must not read the split it reports on; use "
            "an eval suite with a separate selection split (eval=toy3h: validation)"
        )
    base, models, names = _merge_inputs(cfg, data)
    merged = run_merge(cfg, base=base, models=models, names=names, data=data)
    model = _merged_model(merged, cfg.merge.method, int(cfg.seed), to_dict(cfg.merge.params))
    res = run_eval(cfg, {"noise_rate": float(cfg.data.noise.flip_rate), **model}, data, split=split)
    if select_by not in res["scores"]:
        raise ValueError(
            f"eval.select_by={select_by!r} is not a score; valid: {sorted(res['scores'])}"
        )
    score = float(res["scores"][select_by])
    console.say(
        f"merge_eval {cfg.merge.method} {to_dict(cfg.merge.params)}: {select_by} on {split} = {score:.4f}"
    )
    return {
        "merge": merged,
        "eval": res,
        "split": split,
        "select_by": select_by,
        "objective": score,
    }


def _diagnose(cfg: DictConfig, data: dict[str, Any]) -> dict[str, Any]:
    """Task-vector diagnostics of the merge stage's inputs with ``merge``'s RESM/TSV-M knobs."""
    from hhh_bench.stages.diagnose import resm_params_for, run_diagnose

    base, models, _ = _merge_inputs(cfg, data)
    res = run_diagnose(
        cfg, base, models, resm_params=resm_params_for(cfg.merge.method, to_dict(cfg.merge.params))
    )
    console.say(res["markdown"], level=console.QUIET)
    console.say(f"diagnostics: {res['path']}", level=console.QUIET)
    return res


def _check_world_words(path: str, data: Mapping[str, Any]) -> None:
    """Say when a model given as ``+eval.model`` has a word-level tokenizer (the toy world's
    kind) without tokens for words of this run's toy world (its ``vocab.txt``): it was built for
    another world and reads those words as unknown tokens (battery 12, F12: scored above this
    world's own θ0 with no word). A warning, as for a stage output trained on other data: the
    scores are computed all the same. Real data (no ``vocab.txt``), a hub id and a subword
    tokenizer (every word has pieces) are not checked."""
    vocab = Path(str(data.get("dir") or "")) / "vocab.txt"
    if not vocab.is_file() or not Path(path).is_dir():
        return
    from hhh_bench.models import load_tokenizer

    tok = load_tokenizer(path)
    backend = getattr(tok, "backend_tokenizer", None)
    if type(getattr(backend, "model", None)).__name__ not in ("WordLevel", "WordPiece"):
        return
    known = tok.get_vocab()
    words = vocab.read_text().split()
    missing = [w for w in words if w not in known]
    if missing:
        console.say(
            f"warning: eval.model={path}: its tokenizer has no token for {len(missing)} of the "
            f"{len(words)} words of this run's toy world (e.g. {missing[:5]}): it was built for "
            "another world (another seed or data.world setting), and reads those words as "
            "unknown tokens here; its scores are not this world's (evaluate it with the "
            "settings of the world it was trained on)",
            level=console.QUIET,
        )


def _eval_one(cfg: DictConfig, data: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the base, or the model given as ``+eval.model=<folder>``, on the report split."""
    from hhh_bench.stages.eval import run_eval

    path = cfg.eval.get("model")
    if path and Path(str(path)).exists():  # a folder by where it is, not as typed
        # (battery 21, B-F6: `+eval.model=model` from two folders: one name and key for two
        # models, the second row shown as "its model recomputed")
        path = os.path.abspath(str(path))
    if path:
        # a merge stage's output is a merge (its card gets the scores); any other model, given
        # by folder or hub id, is filed as what it is: given (battery 9: it was always a merge,
        # a candidate of the answer's merge group)
        held = enclosing_output(str(path))
        kind = "merge" if held is not None and held[0].parent.name == "merge" else "external"
        model = {"path": str(path), "key": f"path:{path}", "kind": kind, "name": str(path)}
        if kind == "merge":  # its method and knobs, as its key records them (battery 16, B1:
            model.update(_merge_recorded(held[0]))  # a merge row without a method, refused)
        _check_world_words(str(path), data)
        worlds = data_keys_of(str(path))
        if worlds and data["key"] not in worlds:  # its scores would be on a world it never saw
            model["trained_on_data"] = sorted(worlds)
            console.say(
                f"warning: eval.model={path} was trained on other data (data stage "
                f"{', '.join(sorted(worlds))}) than this run evaluates it on ({data['key']}: "
                f"seed={cfg.seed}); to score it on its own world, run with "
                "that world's settings (its provenance.json under the data stage)"
            )
    else:
        b = _base(cfg, data)
        model = {"path": b["path"], "key": b["key"], "kind": "base", "name": "base"}
    return run_eval(cfg, {"method": None, "params": {}, **model}, data, split=cfg.eval.report_split)


def _merge_recorded(out: Path) -> dict[str, Any]:
    """``{"method", "params"}`` of a merge stage output, from its ``key.json``; a key that
    records none (damaged, or of another version) is refused naming the folder."""
    import json

    from hhh_bench.core.content import KEY_FILE

    try:
        payload = json.loads((out / KEY_FILE).read_text()).get("payload") or {}
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(
            f"eval.model: the merge output {out} has no readable {KEY_FILE} ({e})"
        ) from None
    method, params = payload.get("method"), payload.get("params")
    if not isinstance(method, str) or not isinstance(params, dict):
        raise ValueError(
            f"eval.model: the merge output {out} records no merge method in its {KEY_FILE}: "
            "rerun its merge (stage=merge), or copy the model folder out to evaluate it as a "
            "given model"
        )
    return {"method": method, "params": params}


# ---------------------------------------------------------------------------------------------
# The whole pipeline


def with_values(cfg: DictConfig, values: Mapping[str, Any]) -> DictConfig:
    """A copy of ``cfg`` with dotted keys set (``{"seed": 1, "train.epochs": 6}``)."""
    new = copy.deepcopy(cfg)
    with open_dict(new):
        for k, v in values.items():
            OmegaConf.update(new, k, v, merge=True, force_add=True)
    return new


def merge_node(method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``conf/merge/<method>.yaml`` with ``params`` applied (a plugin's method without a YAML:
    its registered defaults): the ``merge`` group of one grid point."""
    from hhh_bench.merging import method_defaults

    try:
        node = load_option("merge", method)
    except ValueError:
        node = {"method": method, "params": method_defaults(method), "base": None, "models": None}
    unknown = sorted(set(params) - set(node["params"]))
    if unknown:
        raise ValueError(
            f"pipeline.merge_grid.{method}: unknown parameter(s) {unknown}; valid: {sorted(node['params'])}"
        )
    node["params"] = {**node["params"], **params}
    return node


def set_merge(mcfg: DictConfig, method: str, params: Mapping[str, Any]) -> DictConfig:
    """Replace ``mcfg.merge`` by :func:`merge_node` in place and return ``mcfg`` (a copy the
    caller owns: :func:`merge_config` once per method, then one call per grid point, where a
    copy of the whole config per point was an eighth of a cached rerun)."""
    node = merge_node(method, params)
    with open_dict(mcfg):
        mcfg.merge = OmegaConf.create(node)
    return mcfg


def merge_config(cfg: DictConfig, method: str, params: Mapping[str, Any]) -> DictConfig:
    """A copy of ``cfg`` with ``merge`` replaced by :func:`merge_node` (``cfg`` unchanged)."""
    node = merge_node(method, params)  # checked before the copy
    new = copy.deepcopy(cfg)
    with open_dict(new):
        new.merge = OmegaConf.create(node)
    return new


def grid(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """All combinations of a ``{knob: [values]}`` grid, in a stable order."""
    keys = sorted(spec)
    values = [v if isinstance(v, list | tuple) else [v] for v in (spec[k] for k in keys)]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def _model(trained: Mapping[str, Any], kind: str, name: str, seed: int, **extra: Any) -> dict:
    pairs = sum((trained.get("counts") or {}).values()) or None  # a trained model's data budget
    return {"path": eval_input(trained), "key": trained["key"], "kind": kind, "name": name,
            "method": extra.pop("method", None), "params": extra.pop("params", {}), "seed": seed,
            **({"train_pairs": pairs} if pairs else {}), **extra}  # fmt: skip


def run_seed(cfg: DictConfig, data: dict[str, Any]) -> dict[str, Any]:
    """Everything of one seed: base, specialists, oracle, mixtures, merges; every model evaluated
    on the report split (merges and mixtures first chosen on the selection split)."""
    from hhh_bench.stages.eval import run_eval
    from hhh_bench.stages.train import run_train

    seed = int(cfg.seed)
    pcfg = to_dict(cfg.pipeline)
    noise = float(cfg.data.noise.flip_rate)
    out: dict[str, Any] = {"seed": seed, "models": []}

    facts = run_facts(cfg)  # the same for every row of this seed

    def evaluate(model: dict[str, Any], split: str = cfg.eval.report_split) -> dict[str, Any]:
        res = run_eval(cfg, {"noise_rate": noise, **model}, data, split=split, facts=facts)
        if split == cfg.eval.report_split:
            out["models"].append({"name": model["name"], "kind": model["kind"], **res["scores"]})
        return res

    if cfg.merge.get("models"):  # given specialists (experiment=released_specialists): no training
        base, specialists, dims = _given(cfg)
        with console.job("eval", _seeded(cfg, "base")):
            _evaluate_base(cfg, evaluate, _model(base, "base", "base", seed))
        with console.job("eval", _seeded(cfg, "specialists")):
            for dim, sp in specialists.items():
                evaluate(
                    _model(sp, "specialist", f"{dim} specialist", seed, train_dimensions=[dim])
                )
        _merges(cfg, pcfg, base, specialists, dims, seed, evaluate, data)
        return out
    with _job("base", _seeded(cfg, "")):
        base = _base(cfg, data)  # θ0 of pipeline.base_seed when set
        _evaluate_base(cfg, evaluate, _model(base, "base", "base", seed))
    with _job("train", _seeded(cfg, "specialists")):
        specialists = _specialists(cfg, base, data)
        for dim, sp in specialists.items():
            evaluate(_model(sp, "specialist", f"{dim} specialist", seed, train_dimensions=[dim]))
    dims = to_dict(cfg.data.dimensions)
    oracle = pcfg.get("oracle") or {}
    if oracle.get("enabled", False):
        ocfg = with_values(cfg, {f"train.{k}": v for k, v in (oracle.get("train") or {}).items()})
        mix = {**load_mix(cfg, oracle.get("mix", "uniform")), "budget": oracle.get("budget")}
        with _job("train", _seeded(cfg, "oracle")):
            o = run_train(ocfg, base, data, dimensions=dims, mix=mix, name="oracle")
            evaluate(
                _model(o, "oracle", "oracle", seed, train_dimensions=dims, mix_strategy=mix["name"])
            )
    _mixtures(cfg, pcfg, base, data, dims, seed, evaluate)
    _merges(cfg, pcfg, base, specialists, dims, seed, evaluate, data)
    return out


def _evaluate_base(cfg: DictConfig, evaluate: Any, model: dict[str, Any]) -> None:
    """The base on the report split, and on the selection split too: what deltas and win rates
    of the configurations compared there are measured against."""
    evaluate(model)
    if cfg.eval.select_split and cfg.eval.select_split != cfg.eval.report_split:
        evaluate(model, split=cfg.eval.select_split)


def _given(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """``merge.base`` and ``merge.models`` as the run's base and specialists, the models named
    after ``data.dimensions`` in order (a model of another count: by position)."""
    models = [str(m) for m in cfg.merge.models]
    names = _given_names(cfg)
    base_path = str(cfg.merge.base) if cfg.merge.get("base") else str(cfg.model.path)
    console.say(f"stage=all on the given specialists {models} (merge.models): nothing is trained")

    def entry(path: str) -> dict[str, Any]:
        adapter = (Path(path) / "adapter_config.json").is_file()
        ident = model_identity(path)
        return {"path": path, "key": ident, "content": ident,
                "model_path": None if adapter else path,
                "adapter_path": path if adapter else None}  # fmt: skip

    return entry(base_path), {n: entry(m) for n, m in zip(names, models, strict=True)}, names


def _given_names(cfg: DictConfig) -> list[str]:
    """The given specialists' names: ``data.dimensions`` in order (a model of another count: by
    position)."""
    n, dims = len(cfg.merge.models), list(to_dict(cfg.data.dimensions))
    return dims if len(dims) == n else [f"model {i}" for i in range(n)]


def merge_weights(w: Sequence[float]) -> list[float]:
    """An emphasis as a merge's per-specialist weights: scaled to sum to the number of
    specialists, so λ keeps its meaning (equal emphasis = weights of 1)."""
    return [round(x * len(w) / sum(w), 6) for x in w]


def mix_shares(w: Sequence[float], dims: Sequence[str]) -> dict[str, float]:
    """An emphasis as a mixture's shares of the final mixture (summing to 1; the budget kept)."""
    return {d: round(x / sum(w), 6) for d, x in zip(dims, w, strict=True)}


def _select(cfg: DictConfig, label: str, points: Sequence[dict[str, Any]], build: Any,
            evaluate: Any, more: Any = None) -> None:  # fmt: skip
    """Build every configuration of ``points`` (``build(params)`` → a model dict), score each on
    the selection split, and report the best (:func:`choose`) on the report split, the choice
    (configuration, split, score, number of configurations) in its row. ``more(best_params)``:
    further configurations tried once the first round is chosen (the emphases around the chosen
    knobs). A configuration alone (an untuned mixture) is scored there too: every family's
    choice, and the answer's choice among the families, is made on the selection split. A suite
    without a selection split reports every configuration."""
    select_split, select_by = cfg.eval.select_split, cfg.eval.select_by
    report_all = bool(cfg.pipeline.get("report_every_grid_point", False))
    scored: list[tuple[float, dict[str, Any]]] = []

    def score(params: dict[str, Any], n_points: int) -> None:
        console.detail(console.params_text(params))
        model = {**build(params), "grid_params": params}
        if report_all and n_points > 1:
            name = f"{label} (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"
            evaluate({**model, "name": name, "family": f"{model['kind'].title()}: {name}"})
        if not select_split:  # a suite without a selection split: every point reported
            evaluate({**model, "name": f"{label} {params}" if params else label})
            return
        res = evaluate(model, split=select_split)
        scored.append((float(res["scores"][select_by]), model))
        log.info("%s %s: %s on %s = %.3f", label, params, select_by, select_split, scored[-1][0])

    first = list(points)
    extra = []
    for params in first:
        score(params, len(first))
    if scored and more is not None:
        extra = more(choose(scored)[1]["grid_params"])
        for params in extra:
            score(params, len(first) + len(extra))
    if scored:
        best, chosen = choose(scored)
        if len(scored) > 1:
            what = console.params_text(chosen["grid_params"]) or "the configured settings"
            console.note(f"{len(scored)} configurations, chosen {what} ({select_by} {best:.3f} "
                         f"on {select_split})")  # fmt: skip
        evaluate({**chosen, "selected_on": select_split, "selection_score": best,
                  "selected_by": select_by, "n_configs": len(scored)})  # fmt: skip


def _merges(cfg, pcfg, base, specialists, dims, seed, evaluate, data) -> None:  # noqa: ANN001
    """Every method of ``pipeline.merge_grid`` over its grid, then the chosen point with every
    emphasis of ``pipeline.tuning`` (task vectors weighted :func:`merge_weights`), chosen on
    the selection split (:func:`_select`)."""
    from hhh_bench.stages.merge import run_merge

    finetuned = [merge_input(specialists[d]) for d in dims]
    emph = emphases(pcfg, dims)
    for method, spec in (pcfg.get("merge_grid") or {}).items():
        if spec is None:  # `pipeline.merge_grid.<method>=null` drops a method
            continue

        own = merge_config(cfg, method, {})  # this method's copy; each point sets its merge

        def build(params: dict[str, Any], method: str = method, own: DictConfig = own) -> dict:
            mcfg = set_merge(own, method, params)
            merged = run_merge(mcfg, base=merge_input(base), models=finetuned, names=list(dims),
                               data=data)  # fmt: skip
            return _merged_model(merged, method, seed, to_dict(mcfg.merge.params))

        def more(best: dict[str, Any], spec: Any = spec) -> list[dict[str, Any]]:
            if "weights" in spec:  # the grid searches weights itself
                return []
            return [{**best, "weights": merge_weights(w)} for w in emph]

        with _job("merge", _seeded(cfg, method)):
            _select(cfg, method, grid(spec), build, evaluate, more)


def _mixtures(cfg, pcfg, base, data, dims, seed, evaluate) -> None:  # noqa: ANN001
    """Every strategy of ``pipeline.mixtures``, scored on the selection split and reported
    (:func:`_select`; one configuration or several); one named in ``pipeline.tuning.mixtures``
    (it has a ``shares`` knob) is also trained with every emphasis's shares (:func:`mix_shares`)
    and the best of them on the selection split reported."""
    from hhh_bench.stages.train import run_train

    tuned = set((pcfg.get("tuning") or {}).get("mixtures") or [])
    emph = emphases(pcfg, dims)
    for entry in pcfg.get("mixtures") or []:
        name = entry["name"] if isinstance(entry, Mapping) else entry
        mix = dict(entry) if isinstance(entry, Mapping) else load_mix(cfg, name)

        def build(params: dict[str, Any], mix: dict = mix, name: str = name) -> dict[str, Any]:
            m = run_train(cfg, base, data, dimensions=dims, mix={**mix, **params})
            return _model(m, "mixture", f"mix: {name}", seed, mix_strategy=name,
                          train_dimensions=dims, params=params)  # fmt: skip

        shares = [{"shares": mix_shares(w, dims)} for w in emph] if name in tuned else []
        with _job("train", _seeded(cfg, f"mix {name}")):  # one configuration or several
            _select(cfg, f"mix: {name}", [{}], build, evaluate, lambda _best, s=shares: s)


def load_mix(cfg: DictConfig, name: str) -> dict[str, Any]:
    """The mix config ``name``: ``cfg.mix`` when it has that name, else its option file."""
    if cfg.mix.get("name") == name:
        return to_dict(cfg.mix)
    try:
        return load_option("mix", name)
    except ValueError as e:
        raise ValueError(f"unknown mixing strategy {name!r}: {e}") from None


def run_all(
    cfg: DictConfig,
    data: dict[str, Any],
    t0: float | None = None,
    *,
    job: str | None = None,
    seeds: Sequence[tuple[DictConfig, bool]] | None = None,
) -> dict[str, Any]:
    """``stage=all``: every seed of ``seeds`` through :func:`run_seed`, then the report (of
    multirun job ``job``, if one: :func:`run`). ``seeds``: :func:`_seed_cfgs` (computed here
    when not given)."""
    from hhh_bench.stages.data import run_data
    from hhh_bench.stages.report import run_report

    _freeze_libraries()
    seeds = list(seeds if seeds is not None else _seed_cfgs(cfg))
    if int(cfg.get("workers") or 1) > 1 and len(seeds) > 1:  # computed in parallel, then reused
        # here; a seed whose θ0 is built already was run before (a rerun, a resumed or extended
        # run): finished here, where a cached pass costs least
        fresh = [s for s in seeds if not _theta0_built(*s, data)]
        workers = min(int(cfg.get("workers") or 1), len(fresh))
        if workers > 1:
            run_in_workers(cfg, fresh, data, workers)
    per_seed = []
    for scfg, same in seeds:
        if not same:
            with console.job("data", _seeded(scfg, "")):
                data_s = run_data(scfg)
        per_seed.append(run_seed(scfg, data if same else data_s))
    if t0 is not None:
        _summary(t0)
    _say_rows_of_other_runs(cfg)
    return {"seeds": per_seed, "report": run_report(cfg, job=job)}


def _theta0_built(scfg: DictConfig, same: bool, data: dict[str, Any] | None) -> bool:
    """Whether seed ``scfg``'s θ0 (and its data) are stage outputs already (looked up, never
    computed: nothing is printed or written)."""
    from hhh_bench.core.stagecache import NotCached
    from hhh_bench.stages.data import run_data

    with console.silenced():
        CACHE.dry_run = True
        try:
            _base(scfg, data if same and data is not None else run_data(scfg))
            return True
        except NotCached:
            return False
        finally:
            CACHE.dry_run = False


def run_in_workers(
    cfg: DictConfig,
    seeds: Sequence[tuple[DictConfig, bool]],
    data: dict[str, Any] | None,
    workers: int,
) -> None:
    """Compute the seeds' stages in ``workers`` processes at once (``workers=N``; each a
    :func:`seed_worker` with its share of the seeds, round robin, one root). No number depends
    on it: every stage output is keyed by content, a seed's outputs do not depend on what ran
    before it in its process, and concurrent writers of one root are safe (docs/scale.md). The
    caller then runs the seeds as usual, every stage reused. Each worker says on the console
    when a seed is done, and keeps a log file of its own (``<root>/logs/``); the first worker
    that fails stops the others, and its error is raised here naming its seed. :func:`run_all`
    gives it the seeds whose θ0 is not built yet (a rerun's seeds are reused faster here)."""
    import pickle
    import subprocess
    import sys
    import tempfile

    threads = cfg.get("threads")
    if threads is None:  # torch's default is one thread per core, in each of the workers
        threads = max(1, (os.cpu_count() or 1) // workers)
    shares = [list(seeds)[k::workers] for k in range(workers)]
    t0 = time.time()
    console.say(f"{len(seeds)} seed(s) in {workers} worker processes ({threads} torch thread(s) "
                "each); then every stage is reused here, for the report")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hhh-bench-workers-") as tmp:
        procs = []
        try:
            for k, share in enumerate(shares, 1):
                job = Path(tmp) / f"worker{k}.pkl"
                job.write_bytes(pickle.dumps({
                    "worker": k, "seeds": share, "data": data, "threads": threads,
                    "root": str(cfg.root), "on_mismatch": CACHE.on_mismatch,
                    "plugins": list(cfg.get("plugins") or []), "error": str(job) + ".error",
                }))  # fmt: skip
                code = "import sys; from hhh_bench.pipeline import seed_worker; "
                code += "sys.exit(seed_worker(sys.argv[1]))"
                out, err = console.subprocess_streams()  # its lines on the console
                procs.append(
                    subprocess.Popen([sys.executable, "-c", code, str(job)], stdout=out, stderr=err)
                )
            failed = _wait_workers(procs)
        finally:
            for proc in procs:  # Ctrl-C, or another worker's error: none outlives the run
                if proc.poll() is None:
                    proc.terminate()
                proc.wait()
        if failed is not None:
            error = Path(tmp) / f"worker{failed + 1}.pkl.error"
            text = error.read_text() if error.is_file() else ""
            raise ValueError(text or f"worker {failed + 1} stopped (status "
                             f"{procs[failed].returncode}); its log file is in {cfg.root}/logs")  # fmt: skip
    console.say(f"workers done in {console.clock(time.time() - t0)}: what they computed is "
                "counted as reused below")  # fmt: skip


def _wait_workers(procs: Sequence[Any]) -> int | None:
    """Wait for every worker; the index of the first that failed (the others then stop)."""
    while True:
        codes = [p.poll() for p in procs]
        bad = [i for i, c in enumerate(codes) if c not in (None, 0)]
        if bad:
            return bad[0]
        if all(c == 0 for c in codes):
            return None
        time.sleep(0.5)


def seed_worker(job_file: str) -> int:
    """One worker of :func:`run_in_workers`: its seeds' stages (data when the seed's own, then
    :func:`run_seed`), quiet on the console but for one line per seed done; an error goes to
    the job's ``.error`` file (the parent raises it), Ctrl-C ends it quietly (status 130)."""
    import logging
    import pickle

    job = pickle.loads(Path(job_file).read_bytes())
    from hhh_bench.stages.data import run_data

    k, root = job["worker"], Path(job["root"])
    log_path = root / "logs" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}-worker{k}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    seed = None
    try:
        set_threads(job["threads"])
        load_plugins(job["plugins"])
        with console.session(verbosity=console.QUIET, progress="never", root=root):
            CACHE.reset()
            CACHE.asked, CACHE.upstream, CACHE.on_mismatch = "all", frozenset(), job["on_mismatch"]
            _freeze_libraries()
            for scfg, same in job["seeds"]:
                seed, t0 = int(scfg.seed), time.time()
                run_seed(scfg, job["data"] if same else run_data(scfg))
                console.say(f"worker {k}: seed {seed} done in {console.clock(time.time() - t0)}",
                            level=console.QUIET)  # fmt: skip
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - said by the parent, in one line; the log keeps it
        logging.getLogger("hhh_bench").error("worker %s stopped", k, exc_info=True)
        where = f"seed {seed} (worker {k}; log {log_path})" if seed is not None else f"worker {k}"
        Path(job["error"]).write_text(f"{where}: {e}")
        return 1
    return 0


def _freeze_libraries() -> None:
    """Collect garbage once and freeze what is alive (``gc.freeze``) as the run starts: the
    modules, classes and functions loaded so far live as long as the process. accelerate runs a
    full ``gc.collect()`` as every training run starts (``free_memory``), and Python's own full
    collections walk every object too: 0.24 s each over the libraries' ~475k objects on this
    2-core CPU, 13 times per toy seed from the trainers alone. Frozen objects are skipped. The
    libraries the stages train and evaluate with (trl, lm-eval) are not imported here: the
    first stage that computes imports them, and the next job's freeze (:func:`_job`) takes
    them in, so a run whose every stage is reused never loads them (issue 29: ~6 s of a cached
    rerun). Memory management only: no number changes."""
    import gc

    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def _job(stage: str, name: str) -> Iterator[Any]:
    """A job of ``stage=all`` (:func:`console.job`), started with what is alive between jobs
    frozen out of the garbage collector: garbage collected first, then ``gc.freeze()`` (see
    :func:`_freeze_libraries`). After a freeze Python's full collections come often (its
    trigger compares new objects with the unfrozen old ones, now few) and each walks every
    unfrozen object, so a freeze at the run's start alone leaves them walking all that the
    seed's jobs keep (the memos of tokenizations and renderings, the results): 46 full
    collections, 6.4 s of a toy seed. Frozen at each job's start, they walk the job's own
    objects. Memory management only: no number changes."""
    import gc

    gc.collect()
    gc.freeze()
    with console.job(stage, name) as j:
        yield j


def _say_rows_of_other_runs(cfg: DictConfig) -> None:
    """Say which rows of the store this ``stage=all`` did not make (an earlier run's mixtures,
    grid values or seeds that this config no longer lists): the report shows every stored row,
    so its groups and choices count them too."""
    from hhh_bench.stages.eval import ROWS_OF_THIS_RUN, results_path
    from hhh_bench.tracking.store import StoreError, read_results

    try:
        rows = read_results(results_path(cfg), skip_invalid=True)
    except (StoreError, OSError):
        return  # the report names the problem
    other = [r for r in rows if str(r.get("row_key")) not in ROWS_OF_THIS_RUN]
    if not other:
        return
    names = sorted({f"{r.get('name')} (seed {r.get('seed')})" for r in other})
    console.say(
        f"note: {len(other)} row(s) of {results_path(cfg)} come from runs with other settings "
        f"than this one (e.g. {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}): the "
        "report shows and chooses among every stored row; give this configuration a root of "
        "its own to report it alone"
    )


def _seed_cfgs(cfg: DictConfig) -> list[tuple[DictConfig, bool]]:
    """Each seed of ``seeds``: its config, and whether its data is ``cfg``'s (a data config that
    follows the seed, the toy world's default ``world.seed: ${seed}``, draws each seed's own
    world)."""
    from hhh_bench.stages.data import data_payload

    out = []
    for s in [int(s) for s in (cfg.get("seeds") or [cfg.seed])]:
        scfg = with_values(cfg, {"seed": s})
        out.append((scfg, data_payload(scfg) == data_payload(cfg)))
    return out


def _own_data_used(seeds: Sequence[tuple[DictConfig, bool]]) -> bool:
    """Whether the data of the run's ``seed`` is used: always without ``seeds`` (a single
    stage), else when a seed of ``seeds`` shares it (a world that does not follow the seed, or
    ``seed`` listed). ``seeds=[101,102]`` of a world that follows the seed never builds seed
    0's world."""
    return not seeds or any(same for _, same in seeds)


def _seeded(cfg: DictConfig, name: str) -> str:
    """A job's name with its seed when the run has several (``helpful specialist, seed 1``)."""
    if len(cfg.get("seeds") or []) < 2:
        return name
    return ", ".join(x for x in (name, f"seed {cfg.seed}") if x)


def plan_all(cfg: DictConfig, seeds: Sequence[tuple[DictConfig, bool]]) -> list[tuple[str, str]]:
    """The console's jobs of ``stage=all`` (``(stage, name)``), the ``N`` of its ``[k/N]`` lines:
    the data, then for every seed its data (when its own), base, specialists, oracle, mixtures
    and merge methods (:func:`run_seed`, one job each), then the report."""
    pcfg = to_dict(cfg.pipeline)
    methods = [m for m, spec in (pcfg.get("merge_grid") or {}).items() if spec is not None]
    jobs = [("data", _seeded(cfg, ""))] if _own_data_used(seeds) else []
    for scfg, same in seeds:
        if not same:
            jobs.append(("data", _seeded(scfg, "")))
        if cfg.merge.get("models"):
            jobs += [("eval", _seeded(scfg, "base")), ("eval", _seeded(scfg, "specialists"))]
        else:
            jobs += [("base", _seeded(scfg, "")), ("train", _seeded(scfg, "specialists"))]
            if (pcfg.get("oracle") or {}).get("enabled", False):
                jobs.append(("train", _seeded(scfg, "oracle")))
            for entry in pcfg.get("mixtures") or []:
                name = entry["name"] if isinstance(entry, Mapping) else entry
                jobs.append(("train", _seeded(scfg, f"mix {name}")))
        jobs += [("merge", _seeded(scfg, m)) for m in methods]
    return [*jobs, ("report", "")]
