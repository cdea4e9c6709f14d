"""The linear algebra of the SVD merges (TSV-M, RESM, the diagnostics): well-posed and fast.

**Numerical rank.** A task vector of rank ρ in an m × n matrix has min(m, n) − ρ singular values
that are zero up to rounding; their singular vectors are arbitrary (any orthonormal basis of the
null space) and change completely under a 1e-9 perturbation of the input. TSV-M's polar step
orthogonalises the stacked singular vectors of all tasks, so one arbitrary vector rotates all
the real ones. Hence every top-k decomposition here keeps only the directions with

    σ_i > cutoff · σ_1,   cutoff = ``rtol``, or max(m, n) · ε_float32 when ``rtol`` is None

(ε_float32 ≈ 1.19e-7: the rounding floor of a float32 task vector, whatever the compute dtype,
so float32 and float64 runs keep the same directions; ``torch.linalg.matrix_rank``'s rule with
float32's ε). k_t = min(k, numerical rank of τ_t).

**Storage floor.** A specialist stored in bf16 (or fp16) is θ_t = round(θ0 + Δ_t): its task
vector is Δ_t plus the rounding of θ_t, a dense matrix of nearly independent entries of RMS
ρ_t (:func:`~hhh_bench.merging.taskvec.rounding_rms`, ~2⁻⁹·|θ| in bf16) and of full rank, whose
largest singular value is about ρ_t·(√m + √n) (the edge of the Marchenko–Pastur law). The
float32 cutoff alone would count those directions (a rank-8 bf16 update reads as rank ~1021 of
1024), so a direction must also clear the storage floor :func:`noise_floor`
= ``NOISE_MARGIN``·ρ_t·(√m + √n): a rank-8 bf16 update has numerical rank 8. Float32 storage
and LoRA factors have ρ_t = 0 (no floor).

**Dense task vectors** (:func:`top_svd` on a tensor): the top-k triplets from an
eigendecomposition of the Gram matrix of the smaller side in float64 (τᵀτ = V Σ² Vᵀ, U = τVΣ⁻¹),
not a full SVD of τ: the Gram is one matrix product, its ``eigh`` costs less than an SVD of τ, and
float64 keeps every singular value above the cutoff accurate (the Gram's rounding floor is
√(ε_float64·r)·σ_1 ≈ 1e-6·σ_1 at r = 4096, far below the cutoff of 4.9e-4·σ_1 there). The kept
σ are the norms ‖τv‖ (or ‖τᵀu‖) of the eigenvectors' images, not √λ: λ carries an absolute error
of ~ε_float64·λ_1, a relative error of ~ε_float64·(σ_1/σ)² in √λ (1e-5 at σ = 3e-6·σ_1, which
Iso-C keeps with a cutoff below the float32 one), and dividing by it would leave the other
side's vectors off unit norm by as much.

**LoRA task vectors** (:class:`~hhh_bench.merging.taskvec.LowRank`, τ = s·B·A): the exact thin
SVD from the factors, B = Q_B R_B and Aᵀ = Q_A R_A (QR), C = s·R_B R_Aᵀ = U_c Σ V_cᵀ (an r × r
SVD), U = Q_B U_c, V = Q_A V_c: O((m + n)·r²), the m × n matrix is never formed.

**Polar factor** (:func:`polar`): X (XᵀX)^(-1/2) from the eigendecomposition of the small K × K
Gram XᵀX (float64), not an SVD of the m × K stack. Where the stack is rank-deficient (two tasks
sharing a direction exactly), eigenvalues λ = σ²(X) below cutoff²·λ_max are left out (pseudo-inverse
square root): the result is then the polar factor on the stack's column space, a well-defined
answer where the exact polar factor is not unique.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hhh_bench.merging.taskvec import LowRank, TaskVector

EPS32 = float(torch.finfo(torch.float32).eps)
GRAM_DTYPE = torch.float64
NOISE_MARGIN = 2.0
"""How far above the rounding's largest singular value, ρ·(√m + √n), a direction must be to count
(see the module docstring): the Marchenko–Pastur edge is sharp for large matrices and within
~10% of its limit from 64 × 64 on; a factor 2 keeps a random rounding matrix at rank 0."""


def noise_floor(shape: Sequence[int], noise: float) -> float:
    """The absolute singular value below which a direction of an m × n task vector is the rounding
    of its storage: ``NOISE_MARGIN``·ρ·(√m + √n) for the rounding RMS ρ (``noise``; 0: none)."""
    if noise <= 0.0:
        return 0.0
    m, n = (int(d) for d in shape)
    return NOISE_MARGIN * noise * (m**0.5 + n**0.5)


def rank_cutoff(shape: Sequence[int], rtol: float | None = None) -> float:
    """The relative singular-value cutoff of a matrix of ``shape``: ``rtol``, or
    max(m, n)·ε_float32 when None."""
    if rtol is not None:
        return float(rtol)
    return max(int(d) for d in shape) * EPS32


def numerical_rank(
    s: Tensor, shape: Sequence[int], rtol: float | None = None, noise: float = 0.0
) -> int:
    """How many singular values ``s`` (descending) exceed both :func:`rank_cutoff`·σ_1 and the
    storage floor :func:`noise_floor` of the rounding RMS ``noise``."""
    if s.numel() == 0:
        return 0
    top = float(s[0])
    if not top > 0.0:
        return 0
    cut = max(rank_cutoff(shape, rtol) * top, noise_floor(shape, noise))
    return int((s > cut).sum())


def _empty(m: int, n: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, ...]:
    return (
        torch.zeros(m, 0, dtype=dtype, device=device),
        torch.zeros(0, dtype=dtype, device=device),
        torch.zeros(n, 0, dtype=dtype, device=device),
    )


def _dense_top_svd(
    tau: Tensor, k: int, rtol: float | None, noise: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    m, n = tau.shape
    x = tau.to(GRAM_DTYPE)
    left = m <= n  # Gram of the smaller side: x xᵀ (m × m) gives U, else xᵀ x (n × n) gives V
    gram = x @ x.T if left else x.T @ x
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    lam = evals.flip(0).clamp(min=0.0)
    vecs = evecs.flip(1)
    s_all = lam.sqrt()
    keep = min(k, numerical_rank(s_all, tau.shape, rtol, noise))
    if keep == 0:
        return _empty(m, n, GRAM_DTYPE, tau.device)
    w = vecs[:, :keep]
    # the other side's vectors are x w / σ; σ is taken as the norm of x w (accurate to ε64·σ_1)
    # rather than as √λ (λ carries an error of ~ε64·λ_1, a relative error of ~ε64·(σ_1/σ)² in σ,
    # 1e-5 at σ = 3e-6·σ_1), so that these vectors have unit norm however small σ is
    other = x.T @ w if left else x @ w
    s = other.norm(dim=0)
    other = other / s
    if left:
        return w, s, other
    return other, s, w


def _lowrank_top_svd(tau: LowRank, k: int, rtol: float | None) -> tuple[Tensor, Tensor, Tensor]:
    m, n = tau.shape
    device = tau.b.device
    if tau.rank == 0 or tau.scale == 0.0:
        return _empty(m, n, GRAM_DTYPE, device)
    qb, rb = torch.linalg.qr(tau.b.to(GRAM_DTYPE))
    qa, ra = torch.linalg.qr(tau.a.to(GRAM_DTYPE).T)
    uc, s_all, vch = torch.linalg.svd(tau.scale * (rb @ ra.T))
    keep = min(k, numerical_rank(s_all, (m, n), rtol))
    if keep == 0:
        return _empty(m, n, GRAM_DTYPE, device)
    return qb @ uc[:, :keep], s_all[:keep], qa @ vch[:keep].T


def top_svd(
    tau: TaskVector, k: int, rtol: float | None = None, noise: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """The top min(k, numerical rank) singular triplets (U (m × k_t), σ (k_t,), V (n × k_t)) of a
    dense or low-rank task vector, σ descending, in float64 (see the module docstring);
    ``noise``: the RMS rounding error of the task's storage (its floor; 0 for LoRA factors)."""
    if k < 0:
        raise ValueError(f"top_svd: k must be >= 0, got {k}")
    if isinstance(tau, LowRank):
        return _lowrank_top_svd(tau, k, rtol)
    if tau.dim() != 2:
        raise ValueError(f"top_svd: expected a matrix, got shape {tuple(tau.shape)}")
    if k == 0:
        return _empty(tau.shape[0], tau.shape[1], GRAM_DTYPE, tau.device)
    return _dense_top_svd(tau, k, rtol, noise)


def capped_rank(tau: TaskVector, k: int, rtol: float | None = None, noise: float = 0.0) -> int:
    """min(k, numerical rank of τ), cheaply: from the r × r core for LoRA factors; for a dense τ
    from a seeded Gaussian sketch Y = τΩ with k + 8 columns (float64), whose numerical rank is
    min(k + 8, rank τ) with probability 1. RESM caps the directions it keeps from a reweighted τ'
    by this, so that clipping cannot add directions τ never had.

    With a storage floor (``noise`` > 0) the singular values are compared on the absolute scale
    of τ: those of B = Qᵀτ, Q an orthonormal basis of the sketch Y (a randomised SVD;
    B's singular values are at most τ's and, for the directions above the rounding, equal to
    them up to the rounding's size)."""
    m, n = tau.shape
    if isinstance(tau, LowRank):
        return top_svd(tau, k, rtol)[1].numel()
    cols = min(k + 8, m, n)
    g = torch.Generator(device="cpu").manual_seed(0)
    omega = torch.randn(n, cols, generator=g, dtype=GRAM_DTYPE).to(tau.device)
    x = tau.to(GRAM_DTYPE)
    y = x @ omega
    if noise > 0.0:
        q = torch.linalg.qr(y).Q
        s = torch.linalg.svdvals(q.T @ x)
    else:
        s = torch.linalg.svdvals(y)
    return min(k, numerical_rank(s, (m, n), rtol, noise))


def polar(x: Tensor, rtol: float | None = None) -> Tensor:
    """The orthonormal polar factor X (XᵀX)^(-1/2) of an m × K matrix, through the K × K Gram in
    float64; eigenvalues below cutoff²·λ_max are left out (see the module docstring). Returned in
    ``x``'s dtype."""
    if x.shape[1] == 0:
        return x.clone()
    x64 = x.to(GRAM_DTYPE)
    evals, evecs = torch.linalg.eigh(x64.T @ x64)
    top = float(evals[-1])
    if not top > 0.0:
        return torch.zeros_like(x)
    keep = evals > rank_cutoff(x.shape, rtol) ** 2 * top  # λ = σ² of X: the cutoff on σ, squared
    w = evecs[:, keep]
    inv_sqrt = (w * evals[keep].rsqrt()) @ w.T
    return (x64 @ inv_sqrt).to(x.dtype)
