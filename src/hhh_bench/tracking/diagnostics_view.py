"""Markdown views of a task-vector diagnostics report (:func:`hhh_bench.merging.diagnostics.diagnose`):
the model card's section, and the experiment report's tables of diagnostics rows (the
model-wide table, one table per layer type) and their heatmaps' axes. Reads report dicts and
diagnostics rows (:func:`hhh_bench.tracking.store.read_diagnostics`) only."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hhh_bench.tracking.markdown import md_text

CARD_HEADING = "## Task-vector diagnostics"


def _mean(vals: Any) -> float | None:
    v = [x for x in (vals or []) if x is not None]
    return sum(v) / len(v) if v else None


def _tails(report: Mapping[str, Any]) -> list[str]:
    pooled = report["model"]["pooled"]
    return sorted(
        (k for k in pooled if k.startswith("tail_share_")),
        key=lambda k: float(k.removeprefix("tail_share_")),
    )


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return (
            f"{v:.{digits}g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.{digits}f}"
        )
    return str(v)


TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("norm", "mean", "‖τ‖"),
    ("kurtosis", "median", "kurtosis (med.)"),
    ("tail_share_3", "mean", "> 3σ"),
    ("tail_share_5", "mean", "> 5σ"),
    ("reweight_change", "mean", "reweight Δ"),
    ("sign_conflict", "mean", "sign conflict"),
    ("subspace_overlap", "mean", "overlap"),
    ("sti_normalized", "mean", "STI (norm.)"),
    ("resm_density", "mean", "RESM D"),
    ("resm_rank_ratio", "mean", "k / k_uniform"),
)
"""(statistic, summary field, header) of :func:`layer_type_table`."""


def layer_type_table(layer_types: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table, one row per layer type: the mean of each statistic over the type's
    parameters (the median for kurtosis), per-task statistics averaged over tasks."""
    head = "| layer type | params | " + " | ".join(h for _, _, h in TABLE_COLUMNS) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(TABLE_COLUMNS)]
    for kind, summ in layer_types.items():
        cells = [_f((summ.get(stat) or {}).get(field)) for stat, field, _ in TABLE_COLUMNS]
        lines.append(f"| {kind} | {summ['n_params']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def layer_axes(rows: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[str]]:
    """The layer indices (sorted) and layer types (first-seen order) of the diagnostics rows'
    per-parameter tables: the axes of the report's heatmaps. Parameters outside the layers
    (embeddings, final norm, LM head) have no layer and are left out."""
    layers = sorted(
        {int(p["layer"]) for r in rows for p in r["params"] if p.get("layer") is not None}
    )
    types: dict[str, None] = {}
    for r in rows:
        for p in r["params"]:
            if p.get("layer") is not None:
                types.setdefault(p["type"], None)
    return layers, list(types)


def diagnostics_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Model-wide figures, one row per diagnostics set: mean ‖τ_t‖ over tasks, median
    kurtosis, pooled tail shares and sign conflicts, mean overlap and normalized STI, RESM's
    density range, reweighting change and changed ranks."""

    def f(v: Any) -> str:
        return "-" if v is None else f"{float(v):.3f}"

    def mean(vals: Sequence[Any] | None) -> float | None:
        v = [x for x in (vals or []) if x is not None]
        return sum(v) / len(v) if v else None

    head = (
        "| set | T | ‖τ_t‖ (mean) | kurtosis (median) | > 3σ | > 5σ | sign conflict | overlap "
        "| STI (norm.) | reweight Δ | RESM D (min–max) | k ≠ uniform |"
    )
    lines = [head, "|---|---:|" + "---:|" * 10]
    for r in rows:
        m, pooled, resm = r["model"], r["model"].get("pooled", {}), r.get("resm") or {}
        dens = resm.get("density") or {}
        cells = [
            str(r["num_models"]),
            f(mean(pooled.get("norm"))),
            f(m.get("kurtosis", {}).get("median")),
            f(mean(pooled.get("tail_share_3"))),
            f(mean(pooled.get("tail_share_5"))),
            f(pooled.get("sign_conflict")),
            f(m.get("subspace_overlap", {}).get("mean")),
            f(m.get("sti_normalized", {}).get("mean")),
            f(m.get("reweight_change", {}).get("mean")),
            f"{f(dens.get('min'))}–{f(dens.get('max'))}",
            f"{resm.get('layers_with_changed_rank', '-')} / {resm.get('decomposed_layers', '-')}",
        ]
        lines.append(f"| {md_text(r.get('label', r['row_key']))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def model_line_items(report: Mapping[str, Any]) -> list[str]:
    """The model-wide figures as Markdown bullet lines."""
    model = report["model"]
    pooled = model["pooled"]
    resm = report["resm"]
    tails = _tails(report)
    tail_txt = " / ".join(
        f"{_f(_mean(pooled[k]))} beyond {k.removeprefix('tail_share_')}σ" for k in tails
    )
    knobs = resm["params"]
    dens = resm.get("density") or {}
    return [
        "- ‖τ_t‖ over the whole model: " + ", ".join(_f(n) for n in pooled["norm"]),
        f"- kurtosis (Pearson, normal = 3): median over parameters "
        f"{_f(model['kurtosis']['median'])} (range {_f(model['kurtosis']['min'])}–"
        f"{_f(model['kurtosis']['max'])})",
        f"- share of ‖τ_t‖² (pooled over the model, mean over tasks): {tail_txt}",
        f"- sign conflicts among entries non-zero in ≥ 2 tasks: {_f(pooled['sign_conflict'])}",
        f"- top-k singular subspaces (mean over matrices and task pairs): overlap "
        f"{_f(model['subspace_overlap']['mean'])}, STI normalized "
        f"{_f(model['sti_normalized']['mean'])}",
        f"- RESM (reweight={knobs['reweight']}, κ={knobs['kappa']:g}, rank={knobs['rank']}, "
        f"M={knobs['outlier_ratio_M']:g}, spread={knobs['rank_spread']:g}): reweighting changes "
        f"τ_t by {_f(model['reweight_change']['mean'])} (mean ‖τ − ρ(τ)‖/‖τ‖); outlier density "
        f"D {_f(dens.get('min'))}–{_f(dens.get('max'))}; k differs from TSV-M's uniform k in "
        f"{resm['layers_with_changed_rank']} of {resm['decomposed_layers']} decomposed layers"
        + _kept_moved(resm),
    ]


def _kept_moved(resm: Mapping[str, Any]) -> str:
    """The kept directions and the merged task vector's move, where the report has them (reports
    written before they existed do not)."""
    out = ""
    if "layers_with_changed_kept" in resm:
        out += (
            f", the directions kept (k capped by each task's numerical rank) in "
            f"{resm['layers_with_changed_kept']}"
        )
    if resm.get("reweight_merge_change"):
        vals = list(resm["reweight_merge_change"].values())
        out += (
            f"; reweighting moves the merged task vector (TSV-M at the uniform k) by "
            f"{_f(min(vals))}–{_f(max(vals))} (relative norm), by ≥ {resm['moved_at']:.0%} in "
            f"{resm['layers_reweight_moved']} of {len(vals)} layers"
        )
    return out


def summary_markdown(
    report: Mapping[str, Any], *, heading: str = "## Task-vector diagnostics"
) -> str:
    """A short Markdown section (model card, report): model-wide figures and the layer-type
    table. Formulas: ``docs/merging.md#diagnostics``."""
    lines = [
        heading,
        "",
        f"T = {report['num_models']} task vectors τ_t = θ_t − θ0 over "
        f"{report['model']['n_params']} floating parameters ({report['model']['numel']} entries); "
        "every number per parameter is in `diagnostics.json`, the formulas in hhh-bench's "
        "docs/merging.md (Diagnostics).",
        "",
        *model_line_items(report),
        "",
        "Per layer type (means over parameters and tasks; kurtosis: median):",
        "",
        layer_type_table(report["layer_types"]),
    ]
    return "\n".join(lines) + "\n"


def _replace_file(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def attach_to_model(out_dir: str | Path, diag: Mapping[str, Any]) -> Path:
    """Copy a :func:`run_diagnose` result's ``diagnostics.json`` into a merged model's folder and
    put its summary as the last section of the model card (``README.md``), replacing an earlier
    one; idempotent. Returns the copied file's path."""
    out = Path(out_dir)
    dst = out / "diagnostics.json"
    text = Path(diag["path"]).read_text()
    if not dst.is_file() or dst.read_text() != text:
        _replace_file(dst, text)
    card = out / "README.md"
    old = card.read_text() if card.is_file() else ""
    kept = old.split(CARD_HEADING)[0].rstrip("\n")
    new = (kept + "\n\n" if kept else "") + diag["markdown"]
    if new != old:
        _replace_file(card, new)
    return dst


SCORES_BEGIN = "<!-- hhh-bench:scores -->"
SCORES_END = "<!-- /hhh-bench:scores -->"
SCORE_FIELDS = ("helpful", "honest", "harmless", "average", "min")


def attach_scores(model_dir: str | Path, row: Mapping[str, Any]) -> bool:
    """Record a results-store row's scores in a merged model's folder (``scores.json``, one
    entry per row key) and show them all as the card's *Scores* section, placed before the
    diagnostics section (which :func:`attach_to_model` rewrites). Returns False, touching
    nothing, when ``model_dir`` is not a merge output (no hhh-bench model card)."""
    import json

    out = Path(model_dir)
    card = out / "README.md"
    if not card.is_file() or "Merged with hhh-bench" not in card.read_text():
        return False
    store = out / "scores.json"
    scores = json.loads(store.read_text()) if store.is_file() else {}
    entry = {k: row.get(k) for k in ("split", "suite", "metric", "seed", "setup_key")}
    entry.update({k: row.get(k) for k in SCORE_FIELDS})
    if scores.get(str(row["row_key"])) == entry:
        return True
    scores[str(row["row_key"])] = entry
    _replace_file(store, json.dumps(scores, indent=2, sort_keys=True) + "\n")
    lines = [
        SCORES_BEGIN,
        "## Scores (hhh-bench)",
        "",
        "| Split | Suite | Metric | Seed | Helpful | Honest | Harmless | Avg | Min |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for e in sorted(
        scores.values(), key=lambda e: (str(e["suite"]), str(e["split"]), str(e["seed"]))
    ):
        nums = " | ".join(_f(e.get(k)) for k in SCORE_FIELDS)
        lines.append(f"| {e['split']} | {e['suite']} | {e['metric']} | {e['seed']} | {nums} |")
    section = "\n".join([*lines, "", SCORES_END])
    old = card.read_text()
    if SCORES_BEGIN in old and SCORES_END in old:
        head, rest = old.split(SCORES_BEGIN, 1)
        new = head + section + rest.split(SCORES_END, 1)[1]
    elif CARD_HEADING in old:
        head, tail = old.split(CARD_HEADING, 1)
        new = head.rstrip("\n") + "\n\n" + section + "\n\n" + CARD_HEADING + tail
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    _replace_file(card, new)
    return True
