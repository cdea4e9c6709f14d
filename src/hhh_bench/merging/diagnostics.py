"""Task-vector diagnostics: the structure each merge method bets on, measured per parameter.

One concept: what the task vectors of a merge's inputs look like, read as the engine reads them
(the same inputs, checks and errors), never merged.

A merge method is a bet on the task vectors τ_t = θ_t − θ0 (t = 1..T): TIES on sign conflicts,
DARE on redundancy, TSV-M on interference between the tasks' top singular subspaces, RESM on
heavy tails and uneven outlier density across layers. :func:`diagnose` measures that structure,
streaming one tensor of each model at a time through the merge engine's readers (so it takes
the same inputs as :func:`~hhh_bench.merging.engine.merge_models`: local HF folders with single
or sharded safetensors, hub ids, peft LoRA adapter folders read as θ0 + s·B·A; and, for tests
and notebooks, in-memory state dicts), and fails on bad inputs with the engine's own errors.

Per floating parameter, with x = τ_t flattened (n entries) and T tasks (formulas also in
``docs/merging.md#diagnostics``):

- ``norm`` (per task): ‖τ_t‖_F.
- ``kurtosis`` (per task): **Pearson** kurtosis m4/m2², m_p = (1/n)·Σ(x_i − x̄)^p; a normal
  distribution gives 3, a uniform 1.8, a ±1 vector 1 (subtract 3 for the excess kurtosis).
  None when m2 = 0.
- ``tail_share_<c>`` (per task, c in ``tail_sigmas``, default 3 and 5): the share of ‖τ_t‖²
  carried by entries beyond c robust σ, Σ_{z_i > c} x_i² / Σ x_i², with z_i = |x_i − med x| / σ_r
  and σ_r = 1.4826·MAD (RESM's :func:`~hhh_bench.merging.methods.resm.robust_deviation`, with
  its fallback 1.2533·mean|x − med x| when MAD = 0). None when τ_t = 0; 0 when σ_r = 0.
- ``reweight_change`` (per task, parameters RESM decomposes): ‖τ_t − ρ(τ_t)‖ / ‖τ_t‖ with ρ
  RESM's configured reweighting (``huber_mad``: x_i·min(1, κ/z_i)); 0 means RESM's outlier
  weighting leaves this matrix as it is.
- ``sign_conflict``: among entries non-zero in at least two tasks, the fraction whose non-zero
  signs are not all equal (``sign_conflict_counts`` = [conflicting, eligible]).
- For 2-D parameters (embeddings and the LM head only with ``svd_embeddings``): the top-k left
  singular vectors U_t (m × k_t) of each τ_t, k = ``top_k`` or TSV-M's k = r // T (r = min(m, n),
  at least 1), k_t = min(k, numerical rank of τ_t) (singular values above
  σ_max·max(m, n)·eps, as ``torch.linalg.matrix_rank``):

  - ``subspace_overlap``: mean over task pairs i < j of ‖U_iᵀU_j‖_F² / min(k_i, k_j); 0 for
    orthogonal subspaces, 1 for identical ones (``subspace_overlap_right``: the same for V).
  - ``sti``: the Singular Task Interference of Gargiulo et al. (TSV, CVPR 2025,
    arXiv:2412.00081), STI = ‖(UᵀU − I) Σ (VᵀV − I)‖₁ with U = [U_1 … U_T] (m × Σk_t, the
    tasks' vectors side by side), V likewise, Σ = blockdiag(Σ_1 … Σ_T) of the kept singular
    values and ‖·‖₁ the entrywise L1 norm (sum of absolute values). 0 when every task's
    subspace is orthogonal to every other's. FusionBench's helper
    (``fusion_bench/method/task_singular_vector/utils/task_singular_interference.py``) computes
    the same expression but stacks the U_t along rows, takes every singular triplet and passes
    ``ord="1"`` to ``torch.linalg.norm``; as stored it raises for T ≥ 2 (shape mismatch, and
    torch has no matrix norm ``"1"``), so we follow the paper's definition.
  - ``sti_normalized``: STI / ((T − 1)²·Σ kept σ): 1 for T identical task vectors, 0 for
    mutually orthogonal subspaces (scale-free, comparable across layers). Not bounded by 1:
    tasks sharing a subspace through rotated singular vectors (dense U_iᵀU_j) score above it
    (random subspaces: about 1).

- RESM's rank rule (``resm_*``), from the functions RESM merges with
  (:mod:`hhh_bench.merging.methods.resm`, with ``resm_params``, default RESM's defaults):
  ``resm_route`` (tsv | mean | base: how RESM treats the parameter), ``resm_density`` (D_l, the
  mean over tasks of the share of entries with |τ_t| > M·mean|τ_t|, on decomposed layers),
  ``resm_k`` (the k RESM would keep per task after its first pass over all layers; the same
  plan the engine computes), ``uniform_k`` (TSV-M's k at the same ``rank_fraction``) and
  ``resm_rank_ratio`` = resm_k / uniform_k (1: the rank rule changed nothing).

Aggregates: per layer type (the parameter name after its layer index, ``.weight`` dropped:
``self_attn.q_proj``, ``mlp.down_proj``, ``input_layernorm``; parameters outside the layers keep
their name: ``embed_tokens``, ``norm``, ``lm_head``) and model-wide, each statistic's mean, median,
min, max and count over parameters (per-task statistics first averaged over tasks), plus pooled
figures: ‖τ_t‖ of the whole model, tail shares as Σ(tail energy) / Σ‖τ_t‖² and the sign-conflict
fraction as Σ conflicting / Σ eligible.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import hhh_bench.merging.methods  # noqa: F401  (registers the methods)
from hhh_bench.merging.base import TaskVectors, get_method, validate_tensors
from hhh_bench.merging.driver import Inputs, iter_raw, task_vectors_from_raw
from hhh_bench.merging.linalg import capped_rank, top_svd
from hhh_bench.merging.methods.resm import ResmParams, robust_deviation
from hhh_bench.merging.methods.tsv import is_embedding, tsv_rank
from hhh_bench.merging.sources import (
    VOCAB_POLICIES,
    ModelInput,
    check_inputs,
    name_folders,
    open_inputs,
)

FORMAT = "hhh-bench/diagnostics"
VERSION = 1

PER_TASK_STATS = ("norm", "kurtosis", "reweight_change")
"""Statistics with one value per task (plus ``tail_share_<c>``, one per threshold)."""
SCALAR_STATS = (
    "sign_conflict",
    "subspace_overlap",
    "subspace_overlap_right",
    "sti",
    "sti_normalized",
    "reweight_merge_change",
    "resm_density",
    "resm_rank_ratio",
    "resm_kept_ratio",
)
"""Statistics with one value per parameter."""

MOVED_AT = 0.01
"""``resm.layers_reweight_moved`` counts the decomposed parameters whose merged task vector the
reweighting moves by at least this relative norm (1%)."""

STAT_HELP = {
    "norm": "‖τ_t‖_F",
    "kurtosis": "Pearson kurtosis m4/m2² of τ_t's entries (normal = 3)",
    "tail_share": "share of ‖τ_t‖² in entries with robust z = |x − med|/(1.4826·MAD) > c",
    "reweight_change": "‖τ_t − ρ(τ_t)‖/‖τ_t‖, ρ = RESM's reweighting (decomposed layers)",
    "sign_conflict": "entries whose non-zero signs differ across tasks / entries non-zero in ≥ 2 tasks",
    "subspace_overlap": "mean over task pairs of ‖U_iᵀU_j‖_F²/k (top-k left singular vectors)",
    "subspace_overlap_right": "as subspace_overlap, right singular vectors",
    "sti": "‖(UᵀU − I) Σ (VᵀV − I)‖₁ (entrywise), TSV's singular task interference",
    "sti_normalized": "STI / ((T − 1)²·Σσ): 1 = identical tasks, 0 = orthogonal subspaces, "
    "above 1 for shared subspaces in rotated bases",
    "resm_density": "RESM's D_l: share of entries with |τ_t| > M·mean|τ_t|, mean over tasks",
    "reweight_merge_change": "‖M(ρ(τ)) − M(τ)‖/‖M(τ)‖, M = TSV-M's merge at the uniform k: how "
    "far RESM's reweighting moves the merged task vector",
    "resm_rank_ratio": "k RESM keeps / TSV-M's uniform k (1 = the rank rule changed nothing)",
    "resm_kept_ratio": "directions RESM keeps / TSV-M keeps, each k capped by the task's numerical "
    "rank, summed over tasks (1 = the rank rule changed no kept direction)",
}


def stat_help(stat: str) -> str:
    """One line saying what a statistic is (``tail_share_<c>`` with its threshold)."""
    if stat.startswith("tail_share_"):
        c = stat.removeprefix("tail_share_")
        return f"share of ‖τ_t‖² in entries with robust z = |x − med|/(1.4826·MAD) > {c}"
    return STAT_HELP.get(stat, stat)


# Params of RESM that only scale or seed the merge: not part of what the diagnostics depend on.
_COMPOSE_KNOBS = ("scaling", "weights", "seed", "device", "compute_dtype")
_LAYER = re.compile(r"^(.*?)\.(\d+)\.(.+)$")


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def _label_of(x: ModelInput) -> str:
    return "<state dict>" if isinstance(x, Mapping) else str(x)


# ---------------------------------------------------------------------------------------------
# Per-tensor statistics (each on one task vector or one (T, *shape) stack)
# ---------------------------------------------------------------------------------------------


def layer_of(name: str) -> tuple[int | None, str]:
    """(layer index, layer type) of a parameter name: the first all-digit dotted component is the
    index, what follows it (``.weight`` dropped) the type; names without an index keep their name
    (``model.`` and ``.weight`` dropped).

    >>> layer_of("model.layers.3.self_attn.q_proj.weight")
    (3, 'self_attn.q_proj')
    >>> layer_of("model.embed_tokens.weight")
    (None, 'embed_tokens')
    """
    stem = name.removesuffix(".weight")
    m = _LAYER.match(stem)
    if m:
        return int(m.group(2)), m.group(3)
    return None, stem.removeprefix("model.")


def kurtosis(x: Tensor) -> float | None:
    """Pearson kurtosis m4/m2² of the entries of ``x`` (normal: 3), None if m2 = 0.

    Moments about the mean with float64 accumulation; ``x`` is first divided by its largest
    deviation (kurtosis is scale-free) so that fourth powers of tiny deltas do not underflow.
    """
    x = x.reshape(-1)
    n = x.numel()
    if n < 2:
        return None
    c = x - (x.sum(dtype=torch.float64) / n).to(x.dtype)
    top = float(c.abs().max())
    if top == 0.0 or not math.isfinite(top):
        return None
    c = c / top
    c2 = c * c
    m2 = float(c2.sum(dtype=torch.float64)) / n
    m4 = float((c2 * c2).sum(dtype=torch.float64)) / n
    return m4 / (m2 * m2) if m2 > 0.0 else None


def tail_shares(x: Tensor, sigmas: Sequence[float]) -> list[float | None]:
    """For each c in ``sigmas``: Σ x_i² over entries with |x_i − med| > c·σ_r, divided by Σ x_i²
    (σ_r from :func:`~hhh_bench.merging.methods.resm.robust_deviation`). None if x = 0; 0 if
    σ_r = 0 (no entry is an outlier by RESM's rule)."""
    x = x.reshape(-1)
    sq = x * x
    energy = float(sq.sum(dtype=torch.float64))
    if energy == 0.0:
        return [None for _ in sigmas]
    dev, scale = robust_deviation(x)
    if scale == 0.0:
        return [0.0 for _ in sigmas]
    return [float(sq[dev > c * scale].sum(dtype=torch.float64)) / energy for c in sigmas]


def sign_conflict(taus: Tensor) -> tuple[int, int]:
    """(conflicting, eligible) entries of a (T, ...) stack: eligible = non-zero in at least two
    tasks, conflicting = eligible with both a positive and a negative value among the tasks."""
    flat = taus.reshape(taus.shape[0], -1)
    pos = (flat > 0).sum(dim=0)
    neg = (flat < 0).sum(dim=0)
    eligible = int(((pos + neg) >= 2).sum())
    conflicting = int(((pos > 0) & (neg > 0)).sum())
    return conflicting, eligible


def subspace_stats(taus: TaskVectors | Tensor, k: int) -> dict[str, Any]:
    """Top-k subspace overlap (left and right) and singular task interference of T task vectors
    of one matrix (see the module docstring; k_t = min(k, numerical rank), from
    :func:`~hhh_bench.merging.linalg.top_svd`, exact for LoRA factors). Values are None when
    T < 2 or a task vector is 0."""
    if isinstance(taus, Tensor):
        taus = TaskVectors.from_stack(taus)
    num = len(taus)
    out: dict[str, Any] = {
        "svd_k": k,
        "svd_rank": None,
        "subspace_overlap": None,
        "subspace_overlap_right": None,
        "sti": None,
        "sti_normalized": None,
    }
    triplets = [top_svd(t, k, noise=nz) for t, nz in zip(taus.items, taus.noise, strict=True)]
    ranks = [int(s.numel()) for _, s, _ in triplets]
    out["svd_rank"] = ranks
    if num < 2 or min(ranks) == 0:
        return out
    us = [u for u, _, _ in triplets]
    vs = [v for _, _, v in triplets]
    pairs = [(i, j) for i in range(num) for j in range(i + 1, num)]
    out["subspace_overlap"] = sum(
        float((us[i].T @ us[j]).square().sum()) / min(ranks[i], ranks[j]) for i, j in pairs
    ) / len(pairs)
    out["subspace_overlap_right"] = sum(
        float((vs[i].T @ vs[j]).square().sum()) / min(ranks[i], ranks[j]) for i, j in pairs
    ) / len(pairs)
    big_u, big_v = torch.cat(us, dim=1), torch.cat(vs, dim=1)
    sig = torch.cat([s for _, s, _ in triplets])
    eye = torch.eye(big_u.shape[1], dtype=big_u.dtype, device=big_u.device)
    inter = ((big_u.T @ big_u - eye) * sig) @ (big_v.T @ big_v - eye)  # (UᵀU − I)·Σ·(VᵀV − I)
    sti = float(inter.abs().sum(dtype=torch.float64))
    out["sti"] = sti
    total = float(sig.sum(dtype=torch.float64))
    out["sti_normalized"] = sti / ((num - 1) ** 2 * total) if total > 0 else None
    return out


def _tail_key(c: float) -> str:
    return f"tail_share_{c:g}"


def _param_record(
    name: str,
    base: Tensor,
    taus: TaskVectors,
    rp: ResmParams,
    *,
    top_k: int | None,
    tail_sigmas: Sequence[float],
    svd: bool,
    svd_embeddings: bool,
) -> dict[str, Any]:
    """Every per-parameter statistic of one floating parameter (plain Python values)."""
    resm = get_method("resm")
    num = len(taus)
    stack = taus.stack()  # (T, *shape) in the compute dtype, on the device
    layer, kind = layer_of(name)
    rec: dict[str, Any] = {
        "name": name,
        "layer": layer,
        "type": kind,
        "shape": list(base.shape),
        "numel": base.numel(),
        "norm": [float(t.norm(dtype=torch.float64)) for t in stack],
        "kurtosis": [kurtosis(t) for t in stack],
    }
    shares = [tail_shares(t, tail_sigmas) for t in stack]
    for i, c in enumerate(tail_sigmas):
        rec[_tail_key(c)] = [s[i] for s in shares]
    conflicting, eligible = sign_conflict(stack)
    rec["sign_conflict"] = conflicting / eligible if eligible else None
    rec["sign_conflict_counts"] = [conflicting, eligible]
    rec.update(resm.diagnostics(name, base, taus, rp))
    if svd and base.dim() == 2 and (svd_embeddings or not is_embedding(name)):
        r = min(base.shape)
        k = min(int(top_k), r) if top_k is not None else max(1, tsv_rank(r, num, None))
        rec.update(subspace_stats(taus, k))
        rec["reweight_merge_change"] = resm.merged_reweight_change(name, base, taus, rp)
        if rec["resm_route"] == "tsv":
            # no k exceeds r // T (the clip of rank_for and tsv_rank), so the rank is capped
            # there: a sketch of r // T + 8 columns, not a full SVD
            cap = max(1, r // num)
            rec["numerical_rank"] = [
                capped_rank(t, cap, rp.rank_rtol, nz)
                for t, nz in zip(taus.items, taus.noise, strict=True)
            ]
    return rec


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------


def _mean(vals: Sequence[float | None]) -> float | None:
    v = [x for x in vals if x is not None]
    return sum(v) / len(v) if v else None


def param_value(rec: Mapping[str, Any], stat: str) -> float | None:
    """One number per parameter: a per-task statistic averaged over tasks, else the value."""
    v = rec.get(stat)
    if isinstance(v, list):
        return _mean(v)
    return None if v is None else float(v)


def stat_names(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The statistics present in ``records``, in a stable order (tail shares by threshold)."""
    tails = sorted(
        {k for r in records for k in r if k.startswith("tail_share_")},
        key=lambda k: float(k.removeprefix("tail_share_")),
    )
    return ["norm", "kurtosis", *tails, "reweight_change", *SCALAR_STATS]


def _describe(vals: list[float]) -> dict[str, Any]:
    if not vals:
        return {"mean": None, "median": None, "min": None, "max": None, "n": 0}
    return {
        "mean": sum(vals) / len(vals),
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
    }


def summarize(records: Sequence[Mapping[str, Any]], num_models: int) -> dict[str, Any]:
    """Mean, median, min, max and count of every statistic over ``records`` (per-task statistics
    averaged over tasks first), plus the pooled figures (see the module docstring)."""
    out: dict[str, Any] = {"n_params": len(records), "numel": sum(r["numel"] for r in records)}
    for stat in stat_names(records):
        vals = [v for r in records if (v := param_value(r, stat)) is not None]
        out[stat] = _describe(vals)
    energy = [sum(r["norm"][t] ** 2 for r in records) for t in range(num_models)]
    pooled: dict[str, Any] = {"norm": [math.sqrt(e) for e in energy]}
    for key in [k for k in stat_names(records) if k.startswith("tail_share_")]:
        pooled[key] = [
            sum((r[key][t] or 0.0) * r["norm"][t] ** 2 for r in records) / energy[t]
            if energy[t] > 0
            else None
            for t in range(num_models)
        ]
    conflicting = sum(r["sign_conflict_counts"][0] for r in records)
    eligible = sum(r["sign_conflict_counts"][1] for r in records)
    pooled["sign_conflict"] = conflicting / eligible if eligible else None
    pooled["sign_conflict_counts"] = [conflicting, eligible]
    out["pooled"] = pooled
    return out


def _layer_types(records: Sequence[Mapping[str, Any]], num_models: int) -> dict[str, Any]:
    order: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        order.setdefault(r["type"], []).append(r)
    return {kind: summarize(recs, num_models) for kind, recs in order.items()}


# ---------------------------------------------------------------------------------------------
# diagnose
# ---------------------------------------------------------------------------------------------


def resm_knobs(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """RESM's validated parameters as the diagnostics depend on them: ``params`` over RESM's
    defaults, without the knobs that only scale or seed a merge (scaling, weights, seed, device,
    compute_dtype)."""
    given = {k: v for k, v in (params or {}).items() if k not in _COMPOSE_KNOBS}
    p = get_method("resm").make_params(**given)
    return {k: v for k, v in p.to_dict().items() if k not in _COMPOSE_KNOBS}


def diagnose(
    base: ModelInput,
    finetuned: Sequence[ModelInput],
    *,
    top_k: int | None = None,
    tail_sigmas: Sequence[float] = (3.0, 5.0),
    svd: bool = True,
    svd_embeddings: bool = False,
    resm_params: Mapping[str, Any] | None = None,
    compute_dtype: str = "float32",
    device: str = "cpu",
    vocab_policy: str = "error",
    allow_pickle: bool = False,
    allow_architecture_mismatch: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Diagnose the task vectors τ_t = θ_t − θ0 of ``finetuned`` against ``base``, streaming.

    Reads one tensor of each model at a time through the merge engine's readers and keeps only
    small numbers per parameter, so peak memory is a small multiple of (T + 1) × the largest
    tensor (one parameter's inputs, their task vectors and temporaries), whatever the number of
    layers; RESM's rank plan needs the densities of all layers, kept along the way.

    Args:
        base: θ0: a model folder or hub id (safetensors), or a state dict.
        finetuned: the T specialists: folders, hub ids, peft LoRA adapter folders (θ0 + s·B·A
            exactly, as the engine reads them) or state dicts.
        top_k: k of the singular-subspace statistics (clipped to r = min(m, n)); None: TSV-M's
            k = r // T (at least 1), the number of triplets TSV-M keeps per task.
        tail_sigmas: the thresholds c of the ``tail_share_<c>`` statistics, in robust σ.
        svd: compute the singular-subspace statistics (the expensive part: T SVDs per matrix).
        svd_embeddings: include embeddings and the LM head in them (large, vocabulary-sized).
        resm_params: RESM's knobs (``describe_method("resm")``) for the reweighting change, the
            outlier density and the ranks; None: RESM's defaults. Compose-only knobs (scaling,
            weights, seed) are ignored.
        compute_dtype: ``float32`` or ``float64`` arithmetic (accumulations are float64).
        device: torch device of the arithmetic.
        vocab_policy: as the engine: ``error`` | ``base`` (skip vocabulary-sized tensors whose
            row counts differ) | ``truncate_to_base`` (diagnose the shared rows).
        allow_pickle: accept ``.bin``/``.pt`` checkpoints (they can run code when loaded).
        allow_architecture_mismatch: as the engine's (``merge_engine.allow_architecture_mismatch``).
        progress: show a progress bar.

    Returns:
        A JSON-serializable report: ``format``, ``version``, ``num_models``, ``inputs``,
        ``options``, ``params`` (one record per floating parameter, see the module docstring),
        ``layer_types`` and ``model`` (summaries), ``resm`` (its parameters, density range, the
        ranks it would choose and how many differ from TSV-M's uniform k), ``skipped``
        (parameters not diagnosed, with the reason), ``statistics`` (a line per statistic) and
        ``seconds``.

    Raises:
        ValueError: bad inputs, with the engine's messages (architecture, missing or extra
            tensor, shape, vocabulary size, dtype, NaN/Inf, pickle files), or a bad option.
    """
    t0 = time.time()
    if vocab_policy not in VOCAB_POLICIES:
        raise ValueError(f"vocab_policy must be one of {VOCAB_POLICIES}, got {vocab_policy!r}")
    if not finetuned:
        raise ValueError("no finetuned models: pass at least one")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
        raise ValueError(f"diagnose: top_k must be a positive integer or None, got {top_k!r}")
    sigmas = [float(c) for c in tail_sigmas]
    if not sigmas or any(not (0.0 < c < math.inf) for c in sigmas):
        raise ValueError(f"diagnose: tail_sigmas must be positive numbers, got {tail_sigmas!r}")
    knobs = resm_knobs(resm_params)
    resm = get_method("resm")
    rp = resm.make_params(**knobs, device=device, compute_dtype=compute_dtype)
    assert isinstance(rp, ResmParams)

    try:
        base_r, models = open_inputs(base, finetuned, allow_pickle)
        decisions = check_inputs(base_r, models, vocab_policy, allow_architecture_mismatch)
        inputs = Inputs(base_r, models, base_r.keys(), decisions)
        num = len(models)
        records: list[dict[str, Any]] = []
        skipped: list[dict[str, str]] = []
        resm_stats: dict[str, Any] = {}
        needs_plan = resm.needs_global_pass(rp)

        keys = []
        for k in inputs.keys:
            if decisions.get(k) == "base":
                skipped.append({"name": k, "reason": "vocabulary size differs (vocab_policy=base)"})
            else:
                keys.append(k)
        from tqdm.auto import tqdm

        # One tensor of each model at a time (the next one read ahead), released after use.
        for k, raw in tqdm(
            iter_raw(inputs, keys),
            desc="diagnosing task vectors",
            total=len(keys),
            disable=not progress,
            unit="tensor",
            mininterval=1.0,
        ):
            b = raw.base
            if not b.is_floating_point():
                validate_tensors(k, b, [t if isinstance(t, Tensor) else b for t in raw.fts or []])
                skipped.append({"name": k, "reason": f"non-floating buffer ({b.dtype})"})
                continue
            taus = task_vectors_from_raw(k, raw, rp.dtype, rp.device)
            records.append(
                _param_record(
                    k,
                    b,
                    taus,
                    rp,
                    top_k=top_k,
                    tail_sigmas=sigmas,
                    svd=svd,
                    svd_embeddings=svd_embeddings,
                )
            )
            if needs_plan:
                s = resm.tensor_stats(k, b, taus, rp)
                if s is not None:
                    resm_stats[k] = s
            del taus, raw
        inputs.close()
    except ValueError as e:  # the engine's message, naming the model's folder as it does
        named = name_folders(e, finetuned)
        if named is not None:
            raise named from None
        raise

    plan = resm.plan(resm_stats, rp) if needs_plan else {}
    ranks: dict[str, int] = {}
    uniform: dict[str, int] = {}
    kept: dict[str, list[int]] = {}
    kept_uniform: dict[str, list[int]] = {}
    moved: dict[str, float] = {}
    for rec in records:
        rec["resm_k"] = rec["uniform_k"] = rec["resm_rank_ratio"] = None
        rec["resm_kept"] = rec["uniform_kept"] = rec["resm_kept_ratio"] = None
        rec.setdefault("reweight_merge_change", None)
        if rec["resm_route"] != "tsv":
            continue
        r = min(rec["shape"])
        k_resm = resm.rank_for(r, num, rp, plan.get(rec["name"], {}))  # type: ignore[attr-defined]
        k_uni = tsv_rank(r, num, rp.rank_fraction)
        rec["resm_k"], rec["uniform_k"] = k_resm, k_uni
        rec["resm_rank_ratio"] = k_resm / k_uni if k_uni else None
        ranks[rec["name"]], uniform[rec["name"]] = k_resm, k_uni
        if rec.get("numerical_rank") is not None:
            kept_r = [min(k_resm, nr) for nr in rec["numerical_rank"]]
            kept_u = [min(k_uni, nr) for nr in rec["numerical_rank"]]
            rec["resm_kept"], rec["uniform_kept"] = kept_r, kept_u
            rec["resm_kept_ratio"] = sum(kept_r) / sum(kept_u) if sum(kept_u) else None
            kept[rec["name"]], kept_uniform[rec["name"]] = kept_r, kept_u
        if rec["reweight_merge_change"] is not None:
            moved[rec["name"]] = rec["reweight_merge_change"]
    dens = [r["resm_density"] for r in records if r["resm_density"] is not None]
    report: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "num_models": num,
        "inputs": {"base": _label_of(base), "finetuned": [_label_of(f) for f in finetuned]},
        "options": {
            "top_k": top_k,
            "tail_sigmas": sigmas,
            "svd": svd,
            "svd_embeddings": svd_embeddings,
            "compute_dtype": compute_dtype,
            "vocab_policy": vocab_policy,
        },
        "statistics": {s: stat_help(s) for s in stat_names(records)},
        "params": records,
        "layer_types": _layer_types(records, num),
        "model": summarize(records, num),
        "resm": {
            "params": knobs,
            "decomposed_layers": len(ranks),
            "density": _describe(dens) if dens else None,
            "ranks": ranks,
            "uniform_ranks": uniform,
            "layers_with_changed_rank": sum(ranks[n] != uniform[n] for n in ranks),
            "kept": kept,
            "uniform_kept": kept_uniform,
            "layers_with_changed_kept": sum(kept[n] != kept_uniform[n] for n in kept),
            "reweight_merge_change": moved,
            "moved_at": MOVED_AT,
            "layers_reweight_moved": sum(v >= MOVED_AT for v in moved.values()),
        },
        "skipped": skipped,
        "seconds": round(time.time() - t0, 3),
    }
    return _json_safe(report)


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None, tuples -> lists (the report is written with ``allow_nan=False``)."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_report(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``report`` as indented JSON (no NaN)."""
    path = Path(path)
    path.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    return path


def parameter_table(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One small dict per parameter: name, layer, type and each statistic's single value
    (per-task statistics averaged over tasks): what the report's heatmaps draw."""
    records = report["params"]
    stats = stat_names(records)
    return [
        {
            "name": r["name"],
            "layer": r["layer"],
            "type": r["type"],
            **{s: param_value(r, s) for s in stats},
        }
        for r in records
    ]


def resm_params_for(method: str | None, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The knobs of a merge that RESM's diagnostics (reweighting change, density, ranks) take:
    all of RESM's for ``resm`` (or a subclass of its params), ``rank_fraction``, ``rank_rtol``
    and ``embeddings`` for TSV-M-like methods, none otherwise (RESM's defaults)."""
    if not method or not params:
        return {}
    from hhh_bench.merging import get_method
    from hhh_bench.merging.methods.resm import ResmParams
    from hhh_bench.merging.methods.tsv import TsvParams

    cls = get_method(str(method)).params_cls
    if issubclass(cls, ResmParams):
        names = {f.name for f in dataclasses.fields(ResmParams)}
    elif issubclass(cls, TsvParams):
        names = {"rank_fraction", "rank_rtol", "embeddings"}
    else:
        return {}
    return {k: v for k, v in params.items() if k in names}
