"""The merge stage: merge the specialists (or explicit models) into θ0 with ``cfg.merge``.

Output, ``<root>/merge/<key>/`` (``key``: method, knobs, the inputs' content, output dtype and
vocabulary policy): ``model/`` (the merged HF folder: weights, config, tokenizer, model card,
``merge_info.json`` and, with ``merge_engine.diagnostics``, ``diagnostics.json``),
``merge_result.json`` and ``provenance.json``. The task vectors are diagnosed first (cached by
the inputs: a sweep over ``scaling`` computes them once; bad inputs fail there with the engine's
errors).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hhh_bench.core import console
from hhh_bench.core.config import MergeConfig, MergeEngineConfig
from hhh_bench.core.content import enclosing_output
from hhh_bench.stages.common import (
    CACHE,
    ENGINE_CODE,
    cached_stage,
    code_identity,
    group,
    log,
    model_identity,
    recorded_input,
    to_dict,
    train_record,
)

METHOD_CODE = ("hhh_bench.merging.methods", "hhh_bench.merging.statsfile")
"""Modules whose functions a method module may use beyond the engine's (:data:`ENGINE_CODE`):
other methods' and the statistics reader of Fisher merging and RegMean."""


def method_modules(method: str) -> list[Any]:
    """The modules of a merge method: its class's (a plugin's included) and its bases', and the
    hhh-bench merge modules whose functions or classes they use (DARE-TIES: TIES's)."""
    import inspect
    import sys

    from hhh_bench.merging import get_method

    mods = []
    own = type(get_method(method)).__module__.split(".", 1)[0]
    for cls in inspect.getmro(type(get_method(method))):
        mod = sys.modules.get(cls.__module__)
        if mod is None or mod.__name__ == "builtins" or mod in mods:
            continue
        if (
            not mod.__name__.startswith("hhh_bench")
            and mod.__name__.split(".", 1)[0] != own
            and "site-packages" in str(mod.__file__)
        ):
            continue  # a library's base class; an installed plugin's own module is kept
        mods.append(mod)
        for v in list(vars(mod).values()):
            used = sys.modules.get(getattr(v, "__module__", "") or "")
            if used is not None and used not in mods and used.__name__.startswith(METHOD_CODE):
                mods.append(used)
    return mods


def merge_code(method: str) -> dict[str, Any]:
    """The code identity of a merge with ``method`` (:data:`ENGINE_CODE` + its modules)."""
    return code_identity("hhh_bench.stages.merge", *ENGINE_CODE, *method_modules(method))


def _check_statistics_models(files: list[Any], models: list[str]) -> None:
    """A statistics file of a stats stage output records the model it was computed on (its
    ``key.json`` payload): ``merge.params.statistics[i]`` must be ``merge.models[i]``'s (battery
    20, B-F9: files given in another order were merged without a word). A file from elsewhere
    records nothing and is taken as given."""
    import json

    mine = [model_identity(m) for m in models]
    for i, f in enumerate(files):
        record = Path(str(f)).expanduser().parent / "key.json"
        try:
            key = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(key, dict) or key.get("stage") != "stats":
            continue
        payload = key.get("payload")
        if not isinstance(payload, dict):
            continue
        theirs = payload.get("model")
        if i < len(mine) and theirs and theirs != mine[i]:
            other = mine.index(theirs) if theirs in mine else None
            what = (f"merge.models[{other}]={models[other]!r}" if other is not None
                    else "a model that is none of merge.models")  # fmt: skip
            raise ValueError(
                f"merge.params.statistics[{i}]={str(f)!r} was computed on {what} (its stats "
                f"output's key.json), not on merge.models[{i}]={models[i]!r}: give one file per "
                "model, in the order of merge.models (or statistics=null to compute them)"
            )


def run_merge(
    cfg: DictConfig,
    base: str | None = None,
    models: list[str] | None = None,
    names: list[str] | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge (or reuse) one model; return ``{"out_dir", "key", "cached", "method", "params", ...}``.

    A method that reads data-aware statistics (``fisher``, ``regmean``) with
    ``merge.params.statistics`` null gets them from the stats stage first (one file per model,
    computed once per specialist and reused: :func:`hhh_bench.stages.stats.statistics_for`).

    Args:
        cfg: the composed config (``merge``, ``merge_engine``, ``root``).
        base: θ0's folder or hub id (overrides ``merge.base``).
        models: finetuned folders / hub ids / LoRA adapters (override ``merge.models``).
        names: what each model is (its dimension), for the model card and for the training rows
            of its statistics.
        data: the data stage's result (the statistics' training rows; run when needed and None).
    """
    from hhh_bench.merging import get_method
    from hhh_bench.merging.engine import merge_models

    m = group(cfg, "merge", MergeConfig)
    engine = group(cfg, "merge_engine", MergeEngineConfig)
    base = base or m.base
    models = [str(x) for x in (models or m.models or [])]
    if not base or not models:
        raise ValueError(
            "stage=merge has no inputs: set merge.base and merge.models=[...], or run the "
            "pipeline's train stage first (hhh-bench stage=train) so its specialists exist"
        )
    params = {"device": engine.device, **m.params}
    method = get_method(m.method)
    if params.get("seed") is None:  # a drawing method's masks per run seed (battery 12, F5)
        params["seed"] = int(cfg.get("seed") or 0) if method.draws else 0
    checked = method.make_params(**params)  # refused before any statistics, diagnostics or merge
    note = getattr(checked, "capped_note", lambda: None)()
    if note:
        console.say(f"warning: merge {m.method}: {note}", level=console.QUIET)
    checked.resolve_weights(len(models))
    method.check_models(len(models), checked)
    kind = method.statistics_kind
    stats_dirs: list[str] = []
    if kind is not None and not params.get("statistics"):
        from hhh_bench.stages.stats import statistics_for

        stats = statistics_for(cfg, data, str(base), models, names, kind)
        params["statistics"] = [x["path"] for x in stats]
        stats_dirs = [x["dir"] for x in stats]
    elif params.get("statistics"):  # the user's files: computed on these models, in order?
        _check_statistics_models(list(params["statistics"]), models)
    keyed_params = dict(params)
    if params.get("statistics"):  # the files by their content (a path is only a pointer)
        keyed_params["statistics"] = [model_identity(str(p)) for p in params["statistics"]]
    payload = {
        "method": m.method,
        "params": keyed_params,
        "base": model_identity(str(base)),
        "models": [model_identity(x) for x in models],
        "out_dtype": engine.out_dtype,
        "vocab_policy": engine.vocab_policy,
        "code": merge_code(m.method),
    }
    check_same_base(str(base), models, base_identity=payload["base"])
    check_tokenizers(str(base), models)

    def diagnose() -> dict[str, Any] | None:
        """The inputs' diagnostics (their own cached stage), once the merge has succeeded: a
        refused or failed merge leaves no diagnostics row."""
        if not engine.diagnostics:
            return None
        from hhh_bench.stages.diagnose import resm_params_for, run_diagnose

        return run_diagnose(cfg, str(base), models, resm_params=resm_params_for(m.method, params))

    def compute(tmp: Path) -> dict[str, Any]:
        res = merge_models(
            m.method, base, models, tmp / "model", max_shard_size=engine.max_shard_size,
            out_dtype=engine.out_dtype, allow_pickle=engine.allow_pickle,
            allow_architecture_mismatch=engine.allow_architecture_mismatch,
            vocab_policy=engine.vocab_policy, cache_dir=engine.cache_dir,
            cache_max_gb=engine.cache_max_gb, finetuned_names=names, progress=engine.progress,
            **params,
        )  # fmt: skip
        log.info("merge: %s in %.1f s (sweep cache: %d hits, %d misses)", m.method, res.seconds,
                 res.cache_hits, res.cache_misses)  # fmt: skip
        _check_read_inputs(tmp / "model", payload)
        # out_dir as it will be once renamed into place (the temporary folder is gone by then)
        return {**res.as_dict(), "method": m.method, **_attach(tmp / "model", diagnose()),
                "out_dir": "model"}  # fmt: skip

    run = cached_stage(
        cfg.root, "merge", payload, compute, result_file="merge_result.json", seed=int(cfg.seed),
        provenance={"merge": to_dict(cfg.merge), "merge_engine": to_dict(cfg.merge_engine)},
        extra={"base": str(base), "models": models}, label=m.method,
        inputs=[str(base), *models, *stats_dirs],
    )  # fmt: skip
    out = run.dir / "model"
    info = dict(run.info)
    if run.cached and engine.diagnostics and not CACHE.dry_run:  # switched on after the merge
        info.update(_attach(out, diagnose()))
    if "diagnostics" in info:
        info["diagnostics"] = str(out / "diagnostics.json")
    return {**info, "out_dir": str(out), "key": run.key, "content": run.identity,
            "cached": run.cached}  # fmt: skip


def _check_read_inputs(model_dir: Path, payload: dict[str, Any]) -> None:
    """The inputs the engine read are those the key was computed from: an input replaced between
    the key and the merge fails (the output, in the temporary folder, is discarded)."""
    import json

    read = json.loads((model_dir / "merge_info.json").read_text()).get("inputs_read") or {}
    want = {"the base": payload["base"]}
    want.update({f"finetuned model {i}": x for i, x in enumerate(payload["models"])})
    for label, identity in read.items():
        if label in want and want[label] != identity:
            raise ValueError(
                f"merge: {label} changed after the merge's key was computed (its content is not "
                "the one the key holds); no output written. Rerun once the inputs stay still."
            )


def _attach(out: Path, diag: dict[str, Any] | None) -> dict[str, Any]:
    """Diagnostics next to the merged model and in its card."""
    if diag is None:
        return {}
    from hhh_bench.stages.diagnose import attach_to_model

    path = attach_to_model(out, diag)
    return {"diagnostics": str(path.name), "diagnostics_key": diag["key"]}


def _check_adapter_base(
    i: int, model: str, base_identity: Callable[[], str], base: str, names: tuple[str, str]
) -> None:
    """A LoRA adapter outside a train stage output names the base it was trained on
    (``adapter_config.json``'s ``base_model_name_or_path``): when that folder is here and its
    content is not the base's, the adapter's task vector is against another θ0."""
    import json

    base_name, models_name = names
    config = Path(model) / "adapter_config.json"
    if not config.is_file():
        return
    try:
        recorded = json.loads(config.read_text()).get("base_model_name_or_path")
    except (ValueError, AttributeError):
        return
    if not isinstance(recorded, str) or recorded == base:
        return  # nothing recorded, or the base itself as given (a hub id)
    if not Path(recorded).is_dir():  # a hub id, or a folder not on this machine
        from hhh_bench.core import console

        console.say(
            f"warning: {models_name}[{i}]={model!r} is a LoRA adapter trained on {recorded!r} "
            f"(its adapter_config.json), which is not here to compare with {base_name}={base!r}: "
            f"its task vector is taken against {base_name}; merge it only if it was trained on "
            "that base"
        )
        return
    same_files = model_files_differ(Path(recorded), Path(base).expanduser()) == []  # a copy of θ0
    if model_identity(recorded) != base_identity() and not same_files:
        raise ValueError(
            f"{models_name}[{i}]={model!r} is a LoRA adapter trained on {recorded!r} "
            f"(its adapter_config.json), whose content is not {base_name}={base!r}'s: its task "
            f"vector would be against another θ0; merge adapters trained on {base_name}"
        )


def check_same_base(
    base: str,
    models: Sequence[str],
    *,
    base_identity: str | None = None,
    names: tuple[str, str] = ("merge.base", "merge.models"),
) -> None:
    """Each specialist that is a train stage output (its folder, or the folder above an
    ``adapter/``, holds ``key.json``) was trained from this θ0: a task vector against another
    base is the difference of two unrelated models; a LoRA adapter names its base. Compared by
    content only (a hub id and a local copy of it are not told apart); the base's content is
    hashed only when a model records a base to compare with. ``names``: how the messages name
    the base and the models (the pipeline's keys, or a mergekit YAML's)."""
    import functools
    import json

    base_name, models_name = names
    if base_identity is None and not Path(base).expanduser().exists():
        return  # a hub id: nothing local to compare with
    if base_identity is not None and base_identity.startswith("hub:"):
        return
    identity = functools.cache(lambda: base_identity or model_identity(str(base)))
    for i, model in enumerate(models):
        record = train_record(model)
        if record is None:  # a LoRA adapter copied out of its train folder: its own record
            _check_adapter_base(i, model, identity, base, names)
            continue
        try:
            key = json.loads(record.read_text())
        except ValueError:
            continue
        trained_from = (
            (key.get("payload") or {}).get("base") if key.get("stage") == "train" else None
        )
        if (
            isinstance(trained_from, str)
            and not trained_from.startswith("hub:")
            and trained_from != identity()
        ):
            where = [x for x in key.get("inputs") or [] if str(x).startswith("base/")]
            origin = f"the θ0 stage output {where[0]}" if where else "the θ0 its key.json names"
            if Path(base).expanduser().exists() and enclosing_output(base) is None:
                # a folder that is no stage output: a copy of θ0's model files (weights, config,
                # tokenizer) is that θ0 (battery 14, F1: a copy without the output's records
                # was refused without a word of what differed); else say what differs
                theta0 = recorded_input(record, where[0]) if where else None
                differs = model_files_differ(theta0, Path(base)) if theta0 else None
                if differs == []:
                    continue
                if differs:
                    raise ValueError(
                        f"{models_name}[{i}]={model!r} was trained from {origin} ({theta0}); "
                        f"{base_name}={base!r} is not a copy of its model files: "
                        f"{'; '.join(differs[:4])}{' ...' if len(differs) > 4 else ''}: give "
                        "that θ0's folder as the base, or specialists trained from this one"
                    )
                looked = recorded_input(record, where[0]) if where else None
                raise ValueError(  # battery 21, B-F2: "its files are not that θ0's", unchecked
                    f"{models_name}[{i}]={model!r} was trained from {origin}, which is not on "
                    "this machine beside it"
                    + (f" (looked for {looked})" if looked else "")
                    + f", so {base_name}={base!r} cannot be compared with it (and its folder, "
                    "without that output's records, is not its content): give that stage "
                    "output's folder as the base (copy it along with the specialists, "
                    "<root>/" + (where[0] if where else "base/<key>") + "), or specialists "
                    "trained from this one"
                )
            raise ValueError(
                f"{models_name}[{i}]={model!r} was trained from {origin}, not from "
                f"{base_name}={base!r}: its task vector would be the difference of two "
                "unrelated models; give the θ0 it was trained from as the base"
            )


MODEL_FILE_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "config.json",
                       "generation_config.json", "tokenizer*", "special_tokens_map.json",
                       "added_tokens.json", "chat_template.jinja", "vocab.*", "merges.txt",
                       "adapter_config.json")  # fmt: skip
"""The files a loader reads from a model folder: what makes two folders the same model."""


def model_files_differ(theirs: Path, mine: Path) -> list[str] | None:
    """How ``mine`` differs from the model folder ``theirs`` in the files a loader reads
    (:data:`MODEL_FILE_PATTERNS`, compared by content): ``[]`` when it holds each of them
    byte for byte (other files, a stage output's records, do not count); None when
    ``theirs`` is not a folder here."""
    from hhh_bench.core.content import cache_for

    if not theirs.is_dir():
        return None
    names = sorted({p.name for pat in MODEL_FILE_PATTERNS for p in theirs.glob(pat)
                    if p.is_file()})  # fmt: skip
    out = []
    for name in names:
        if not (mine / name).is_file():
            out.append(f"it lacks {name}")
        elif (cache_for(theirs / name).digests(theirs / name)["blake3"]
              != cache_for(mine / name).digests(mine / name)["blake3"]):  # fmt: skip
            out.append(f"its {name} differs")
    return out


def _token_ids(folder: Path) -> dict[int, str] | None:
    """A tokenizer folder's vocabulary as ``{id: token}`` (``tokenizer.json``: its model's
    vocabulary and added tokens; else ``vocab.json``), None when it holds neither (a LoRA
    adapter, a folder of weights only) or they do not parse."""
    import json

    try:
        if (folder / "tokenizer.json").is_file():
            tok = json.loads((folder / "tokenizer.json").read_text())
            vocab = (tok.get("model") or {}).get("vocab")
            if isinstance(vocab, list):  # Unigram: [[piece, score], ...] in id order
                ids = {i: str(v[0]) for i, v in enumerate(vocab)}
            elif isinstance(vocab, dict):
                ids = {int(i): str(t) for t, i in vocab.items()}
            else:
                return None
            ids.update({int(a["id"]): str(a["content"]) for a in tok.get("added_tokens") or []})
            return ids
        if (folder / "vocab.json").is_file():
            vocab = json.loads((folder / "vocab.json").read_text())
            return {int(i): str(t) for t, i in vocab.items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return None


def _chat_template(folder: Path) -> str | None:
    """A tokenizer folder's chat template(s) as one comparable string (``chat_template.jinja``,
    ``chat_template.json`` or ``tokenizer_config.json``'s ``chat_template``), None when it has
    none or they do not parse."""
    import json

    try:
        if (folder / "chat_template.jinja").is_file():
            return (folder / "chat_template.jinja").read_text()
        for name in ("chat_template.json", "tokenizer_config.json"):
            if (folder / name).is_file():
                found = json.loads((folder / name).read_text()).get("chat_template")
                if found is not None:
                    return found if isinstance(found, str) else json.dumps(found, sort_keys=True)
    except (OSError, ValueError, AttributeError):
        return None
    return None


def check_tokenizers(
    base: str, models: Sequence[str], *, names: tuple[str, str] = ("merge.base", "merge.models")
) -> None:
    """Every local model folder that ships a tokenizer maps each token id it shares with the
    base's tokenizer to the same token: merged embedding rows of different tokens are
    meaningless, and the merged folder is written with the base's tokenizer. Ids one side lacks
    (tokens added after the base's vocabulary) are ``merge_engine.vocab_policy``'s matter; a
    folder without ``tokenizer.json``/``vocab.json`` (an adapter, a hub id) is not compared."""
    base_name, models_name = names
    if not Path(base).expanduser().is_dir():
        return
    theirs = _token_ids(Path(base).expanduser())
    if theirs is None:
        return
    for i, model in enumerate(models):
        p = Path(model).expanduser()
        mine = _token_ids(p) if p.is_dir() else None
        template = _chat_template(p) if p.is_dir() else None
        if template is not None and template != _chat_template(Path(base).expanduser()):
            log.warning(
                "%s[%d]=%r has another chat template than %s=%r: the merged model is written, "
                "and evaluated, with the base's tokenizer files and chat template",
                models_name, i, model, base_name, base,
            )  # fmt: skip
        if mine is None:
            continue
        differ = sorted(k for k in set(mine) & set(theirs) if mine[k] != theirs[k])
        if differ:
            k = differ[0]
            raise ValueError(
                f"{models_name}[{i}]={model!r} has another tokenizer than {base_name}={base!r}: "
                f"{len(differ)} token id(s) stand for other tokens (id {k} is {mine[k]!r} there, "
                f"{theirs[k]!r} in the base's); its embedding rows would be merged with rows of "
                "other tokens, and the merge is written with the base's tokenizer; merge models "
                "fine-tuned from the base with its tokenizer"
            )
