"""The pipeline: stage selection and the order of the stages.

``run(cfg)`` is what ``hhh-bench`` calls after Hydra composed ``cfg``; it is importable and
testable without Hydra (compose a config with ``hydra.compose`` or build one with OmegaConf).

``stage=all`` runs, for every seed in ``seeds``: data → base → one specialist per dimension →
the oracle → every data-mixture baseline → every merge method over its grid (chosen on the
validation split) → evaluation of every model on the test split → the report. Every stage is
cached by content, so a re-run or a sweep only computes what is new, and a killed run resumes.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from hhh_bench.stages.common import CACHE, to_dict

log = logging.getLogger("hhh_bench")

STAGES = ("data", "base", "train", "merge", "merge_eval", "eval", "report", "diagnose", "all")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the selected ``cfg.stage`` (and the stages it needs, from the cache where done).

    ``stage=merge_eval`` also puts its selection score under ``"objective"`` (a float), the value
    the ``hhh-bench`` task function returns to a Hydra sweeper (Optuna: experiment=merge_optuna).
    """
    stage = cfg.stage
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {list(STAGES)}")
    t0 = time.time()
    set_threads(cfg.get("threads"))
    load_plugins(cfg.get("plugins") or [])
    from hhh_bench.stages.data import run_data

    out: dict[str, Any] = {"data": run_data(cfg)}
    if stage == "base":
        from hhh_bench.stages.base import run_base

        out["base"] = run_base(cfg, out["data"])
    elif stage == "train":
        out["train"] = _run_train_stage(cfg, out["data"])
    elif stage == "merge":
        out["merge"] = _run_merge_stage(cfg, out["data"])
    elif stage == "merge_eval":
        out["merge_eval"] = _run_merge_eval_stage(cfg, out["data"])
        out["objective"] = out["merge_eval"]["objective"]
    elif stage == "eval":
        out["eval"] = _run_eval_stage(cfg, out["data"])
    elif stage == "report":
        from hhh_bench.stages.report import run_report

        out["report"] = run_report(cfg)
    elif stage == "diagnose":
        out["diagnose"] = _run_diagnose_stage(cfg, out["data"])
    elif stage == "all":
        out.update(run_all(cfg, out["data"]))
    msg = f"hhh-bench: {CACHE.summary()} in {time.time() - t0:.0f} s"
    log.info(msg)
    print(msg)
    return out


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op CPU threads (None: leave torch's default, one per core)."""
    if threads is None:
        return
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1 or null, got {threads}")
    import torch

    torch.set_num_threads(int(threads))


def load_plugins(modules: list[str]) -> None:
    """Import user modules (``plugins=[my_pkg.my_methods]``) so their registrations run."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(str(name))
        except ImportError as e:
            raise ValueError(
                f"plugins: cannot import {name!r} ({e}); is it on PYTHONPATH?"
            ) from None


# ---------------------------------------------------------------------------------------------
# Single stages (each pulls the stages it needs from the cache, computing what is missing)
# ---------------------------------------------------------------------------------------------


def _base(cfg: DictConfig, data: dict[str, Any]) -> dict[str, Any]:
    from hhh_bench.stages.base import run_base

    return run_base(cfg, data)


def _run_train_stage(cfg: DictConfig, data: dict[str, Any]) -> dict[str, Any]:
    from hhh_bench.stages.train import run_train

    return run_train(cfg, _base(cfg, data), data)


def _specialists(cfg: DictConfig, base: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    from hhh_bench.stages.train import run_train

    return {d: run_train(cfg, base, data, dimensions=[d]) for d in to_dict(cfg.data.dimensions)}


def _weights_path(trained: Mapping[str, Any]) -> str:
    """The folder a merge reads for a trained model: full weights, or the LoRA adapter."""
    return trained.get("model_path") or trained.get("adapter_path") or trained["path"]


def _merge_inputs(cfg: DictConfig, data: dict[str, Any]) -> tuple[dict[str, Any], list[str], dict]:
    """Base and finetuned inputs of a merge: explicit (``merge.base``/``merge.models``) or the
    pipeline's base and specialists (trained if missing)."""
    if cfg.merge.get("models"):
        base_path = cfg.merge.get("base") or _base(cfg, data)["path"]
        base = {"path": str(base_path), "key": f"path:{base_path}"}
        return base, [str(m) for m in cfg.merge.models], {}
    base = _base(cfg, data)
    specs = _specialists(cfg, base, data)
    return base, [_weights_path(s) for s in specs.values()], specs


def _run_merge_stage(cfg: DictConfig, data: dict[str, Any]) -> dict[str, Any]:
    from hhh_bench.stages.merge import run_merge

    base, models, _ = _merge_inputs(cfg, data)
    return run_merge(cfg, base=base["path"], models=models)


def _run_merge_eval_stage(cfg: DictConfig, data: dict[str, Any]) -> dict[str, Any]:
    """Merge with ``cfg.merge`` (inputs as ``stage=merge``) and evaluate the merged model on
    ``eval.select_split``; its ``eval.select_by`` score is the objective of a sweep. Never the
    report split: a search that reads the test split would leak it into the choice."""
    from hhh_bench.stages.eval import run_eval
    from hhh_bench.stages.merge import run_merge

    split = cfg.eval.select_split
    if not split or split == cfg.eval.report_split:
        raise ValueError(
            f"stage=merge_eval scores on eval.select_split, which is {split!r} (report split: "
            f"{cfg.eval.report_split!r}): a search must not read the split it reports on; use "
            "an eval suite with a separate selection split (eval=toy3h: validation)"
        )
    select_by = cfg.eval.get("select_by", "average")
    base, models, _ = _merge_inputs(cfg, data)
    merged = run_merge(cfg, base=base["path"], models=models)
    method = cfg.merge.method
    model = _model(
        {"path": merged["out_dir"], "key": merged["key"]},
        "merge",
        method,
        int(cfg.seed),
        method=method,
        params=to_dict(cfg.merge.params),
    )
    noise = float(cfg.data.noise.flip_rate) if "noise" in cfg.data else 0.0
    res = run_eval(cfg, {"noise_rate": noise, **model}, data, split=split)
    if select_by not in res["scores"]:
        raise ValueError(
            f"eval.select_by={select_by!r} is not a score of the {split} evaluation; "
            f"valid: {sorted(res['scores'])}"
        )
    score = float(res["scores"][select_by])
    msg = f"merge_eval {method} {to_dict(cfg.merge.params)}: {select_by} on {split} = {score:.4f}"
    log.info(msg)
    print(msg)
    return {
        "merge": merged,
        "eval": res,
        "split": split,
        "select_by": select_by,
        "objective": score,
    }


def _run_diagnose_stage(cfg: DictConfig, data: dict[str, Any]) -> dict[str, Any]:
    """Task-vector diagnostics of the merge stage's inputs (``merge.base``/``merge.models`` or
    the pipeline's base and specialists), with ``merge``'s RESM/TSV-M knobs; cached under
    ``<root>/diagnose/<key>/`` and summarised in ``<root>/diagnostics.jsonl``."""
    from hhh_bench.stages.diagnose import resm_params_for, run_diagnose

    base, models, _ = _merge_inputs(cfg, data)
    res = run_diagnose(
        cfg,
        base["path"],
        models,
        resm_params=resm_params_for(cfg.merge.method, to_dict(cfg.merge.params)),
    )
    print(res["markdown"])
    print(f"diagnostics: {res['path']}")
    return res


def _run_eval_stage(cfg: DictConfig, data: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the base (the model to evaluate can be given as ``+eval.model=<folder>``)."""
    from hhh_bench.stages.eval import run_eval

    path = cfg.eval.get("model")
    if path:
        model = {"path": str(path), "key": f"path:{path}", "kind": "merge", "name": str(path)}
    else:
        b = _base(cfg, data)
        model = {"path": b["path"], "key": b["key"], "kind": "base", "name": "base"}
    return run_eval(cfg, {"method": None, "params": {}, **model}, data, split=cfg.eval.report_split)


# ---------------------------------------------------------------------------------------------
# The whole pipeline
# ---------------------------------------------------------------------------------------------


def with_values(cfg: DictConfig, values: Mapping[str, Any]) -> DictConfig:
    """A copy of ``cfg`` with dotted keys set (``{"seed": 1, "train.epochs": 6}``)."""
    new = copy.deepcopy(cfg)
    with open_dict(new):
        for k, v in values.items():
            OmegaConf.update(new, k, v, merge=True, force_add=True)
    return new


def merge_config(cfg: DictConfig, method: str, params: Mapping[str, Any]) -> DictConfig:
    """``cfg`` with ``merge`` replaced by ``conf/merge/<method>.yaml`` and ``params`` applied."""
    from hhh_bench.merging import method_defaults
    from hhh_bench.paths import conf_dir

    path = conf_dir() / "merge" / f"{method}.yaml"
    if path.is_file():
        merge_node = OmegaConf.load(path)
    else:  # a method registered by a plugin: its registered defaults
        defaults = {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in method_defaults(method).items()
        }
        merge_node = OmegaConf.create(
            {"method": method, "params": defaults, "base": None, "models": None}
        )
    new = copy.deepcopy(cfg)
    with open_dict(new):
        new.merge = merge_node
        for k, v in params.items():
            if k not in new.merge.params:
                raise ValueError(
                    f"pipeline.merge_grid.{method}: unknown parameter {k!r}; "
                    f"valid: {sorted(new.merge.params)}"
                )
            new.merge.params[k] = v
    return new


def grid(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """All combinations of a ``{knob: [values]}`` grid, in a stable order."""
    keys = sorted(spec)
    values = [v if isinstance(v, list | tuple) else [v] for v in (spec[k] for k in keys)]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def _model(trained: Mapping[str, Any], kind: str, name: str, seed: int, **extra: Any) -> dict:
    return {
        "path": _weights_path(trained) if kind != "merge" else trained["path"],
        "key": trained["key"],
        "kind": kind,
        "name": name,
        "method": extra.pop("method", None),
        "params": extra.pop("params", {}),
        "seed": seed,
        **extra,
    }


def run_seed(cfg: DictConfig, data: dict[str, Any]) -> dict[str, Any]:
    """Everything of one seed: base, specialists, oracle, mixtures, merges; every model evaluated
    on the report split (merges first chosen on the selection split)."""
    from hhh_bench.stages.eval import run_eval
    from hhh_bench.stages.merge import run_merge
    from hhh_bench.stages.train import run_train

    seed = int(cfg.seed)
    pcfg = to_dict(cfg.pipeline)
    report_split = cfg.eval.report_split
    select_split = cfg.eval.select_split
    select_by = cfg.eval.get("select_by", "average")
    noise = float(cfg.data.noise.flip_rate) if "noise" in cfg.data else 0.0
    out: dict[str, Any] = {"seed": seed, "models": []}

    def evaluate(model: dict[str, Any], split: str = report_split) -> dict[str, Any]:
        res = run_eval(cfg, {"noise_rate": noise, **model}, data, split=split)
        if split == report_split:
            out["models"].append({"name": model["name"], "kind": model["kind"], **res["scores"]})
        return res

    base_seed = pcfg.get("base_seed")
    base = _base(cfg if base_seed is None else with_values(cfg, {"seed": int(base_seed)}), data)
    evaluate(_model(base, "base", "base", seed))
    specialists = _specialists(cfg, base, data)
    for dim, sp in specialists.items():
        evaluate(_model(sp, "specialist", f"{dim} specialist", seed, train_dimensions=[dim]))

    dims = to_dict(cfg.data.dimensions)
    oracle = pcfg.get("oracle") or {}
    if oracle.get("enabled", False):
        ocfg = with_values(cfg, {f"train.{k}": v for k, v in (oracle.get("train") or {}).items()})
        mix = {**_mix_config(cfg, oracle.get("mix", "uniform")), "budget": oracle.get("budget")}
        o = run_train(ocfg, base, data, dimensions=dims, mix=mix, name="oracle")
        evaluate(
            _model(o, "oracle", "oracle", seed, train_dimensions=dims, mix_strategy=mix["name"])
        )

    for entry in pcfg.get("mixtures") or []:
        # a name (conf/mix/<name>.yaml) or a mapping {name: <strategy>, budget: ..., <params>}
        name = entry["name"] if isinstance(entry, Mapping) else entry
        m = run_train(cfg, base, data, dimensions=dims, mix=entry)
        evaluate(
            _model(m, "mixture", f"mix: {name}", seed, mix_strategy=name, train_dimensions=dims)
        )

    finetuned = [_weights_path(specialists[d]) for d in dims]
    for method, spec in (pcfg.get("merge_grid") or {}).items():
        if spec is None:  # `pipeline.merge_grid.<method>=null` drops a method of the default grid
            continue
        best: tuple[float, dict[str, Any]] | None = None
        points = grid(spec)
        for params in points:
            mcfg = merge_config(cfg, method, params)
            merged = run_merge(mcfg, base=_weights_path(base), models=finetuned)
            full_params = to_dict(mcfg.merge.params)
            model = _model(
                {"path": merged["out_dir"], "key": merged["key"]},
                "merge",
                method,
                seed,
                method=method,
                params=full_params,
                grid_params=params,
            )
            res = evaluate(model, split=select_split)
            score = float(res["scores"][select_by])
            if pcfg.get("report_every_grid_point", False) and len(points) > 1:
                # ablations and sweeps: every configuration gets its own row on the report split
                label = f"{method} (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"
                evaluate({**model, "name": label, "family": f"Merge: {label}"})
            log.info("merge %s %s: %s on %s = %.3f", method, params, select_by, select_split, score)
            if best is None or score > best[0]:
                best = (score, model)
        if best is not None:
            chosen = {**best[1], "selected_on": select_split, "selection_score": best[0]}
            evaluate(chosen)
    return out


def _mix_config(cfg: DictConfig, name: str) -> dict[str, Any]:
    from hhh_bench.paths import conf_dir

    if cfg.mix.get("name") == name:
        return to_dict(cfg.mix)
    path = conf_dir() / "mix" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown mixing strategy {name!r} (no {path})")
    return to_dict(OmegaConf.load(path))


def run_all(cfg: DictConfig, data: dict[str, Any]) -> dict[str, Any]:
    """``stage=all``: every seed of ``seeds`` through :func:`run_seed`, then the report."""
    from hhh_bench.stages.report import run_report

    seeds = [int(s) for s in (cfg.get("seeds") or [cfg.seed])]
    per_seed = [run_seed(with_values(cfg, {"seed": s}), data) for s in seeds]
    report = run_report(cfg)
    return {"seeds": per_seed, "report": report}
