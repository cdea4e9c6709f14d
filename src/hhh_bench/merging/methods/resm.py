"""RESM: TSV-M with outlier weighting and sparsity-aware rank selection.

Yang et al. 2025, "Mix Data or Merge Models? Balancing the Helpfulness, Honesty, and Harmlessness
of Large Language Model via Model Merging", arXiv:2502.06876. The paper's full text was not
available to us; what follows is **our reading of its stated design** (TSV-M, plus outlier-aware
reweighting of the task vectors, plus per-layer rank budgets driven by sparsity), not its exact
equations. Both additions are strategies in small registries (:func:`register_reweight`,
:func:`register_rank`), so the paper's exact rules can be dropped in and ablations are one
override away; ``reweight=none, rank=uniform`` is TSV-M exactly.

Pipeline per 2-D parameter (routing, weights, λ and the polar step as in
:mod:`hhh_bench.merging.methods.tsv`):

1. **Reweight** (``reweight``, applied to each τ_t that enters an SVD; means and embeddings
   under ``embeddings: mean`` use the raw τ_t):

   - ``huber_mad`` (default): z_i = |x_i − med(x)| / (1.4826·MAD(x)), MAD = med|x − med(x)|
     (``torch.median``: the lower median for an even count); entries with z_i > κ are scaled by
     κ/z_i (the Huber weight), x'_i = x_i·min(1, κ/z_i). If MAD = 0 (over half the entries equal,
     e.g. a sparse τ) the scale falls back to 1.2533·mean|x − med(x)|; if that is 0 too, x is left
     as it is.
   - ``none``: x' = x (a LoRA task vector then stays in its factors).

   Reweighting acts entrywise, so a LoRA task vector is formed densely first, and the
   reweighted τ'_t is in general of full rank: its small singular directions are real (the
   clipped residue), not rounding, and enter the SVD like any other. With ``restore_norm``,
   τ'_t is rescaled to ‖τ_t‖_F after clipping (the clipped mass is redistributed over the
   entries instead of being lost; off by default).

2. **Rank** (``rank``; k per task and layer, then T blocks of k triplets):

   - ``uniform``: k = int(r·f), f = ``rank_fraction`` (null: 1/T), as TSV-M.
   - ``outlier_density`` (default, OWL-style): D_l = mean over tasks of the fraction of entries
     of τ_t (raw) with |τ| > M·mean|τ_t| in layer l (M = ``outlier_ratio_M``); then
     f_l = f·(1 + spread·(D_l − mean D)/(max D − min D)) over the decomposed layers (f_l = f when
     all D are equal), k_l = int(r_l·f_l) clipped to [1, r_l // T] so that T·k_l ≤ r_l. Note:
     with the default f = 1/T the clip caps layers above the mean at r // T, so the rule only
     takes rank from outlier-poor layers; set ``rank_fraction`` below 1/T to let outlier-rich
     layers gain. Needs a first pass over all layers (``merge_state_dicts`` or the engine); on a
     single tensor it reduces to ``uniform``.

   Whatever the rule, a task keeps k_t = min(k_l, numerical rank of its τ_t) directions of τ'_t:
   the rank of the task vector before reweighting (:func:`~hhh_bench.merging.linalg.capped_rank`),
   so that the clipping residue cannot add directions τ_t never had.

What of the paper is not built here (its full text was not available): the exact outlier
score and weight function (we use robust z-scores and Huber weights), any rule that couples the
weights across tasks, and the exact form of the rank allocation (we use OWL's linear rule
around TSV-M's k). Each is a strategy slot (:func:`register_reweight`, :func:`register_rank`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hhh_bench.core.registry import Registry
from hhh_bench.merging.base import PlanEntry, TaskVectors, param, register_method
from hhh_bench.merging.linalg import capped_rank
from hhh_bench.merging.methods.tsv import TsvBase, TsvParams, tsv_compose, tsv_factors, tsv_rank
from hhh_bench.merging.taskvec import LowRank, TaskVector

ReweightFn = Callable[[Tensor, "ResmParams"], Tensor]
"""One task vector τ_t (any shape) and the params -> the reweighted τ_t (same shape)."""


@dataclass(frozen=True)
class RankStrategy:
    """How RESM picks k per layer.

    Attributes:
        needs_stats: whether :attr:`layer_stats` must run over all layers first.
        layer_stats: (T, m, n) raw task vectors, params -> small dict of floats for one layer.
        allocate: {layer name: its stats plus ``r`` and ``num_models``}, params -> {layer: k}.
    """

    needs_stats: bool
    layer_stats: Callable[[Tensor, ResmParams], dict[str, float]] | None = None
    allocate: Callable[[Mapping[str, Mapping[str, Any]], ResmParams], dict[str, int]] | None = None


REWEIGHTS: Registry[ReweightFn] = Registry("RESM reweight strategy")
RANKS: Registry[RankStrategy] = Registry("RESM rank strategy")


def register_reweight(name: str) -> Callable[[ReweightFn], ReweightFn]:
    """Decorator registering a reweighting strategy under ``name`` (``reweight=<name>``)."""
    return REWEIGHTS.register(name)


def register_rank(name: str, strategy: RankStrategy) -> RankStrategy:
    """Register a rank strategy under ``name`` (``rank=<name>``)."""
    return RANKS.add(name, strategy)


@dataclass(frozen=True)
class ResmParams(TsvParams):
    """RESM hyperparameters: TSV-M's plus the two strategies and their knobs.

    A new strategy with knobs of its own adds fields here (or in a subclass) and, if the knobs
    change what enters the SVD, to ``Resm.precompute_keys``.
    """

    reweight: str = param(
        "huber_mad",
        "Outlier weighting of each τ_t before its SVD: Huber weights on robust z-scores, or none.",
        choices=lambda: REWEIGHTS.names(),
    )
    kappa: float = param(
        3.0,
        "κ of huber_mad: entries with robust z-score |x − median|/(1.4826·MAD) > κ are scaled "
        "by κ/z.",
    )
    rank: str = param(
        "outlier_density",
        "Per-layer rank rule: outlier_density (more rank to layers with more large entries) or "
        "uniform (TSV-M's k).",
        choices=lambda: RANKS.names(),
    )
    outlier_ratio_M: float = param(
        5.0,
        "M of outlier_density: an entry is large if |τ| > M × the layer's mean |τ| (OWL's M = 5).",
    )
    restore_norm: bool = param(
        False,
        "Rescale each reweighted τ_t to its original Frobenius norm (clipped mass redistributed).",
    )
    rank_spread: float = param(
        0.1,
        "Spread of outlier_density: f_l = f·(1 + spread·(D_l − mean D)/(max D − min D)); 0 = uniform.",
    )

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.kappa < float("inf"):
            raise ValueError(f"merge parameter 'kappa' must be > 0 and finite, got {self.kappa}")
        if not 0.0 < self.outlier_ratio_M < float("inf"):
            raise ValueError(
                f"merge parameter 'outlier_ratio_M' must be > 0 and finite, got {self.outlier_ratio_M}"
            )
        if not 0.0 <= self.rank_spread <= 1.0:
            raise ValueError(
                f"merge parameter 'rank_spread' must be in [0, 1], got {self.rank_spread}"
            )


# -- reweighting strategies -------------------------------------------------------------------


@register_reweight("none")
def reweight_none(tau: Tensor, params: ResmParams) -> Tensor:
    """No reweighting (TSV-M)."""
    return tau


def robust_deviation(tau: Tensor) -> tuple[Tensor, float]:
    """(|x − med(x)|, robust σ) of the flattened ``tau``: σ = 1.4826·MAD with
    MAD = med|x − med(x)| (``torch.median``: the lower median), falling back to
    1.2533·mean|x − med(x)| when MAD = 0; 0.0 when that is 0 too. The robust z-score of an
    entry is its deviation / σ (used by ``huber_mad`` and by the task-vector diagnostics)."""
    x = tau.reshape(-1)
    dev = (x - x.median()).abs()
    scale = 1.4826 * float(dev.median())
    if scale == 0.0:
        scale = 1.2533 * float(dev.mean())
    return dev, scale


@register_reweight("huber_mad")
def reweight_huber_mad(tau: Tensor, params: ResmParams) -> Tensor:
    """x_i·min(1, κ/z_i) with z_i = |x_i − med| / (1.4826·MAD) (see the module docstring)."""
    dev, scale = robust_deviation(tau)
    if scale == 0.0:
        return tau
    z = dev / scale
    return (tau.reshape(-1) * (params.kappa / z.clamp(min=params.kappa))).view_as(tau)


# -- rank strategies --------------------------------------------------------------------------


def outlier_density(taus: Tensor, params: ResmParams) -> dict[str, float]:
    """D = mean over tasks of the share of entries with |τ_t| > M·mean|τ_t| (this layer; a zero
    task vector counts as 0)."""
    fracs = []
    for tau in taus:
        a = tau.abs()
        fracs.append(float((a > params.outlier_ratio_M * a.mean()).to(a.dtype).mean()))
    return {"density": sum(fracs) / len(fracs)}


def allocate_by_outlier_density(
    stats: Mapping[str, Mapping[str, Any]], params: ResmParams
) -> dict[str, int]:
    """k_l = int(r_l·f·(1 + spread·(D_l − mean D)/(max D − min D))), clipped to [1, r_l // T]."""
    if not stats:
        return {}
    dens = {n: float(s["density"]) for n, s in stats.items()}
    lo, hi = min(dens.values()), max(dens.values())
    mean = sum(dens.values()) / len(dens)
    out = {}
    for n, s in stats.items():
        x = (dens[n] - mean) / (hi - lo) if hi > lo else 0.0
        mult = 1.0 + params.rank_spread * x
        out[n] = tsv_rank(int(s["r"]), int(s["num_models"]), params.rank_fraction, mult)
    return out


register_rank("uniform", RankStrategy(needs_stats=False))
register_rank(
    "outlier_density",
    RankStrategy(
        needs_stats=True, layer_stats=outlier_density, allocate=allocate_by_outlier_density
    ),
)


def reweighted(tau: Tensor, params: ResmParams) -> Tensor:
    """The configured reweighting of one dense τ_t, with ``restore_norm`` applied."""
    out = REWEIGHTS.get(params.reweight)(tau, params)
    if params.restore_norm and out is not tau:
        before, after = tau.norm(), out.norm()
        if float(after) > 0.0:
            out = out * (before / after)
    return out


@register_method
class Resm(TsvBase[ResmParams]):
    """RESM (arXiv:2502.06876, our reading): TSV-M on outlier-reweighted task vectors with a
    per-layer rank budget. The plan carries k per decomposed layer (``{"k": int}``)."""

    name = "resm"
    params_cls = ResmParams
    # The rank strategy acts through the plan entry's k; without one (rank=uniform) k comes
    # from rank_fraction, hence its place here.
    precompute_keys = (
        "reweight",
        "kappa",
        "restore_norm",
        "rank_fraction",
        "rank_rtol",
        "embeddings",
        "compute_dtype",
    )
    summary = (
        "TSV-M + outlier reweighting + sparsity-aware rank (Yang et al. 2025, arXiv:2502.06876)"
    )

    def needs_global_pass(self, params: ResmParams) -> bool:
        return RANKS.get(params.rank).needs_stats

    def tensor_stats(
        self, name: str, base: Tensor, taus: TaskVectors, params: ResmParams
    ) -> dict[str, Any] | None:
        strategy = RANKS.get(params.rank)
        if strategy.layer_stats is None or self.route(name, base.shape, len(taus), params) != "tsv":
            return None
        stats: dict[str, Any] = dict(strategy.layer_stats(taus.stack(), params))
        stats.update(r=min(base.shape), num_models=len(taus))
        return stats

    def plan(
        self, stats: Mapping[str, Mapping[str, Any]], params: ResmParams
    ) -> dict[str, PlanEntry]:
        strategy = RANKS.get(params.rank)
        if strategy.allocate is None:
            return {}
        return {n: {"k": int(k)} for n, k in strategy.allocate(stats, params).items()}

    def svd_inputs(
        self, name: str, taus: TaskVectors, params: ResmParams, k: int
    ) -> tuple[list[TaskVector], list[int]]:
        """The reweighted task vectors, each keeping at most min(k, numerical rank of the
        *original* τ_t) directions: reweighting makes a low-rank τ_t full-rank with a tail of
        clipping residue whose directions are not τ_t's (and whose near-equal σ make the cut
        ill-conditioned)."""
        if params.reweight == "none" and not params.restore_norm:
            return list(taus.items), [k] * len(taus)
        out: list[TaskVector] = []
        ks: list[int] = []
        for tau, noise in zip(taus.items, taus.noise, strict=True):
            ks.append(capped_rank(tau, k, params.rank_rtol, noise))
            dense = tau.dense(taus.dtype, taus.device) if isinstance(tau, LowRank) else tau
            out.append(reweighted(dense, params))
        return out, ks

    def rank_for(
        self, r: int, num_models: int, params: ResmParams, plan_entry: Mapping[str, Any]
    ) -> int:
        if "k" in plan_entry:
            return max(1, min(int(plan_entry["k"]), r // num_models))
        return tsv_rank(r, num_models, params.rank_fraction)

    def diagnostics(
        self, name: str, base: Tensor, taus: TaskVectors, params: ResmParams
    ) -> dict[str, Any]:
        """How RESM treats this parameter (``resm_route``), how much its reweighting changes
        each τ_t (``reweight_change`` = ‖τ_t − ρ(τ_t)‖/‖τ_t‖) and the layer's outlier density
        (``resm_density``, decomposed layers only)."""
        route = self.route(name, tuple(base.shape), len(taus), params)
        out: dict[str, Any] = {
            "resm_route": route,
            "reweight_change": [None] * len(taus),
            "resm_density": None,
        }
        if route != "tsv":
            return out
        stack = taus.stack()
        changes: list[float | None] = []
        for tau in stack:
            n = float(tau.norm(dtype=torch.float64))
            diff = float((tau - reweighted(tau, params)).norm(dtype=torch.float64))
            changes.append(diff / n if n > 0 else None)
        out["reweight_change"] = changes
        out["resm_density"] = float(outlier_density(stack, params)["density"])
        return out

    def merged_reweight_change(
        self, name: str, base: Tensor, taus: TaskVectors, params: ResmParams
    ) -> float | None:
        """How far the reweighting moves this parameter's *merged* task vector:
        ‖M(ρ(τ)) − M(τ)‖_F / ‖M(τ)‖_F, with M TSV-M's merge at the uniform k (``rank_fraction``)
        and unit weights, M(ρ(τ)) RESM's merge with its reweighting (each task capped at its
        numerical rank, as RESM merges) and M(τ) the same without it (TSV-M). The rank rule is
        held at the uniform k so that the figure is the reweighting's alone; λ and the weights
        scale both merges alike and are left out. None where RESM does not decompose the
        parameter or M(τ) = 0; 0.0 with ``reweight=none`` (and no ``restore_norm``)."""
        if self.route(name, tuple(base.shape), len(taus), params) != "tsv":
            return None
        k = tsv_rank(min(base.shape), len(taus), params.rank_fraction)
        ones = torch.ones(len(taus), dtype=torch.float64)

        def merged(inputs: list[TaskVector], ks: list[int]) -> Tensor:
            u, s, v, task = tsv_factors(inputs, ks, params.rank_rtol, taus.noise)
            return tsv_compose(u, s, v, task, ones.to(s.device))

        plain = merged(*TsvBase.svd_inputs(self, name, taus, params, k))
        ref = float(plain.norm())
        if ref == 0.0:
            return None
        if params.reweight == "none" and not params.restore_norm:
            return 0.0
        moved = merged(*self.svd_inputs(name, taus, params, k))
        return float((moved - plain).norm()) / ref
