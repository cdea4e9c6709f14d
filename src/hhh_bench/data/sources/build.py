"""Build the per-dimension preference sets of a ``kind: sources`` data config.

Order of operations for each source (the manifest records the count after each step):

1. load and adapt the whole split (:func:`~.loader.load_source`) -> ``rows_out``; a pair that
   repeats an earlier one of the source is dropped -> ``dropped_duplicates``; a source of a set
   the suite evaluates on a seeded partition (``partitions``, keyed by the source's adapter:
   HaluEval QA's ``eval.partitions.halueval_qa``) loses the pairs whose question is in the
   evaluation part (:class:`hhh_bench.core.partition.Partition`) -> ``dropped_eval_partition``,
   and the manifest's ``partitions`` records the seed, the fraction, the counts and the digest of
   the held-out questions;
2. the TruthfulQA guard, when on (:func:`hhh_bench.data.leakage.drop_truthfulqa_prompts`)
   -> ``dropped_truthfulqa``, ``rows_after_leakage``;
3. the cap: ``max_rows`` of the entry, else of the source config, else the data config's
   ``max_rows_per_source`` -- a cap on *pairs kept per source after filtering*, taken as a seeded
   uniform sample in dataset order -> ``rows_kept``;

then, over all sources, the prompt-overlap check against the evaluation prompts
(:func:`hhh_bench.data.leakage.check_overlap`: an evaluation question found in any turn of a
training pair, after normalisation), which fails the run above ``max_overlap``; with
``on_overlap: drop`` the pairs holding one are removed before the cap (``dropped_eval_overlap``).
Each source also records ``ngram_overlap_rows``: its kept pairs that share a word 13-gram with an
evaluation item (reported, as lm-eval's decontamination reports it; never a reason to fail).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hhh_bench.core.partition import Partition, partition_record
from hhh_bench.core.schema import DIMENSIONS, PreferenceRow, validate_rows
from hhh_bench.data.leakage import (
    MIN_CHARS,
    EvalIndex,
    check_overlap,
    drop_truthfulqa_prompts,
    normalize_prompt,
    row_texts,
    wants_truthfulqa_guard,
)
from hhh_bench.data.sources.base import MALFORMED
from hhh_bench.data.sources.loader import (
    SOURCE_KEYS,
    SourceConfigError,
    cap_rows,
    load_source,
    load_source_config,
    validate_source_config,
)

LEAKAGE_DEFAULTS: dict[str, Any] = {
    "drop_truthfulqa_prompts": "auto",
    "check_overlap": True,
    "max_overlap": 0,
    "on_overlap": "fail",
    "min_chars": MIN_CHARS,
}


def _plain(cfg: Any) -> Any:
    """A plain copy of a mapping (callers pass plain dicts: the stages convert their configs)."""
    if isinstance(cfg, Mapping):
        return {k: _plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [_plain(v) for v in cfg]
    return cfg


def leakage_settings(given: Mapping[str, Any] | None) -> dict[str, Any]:
    """``data.leakage`` with its defaults, checked (also before any stage runs,
    :mod:`hhh_bench.validation`): known keys, ``on_overlap`` fail | drop, ``min_chars`` a
    positive integer, ``max_overlap`` a non-negative integer.

    Raises:
        SourceConfigError: naming the key and the value.
    """
    leakage = {**LEAKAGE_DEFAULTS, **dict(given or {})}
    unknown = sorted(set(leakage) - set(LEAKAGE_DEFAULTS))
    if unknown:  # each fault named alone (battery 20, A-F9: both were, whichever it was)
        import difflib

        near = {k: difflib.get_close_matches(k, list(LEAKAGE_DEFAULTS), n=1) for k in unknown}
        hints = "".join(f" (did you mean {m[0]}?)" for m in near.values() if m)
        raise SourceConfigError(
            f"data.leakage: unknown key(s) {unknown}{hints}; valid keys: {sorted(LEAKAGE_DEFAULTS)}"
        )
    if leakage["on_overlap"] not in ("fail", "drop"):
        raise SourceConfigError(
            f"data.leakage.on_overlap must be fail or drop, got {leakage['on_overlap']!r}"
        )
    for key, low, what in (
        ("min_chars", 1, "a positive integer (the shortest normalised evaluation question "
                         "searched for inside a training turn)"),
        ("max_overlap", 0, "a non-negative integer (shared questions allowed per pair)"),
    ):  # fmt: skip
        v = leakage[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise SourceConfigError(f"data.leakage.{key} must be {what}, got {v!r}")
    if not isinstance(leakage["check_overlap"], bool):  # battery 16, A11: 'no' read as on
        raise SourceConfigError(
            f"data.leakage.check_overlap must be true or false, got {leakage['check_overlap']!r}"
        )
    try:  # its values named before any stage, as the data stage reads them
        wants_truthfulqa_guard(leakage["drop_truthfulqa_prompts"], None)
    except ValueError as e:
        raise SourceConfigError(f"data.{e}") from None
    return leakage


def resolve_source_entries(
    data_cfg: Mapping[str, Any], conf_dir: str | Path | None = None
) -> list[tuple[str, dict[str, Any], int | None]]:
    """``(dimension, source config, entry max_rows)`` for every entry of ``data_cfg["sources"]``.

    An entry is a source name (``conf/source/<name>.yaml``), a mapping ``{name: ..., <key>:
    <override>...}`` (the named config with some keys replaced, e.g. ``path`` or ``max_rows``;
    ``adapter_opts`` merged into the source's key by key), or
    a whole inline source config (a mapping with an ``adapter`` key).
    """
    cfg = _plain(data_cfg)
    if cfg.get("kind") != "sources":
        raise SourceConfigError(
            f"data config: `kind` must be 'sources' here, got {cfg.get('kind')!r}"
        )
    dims = list(cfg.get("dimensions") or [])
    bad = [d for d in dims if d not in DIMENSIONS]
    if not dims or bad:
        raise SourceConfigError(
            f"data config: `dimensions` must be a non-empty subset of {list(DIMENSIONS)}, "
            f"got {dims}"
        )
    sources = cfg.get("sources")
    if not isinstance(sources, Mapping):
        raise SourceConfigError(
            "data config: `sources` must map each dimension to a list of sources"
        )
    extra = sorted(set(sources) - set(dims))
    if extra:
        raise SourceConfigError(
            f"data config: sources given for {extra}, not in `dimensions` {dims}: drop them "
            f"({' '.join(f'~data.sources.{d}' for d in extra)}) or add the dimensions"
        )
    out: list[tuple[str, dict[str, Any], int | None]] = []
    seen: dict[str, str] = {}
    for dim in dims:
        entries = sources.get(dim)
        if not entries:
            raise SourceConfigError(f"data config: no source listed for dimension {dim!r}")
        for entry in entries:
            if isinstance(entry, str):
                src, entry_cap = load_source_config(entry, conf_dir), None
            elif isinstance(entry, Mapping) and "adapter" in entry:
                src = validate_source_config(
                    {k: entry.get(k) for k in SOURCE_KEYS}, origin=f"inline source under {dim!r}"
                )
                entry_cap = None
            elif isinstance(entry, Mapping) and "name" in entry:
                src = load_source_config(entry["name"], conf_dir)
                unknown = sorted(set(entry) - set(SOURCE_KEYS))
                if unknown:
                    raise SourceConfigError(
                        f"data config: entry {entry['name']!r} overrides unknown key(s) {unknown}"
                    )
                entry_cap = entry.get("max_rows")
                merged = {**src, **dict(entry)}
                if isinstance(entry.get("adapter_opts"), Mapping):  # key by key (battery 20,
                    # A-F7: the entry's mapping replaced the source's, dropping its `aspect`)
                    merged["adapter_opts"] = {**(src.get("adapter_opts") or {}),
                                              **entry["adapter_opts"]}  # fmt: skip
                src = validate_source_config(merged, origin=f"source {entry['name']!r}")
            else:
                raise SourceConfigError(
                    f"data config: entry {entry!r} under {dim!r} is neither a source name nor a "
                    "mapping with `name` (or a whole source config with `adapter`)"
                )
            if src["dimension"] != dim and isinstance(entry, Mapping) and "dimension" in entry:
                raise SourceConfigError(  # battery 21, A-U4: told to do what the entry did
                    f"data config: the entry for source {src['name']!r} sets dimension: "
                    f"{entry['dimension']!r} but is listed under {dim!r}; list it under "
                    f"{entry['dimension']!r}, or set dimension: {dim} in the entry"
                )
            if src["dimension"] != dim:
                raise SourceConfigError(
                    f"data config: source {src['name']!r} is declared for dimension "
                    f"{src['dimension']!r} but listed under {dim!r}; list it under "
                    f"{src['dimension']!r}, or override its `dimension` in the entry "
                    f"({{name: {src['name']}, dimension: {dim}}})"
                )
            if src["name"] in seen:
                raise SourceConfigError(
                    f"data config: source {src['name']!r} is listed twice "
                    f"({seen[src['name']]} and {dim})"
                )
            seen[src["name"]] = dim
            out.append((dim, src, entry_cap))
    return out


def build_preference_sets(
    data_cfg: Mapping[str, Any],
    cache_dir: str | Path | None = None,
    eval_sets: Mapping[str, Sequence[str]] | None = None,
    *,
    conf_dir: str | Path | None = None,
    partitions: Mapping[str, Partition] | None = None,
) -> tuple[dict[str, list[PreferenceRow]], dict[str, Any]]:
    """Load every source of a ``kind: sources`` data config into per-dimension preference sets.

    Args:
        data_cfg: the data config (``conf/data/paper_3h.yaml``; a dict or an OmegaConf node).
        cache_dir: the ``datasets`` cache folder; default ``data_cfg["cache_dir"]``.
        eval_sets: evaluation set name -> its prompts, for the leakage guards; ``None``: the
            overlap check is skipped and ``drop_truthfulqa_prompts: auto`` resolves to false
            (both recorded in the manifest).
        conf_dir: the ``conf/`` folder holding ``source/``; default: the repository's.
        partitions: adapter name -> the seeded partition whose evaluation part the suite
            evaluates (``eval.partitions``, only those a suite task reads): every source of
            that adapter drops the pairs whose question is in the evaluation part.

    Returns:
        ``(sets, manifest)``: ``sets[dimension]`` = the rows of its sources, in config order;
        ``manifest["sources"][name]`` = the source's identity and counts (see the module
        docstring), ``manifest["dimensions"][dimension]`` = rows per dimension,
        ``manifest["leakage"]`` = what the guards did (overlap report included),
        ``manifest["partitions"][adapter]`` = each partition applied (:func:`partition_record`
        over the questions of its sources' pairs, and per source the pairs dropped).

    Raises:
        SourceConfigError: an invalid data or source config.
        SourceUnavailableError: a source is neither reachable nor cached.
        hhh_bench.data.leakage.LeakageError: prompt overlap above ``leakage.max_overlap``.
    """
    cfg = _plain(data_cfg)
    entries = resolve_source_entries(cfg, conf_dir)
    cache_dir = cache_dir if cache_dir is not None else cfg.get("cache_dir")
    if not cache_dir:
        raise SourceConfigError("no cache_dir: pass one or set `cache_dir` in the data config")
    seed = cfg.get("seed", 0)
    default_cap = cfg.get("max_rows_per_source")
    leakage = leakage_settings(cfg.get("leakage"))
    min_chars = leakage["min_chars"]
    drop_tqa = wants_truthfulqa_guard(leakage["drop_truthfulqa_prompts"], eval_sets)
    eval_index = (
        EvalIndex(eval_sets, min_chars)
        if eval_sets is not None and leakage["check_overlap"]
        else None
    )

    sets: dict[str, list[PreferenceRow]] = {dim: [] for dim in cfg["dimensions"]}
    per_source: dict[str, list[PreferenceRow]] = {}
    manifest_sources: dict[str, dict[str, Any]] = {}
    partitions = dict(partitions or {})
    partitioned: dict[str, dict[str, Any]] = {}  # adapter -> {"questions", "sources"}
    for dim, src, entry_cap in entries:
        cap = entry_cap if entry_cap is not None else src["max_rows"]
        cap = cap if cap is not None else default_cap
        rows, stats = load_source({**src, "max_rows": None}, cache_dir, seed=seed)
        check_dropped(src, stats, float(cfg.get("max_malformed_fraction", 0.5)))
        part = partitions.get(src["adapter"])
        if part is not None:
            questions = [row_question(r) for r in rows]
            kept = [r for r, q in zip(rows, questions, strict=True) if not part.is_eval(q)]
            stats["dropped_eval_partition"] = len(rows) - len(kept)
            seen = partitioned.setdefault(src["adapter"], {"questions": [], "sources": {}})
            seen["questions"] += questions
            seen["sources"][src["name"]] = {
                "rows": len(rows),
                "dropped_eval_partition": len(rows) - len(kept),
            }
            rows = kept
        n_tqa = 0
        if drop_tqa:
            rows, n_tqa = drop_truthfulqa_prompts(rows)
        stats["dropped_truthfulqa"] = n_tqa
        if eval_index is not None and leakage["on_overlap"] == "drop":
            kept = [r for r in rows if not eval_index.matches(row_texts(r))]
            stats["dropped_eval_overlap"] = len(rows) - len(kept)
            rows = kept
        stats["rows_after_leakage"] = len(rows)
        rows = cap_rows(rows, cap, f"{seed}/{src['name']}")
        stats.update({"dimension": dim, "max_rows": cap, "rows_kept": len(rows)})
        per_source[src["name"]] = rows
        manifest_sources[src["name"]] = stats
        sets[dim].extend(rows)

    overlap = None
    if eval_sets is not None and eval_index is not None and not any(eval_sets.values()):
        import logging

        logging.getLogger("hhh_bench").warning(
            "data.leakage: the evaluation suite gives no prompts to compare the training data "
            "with (its tasks read no data of their own here): the overlap check compared "
            "nothing (the manifest says overlap_checked: false)"
        )
    if eval_sets is not None and eval_index is not None:
        overlap = check_overlap(
            per_source, eval_sets, int(leakage["max_overlap"]), index=eval_index
        ).as_dict()
        for name, counts in overlap["ngram_overlap"]["sources"].items():
            manifest_sources[name]["ngram_overlap_rows"] = counts["rows_sharing"]
    for dim, rows in sets.items():
        if not rows:  # every later stage would train on nothing (no error of its own here)
            kept = {n: {k: s.get(k) for k in ("rows_after_leakage", "max_rows", "rows_kept")}
                    for n, s in manifest_sources.items() if s.get("dimension") == dim}  # fmt: skip
            raise SourceConfigError(
                f"data config: dimension {dim!r} is left with no preference pair (its sources: "
                f"{kept}); a source that yields no pair fails: check its path, split and cap"
            )
        validate_rows(rows, origin=f"preference set {dim!r}")
    manifest_partitions = {
        adapter: {**partition_record(partitions[adapter], seen["questions"]),
                  "sources": seen["sources"]}
        for adapter, seen in partitioned.items()
    }  # fmt: skip
    manifest = {
        "kind": "sources",
        "seed": seed,
        "cache_dir": str(cache_dir),
        "sources": manifest_sources,
        "dropped_duplicates": sum(
            s.get("dropped_duplicates", 0) for s in manifest_sources.values()
        ),
        "dimensions": {dim: len(rows) for dim, rows in sets.items()},
        "partitions": manifest_partitions,
        "leakage": {
            "drop_truthfulqa_prompts": leakage["drop_truthfulqa_prompts"],
            "truthfulqa_guard_applied": drop_tqa,
            "dropped_truthfulqa": sum(s["dropped_truthfulqa"] for s in manifest_sources.values()),
            "on_overlap": leakage["on_overlap"],
            "min_chars": min_chars,
            "dropped_eval_overlap": sum(
                s.get("dropped_eval_overlap", 0) for s in manifest_sources.values()
            ),
            "eval_sets": sorted(eval_sets) if eval_sets is not None else None,
            "overlap": overlap,
            # against no evaluation prompt nothing was checked (battery 16, A16: "checked,
            # passed" with eval=toy3h over public sources)
            "overlap_checked": overlap is not None and any((eval_sets or {}).values()),
        },
        "shared_across_dimensions": _shared_pairs(sets),
    }
    return sets, manifest


def _shared_pairs(sets: Mapping[str, Sequence[PreferenceRow]]) -> dict[str, int]:
    """Pairs (prompt, chosen, rejected) found in two dimensions' sets, per pair of dimensions
    (``"helpful/harmless": n``); a pair of dimensions sharing at least a tenth of the smaller
    set is said on the console (battery 18, U7: one file given as two dimensions' source)."""
    import json

    def pairs(rows: Sequence[PreferenceRow]) -> set[str]:
        return {json.dumps([r["prompt"], r["chosen"], r["rejected"]], sort_keys=True)
                for r in rows}  # fmt: skip

    keys = {d: pairs(rows) for d, rows in sets.items()}
    dims = list(keys)
    out = {}
    for i, a in enumerate(dims):
        for b in dims[i + 1 :]:
            n = len(keys[a] & keys[b])
            if not n:
                continue
            out[f"{a}/{b}"] = n
            if n * 10 >= min(len(keys[a]), len(keys[b])):
                from hhh_bench.core import console

                console.say(
                    f"warning: {n} preference pair(s) are in both the {a} and the {b} set (the "
                    f"same prompt, chosen and rejected): is one file given as both dimensions' "
                    "source? Such a pair teaches both specialists the same thing"
                )
    return out


def row_question(row: Mapping[str, Any]) -> str:
    """The question a pair answers, as a partition reads it: ``meta.question`` when the adapter
    stored the bare question of a prompt it decorated (HaluEval's knowledge passage), else the
    last user turn."""
    meta = row.get("meta") or {}
    if isinstance(meta.get("question"), str):
        return meta["question"]
    users = [m["content"] for m in row["prompt"] if m.get("role") == "user"]
    return users[-1] if users else ""


def _prompt_group(row: Mapping[str, Any]) -> str:
    return "\x1f".join(normalize_prompt(m["content"]) for m in row["prompt"])


def split_holdout(
    rows: Sequence[PreferenceRow], eval_fraction: float, seed: int | str
) -> tuple[list[PreferenceRow], list[PreferenceRow]]:
    """Split rows into train and validation, keeping rows that share a prompt together.

    ``eval_fraction`` is the share of *rows* (pairs) held out, reached by whole prompt groups
    drawn in a seeded order (so it can overshoot by one group). Both parts keep the input order.
    """
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    target = round(eval_fraction * len(rows))
    groups: dict[str, list[int]] = {}
    for k, row in enumerate(rows):
        groups.setdefault(_prompt_group(row), []).append(k)
    order = list(groups)
    random.Random(f"holdout/{seed}").shuffle(order)
    held: set[int] = set()
    for key in order:
        if len(held) >= target:
            break
        held.update(groups[key])
    train = [r for k, r in enumerate(rows) if k not in held]
    val = [r for k, r in enumerate(rows) if k in held]
    return train, val


def check_dropped(src: Mapping[str, Any], stats: Mapping[str, Any], max_malformed: float) -> None:
    """Fail, naming the source and the reasons, when its adapter kept no pair from a non-empty
    split or dropped more than ``max_malformed`` of its raw rows as malformed (the sign of
    wrong field names or another format)."""
    n_in = int(stats.get("rows_in") or 0)
    dropped = {k: int(v) for k, v in (stats.get("dropped") or {}).items() if v}
    malformed = dropped.get(MALFORMED, 0)
    if not n_in or (stats.get("rows_out") and malformed <= max_malformed * n_in):
        return
    where = src.get("path") or src.get("hub_id") or src.get("name")
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(dropped.items(), key=lambda kv: -kv[1]))
    what = "kept no pair" if not stats.get("rows_out") else (
        f"dropped {malformed} of {n_in} raw rows as malformed (more than "
        f"data.max_malformed_fraction={max_malformed})"
    )  # fmt: skip
    other = {k: v for k, v in dropped.items() if k != MALFORMED}
    if not stats.get("rows_out") and sum(other.values()) > malformed:  # battery 20, A-F4: the
        # rows went by the adapter's own filters, which max_malformed_fraction cannot bring back
        opts = src.get("adapter_opts") or {}
        advice = (f"the adapter's filters dropped them (its options: {opts or 'the defaults'}, "
                  "adapter_opts; see its module docstring in hhh_bench/data/sources/): loosen "
                  "the option that drops them, or give a file with pairs that pass")  # fmt: skip
    else:
        advice = ("check that the file has the fields the adapter reads (its module docstring "
                  "in hhh_bench/data/sources/), or raise data.max_malformed_fraction")  # fmt: skip
    raise SourceConfigError(
        f"source {src.get('name')!r} ({where}, adapter {src.get('adapter')!r}): the adapter "
        f"{what}; dropped rows by reason: {reasons or 'none'} of {n_in} read; {advice}"
    )


def build_preference_splits(
    data_cfg: Mapping[str, Any],
    cache_dir: str | Path | None = None,
    eval_sets: Mapping[str, Sequence[str]] | None = None,
    *,
    conf_dir: str | Path | None = None,
    partitions: Mapping[str, Partition] | None = None,
) -> tuple[dict[str, dict[str, list[PreferenceRow]]], dict[str, Any]]:
    """:func:`build_preference_sets`, then a ``train``/``validation`` split of each dimension
    (:func:`split_holdout` with the data config's ``eval_fraction`` and ``seed``).

    Returns:
        ``({"train": {dim: rows}, "validation": {dim: rows}}, manifest)``; the manifest gains
        ``splits[dim] = {"train": n, "validation": m}``.
    """
    cfg = _plain(data_cfg)
    sets, manifest = build_preference_sets(
        cfg, cache_dir, eval_sets, conf_dir=conf_dir, partitions=partitions
    )
    frac = float(cfg.get("eval_fraction", 0.0) or 0.0)
    out: dict[str, dict[str, list[PreferenceRow]]] = {"train": {}, "validation": {}}
    for dim, rows in sets.items():
        out["train"][dim], out["validation"][dim] = split_holdout(
            rows, frac, f"{cfg.get('seed', 0)}/{dim}"
        )
    manifest["eval_fraction"] = frac
    starved = {d: len(out["validation"][d]) for d in sets if sets[d] and not out["train"][d]}
    if starved:  # battery 20, A-F5: a data output no stage can train on, exit 0
        raise SourceConfigError(
            f"data.eval_fraction={frac} leaves no training pair of {sorted(starved)} (validation "
            f"pairs: {starved}): lower data.eval_fraction (it holds out that share of each "
            "dimension's prompts)"
        )
    empty = [d for d in sets if frac > 0 and not out["validation"][d]]
    if empty:  # battery 18, U5: no held-out margin, no eval loss there, said nowhere
        from hhh_bench.core import console

        console.say(
            f"warning: data.eval_fraction={frac} holds out no validation pair of {empty} (too "
            "few pairs, or prompt groups too large to split): no held-out margin or DPO eval "
            "loss for them; raise data.eval_fraction or the pairs kept"
        )
    manifest["splits"] = {
        dim: {"train": len(out["train"][dim]), "validation": len(out["validation"][dim])}
        for dim in sets
    }
    return out, manifest


def source_counts_table(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One flat record per source (for the results store / a W&B table): identity, counts in,
    out, dropped per reason (``dropped_<reason>``), after leakage, kept."""
    table = []
    for name, s in manifest.get("sources", {}).items():
        rec = {
            "source": name,
            "dimension": s.get("dimension"),
            "hub_id": s.get("hub_id"),
            "revision": s.get("revision"),
            "rows_in": s.get("rows_in"),
            "rows_out": s.get("rows_out"),
            "dropped_truthfulqa": s.get("dropped_truthfulqa", 0),
            "rows_kept": s.get("rows_kept"),
            "ngram_overlap_rows": s.get("ngram_overlap_rows"),
        }
        rec.update({f"dropped_{k}": v for k, v in (s.get("dropped") or {}).items()})
        table.append(rec)
    return table
