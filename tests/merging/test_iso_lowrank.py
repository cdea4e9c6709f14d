"""Iso-C and Iso-CTS on low-rank task vectors (issue 31): exact on LoRA factors, well-posed on
rank-deficient sums (numerical rank first), and blind to bf16 storage rounding; Iso-CTS's
orthogonalisation keeps a stack's small singular values (geometry) and leaves out exact
duplicates only.

The reference flattens all r = min(m, n) singular values, so on a sum of rank ρ < r it gives
r − ρ arbitrary null directions the weight σ̄; here only the ρ real ones count (docs/merging.md,
Iso-C / Iso-CTS deviations). The expected values below come from full float64 SVDs cut at the
rank the inputs were built with."""

from __future__ import annotations

import pytest
import torch

from hhh_bench.merging import get_method, merge_tensors
from hhh_bench.merging.methods.iso import gram_rtol
from hhh_bench.merging.taskvec import LowRank, TaskVectors, rounding_rms

F64 = {"compute_dtype": "float64"}
SHAPE, RANK, T = (40, 32), 3, 3


def lora_tasks(seed: int, shape=SHAPE, rank=RANK, num=T) -> list[LowRank]:
    g = torch.Generator().manual_seed(seed)
    m, n = shape
    return [
        LowRank(
            torch.randn(m, rank, generator=g, dtype=torch.float64),
            torch.randn(rank, n, generator=g, dtype=torch.float64),
            0.5,
        )
        for _ in range(num)
    ]


def dense(taus: list[LowRank]) -> list[torch.Tensor]:
    return [t.dense(torch.float64) for t in taus]


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.8])
def test_lora_factors_equal_the_dense_path(fraction):
    """The factor path (the weighted sum [w_t s_t B_t]·[A_t] decomposed from its factors, each
    residual (I − U_c U_cᵀ)B_t kept low-rank) equals the dense path on the m × n matrices."""
    taus = lora_tasks(0)
    base = torch.zeros(SHAPE, dtype=torch.float64)
    kw = {"name": "w", "weights": [1.0, -0.5, 2.0], **F64}
    for method, extra in (("iso_c", {}), ("iso_cts", {"common_space_fraction": fraction})):
        lo = merge_tensors(method, base, taus, **kw, **extra)
        de = merge_tensors(method, base, [base + d for d in dense(taus)], **kw, **extra)
        assert float(de.norm()) > 0
        torch.testing.assert_close(lo, de, rtol=0, atol=1e-10 * float(de.norm()), msg=method)


def test_iso_c_of_a_low_rank_sum_is_its_truncated_isotropic_svd():
    """τ_Σ of three rank-3 tasks has rank ρ = 9 of r = 32: τ_m = mean(σ_1..σ_9)·U_9 V_9ᵀ, from a
    full float64 SVD cut at the rank the inputs were built with."""
    taus = lora_tasks(1)
    total = sum(dense(taus))
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    rho = T * RANK
    assert float(s[rho]) < 1e-12 * float(s[0])  # the built rank
    want = s[:rho].mean() * u[:, :rho] @ vh[:rho]
    base = torch.zeros(SHAPE, dtype=torch.float64)
    for taus_in in (taus, dense(taus)):
        out = merge_tensors("iso_c", base, taus_in, name="w", **F64)
        torch.testing.assert_close(out, want, rtol=0, atol=1e-12)


def test_iso_cts_on_tasks_inside_the_common_subspace_is_iso_c():
    """f = .8, r = 32: k_c = 26 ≥ ρ = 9, so the common subspace holds every task's directions;
    the residuals are zero up to rounding and add nothing (the reference would stack r − k_c
    arbitrary directions per matrix). Iso-CTS = Iso-C, on the factors and on the dense path."""
    taus = lora_tasks(2)
    base = torch.zeros(SHAPE, dtype=torch.float64)
    for taus_in in (taus, [base + d for d in dense(taus)]):
        cts = merge_tensors("iso_cts", base, taus_in, name="w", **F64)
        torch.testing.assert_close(
            cts, merge_tensors("iso_c", base, taus_in, name="w", **F64), rtol=0, atol=1e-12
        )


@pytest.mark.parametrize(
    ("method", "extra"),
    [("iso_c", {}), ("iso_cts", {}), ("iso_cts", {"common_space_fraction": 0.1})],
)
def test_rank_deficient_merges_are_well_posed(method, extra):
    """A 1e-9 relative perturbation of rank-deficient inputs moves the merge by < 1e-6 of its
    norm (its null directions are below the cutoff, so nothing arbitrary enters), and the
    float32 and float64 runs agree to float32 rounding."""
    g = torch.Generator().manual_seed(3)
    taus = dense(lora_tasks(3))
    base = torch.zeros(SHAPE, dtype=torch.float64)
    fts = [base + t for t in taus]
    noise = [torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in fts]
    bumped = [f + 1e-9 * float(f.abs().max()) * z for f, z in zip(fts, noise, strict=True)]
    a = merge_tensors(method, base, fts, name="w", **extra, **F64)
    b = merge_tensors(method, base, bumped, name="w", **extra, **F64)
    assert float((a - b).norm()) < 1e-6 * float(a.norm())
    c = merge_tensors(method, base.float(), [f.float() for f in fts], name="w", **extra)
    assert float((a - c.double()).norm()) < 1e-5 * float(a.norm())


@pytest.mark.parametrize("method", ["iso_c", "iso_cts"])
def test_a_low_rank_update_stored_in_bf16_keeps_its_rank(method):
    """θ_t = bf16(θ0 + Δ_t), Δ_t of rank 8 (entries ~4e-4, a few bf16 steps of a 0.02-scale θ0):
    the rounding of θ_t is a full-rank matrix; with ``storage_floor: true`` it is not flattened
    up to σ̄: two tasks merge to a τ_m of rank 16 with 16 equal singular values. The default
    (the reference's rule) flattens the rounding's directions too."""
    g = torch.Generator().manual_seed(0)
    m, n, r = 160, 192, 8
    base = (torch.randn(m, n, generator=g) * 0.02).to(torch.bfloat16)
    fts = []
    for _ in range(2):
        delta = torch.randn(m, r, generator=g) @ torch.randn(r, n, generator=g) * (4e-4 / r**0.5)
        fts.append((base.float() + delta).to(torch.bfloat16))
    method_ = get_method(method)
    params = method_.make_params(compute_dtype="float64", storage_floor=True)
    taus = TaskVectors.from_weights(base, fts, torch.float64)
    tau_m = method_.precompute("w", base, taus, params, {})["merged"]  # before the bf16 output
    s = torch.linalg.svdvals(tau_m)
    torch.testing.assert_close(s[:16], s[:16].mean().expand(16), rtol=1e-9, atol=0)
    assert float(s[16]) < 1e-9 * float(s[0])
    default = method_.make_params(compute_dtype="float64")
    flat = torch.linalg.svdvals(method_.precompute("w", base, taus, default, {})["merged"])
    assert int((flat > 1e-9 * flat[0]).sum()) > 16


def _fb_iso_cts(taus: list[torch.Tensor], fraction: float) -> torch.Tensor:
    """The reference's Iso-CTS in float64 (as in test_merge_reference.py): full SVDs, its sizes,
    its SVD-based orthogonalisation X = P S Qᵀ ↦ P Qᵀ, which keeps every singular value."""
    r, num = min(taus[0].shape), len(taus)
    per_task = round((r - int(r * fraction)) / num)
    k_c = r - per_task * num
    u, s, vh = torch.linalg.svd(sum(taus), full_matrices=False)
    uc = u[:, :k_c]
    parts = [torch.linalg.svd(t - uc @ uc.T @ t, full_matrices=False) for t in taus]
    big_u = torch.cat([*(p[0][:, :per_task] for p in parts), uc], dim=1)
    big_v = torch.cat([*(p[2][:per_task] for p in parts), vh[:k_c]], dim=0).T
    sigma = torch.cat([*(p[1][:per_task] for p in parts), s[:k_c]])
    pu, _, qu = torch.linalg.svd(big_u, full_matrices=False)
    pv, _, qv = torch.linalg.svd(big_v, full_matrices=False)
    return sigma.mean() * (pu @ qu) @ (pv @ qv).T


def test_nearly_parallel_task_directions_are_kept_as_the_reference_keeps_them():
    """τ2 = τ1 + 1e-3·G (128 × 128, full rank, f = .5): the two tasks' residual directions are
    nearly parallel, so both stacks have σ_min/σ_max ≈ 5e-6 and 1.2e-5: geometry, not rounding
    (on full-rank inputs the polar cutoff is 2·√(ε64·K) = 3e-7 for K = 128). They are kept, and
    the merge equals the reference's to 1e-5 (a cut at TSV-M's max(m, n)·ε32 = 1.5e-5 would
    drop some: ~10% off)."""
    g = torch.Generator().manual_seed(0)
    n = 128
    t1 = torch.randn(n, n, generator=g, dtype=torch.float64)
    t2 = t1 + 1e-3 * torch.randn(n, n, generator=g, dtype=torch.float64)
    base = torch.zeros(n, n, dtype=torch.float64)
    out = merge_tensors("iso_cts", base, [t1, t2], name="w", common_space_fraction=0.5, **F64)
    ref = _fb_iso_cts([t1, t2], 0.5)
    assert float((out - ref).norm()) < 1e-5 * float(ref.norm())


def test_identical_specialists_merge_well_posed():
    """τ1 = τ2 exactly (full rank): the stacks hold exact duplicates, σ = 0 up to rounding. The
    reference's orthogonalisation then picks an arbitrary direction for each (its result
    changes completely under a 1e-9 perturbation); here the duplicates are left out (the
    polar factor on the stack's column space), and a 1e-9 perturbation of one input moves the
    merge by < 1e-6."""
    g = torch.Generator().manual_seed(1)
    n = 48
    tau = torch.randn(n, n, generator=g, dtype=torch.float64)
    other = torch.randn(n, n, generator=g, dtype=torch.float64)
    bump = 1e-9 * torch.randn(n, n, generator=g, dtype=torch.float64)
    base = torch.zeros(n, n, dtype=torch.float64)
    kw = {"name": "w", "common_space_fraction": 0.5, **F64}
    a = merge_tensors("iso_cts", base, [tau, tau.clone(), other], **kw)
    b = merge_tensors("iso_cts", base, [tau + bump, tau.clone(), other], **kw)
    assert float((a - b).norm()) < 1e-6 * float(a.norm())


def _orthonormal(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q


def test_a_small_real_singular_value_is_flattened_as_the_reference_does():
    """τ = U diag(σ) Vᵀ (64 × 64, built from its factors) with σ_64 = 3e-6·σ_1: full rank, its
    smallest direction below max(m, n)·ε32 = 7.6e-6 (the TSV-M cutoff) but above what the float64
    Gram resolves (gram_rtol(64) = 4.2e-7). Iso-C keeps it, as the reference: τ_m = mean(σ)·U Vᵀ
    over all 64 directions, from the factors."""
    g = torch.Generator().manual_seed(2)
    n = 64
    u, v = _orthonormal(n, g), _orthonormal(n, g)
    s = torch.linspace(1.0, 0.5, n, dtype=torch.float64)
    s[-1] = 3e-6
    assert gram_rtol(n) < 3e-6 < n * torch.finfo(torch.float32).eps
    tau = (u * s) @ v.T
    out = merge_tensors("iso_c", torch.zeros(n, n, dtype=torch.float64), [tau], name="w", **F64)
    torch.testing.assert_close(out, s.mean() * u @ v.T, rtol=0, atol=1e-10)


def test_float32_rounding_of_a_small_update_is_not_flattened():
    """θ0 ~ N(0, 1), two rank-2 updates of entries ~1e-4, θ_t stored in float32: θ_t's rounding
    (RMS ~3e-8, ε32-relative to θ, not to τ) puts full-rank noise with σ up to ~5e-7 into τ_t,
    1e-4 of σ_1 (above any relative cutoff). The float32 storage floor (TaskVectors.rounding,
    ``storage_floor: true``) leaves it out: τ_m has rank 4, with 4 equal singular values."""
    g = torch.Generator().manual_seed(3)
    n = 64
    base = torch.randn(n, n, generator=g)
    fts = [
        base + 1e-4 * torch.randn(n, 2, generator=g) @ torch.randn(2, n, generator=g)
        for _ in range(2)
    ]
    method = get_method("iso_c")
    params = method.make_params(compute_dtype="float64", storage_floor=True)
    taus = TaskVectors.from_weights(base, fts, torch.float64)
    assert all(1e-8 < r < 1e-7 for r in taus.rounding())
    tau_m = method.precompute("w", base, taus, params, {})["merged"]
    s = torch.linalg.svdvals(tau_m)
    torch.testing.assert_close(s[:4], s[:4].mean().expand(4), rtol=1e-9, atol=0)
    assert float(s[4]) < 1e-9 * float(s[0])


def test_rounding_by_hand():
    """float32 keeps 24 significand bits: 1.0 = 0.5·2¹ on a grid of spacing 2^(1−24) = 2⁻²³,
    3.0 = 0.75·2² on 2⁻²², 0 exact: RMS² = (2⁻⁴⁶ + 2⁻⁴⁴ + 0)/3/12. TaskVectors.rounding counts
    θ_t = τ_t + θ0 at the coarser of storage and compute dtype: float64 weights merged in float32
    are rounded to float32 (the same RMS), merged in float64 not at all (0); bf16 storage gives
    bf16's (8 bits: 2⁻⁷ and 2⁻⁶)."""
    x = torch.tensor([1.0, 3.0, 0.0])
    want32 = ((2**-46 + 2**-44) / 36) ** 0.5
    assert rounding_rms(x, torch.float32, bits=24) == pytest.approx(want32)
    assert rounding_rms(x, torch.float32) == 0.0  # the default (TSV-M's noise): bf16/fp16 only
    base = torch.zeros(1, 3, dtype=torch.float64)
    ft = x.view(1, 3).double()
    f32 = TaskVectors.from_weights(base, [ft], torch.float32)
    f64 = TaskVectors.from_weights(base, [ft], torch.float64)
    bf16 = TaskVectors.from_weights(base.bfloat16(), [ft.bfloat16()], torch.float32)
    assert f32.rounding() == [pytest.approx(want32)] and f64.rounding() == [0.0]
    assert bf16.rounding() == [pytest.approx(((2**-14 + 2**-12) / 36) ** 0.5)]
    assert f32.noise == [0.0]  # unchanged: TSV-M's floor leaves float32 out


@pytest.mark.parametrize("method", ["iso_c", "iso_cts"])
def test_without_the_storage_floor_bf16_inputs_merge_as_the_reference(method):
    """storage_floor=false: a bf16 rank-8 update's rounding is flattened up to σ̄ as the reference
    does (its τ_t are exact in float64: bf16 values are), so the merge equals the reference's
    float64 formulation (all r directions); with the floor (default) it keeps 16."""
    g = torch.Generator().manual_seed(4)
    m, n, r = 96, 80, 8
    base = (torch.randn(m, n, generator=g) * 0.02).to(torch.bfloat16)
    fts = []
    for _ in range(2):
        delta = torch.randn(m, r, generator=g) @ torch.randn(r, n, generator=g) * (4e-4 / r**0.5)
        fts.append((base.float() + delta).to(torch.bfloat16))
    taus = [f.double() - base.double() for f in fts]
    method_ = get_method(method)
    stored = TaskVectors.from_weights(base, fts, torch.float64)
    params = method_.make_params(compute_dtype="float64", storage_floor=False)
    got = method_.precompute("w", base, stored, params, {})["merged"]
    if method == "iso_c":
        u, s, vh = torch.linalg.svd(sum(taus), full_matrices=False)
        want = s.mean() * u @ vh
    else:
        want = _fb_iso_cts(taus, 0.8)
    assert float((got - want).norm()) < 1e-10 * float(want.norm())
    assert int((torch.linalg.svdvals(got) > 1e-6 * float(want.norm())).sum()) == n
