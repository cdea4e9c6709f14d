"""TSV-M and RESM on low-rank task vectors (issue 13): well-posed (numerical rank first), exact on
LoRA factors, and the fast decomposition equal to the exact one.

Hand-checkable cases first, then properties against an independent formulation (full SVDs in
float64, the polar factor from an SVD), then the streaming engine on real peft adapters."""

from __future__ import annotations

import itertools

import pytest
import torch

from hhh_bench.merging import merge_state_dicts, merge_tensors
from hhh_bench.merging.linalg import numerical_rank, polar, rank_cutoff, top_svd
from hhh_bench.merging.taskvec import LowRank

RESM_VARIANTS = [
    {"reweight": r, "rank": k, "restore_norm": n}
    for r, k, n in itertools.product(
        ("none", "huber_mad"), ("uniform", "outlier_density"), (False, True)
    )
]
SVD_METHODS = [("tsv", {})] + [("resm", v) for v in RESM_VARIANTS]


def e(i: int, n: int, dtype=torch.float64) -> torch.Tensor:
    v = torch.zeros(n, dtype=dtype)
    v[i] = 1.0
    return v


# -- hand-checked ------------------------------------------------------------------------------


def test_lowrank_svd_by_hand():
    """B = [[1, 0], [0, 2], [0, 0]], A = [[3, 0, 0], [0, 1, 0]], s = 0.5:
    τ = 0.5·B·A = diag(1.5, 1.0, 0): σ = [1.5, 1.0], U = ±[e1, e2], V = ±[e1, e2]."""
    b = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    a = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    u, s, v = top_svd(LowRank(b, a, 0.5), k=3)
    torch.testing.assert_close(s, torch.tensor([1.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(u.abs(), torch.eye(3, dtype=torch.float64)[:, :2])
    torch.testing.assert_close(v.abs(), torch.eye(3, dtype=torch.float64)[:, :2])
    torch.testing.assert_close((u * s) @ v.T, 0.5 * b @ a)


def test_numerical_rank_by_hand():
    """σ = [2, 1, 1e-9] in a 10 × 10 matrix: the cutoff is 10·ε32 ≈ 1.19e-6 relative, so
    1e-9/2 is below it (rank 2); with rtol 1e-10 it counts (rank 3)."""
    s = torch.tensor([2.0, 1.0, 1e-9], dtype=torch.float64)
    assert rank_cutoff((10, 10)) == pytest.approx(10 * torch.finfo(torch.float32).eps)
    assert numerical_rank(s, (10, 10)) == 2
    assert numerical_rank(s, (10, 10), rtol=1e-10) == 3
    assert numerical_rank(torch.zeros(3), (3, 3)) == 0


def test_tsv_of_two_rank_one_tasks_by_hand():
    """τ1 = 3·e1 e1ᵀ and τ2 = 2·e2 e2ᵀ in 4 × 4, T = 2: k = r // T = 2 but each task has rank 1,
    so k_t = 1; the two directions are orthogonal, the polar step changes nothing, and
    τ_m = τ1 + τ2. (Keeping k = 2 directions per task would put two arbitrary null-space
    vectors into the polar step and rotate the real ones.)"""
    n = 4
    t1 = 3.0 * torch.outer(e(0, n), e(0, n))
    t2 = 2.0 * torch.outer(e(1, n), e(1, n))
    base = torch.zeros(n, n, dtype=torch.float64)
    out = merge_tensors("tsv", base, [t1, t2], name="w", compute_dtype="float64")
    torch.testing.assert_close(out, t1 + t2, rtol=0, atol=1e-12)


def test_tsv_of_identical_tasks_is_that_task_by_hand():
    """Two identical rank-1 tasks τ = 2·e1 e1ᵀ: the stack [e1, e1] has Gram [[1, 1], [1, 1]]
    (eigenvalues 2 and 0); the polar factor on its column space is [e1, e1]/√2, so
    τ_m = (1/√2)²·(2 + 2)·e1 e1ᵀ = τ: well defined where the exact polar factor is not."""
    n = 3
    tau = 2.0 * torch.outer(e(0, n), e(0, n))
    base = torch.zeros(n, n, dtype=torch.float64)
    out = merge_tensors("tsv", base, [tau, tau.clone()], name="w", compute_dtype="float64")
    torch.testing.assert_close(out, tau, rtol=0, atol=1e-12)
    x = torch.stack([e(0, n), e(0, n)], dim=1)
    torch.testing.assert_close(polar(x), x / 2**0.5)


def test_storage_rounding_rms_by_hand():
    """bf16 keeps 8 significand bits: 1.0 = 0.5·2¹ lies on a grid of spacing 2^(1−8) = 2⁻⁷,
    3.0 = 0.75·2² on 2⁻⁶, and 0 is exact: RMS² = (2⁻¹⁴ + 2⁻¹² + 0) / 3 / 12."""
    from hhh_bench.merging.taskvec import rounding_rms

    x = torch.tensor([1.0, 3.0, 0.0], dtype=torch.bfloat16)
    assert rounding_rms(x, torch.bfloat16) == pytest.approx(((2**-14 + 2**-12) / 36) ** 0.5)
    assert rounding_rms(x.float(), torch.float32) == 0.0
    # the grid spacing against bf16's own next representable value, on random magnitudes
    y = (torch.randn(512, generator=torch.Generator().manual_seed(1)) * 0.02).to(torch.bfloat16)
    y = y[y != 0]
    spacing = torch.nextafter(y.abs(), torch.tensor(float("inf"), dtype=torch.bfloat16)) - y.abs()
    want = float((spacing.double().square().mean() / 12).sqrt())
    assert rounding_rms(y, torch.bfloat16) == pytest.approx(want, rel=1e-6)


def test_a_rank_8_update_stored_in_bf16_has_rank_8():
    """θ_t = bf16(θ0 + Δ), Δ of rank 8 and entries ~4e-4 (a few bf16 steps of a 0.02-scale θ0,
    as DPO moves weights): the rounding of θ_t is full-rank; the float32 cutoff alone counts it,
    the storage floor does not."""
    from hhh_bench.merging.diagnostics import subspace_stats
    from hhh_bench.merging.linalg import capped_rank, noise_floor
    from hhh_bench.merging.methods.tsv import tsv_factors
    from hhh_bench.merging.taskvec import TaskVectors

    g = torch.Generator().manual_seed(0)
    m, n, r = 160, 192, 8
    base = (torch.randn(m, n, generator=g) * 0.02).to(torch.bfloat16)
    fts = []
    for _ in range(2):
        delta = torch.randn(m, r, generator=g) @ torch.randn(r, n, generator=g) * (4e-4 / r**0.5)
        fts.append((base.float() + delta).to(torch.bfloat16))
    tv = TaskVectors.from_weights(base, fts, torch.float32)
    tau = tv.items[0]
    s = torch.linalg.svdvals(tau.double())
    assert numerical_rank(s, tau.shape) > 100  # the float32 cutoff alone: the rounding counts
    assert all(x > 0 for x in tv.noise)
    floor = noise_floor(tau.shape, tv.noise[0])
    assert float(s[r - 1]) > 3 * floor and float(s[r]) < floor / 1.5  # a clear gap either side
    assert numerical_rank(s, tau.shape, noise=tv.noise[0]) == r
    assert top_svd(tau, 50, noise=tv.noise[0])[1].numel() == r
    assert capped_rank(tau, 50, noise=tv.noise[0]) == r
    assert tsv_factors(tv.items, 50, noise=tv.noise)[3].bincount().tolist() == [r, r]
    assert subspace_stats(tv, 50)["svd_rank"] == [r, r]
    # float32 storage: no floor, the ranks are what the float32 cutoff says
    assert TaskVectors.from_weights(
        base.float(), [f.float() for f in fts], torch.float32
    ).noise == [
        0.0,
        0.0,
    ]


# -- properties --------------------------------------------------------------------------------


def lora_like(shape, num, rank, seed, dtype=torch.float32):
    """θ0 ~ N(0, 1) and T specialists θ0 + B_t A_t of the given rank (entries ~ 0.05)."""
    g = torch.Generator().manual_seed(seed)
    m, n = shape
    base = torch.randn(shape, generator=g, dtype=torch.float64)
    factors = [
        (
            torch.randn(m, rank, generator=g, dtype=torch.float64) * 0.05,
            torch.randn(rank, n, generator=g, dtype=torch.float64),
        )
        for _ in range(num)
    ]
    fts = [base + b @ a for b, a in factors]
    return base.to(dtype), [f.to(dtype) for f in fts], factors


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize(("method", "params"), SVD_METHODS)
@pytest.mark.parametrize("shape", [(128, 128), (96, 160)])
def test_rank_deficient_inputs_are_well_posed(method, params, shape):
    """Rank-16 task vectors, T = 3 (k = r // 3 = 32..42 > 16): a 1e-9 relative perturbation of
    the inputs moves the merge by < 1e-6 relative, and float32 and float64 arithmetic agree
    within 1e-5 (before the fix: 59-73% and ~76%)."""
    base, fts, _ = lora_like(shape, 3, 16, seed=sum(shape))
    g = torch.Generator().manual_seed(1)
    noisy = []
    for f in fts:
        tau = (f - base).double()
        d = torch.randn(shape, generator=g, dtype=torch.float64)
        noisy.append(base.double() + tau + 1e-9 * float(tau.norm()) / float(d.norm()) * d)
    kw = {"name": "model.layers.0.mlp.up_proj.weight", **params}
    tau_of = lambda out, b: out.double() - b.double()  # noqa: E731
    exact = merge_tensors(
        method, base.double(), [f.double() for f in fts], compute_dtype="float64", **kw
    )
    moved = merge_tensors(method, base.double(), noisy, compute_dtype="float64", **kw)
    assert rel(tau_of(moved, base), tau_of(exact, base)) < 1e-6
    f32 = merge_tensors(method, base, fts, compute_dtype="float32", **kw)
    f64 = merge_tensors(method, base, fts, compute_dtype="float64", **kw)
    assert rel(tau_of(f32, base), tau_of(f64, base)) < 1e-5


@pytest.mark.parametrize(("method", "params"), [("tsv", {}), ("resm", {"reweight": "none"})])
@pytest.mark.parametrize("shape", [(64, 48), (40, 72)])
def test_lora_factor_path_equals_the_dense_path(method, params, shape):
    """τ_t given as LoRA factors (LowRank, decomposed from the factors) and as dense full
    weights θ0 + B·A (decomposed densely) merge to the same weights within 1e-5 relative."""
    base, fts, factors = lora_like(shape, 3, 6, seed=7, dtype=torch.float64)
    kw = {"name": "model.layers.0.self_attn.q_proj.weight", "compute_dtype": "float64", **params}
    dense = merge_tensors(method, base, fts, **kw)
    lowrank = merge_tensors(method, base, [LowRank(b, a, 1.0) for b, a in factors], **kw)
    assert rel(lowrank - base, dense - base) < 1e-5


def exact_tsv(taus: list[torch.Tensor], k: int) -> torch.Tensor:
    """TSV-M from full float64 SVDs (Gargiulo et al. 2025, Alg. 1) with the polar factors from
    SVDs of the stacks: the independent formulation."""
    us, ss, vs = [], [], []
    for tau in taus:
        u, s, vh = torch.linalg.svd(tau.double(), full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vs.append(vh[:k].T)

    def pol(x: torch.Tensor) -> torch.Tensor:
        p, _, qh = torch.linalg.svd(x, full_matrices=False)
        return p @ qh

    return (pol(torch.cat(us, 1)) * torch.cat(ss)) @ pol(torch.cat(vs, 1)).T


@pytest.mark.parametrize("shape", [(120, 90), (90, 150)])
@pytest.mark.parametrize("decay", [0.3, 0.6])
def test_fast_path_equals_exact_tsv_on_slowly_decaying_spectra(shape, decay):
    """Full-rank task vectors with σ_i = (1 + i)^(-decay) (slow decay: σ_r/σ_1 ≈ 0.06-0.25): the
    Gram-eigendecomposition path in float32 compute equals exact float64 TSV-M within 1e-4."""
    g = torch.Generator().manual_seed(int(decay * 10))
    m, n = shape
    r = min(shape)
    taus = []
    for _ in range(3):
        u = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))[0]
        v = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))[0]
        s = (1.0 + torch.arange(r, dtype=torch.float64)) ** -decay
        taus.append((u * s) @ v.T)
    base = torch.zeros(shape, dtype=torch.float64)
    fts32 = [t.float() for t in taus]
    out = merge_tensors("tsv", base.float(), fts32, name="w")
    want = exact_tsv([t.double() for t in fts32], r // 3)
    assert rel(out, want) < 1e-4


def test_state_dict_merge_keeps_lowrank_updates_exact():
    """merge_state_dicts with a specialist whose only change is a rank-2 update of one matrix:
    TSV-M of that specialist alone (T = 1) reproduces its update exactly (k = r, rank 2)."""
    g = torch.Generator().manual_seed(3)
    base = {
        "model.layers.0.mlp.up_proj.weight": torch.randn(12, 8, generator=g, dtype=torch.float64),
        "model.norm.weight": torch.ones(8, dtype=torch.float64),
    }
    upd = torch.randn(12, 2, generator=g, dtype=torch.float64) @ torch.randn(
        2, 8, generator=g, dtype=torch.float64
    )
    ft = {
        **base,
        "model.layers.0.mlp.up_proj.weight": base["model.layers.0.mlp.up_proj.weight"] + upd,
    }
    out = merge_state_dicts("tsv", base, [ft], compute_dtype="float64")
    torch.testing.assert_close(
        out["model.layers.0.mlp.up_proj.weight"], ft["model.layers.0.mlp.up_proj.weight"]
    )
    torch.testing.assert_close(out["model.norm.weight"], base["model.norm.weight"])
