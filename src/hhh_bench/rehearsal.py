"""The rehearsal of a real-path experiment on offline stand-ins (``+rehearsal=small``, issue 12).

``conf/rehearsal/small.yaml`` adds a ``rehearsal`` block to an experiment's config and switches
what plain config values can switch (CPU, fp32, a few training steps, local custom eval data,
``eval.include_defaults=false``). What needs building or rewriting happens here, from plain
dicts (no Hydra), in two calls:

1. :func:`prepare_rehearsal`, made by the pipeline once, before the data stage: it builds the
   stand-in model folders and returns dotted config overrides to apply (``{"data.sources":
   [...], "merge.base": ...}``);
2. :func:`hhh_bench.evaluation.standin_tasks.standin_eval_tasks`, made by the evaluation for
   each include folder (it lives in the evaluation library, which imports nothing above it): it
   writes the stand-ins of the suite's lm-eval built-in tasks.

Everything swapped is what cannot be had offline: the hub model (a stand-in of the same
architecture class), hub datasets (raw-schema fixtures read through each source's ``path``),
released specialists (folders derived from the stand-in base), the mixing strategies' reward
model (a stand-in with ArmoRM's number of outputs), lm-eval's hub-backed built-in tasks (their
own definitions on local files).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hhh_bench.core.hubref import split_ref
from hhh_bench.data.sources.local_paths import with_source_paths
from hhh_bench.models.standin import (
    ensure_released_specialists,
    ensure_standin,
    ensure_standin_reward_model,
    get_family,
)


def _need(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ValueError(
                f"rehearsal: the config has no `{dotted}` (conf/rehearsal/small.yaml sets it; "
                "compose with +rehearsal=small)"
            )
        node = node[part]
    return node


def released_specialist_names(models: Sequence[str]) -> list[str]:
    """Folder names for released specialists given as hub ids (their last path part; a
    pinned one's id, not its commit), made unique by their position."""
    names = []
    for i, model in enumerate(models):
        ident = split_ref(str(model))[0]  # a pinned id (<id>@<commit>): the id's name
        base = ident.rstrip("/").rsplit("/", 1)[-1] or f"specialist_{i}"
        names.append(base if base not in names else f"{base}_{i}")
    return names


def prepare_rehearsal(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Build the stand-ins a rehearsal needs and return the config overrides that use them.

    Args:
        cfg: the resolved config as a plain dict, with the ``rehearsal`` block of
            ``conf/rehearsal/small.yaml``.

    Returns:
        Dotted key -> value to set on the config before any stage runs:

        * ``data.sources`` (data configs of kind ``sources``): every entry reads its fixture
          from ``rehearsal.source_paths`` (:func:`with_source_paths`);
        * ``merge.base`` and ``merge.models`` (when ``merge.models`` names released
          specialists): the stand-in base and specialist folders built from it
          (:func:`~hhh_bench.models.standin.ensure_released_specialists`, kinds from
          ``rehearsal.specialists.kinds`` in order: full weights and LoRA adapters);
        * ``pipeline.mixtures`` and ``mix`` (when an entry scores pairs with
          ``scorer: reward_model``): its ``scorer_args.model`` is the stand-in reward model,
          on the CPU in float32, without remote code.

        When the suite has IFEval, a stand-in of NLTK's ``punkt_tab`` (its real file layout,
        no learned abbreviations) is put first on NLTK's path (:func:`ensure_standin_punkt`),
        so that lm-eval's IFEval reaches for no download.

        The stand-in model itself is built at ``model.path`` (``model.standin`` names the real
        model it stands in for), so ``model`` needs no override.
    """
    rh = _need(cfg, "rehearsal")
    family = get_family(str(_need(cfg, "model.standin")))
    spec = dict(rh.get("standin") or {})
    base = ensure_standin(family.name, _need(cfg, "model.path"), spec)
    out: dict[str, Any] = {}

    data = cfg.get("data") or {}
    if data.get("kind") == "sources":
        out["data.sources"] = with_source_paths(data, _need(cfg, "rehearsal.source_paths"))[
            "sources"
        ]

    merge = cfg.get("merge") or {}
    if merge.get("models"):
        sp = _need(cfg, "rehearsal.specialists")
        models = [str(m) for m in merge["models"]]
        kinds = list(sp.get("kinds") or [])
        if len(kinds) < len(models):
            raise ValueError(
                f"rehearsal.specialists.kinds lists {len(kinds)} kinds for {len(models)} "
                f"merge.models {models}; give one (full | lora) per model"
            )
        names = released_specialist_names(models)
        folders = ensure_released_specialists(
            base,
            sp["dir"],
            kinds=dict(zip(names, kinds, strict=False)),
            seed=int(sp.get("seed", 0)),
        )
        out["merge.base"] = str(base)
        out["merge.models"] = [str(folders[n]) for n in names]

    rm_args = {"device": "cpu", "dtype": "float32", "trust_remote_code": False}
    reward_model: Path | None = None

    def swap_scorer(entry: Any) -> Any:
        nonlocal reward_model
        if not isinstance(entry, Mapping) or entry.get("scorer") != "reward_model":
            return entry
        if reward_model is None:
            reward_model = ensure_standin_reward_model(
                _need(cfg, "rehearsal.reward_model"), family="llama3_8b_instruct", spec=spec
            )
        args = {**dict(entry.get("scorer_args") or {}), **rm_args, "model": str(reward_model)}
        args.pop("revision", None)
        return {**dict(entry), "scorer_args": args}

    dims = (cfg.get("eval") or {}).get("dimensions") or {}
    if any("ifeval" in (tasks or {}) for tasks in dims.values()):
        use_nltk_data(ensure_standin_punkt(Path(_need(cfg, "rehearsal.dir")) / "nltk_data"))

    judges = (cfg.get("eval") or {}).get("judges") or {}
    if judges and rh.get("judges"):
        out.update(_standin_judges(cfg, judges))

    mixtures = (cfg.get("pipeline") or {}).get("mixtures") or []
    swapped = [swap_scorer(e) for e in mixtures]
    if swapped != list(mixtures):
        out["pipeline.mixtures"] = swapped
    mix = cfg.get("mix")
    if isinstance(mix, Mapping) and swap_scorer(mix) != dict(mix):
        out["mix"] = swap_scorer(mix)
    return out


def _strings(obj: Any) -> Iterator[str]:
    """Every string value in a JSON document (dict values and list items, nested)."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _standin_judges(cfg: Mapping[str, Any], judges: Mapping[str, Any]) -> dict[str, Any]:
    """Stand-ins of the suite's judges (:func:`hhh_bench.evaluation.standins.build_standin_judges`,
    the real judges' kinds, templates and labels), built once under ``rehearsal.judges`` with a
    vocabulary of the judged tasks' prompt files; ``eval.judges.<role>`` overrides."""
    import json

    from hhh_bench.evaluation.judges import JudgeSpec
    from hhh_bench.evaluation.standins import (
        build_standin_judges,
        relink_adapter,
        standin_judges_config,
    )

    # the user's judges are checked as the real path checks them before any stand-in replaces
    # them (battery 11, j15: a bad max_new_tokens was silently swapped for the stand-in's)
    for role, spec in judges.items():
        if spec is not None:
            try:
                JudgeSpec.from_config(str(role), dict(spec))
            except ValueError as e:
                raise ValueError(f"{e} (checked before the rehearsal's stand-in judges)") from None
    folder = Path(_need(cfg, "rehearsal.judges"))
    files = (cfg.get("eval") or {}).get("data_files") or {}
    words: set[str] = {"safe", "unsafe", "yes", "no"}
    for path in files.values():
        if path and Path(path).is_file():
            text = Path(path).read_text()
            # JSONL rows, or one JSON document (HarmBench's {BehaviorID: [test case, ...]})
            docs = [json.loads(text)] if str(path).endswith(".json") else [
                json.loads(line) for line in text.splitlines() if line.strip()]  # fmt: skip
            words.update(w for doc in docs for v in _strings(doc) for w in v.split())
    marker = folder / "standin_judges.json"
    vocab = sorted(words)
    roles = ("safety", "refusal", "reward", "truth", "info", "strongreject", "hallucination",
             "strongreject_rubric", "rating")  # fmt: skip
    paths = {role: folder / role for role in roles}
    if (
        not marker.is_file()
        or json.loads(marker.read_text()) != vocab
        or not all(p.is_dir() for p in paths.values())
    ):
        paths = build_standin_judges(folder, vocab)
        marker.write_text(json.dumps(vocab))
    relink_adapter(paths["strongreject"], folder / "strongreject-base")  # a moved root
    standin = standin_judges_config(paths)
    own = ("on_unparsed",)  # the suite's policy stays the suite's (a stand-in only states one)
    return {f"eval.judges.{role}": {**standin[role], **{k: v for k, v in dict(judges[role]).items()
                                                        if k not in standin[role] or k in own}}
            for role in judges if role in standin and judges[role] is not None}  # fmt: skip


PUNKT_TAB_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")
"""The files of one language of NLTK's ``punkt_tab`` (``nltk.tokenize.punkt.load_punkt_params``)."""


def ensure_standin_punkt(folder: Path) -> Path:
    """A stand-in of NLTK's ``punkt_tab`` under ``folder`` (``tokenizers/punkt_tab/english/``
    with its four parameter files, empty: sentences split at every full stop, no learned
    abbreviations, collocations or orthographic context); returns ``folder``."""
    lang = folder / "tokenizers" / "punkt_tab" / "english"
    lang.mkdir(parents=True, exist_ok=True)
    for name in PUNKT_TAB_FILES:
        if not (lang / name).is_file():
            (lang / name).write_text("")
    return folder


def use_nltk_data(folder: Path) -> None:
    """Put ``folder`` first on NLTK's data path, for this process (``nltk.data.path``) and for
    the processes it starts (``$NLTK_DATA``)."""
    import os

    import nltk

    path = str(folder.resolve())
    if path not in nltk.data.path:
        nltk.data.path.insert(0, path)
    rest = os.environ.get("NLTK_DATA")
    if not rest or path not in rest.split(os.pathsep):
        os.environ["NLTK_DATA"] = path + (os.pathsep + rest if rest else "")
