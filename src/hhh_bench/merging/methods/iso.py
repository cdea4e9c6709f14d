"""Iso-C and Iso-CTS: isotropic merging in the common (and task-specific) subspaces (Marczak et
al., "No Task Left Behind: Isotropic Model Merging with Common and Task-Specific Subspaces",
ICML 2025, arXiv:2502.04959, Sec. 4).

Per 2-D parameter (m × n, r = min(m, n)) of weighted task vectors w_t·τ_t, with
τ_Σ = Σ_t w_t τ_t (task arithmetic's sum):

**Iso-C** (``iso_c``): flatten the spectrum of the sum.

    τ_Σ = U diag(σ) Vᵀ,   σ̄ = mean(σ),   τ_m = σ̄ · U Vᵀ

**Iso-CTS** (``iso_cts``): the sum's top directions plus each task's own, then flatten.

1. Sizes: k = int(r·f) (f = ``common_space_fraction``), then k_t = round((r − k)/T) directions
   per task (Python's round: halves to even, as the reference) and k_c = r − T·k_t common ones,
   so that k_c + T·k_t = r.
2. Common subspace: the top k_c triplets (U_c, σ_c, V_c) of τ_Σ.
3. Task-specific: the top k_t triplets (U_t, σ_t, V_t) of each residual
   (I − U_c U_cᵀ)·w_t τ_t (the common left subspace projected out).
4. Stack U = [U_1 .. U_T U_c] (m × r), σ likewise, V = [V_1 .. V_T V_c] (n × r); orthogonalise
   both stacks by their polar factors U⊥ = U (UᵀU)^(-1/2), V⊥ alike (the reference computes
   them from an SVD, U = P S Qᵀ ↦ P Qᵀ: the same matrix);
   τ_m = mean(σ) · U⊥ V⊥ᵀ.

Then θ = θ0 + λ·τ_m. Whenever k_t = 0 (f near 1, or r small against T) Iso-CTS is Iso-C.

Routing (by parameter name and shape), as the reference (non-matrices by the mean):

- embeddings and the LM head (:func:`~hhh_bench.merging.methods.tsv.is_embedding`):
  ``embeddings`` = ``mean`` (default, as TSV-M here: the mean of w_t τ_t), ``iso`` (as any
  matrix: the reference's rule for every matrix not in its ``exclude_keys``) or ``base``;
- other 2-D parameters: Iso-C / Iso-CTS;
- everything else (biases, norms, conv kernels): the mean (1/T)·Σ_t w_t τ_t, as the reference.

**Numerical rank.** The isotropic step gives every direction it keeps the same singular value
σ̄, so a direction that is zero up to rounding would enter the merge at full weight (and its
singular vectors are arbitrary: any basis of the null space); and a full-rank matrix's smallest
directions, real but small, must enter as the reference lets them. So each decomposition keeps
the σ above max(``rank_rtol``·σ_1, storage floor) of its own matrix, where

- ``rank_rtol`` null is :func:`gram_rtol` = 2·√(ε64·r), what the float64 Gram resolves (9.5e-7
  at r = 1024), not TSV-M's max(m, n)·ε32 (1.2e-4 there, above the smallest σ of one random
  square 1024 × 1024 sum in four);
- the storage floor (``storage_floor: true``; off by default, as the reference) is
  :func:`~hhh_bench.merging.linalg.noise_floor` of the rounding of θ_t at the coarser of its
  storage and the compute dtype, float32 included
  (:meth:`~hhh_bench.merging.taskvec.TaskVectors.rounding`: a float32 θ_t's rounding is
  ε32-relative to θ, up to 1e-4·σ_1 of a small τ_t); for the sum, the weighted roundings added
  in quadrature;

and for Iso-CTS every direction must also clear that relative cutoff times the largest σ of any
of the T + 1 decompositions (a residual that is zero up to rounding, e.g. a LoRA task inside the
common subspace, adds nothing). σ̄ is the mean over the K directions kept (K = r on full-rank
inputs).

**How it is computed**: the decompositions in float64 whatever ``compute_dtype``; the top
triplets from :func:`~hhh_bench.merging.linalg.top_svd` (a Gram eigendecomposition for a dense
matrix; the exact thin SVD from the factors for LoRA task vectors, whose weighted sum is itself
low-rank, s_1 B_1 A_1 + … = [w_1 s_1 B_1 … w_T s_T B_T]·[A_1; …; A_T], so the m × n sum is never
decomposed densely; a residual of a LoRA τ_t keeps its factors, (I − U_c U_cᵀ) B_t); the polar
factors from the K × K Gram (:func:`~hhh_bench.merging.linalg.polar`). Iso-CTS's left stack is
orthogonalised block by block: every U_t lies in the residual space, U_tᵀU_c = 0, so
polar([U_1 … U_T U_c]) = [polar([U_1 … U_T]) U_c] (a (T·k_t)-sized Gram instead of an r-sized
one; the right stack has no such structure). The product σ̄·U⊥V⊥ᵀ of the float64 factors is
formed in the compute dtype. Weights change the sum's singular vectors, so they are a
precompute key: a sweep over λ reuses the decomposition, a sweep over weights does not.

Deviations from the reference code (FusionBench ``fusion_bench/method/isotropic_merging/
iso_utils.py``, the authors' ``src/utils/iso.py``, the same algorithm):

- **Numerical rank** (above). The reference keeps all r directions. On full-rank inputs this is
  the same result. On a rank-deficient sum (LoRA task vectors, or any T·rank < r) it gives the
  r − ρ null directions (arbitrary, or the rounding's) the weight σ̄ = Σσ/r; we keep the ρ real
  ones and divide by ρ: σ̄ = Σσ/ρ, the mean of the spectrum that exists, which keeps the nuclear
  norm Σσ of the result as the reference's does on full-rank inputs. A bf16-, fp16- or
  float32-stored task vector's directions below its rounding floor are dropped likewise (the
  reference flattens the rounding up to σ̄ too; ``storage_floor: false`` does as it does). On
  bf16 models whose deltas are a few bf16 steps (DPO) this is most of the spectrum: on
  benchmarks/bench_merge.py's synthetic checkpoints Iso-C keeps 535 of q_proj's 1024
  directions, and the merge differs from the reference's by 85% of its norm.
- **Sizes**: k_t is clipped to r // T (the reference's round((r − k)/T)·T can exceed r, e.g.
  r = 5, T = 3, f = 0.1 gives k_c = −1, a negative slice).
- The residual is w_tτ_t − U_c (U_cᵀ w_tτ_t) (the reference forms the m × m projector
  U_c U_cᵀ first; same matrix, fewer operations).
- Decompositions in float64 from Gram eigendecompositions, not full float32 SVDs; they agree to
  float32 rounding on full-rank float32 inputs.
- Embeddings and the LM head default to the mean (``embeddings: mean``, as TSV-M here); the
  reference decomposes every matrix not excluded (the authors exclude CLIP's
  ``text_projection``; FusionBench's ``exclude_keys`` defaults to none): ``embeddings: iso``.
- Per-model weights (the reference has none): each τ_t enters as w_t τ_t.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import Tensor

from hhh_bench.merging.base import (
    CommonParams,
    MergeMethod,
    TaskVectors,
    finish,
    on_device,
    param,
    register_method,
)
from hhh_bench.merging.linalg import GRAM_DTYPE, polar, top_svd
from hhh_bench.merging.methods.tsv import is_embedding, mean_merge
from hhh_bench.merging.taskvec import LowRank, TaskVector


def weighted(tau: TaskVector, w: float) -> TaskVector:
    """w·τ in float64 (a LoRA τ keeps its factors: the weight goes into its scale)."""
    if isinstance(tau, LowRank):
        return LowRank(tau.b.to(GRAM_DTYPE), tau.a.to(GRAM_DTYPE), tau.scale * w)
    return tau.to(GRAM_DTYPE) * w


def weighted_sum(taus: Sequence[TaskVector], weights: Sequence[float]) -> TaskVector:
    """Σ_t w_t τ_t in float64: low-rank, [w_1 s_1 B_1 … w_T s_T B_T]·[A_1; …; A_T], when every τ_t
    is; else dense."""
    lows = [t for t in taus if isinstance(t, LowRank)]
    if len(lows) == len(taus):
        b = torch.cat(
            [t.b.to(GRAM_DTYPE) * (t.scale * w) for t, w in zip(lows, weights, strict=True)], dim=1
        )
        return LowRank(b, torch.cat([t.a.to(GRAM_DTYPE) for t in lows], dim=0), 1.0)
    total: Tensor | None = None
    for tau, w in zip(taus, weights, strict=True):
        x = tau.dense(GRAM_DTYPE, tau.b.device) if isinstance(tau, LowRank) else tau.to(GRAM_DTYPE)
        total = x * w if total is None else total.add_(x, alpha=w)
    assert total is not None
    return total


def sum_noise(noise: Sequence[float], weights: Sequence[float]) -> float:
    """The rounding RMS of Σ_t w_t τ_t: the tasks' independent roundings w_t ρ_t in quadrature."""
    return sum((w * r) ** 2 for w, r in zip(weights, noise, strict=True)) ** 0.5


def project_out(tau: TaskVector, u: Tensor) -> TaskVector:
    """(I − U Uᵀ)·τ for U with orthonormal columns (float64); a LoRA τ = s·B·A stays low-rank,
    s·(B − U (Uᵀ B))·A."""
    if isinstance(tau, LowRank):
        b = tau.b.to(GRAM_DTYPE)
        return LowRank(b - u @ (u.T @ b), tau.a.to(GRAM_DTYPE), tau.scale)
    x = tau.to(GRAM_DTYPE)
    return x - u @ (u.T @ x)


EPS64 = float(torch.finfo(torch.float64).eps)


def gram_rtol(r: int) -> float:
    """Twice the float64 Gram's rounding floor relative to σ_1, 2·√(ε64·r) (as in
    :mod:`hhh_bench.merging.linalg`: its eigenvalues λ = σ² carry an absolute error of at most
    ~ε64·r·λ_1): 2.4e-7 at r = 64, 9.5e-7 at 1024, 1.9e-6 at 4096. Below it a singular value is
    not resolved by the decomposition.

    Iso-C/Iso-CTS's default numerical-rank cutoff (with the storage floors of
    :meth:`~hhh_bench.merging.taskvec.TaskVectors.rounding`), and the cutoff of their polar steps
    where a stack cannot be rank-deficient but by an exact duplicate. A full-rank matrix's small
    singular values are geometry that the reference keeps and flattens up to σ̄: a square random
    matrix has σ_min/σ_1 ~ 1/(2r), below TSV-M's max(m, n)·ε32 one time in four at r = 1024
    and almost always at 4096 (measured: 2 of 10 random 1024 × 1024 sums)."""
    return 2.0 * (EPS64 * r) ** 0.5


IsoFactors = tuple[Tensor, Tensor, Tensor]
"""(U⊥ (m × K), V⊥ (n × K), σ̄ (0-d)) in float64: the merged τ_m = σ̄·U⊥ V⊥ᵀ (:func:`compose`)."""


def compose(factors: IsoFactors, dtype: torch.dtype) -> Tensor:
    """σ̄·U⊥ V⊥ᵀ in ``dtype`` (the factors are exact in float64; an m × n product of orthonormal
    columns needs no more than the output's precision)."""
    u, v, sbar = factors
    return (u.to(dtype) * sbar.to(dtype)) @ v.to(dtype).T


def _empty(m: int, n: int, device: torch.device) -> IsoFactors:
    zeros = torch.zeros((), dtype=GRAM_DTYPE, device=device)
    return (
        torch.zeros(m, 0, dtype=GRAM_DTYPE, device=device),
        torch.zeros(n, 0, dtype=GRAM_DTYPE, device=device),
        zeros,
    )


def iso_c_factors(
    taus: Sequence[TaskVector],
    weights: Sequence[float],
    rtol: float | None = None,
    noise: Sequence[float] | None = None,
) -> IsoFactors:
    """Iso-C of T task vectors (dense or LoRA) with weights: the SVD U diag(σ) Vᵀ of Σ_t w_t τ_t
    over its numerical rank (``noise``: each task's storage rounding RMS), and σ̄ = mean(σ)."""
    total = weighted_sum(taus, weights)
    m, n = total.shape
    floor = sum_noise(noise or [0.0] * len(taus), weights)
    u, s, v = top_svd(total, min(m, n), gram_rtol(min(m, n)) if rtol is None else rtol, floor)
    if s.numel() == 0:
        return _empty(m, n, u.device)
    return u, v, s.mean()


def iso_cts_sizes(r: int, num_models: int, fraction: float) -> tuple[int, int]:
    """(k_c, k_t): common directions and directions per task of an Iso-CTS matrix of rank bound r,
    k_c + T·k_t = r: k = int(r·f), k_t = round((r − k)/T) (halves to even), clipped to r // T."""
    k = int(r * fraction)
    k_task = min(round((r - k) / num_models), r // num_models)
    return r - num_models * k_task, k_task


def iso_cts_factors(
    taus: Sequence[TaskVector],
    weights: Sequence[float],
    fraction: float,
    rtol: float | None = None,
    noise: Sequence[float] | None = None,
) -> IsoFactors:
    """Iso-CTS of T task vectors (dense or LoRA) with weights (see the module docstring);
    ``fraction``: the common-space share f.

    The left stack [U_1 … U_T U_c] is orthogonalised block by block: each U_t spans part of the
    residual (I − U_c U_cᵀ)·w_tτ_t, so U_tᵀU_c = 0 and the Gram is block-diagonal,
    diag([U_1 … U_T]ᵀ[U_1 … U_T], I): its polar factor is [polar([U_1 … U_T]) U_c], from a
    (T·k_t)-sized Gram instead of an r-sized one. The right stack has no such structure.

    The stacks' polar factors leave out only what is not there (:func:`gram_rtol`): when
    the K directions kept fit in the sum's numerical rank ρ (K ≤ ρ: full-rank inputs), no stack
    can be rank-deficient but by an exact duplicate (two identical specialists), and a stack's
    small singular values are geometry, which the reference keeps (a square stack of random
    directions has σ_min/σ_max ~ 1/(2K)). When K > ρ (low-rank inputs whose residuals add
    directions, e.g. LoRA with a small f) the stacks are rank-deficient by construction and the
    numerical-rank cutoff applies, as for TSV-M."""
    noise = list(noise or [0.0] * len(taus))
    total = weighted_sum(taus, weights)
    m, n = total.shape
    k_common, k_task = iso_cts_sizes(min(m, n), len(taus), fraction)
    data_rtol = gram_rtol(min(m, n)) if rtol is None else rtol
    u_sum, s_sum, v_sum = top_svd(total, min(m, n), data_rtol, sum_noise(noise, weights))
    rank_sum = s_sum.numel()
    common = (u_sum[:, :k_common], s_sum[:k_common], v_sum[:, :k_common])
    tasks = []
    if k_task > 0:
        for tau, w, rho in zip(taus, weights, noise, strict=True):
            resid = project_out(weighted(tau, w), common[0])
            tasks.append(top_svd(resid, k_task, data_rtol, abs(w) * rho))
    top = max((float(s[0]) for _, s, _ in [common, *tasks] if s.numel()), default=0.0)
    cut = data_rtol * top
    kept = []
    for u, s, v in [*tasks, common]:  # σ descending in each part: keep a prefix
        c = int((s > cut).sum())
        kept.append((u[:, :c], s[:c], v[:, :c]))
    s_all = torch.cat([s for _, s, _ in kept])
    if s_all.numel() == 0:
        return _empty(m, n, u_sum.device)
    # K ≤ ρ: no stack is rank-deficient but by an exact duplicate (gram_rtol); K > ρ: deficient
    # by construction, TSV-M's cutoff (rtol, or max(m, K)·ε32 when None)
    polar_rtol = gram_rtol(s_all.numel()) if s_all.numel() <= rank_sum else rtol
    u_tasks = [polar(torch.cat([u for u, _, _ in kept[:-1]], dim=1), polar_rtol)] if tasks else []
    u_perp = torch.cat([*u_tasks, kept[-1][0]], dim=1)
    v_perp = polar(torch.cat([v for _, _, v in kept], dim=1), polar_rtol)
    return u_perp, v_perp, s_all.mean()


@dataclass(frozen=True)
class IsoParams(CommonParams):
    """Iso-C hyperparameters (λ = ``scaling``, FusionBench's default 1.0; the authors pick it on
    validation in (0, 3])."""

    rank_rtol: float | None = param(
        None,
        "Relative singular-value cutoff of the numerical rank: directions with σ ≤ rank_rtol·σ_1 "
        "are zero up to rounding and are not flattened up to σ̄ (null = 2·√(ε64·r), what the "
        "float64 Gram resolves; storage rounding has its own floor).",
    )
    embeddings: str = param(
        "mean",
        "Rule for embeddings and the LM head: mean of w_t·τ_t, the isotropic merge like other "
        "matrices (the reference's rule), or keep the base's.",
        choices=("mean", "iso", "base"),
    )
    storage_floor: bool = param(
        False,
        "true: leave out directions below the rounding floor of the models' storage (bf16, "
        "fp16, float32), which the isotropic step raises to σ̄; false (default): flatten them "
        "too, as the reference does (on bf16 models with dense small deltas the two differ a "
        "lot: docs/merging.md).",
    )

    def validate(self) -> None:
        super().validate()
        if self.rank_rtol is not None and not 0.0 < self.rank_rtol < 1.0:
            raise ValueError(
                f"merge parameter 'rank_rtol' must be in (0, 1) or null, got {self.rank_rtol}"
            )


@dataclass(frozen=True)
class IsoCtsParams(IsoParams):
    """Iso-CTS hyperparameters: Iso-C's plus the common subspace's share."""

    common_space_fraction: float = param(
        0.8,
        "Share f of each matrix's rank r given to the common subspace of Σ w_t τ_t, k = int(r·f), "
        "in (0, 1); the other r − k directions are split evenly among the tasks (the paper's 0.8).",
    )

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.common_space_fraction < 1.0:
            raise ValueError(
                "merge parameter 'common_space_fraction' must be in (0, 1) (0 leaves no common "
                "subspace, 1 no task-specific one: that is iso_c), got "
                f"{self.common_space_fraction}"
            )


IP = TypeVar("IP", bound=IsoParams)


class IsoBase(MergeMethod[IP], Generic[IP]):
    """Routing, precompute and compose shared by Iso-C and Iso-CTS; subclasses give the matrix
    rule (:meth:`factors`)."""

    precompute_keys: ClassVar[tuple[str, ...]] = (
        "weights",
        "rank_rtol",
        "embeddings",
        "storage_floor",
        "compute_dtype",
    )

    def route(self, name: str, shape: Sequence[int], params: IP) -> str:
        """``"iso"``, ``"mean"`` or ``"base"`` for a parameter."""
        if is_embedding(name) and params.embeddings != "iso":
            return params.embeddings
        return "iso" if len(shape) == 2 else "mean"

    def factors(self, taus: TaskVectors, weights: Sequence[float], params: IP) -> IsoFactors:
        """The merged τ's factors (:data:`IsoFactors`) of one matrix routed to the isotropic rule."""
        raise NotImplementedError

    def precompute(
        self,
        name: str,
        base: Tensor,
        taus: TaskVectors,
        params: IP,
        plan_entry: Mapping[str, Any],
    ) -> dict[str, Tensor]:
        mode = self.route(name, base.shape, params)
        if mode == "base":
            return {}
        if mode == "mean":
            return {"tau": taus.stack()}
        factors = self.factors(taus, params.resolve_weights(len(taus)), params)
        return {"merged": compose(factors, params.dtype)}

    def compose(
        self,
        name: str,
        base: Tensor,
        pre: Mapping[str, Tensor],
        params: IP,
        plan_entry: Mapping[str, Any],
    ) -> Tensor:
        pre = on_device(pre, params)
        if "tau" in pre:
            taus = pre["tau"]
            return finish(base, mean_merge(taus, params.weight_tensor(len(taus), taus)), params)
        if "merged" in pre:
            return finish(base, pre["merged"], params)
        return base.clone()  # mode "base": θ0 whatever λ


@register_method
class IsoC(IsoBase[IsoParams]):
    """Iso-C (arXiv:2502.04959): task arithmetic's sum with its singular values replaced by
    their mean (an isotropic spectrum)."""

    name = "iso_c"
    params_cls = IsoParams
    summary = (
        "isotropic merging in the common subspace: the sum's spectrum flattened "
        "(Marczak et al. 2025, arXiv:2502.04959)"
    )

    def factors(self, taus: TaskVectors, weights: Sequence[float], params: IsoParams) -> IsoFactors:
        noise = taus.rounding() if params.storage_floor else None
        return iso_c_factors(taus.items, weights, params.rank_rtol, noise)


@register_method
class IsoCts(IsoBase[IsoCtsParams]):
    """Iso-CTS (arXiv:2502.04959): the sum's top directions plus each task's own directions
    outside them, orthogonalised, with an isotropic spectrum."""

    name = "iso_cts"
    params_cls = IsoCtsParams
    precompute_keys = (*IsoBase.precompute_keys, "common_space_fraction")
    summary = (
        "isotropic merging in common and task-specific subspaces "
        "(Marczak et al. 2025, arXiv:2502.04959)"
    )

    def factors(
        self, taus: TaskVectors, weights: Sequence[float], params: IsoCtsParams
    ) -> IsoFactors:
        noise = taus.rounding() if params.storage_floor else None
        return iso_cts_factors(
            taus.items, weights, params.common_space_fraction, params.rank_rtol, noise
        )
