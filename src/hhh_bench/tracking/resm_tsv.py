"""RESM against TSV-M in the report: the paper's method against the merge it builds on.

RESM is TSV-M plus two mechanisms (outlier-aware reweighting of each task vector's singular
values, a sparsity-aware rank per layer: docs/merging.md). Where the main table holds both
families (the pipeline's choice of each on the selection split), the report pairs them by seed,
as the answer pairs merge and mixture (:mod:`hhh_bench.tracking.answer`): the difference of
their ``average`` per seed, its Student t interval over seeds and p, whatever the sign. Beside
it, what the mechanisms did, read from each RESM merge's own diagnostics (``diagnostics.json``
beside the merged weights: :mod:`hhh_bench.merging.diagnostics`): in how many decomposed layers
the reweighting moved the merged task vector by at least 1% (relative norm), its largest move,
and in how many layers RESM's rank differs from TSV-M's uniform one. When the reweighting moved
nothing on any seed the comparison is marked **mechanism inert**: RESM then merges as TSV-M
does (full fine-tuning task vectors without outliers), and a difference says nothing of RESM.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hhh_bench.core.seedstats import seed_interval

INERT_BELOW = 1e-6
"""The reweighting's largest relative move of the merged task vector below which it moved
nothing (float rounding of an identity)."""


@dataclass
class Mechanism:
    """What RESM's mechanisms did on one seed, from its merge's diagnostics."""

    layers: int
    moved: int  # layers the reweighting moved by >= moved_at
    moved_at: float
    largest: float  # the largest relative move over layers
    ranks_changed: int  # layers whose rank differs from TSV-M's uniform k


@dataclass
class ResmVsTsv:
    """RESM − TSV-M over paired seeds, and what the mechanisms did."""

    resm: str
    tsv: str
    seeds: list[Any]
    per_seed: list[float]
    diff: float
    low: float | None
    high: float | None
    p_value: float | None
    level: float
    mechanisms: dict[str, Mechanism] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # seeds without readable diagnostics
    switched_off: dict[str, str] = field(default_factory=dict)  # seed: the knobs set off
    condition: str = ""  # where the table holds several conditions: this one's

    @property
    def inert(self) -> bool:
        """The reweighting moved nothing on any seed whose diagnostics were read, and was on in
        each (a chosen ``reweight: none`` is off by configuration, not inert: battery 15, F8)."""
        on = {s: m for s, m in self.mechanisms.items() if s not in self.switched_off}
        return bool(on) and all(m.largest < INERT_BELOW for m in on.values())


def _method(e: Any) -> str:
    return str(e.rows[0].get("method") or "")


def _chosen(entries: Sequence[Any], method: str) -> Any | None:
    """The main table's entry of ``method``: the pipeline's choice, else its only entry."""
    mine = [e for e in entries if e.kind == "merge" and _method(e) == method]
    chosen = [e for e in mine if (e.rows[0].get("extra") or {}).get("selected_on")]
    pool = chosen or mine
    return pool[0] if len(pool) == 1 else None


def mechanism(row: Mapping[str, Any]) -> Mechanism | None:
    """What RESM's mechanisms did in the merge ``row`` evaluated: its ``diagnostics.json``
    (beside the merged weights: the row's ``artifacts.model``, as it is under the row's own
    root), or None when it is not there."""
    from hhh_bench.core.stagecache import output_root, relocated

    artifacts = row.get("artifacts") or {}
    where = str(artifacts.get("model") or row.get("path") or "")
    eval_dir = artifacts.get("eval_dir")
    root = output_root(eval_dir) if isinstance(eval_dir, str) and eval_dir else None
    if where and root is not None:  # a moved or copied root reads its own merge folder
        where = relocated(where, root, output_root(where))
    path = Path(where) / "diagnostics.json"
    try:
        resm = json.loads(path.read_text()).get("resm") or {}
    except (OSError, ValueError, AttributeError):
        return None
    moves = [float(v) for v in (resm.get("reweight_merge_change") or {}).values() if v is not None]
    if not moves:
        return None
    return Mechanism(
        layers=int(resm.get("decomposed_layers") or len(moves)),
        moved=int(resm.get("layers_reweight_moved") or 0),
        moved_at=float(resm.get("moved_at") or 0.01),
        largest=max(moves),
        ranks_changed=int(resm.get("layers_with_changed_rank") or 0),
    )


def resm_vs_tsv(entries: Sequence[Any], *, level: float = 0.95) -> ResmVsTsv | None:
    """RESM − TSV-M on the seeds both were evaluated with (same data), None when the table
    lacks either family or they share no seed."""
    resm, tsv = _chosen(entries, "resm"), _chosen(entries, "tsv")
    if resm is None or tsv is None:
        return None
    a = {r.get("seed"): r for r in resm.rows}
    b = {r.get("seed"): r for r in tsv.rows}
    seeds = sorted((s for s in set(a) & set(b) if a[s].get("data_key") == b[s].get("data_key")),
                   key=str)  # fmt: skip
    if not seeds:
        return None
    per_seed = [float(a[s]["average"]) - float(b[s]["average"]) for s in seeds]
    si = seed_interval(per_seed, level=level)
    out = ResmVsTsv(resm.label, tsv.label, seeds, per_seed, si.diff, si.low, si.high,
                    si.p_value, level)  # fmt: skip
    for s in seeds:
        params = a[s].get("params") or {}
        off = [f"{k}={params[k]}" for k, v in (("reweight", "none"), ("rank", "uniform"))
               if params.get(k) == v]  # fmt: skip
        if off:
            out.switched_off[str(s)] = ", ".join(off)
        m = mechanism(a[s])
        if m is None:
            out.missing.append(str(s))
        else:
            out.mechanisms[str(s)] = m
    return out


def comparisons(entries: Sequence[Any], *, level: float = 0.95) -> list[ResmVsTsv | str]:
    """:func:`resm_vs_tsv` per condition (world and preference noise: the answer's
    :func:`hhh_bench.tracking.answer.condition_of`) that holds both families, or a sentence
    saying why a condition's pair is not shown (several choices of one family: rows of several
    runs). Empty when no condition holds both (battery 15, F4: a second run into the root made
    the section vanish, unsaid)."""
    from hhh_bench.tracking.answer import _condition_text, condition_of

    by: dict[Any, list[Any]] = {}
    for e in entries:
        if e.kind == "merge" and _method(e) in ("resm", "tsv"):
            by.setdefault(condition_of(e), []).append(e)
    out: list[ResmVsTsv | str] = []
    for es in by.values():
        if {_method(e) for e in es} != {"resm", "tsv"}:
            continue
        where = _condition_text(es[0].rows) if len(by) > 1 else ""
        r = resm_vs_tsv(es, level=level)
        if r is None:
            counts = {m: sum(_method(e) == m for e in es) for m in ("resm", "tsv")}
            out.append(
                f"Not shown{' at ' + where if where else ''}: the table holds {counts['resm']} "
                f"choice(s) of resm and {counts['tsv']} of tsv (rows of several runs, or no "
                "shared seed); report each run from its own root to compare them."
            )
        else:
            r.condition = where
            out.append(r)
    return out


def resm_sections(results: Sequence[ResmVsTsv | str]) -> list[str]:
    """The report's *RESM vs TSV-M* section: one comparison per condition, or why not."""
    if not results:
        return []
    md: list[str] = []
    for r in results:
        part = resm_section(r) if isinstance(r, ResmVsTsv) else ["", "## RESM vs TSV-M", "", r, ""]
        md += part if not md else [x for x in part if x != "## RESM vs TSV-M"]
    return md


def resm_section(r: ResmVsTsv | None) -> list[str]:
    """The report's *RESM vs TSV-M* section (nothing without both families)."""
    if r is None:
        return []
    n = len(r.seeds)
    if r.low is None:
        head = f"RESM − TSV-M = {r.diff:+.3f} on {n} seed{'s' if n > 1 else ''}: no interval"
        word = "one seed has no seed-to-seed spread" if n == 1 else "undefined here"
        head += f" ({word})"
    else:
        word = ("inconclusive" if r.low <= 0 <= r.high
                else "RESM better" if r.low > 0 else "TSV-M better")  # fmt: skip
        head = (f"RESM − TSV-M = {r.diff:+.3f}, {r.level:.0%} t interval over {n} paired seeds "
                f"[{r.low:+.3f}, {r.high:+.3f}], p = {r.p_value:.2g}: {word}")  # fmt: skip
    at = f"At {r.condition}: " if r.condition else ""
    md = ["", "## RESM vs TSV-M", "",
          f"{at}{r.resm} against {r.tsv} (each the pipeline's choice on the selection split where it "
          f"made one), paired by seed: {head}."]  # fmt: skip
    if r.inert:
        md += ["", "**Mechanism inert**: RESM's reweighting moved the merged task vector by "
               f"less than {INERT_BELOW:g} (relative norm) in every layer on every seed: RESM "
               "merged as TSV-M does here, so this difference says nothing of RESM."]  # fmt: skip
    if r.switched_off:
        md += ["", "The chosen RESM configuration switches a mechanism off on seed(s) "
               + "; ".join(f"{s} ({k})" for s, k in r.switched_off.items())
               + ": there RESM is TSV-M by construction in that mechanism (a tie on the selection "
               "split goes to the first configuration of the grid), so it is not counted as inert."]  # fmt: skip
    if r.mechanisms:
        md += ["", "| Seed | Layers moved by reweighting | Largest move | Ranks ≠ uniform |",
               "|---|---:|---:|---:|"]  # fmt: skip
        for s, m in r.mechanisms.items():
            md.append(f"| {s} | {m.moved} of {m.layers} (≥ {m.moved_at:.0%}) | {m.largest:.1%} "
                      f"| {m.ranks_changed} of {m.layers} |")  # fmt: skip
    if r.missing:
        md += ["", f"No diagnostics of RESM's merge on seed(s) {', '.join(r.missing)} "
               "(merge_engine.diagnostics=false, or the merged folder is not in this root): "
               "what the mechanisms did there is not known."]  # fmt: skip
    return [*md, ""]
