"""The data stage: write the preference sets (toy world or public sources) with a manifest.

``<root>/data/<key>/`` holds ``prefs/<dimension>_<split>.jsonl``, the toy world's ``sft/`` corpus,
``eval/`` items and ``vocab.txt``, and ``manifest.json`` (counts, sources, leakage checks). The
key covers the data config without the noise and the dimension list (applied at training time)
and, for public sources, the evaluation items of the run's suite: the leakage guard checks every
training pair against every item the run will evaluate (``data.leakage``) and fails naming the
source, the evaluation set and the shared prompts (or drops TruthfulQA-derived prompts). A set
that is both evaluated and trained on (HaluEval QA) is split by a seeded partition of its
questions (``eval.partitions``): its sources drop the evaluation part, and the manifest's
``partitions`` records the seed, the fraction, the counts and the digest of the held-out questions.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hhh_bench.core import console
from hhh_bench.core.config import DataConfig
from hhh_bench.core.content import keyable
from hhh_bench.core.provenance import config_hash
from hhh_bench.stages.common import CACHE, cached_stage, code_identity, group, keyed, to_dict

DATA_CODE = ("hhh_bench.stages.data", "hhh_bench.data.toy3h", "hhh_bench.data.real", "hhh_bench.core.schema",
             "hhh_bench.core.text", "hhh_bench.core.partition",
             "hhh_bench.data.leakage", "hhh_bench.data.sources")  # fmt: skip
"""The code the data stage runs (its key holds these files' content)."""


def data_payload(cfg: DictConfig) -> dict[str, Any]:
    """What the data stage's key is made of: the world / sources config (local source files by
    their content, the datasets cache folder left out) and the code that writes the data."""
    from importlib import metadata

    world = {k: v for k, v in keyed(cfg.data).items() if k not in ("noise", "dimensions")}
    if world.get("kind") == "sources":  # what each named source is: its conf/source/*.yaml
        world["source_configs"] = source_configs(to_dict(cfg.data))
    code = code_identity(*DATA_CODE)
    # the confusables data that core/text.py folds look-alike letters with ships in this package
    code["versions"] = {**code["versions"], **{
        name: metadata.version(name) for name in ("confusable-homoglyphs", "pyahocorasick")
    }}  # fmt: skip
    return {**world, "code": code}


def source_configs(data: Mapping[str, Any]) -> dict[str, Any]:
    """Each source a sources data config names, by the content of its config file
    (``conf/source/<name>.yaml``, ``$HHH_BENCH_CONF`` respected; its paths by content): an edit
    of an adapter's aspect or pairing changes the data key."""
    from hhh_bench.data.sources import load_source_config

    names: set[str] = set()
    for entries in (data.get("sources") or {}).values():
        for entry in entries or []:
            name = entry.get("name") if isinstance(entry, Mapping) else entry
            if isinstance(name, str):
                names.add(name)
    out: dict[str, Any] = {}
    for name in sorted(names):
        try:
            out[name] = keyable(load_source_config(name), frozenset({"cache_dir"}))
        except ValueError as e:  # an unknown source: the build names it with what is known
            out[name] = f"unreadable: {e}"
    return out


def run_data(cfg: DictConfig) -> dict[str, Any]:
    """Generate (or reuse) the data folder; return ``{"dir", "key", "manifest", "cached"}``."""
    data = group(cfg, "data", DataConfig)
    payload = data_payload(cfg)
    eval_sets = None
    partitions = {}
    if data.kind == "sources" and "eval" in cfg:
        # a set the suite evaluates on a seeded partition (HaluEval QA): its sources drop the
        # evaluation part, whether or not the overlap check runs
        from hhh_bench.evaluation.suite import partitions_in_use

        partitions = partitions_in_use(to_dict(cfg.eval))
        if partitions:  # absent when unused, so the keys of other runs do not change
            payload["partitions"] = {k: p.as_dict() for k, p in sorted(partitions.items())}
    if data.kind == "sources" and data.leakage.get("check_overlap", True):
        # the leakage guard compares every training pair with every item the run evaluates
        from hhh_bench.evaluation.suite import eval_prompts

        rehearsal = to_dict(cfg.rehearsal) if "rehearsal" in cfg else None
        eval_sets = eval_prompts(to_dict(cfg.eval), None, rehearsal)
        payload["eval_sets"] = config_hash(eval_sets)

    def compute(tmp: Path) -> dict[str, Any]:
        if data.kind == "toy3h":
            from hhh_bench.data.toy3h import Toy3HConfig, describe, generate

            world = Toy3HConfig.from_mapping(dict(data.world or {}), complete=True)
            for note in world.inert_knobs():
                console.say(f"warning: {note}")
            manifest = generate(world, tmp)
            _describe(describe(manifest))
            return manifest
        from hhh_bench.data.real import write_source_sets

        manifest = write_source_sets(
            to_dict(cfg.data), tmp, eval_sets=eval_sets, partitions=partitions
        )
        _describe(manifest.get("summary", ""))
        return manifest

    run = cached_stage(
        cfg.root, "data", payload, compute, result_file="manifest.json", seed=int(cfg.seed),
        provenance=to_dict(cfg.data),
    )  # fmt: skip
    return {"dir": str(run.dir), "key": run.key, "content": run.identity, "manifest": run.info,
            "cached": run.cached}  # fmt: skip


def _describe(text: str) -> None:
    """What was written (sets, splits, counts): on the console when the data stage was asked
    for (``stage=data``), else in the log file (``-v``: on the console too)."""
    console.say(text, level=console.NORMAL if CACHE.asked == "data" else console.VERBOSE)
