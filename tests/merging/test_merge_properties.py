"""Property tests (hypothesis): structure preserved, order invariance, TIES sign agreement,
TSV/RESM rank bound, orthonormal U⊥, Iso-C/Iso-CTS isotropic spectra."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from merging_helpers import data_params, fit_count, models, state_dicts

from hhh_bench.merging import list_methods, merge_state_dicts, merge_tensors
from hhh_bench.merging.methods.dare import dare_merge
from hhh_bench.merging.methods.ties import topk_mask
from hhh_bench.merging.methods.tsv import tsv_factors, tsv_rank

FAST = settings(max_examples=15, deadline=None)
seeds = st.integers(0, 2**16)
num_models = st.integers(1, 4)
shapes = st.sampled_from([(5,), (3, 4), (6, 5), (4, 8), (2, 3, 2)])
dtypes = st.sampled_from([torch.float32, torch.bfloat16, torch.float64])


@FAST
@given(method=st.sampled_from(sorted(list_methods())), num=num_models, seed=seeds, dtype=dtypes)
def test_keys_shapes_dtypes_preserved(method, num, seed, dtype):
    base, fts = state_dicts(fit_count(method, num), seed, dtype)
    out = merge_state_dicts(method, base, fts, **data_params(method, base, len(fts), seed))
    assert list(out) == list(base)
    for k, v in out.items():
        assert v.shape == base[k].shape and v.dtype == base[k].dtype, k
        assert torch.isfinite(v.float()).all(), k


@FAST
@given(
    method=st.sampled_from(
        [
            "task_arithmetic",
            "weight_average",
            "ties",
            "tsv",
            "resm",
            "breadcrumbs",
            "breadcrumbs_ties",
            "model_stock",
            "sce",
            "karcher",
            "multislerp",
            "fisher",
            "regmean",
            "consensus_ta",
            "consensus_ties",
            "pcb",
            "iso_c",
            "iso_cts",
        ]
    ),
    num=st.integers(2, 4),
    seed=seeds,
    perm_seed=seeds,
)
def test_order_of_models_does_not_matter(method, num, seed, perm_seed):
    """Permuting the finetuned models together with their weights (and statistics) leaves the
    merge unchanged."""
    base, fts = state_dicts(num, seed, torch.float64)
    weights = [0.5 + 0.25 * i for i in range(num)]
    perm = torch.randperm(num, generator=torch.Generator().manual_seed(perm_seed)).tolist()
    data = data_params(method, base, num, seed)
    a = merge_state_dicts(method, base, fts, weights=weights, compute_dtype="float64", **data)
    permuted = {k: [v[i] for i in perm] for k, v in data.items()}
    b = merge_state_dicts(
        method,
        base,
        [fts[i] for i in perm],
        weights=[weights[i] for i in perm],
        compute_dtype="float64",
        **permuted,
    )
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-9, msg=k)


@FAST
@given(
    shape=shapes,
    num=st.integers(2, 4),
    seed=seeds,
    consensus=st.booleans(),
    p=st.sampled_from([0.0, 0.3, 0.7]),
)
def test_dare_order_invariance_given_the_same_masks(shape, num, seed, consensus, p):
    g = torch.Generator().manual_seed(seed)
    taus = torch.randn((num, *shape), generator=g, dtype=torch.float64)
    masks = torch.bernoulli(torch.full_like(taus, 1 - p), generator=g)
    weights = torch.rand(num, generator=g, dtype=torch.float64) + 0.5
    w = weights.view(num, *([1] * len(shape)))
    perm = torch.randperm(num, generator=g)
    a = dare_merge(taus, masks, w, p, consensus=consensus)
    b = dare_merge(taus[perm], masks[perm], w[perm], p, consensus=consensus)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def _trim_by_sort(tau: torch.Tensor, density: float) -> torch.Tensor:
    k = int(density * tau.numel())
    order = tau.abs().flatten().argsort(descending=True)
    keep = torch.zeros(tau.numel(), dtype=torch.bool)
    keep[order[:k]] = True
    return torch.where(keep.view(tau.shape), tau, 0.0)


@FAST
@given(shape=shapes, num=num_models, seed=seeds, density=st.sampled_from([0.2, 0.3, 0.5, 1.0]))
def test_ties_agrees_with_the_elected_sign(shape, num, seed, density):
    """Wherever the merged τ is non-zero its sign is sign(Σ_t trimmed τ_t) (a zero sum: +)."""
    base, fts = models(shape, num, seed, torch.float64)
    tau = merge_tensors("ties", base, fts, density=density, compute_dtype="float64") - base
    trimmed_sum = sum(_trim_by_sort(f - base, density) for f in fts)
    elected = torch.where(trimmed_sum >= 0, 1.0, -1.0).double()
    nonzero = tau.abs() > 1e-12
    assert torch.equal(tau.sign()[nonzero], elected[nonzero])


@FAST
@given(
    method=st.sampled_from(["tsv", "resm"]),
    shape=st.sampled_from([(6, 5), (4, 9), (8, 8), (3, 7)]),
    num=num_models,
    seed=seeds,
    rank_fraction=st.sampled_from([None, 0.2, 0.5, 1.0]),
)
def test_tsv_and_resm_rank_is_at_most_t_times_k(method, shape, num, seed, rank_fraction):
    base, fts = models(shape, num, seed, torch.float64)
    tau = (
        merge_tensors(
            method, base, fts, name="w", rank_fraction=rank_fraction, compute_dtype="float64"
        )
        - base
    )
    k = tsv_rank(min(shape), num, rank_fraction)
    if k == 0:  # r < T: the mean, any rank
        return
    assert int(torch.linalg.matrix_rank(tau)) <= num * k


@FAST
@given(
    shape=st.sampled_from([(6, 5), (4, 9), (10, 7)]),
    num=num_models,
    seed=seeds,
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_polar_factors_have_orthonormal_columns(shape, num, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    taus = torch.randn((num, *shape), generator=g, dtype=dtype)
    k = tsv_rank(min(shape), num, None)
    if k == 0:
        return
    u, s, v, _ = tsv_factors(list(taus), k)
    tol = 1e-5 if dtype == torch.float32 else 1e-10  # the Gram route: ~1e6·ε64 (measured 2.7e-12)
    eye = torch.eye(num * k, dtype=u.dtype)
    torch.testing.assert_close(u.T @ u, eye, rtol=0, atol=tol)
    torch.testing.assert_close(v.T @ v, eye, rtol=0, atol=tol)
    assert (s >= 0).all()


@FAST
@given(
    shape=st.sampled_from([(6, 5), (4, 9), (8, 8), (12, 7)]),
    num=num_models,
    seed=seeds,
    fraction=st.sampled_from([0.1, 0.5, 0.8, 0.95]),
)
def test_iso_spectra_are_flat(shape, num, seed, fraction):
    """Iso-C and Iso-CTS return σ̄ times a matrix whose r = min(m, n) singular values are all 1
    (full-rank random inputs); Iso-C's σ̄·r is the nuclear norm of Σ_t w_t τ_t."""
    base, fts = models(shape, num, seed, torch.float64)
    weights = [1.0 + 0.5 * t for t in range(num)]
    kw = {"name": "w", "weights": weights, "compute_dtype": "float64"}
    total = sum(w * (f - base) for w, f in zip(weights, fts, strict=True))
    nuclear = float(torch.linalg.svdvals(total).sum())
    for method, extra in (("iso_c", {}), ("iso_cts", {"common_space_fraction": fraction})):
        s = torch.linalg.svdvals(merge_tensors(method, base, fts, **kw, **extra) - base)
        assert s.numel() == min(shape)
        torch.testing.assert_close(s, s.mean().expand_as(s), rtol=1e-9, atol=0, msg=method)
        if method == "iso_c":
            assert abs(float(s.sum()) - nuclear) <= 1e-9 * nuclear


@FAST
@given(method=st.sampled_from(sorted(list_methods())), seed=seeds)
def test_bf16_inputs_are_computed_in_float32(method, seed):
    """bf16 in, bf16 out, and the same as merging the float32 copies then rounding once."""
    base, fts = models((6, 4), fit_count(method, 3), seed, torch.bfloat16)
    data = data_params(method, {"w": base}, len(fts), seed)
    out = merge_tensors(method, base, fts, name="w", **data)
    ref = merge_tensors(method, base.float(), [f.float() for f in fts], name="w", **data)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ref.bfloat16())


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3000),
    seed=seeds,
    density=st.floats(0.0, 1.0),
    levels=st.sampled_from([None, 1, 3, 50]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_topk_mask_matches_a_stable_sort(n, seed, density, levels, dtype):
    """The histogram selection keeps exactly k entries: every entry above the cut and, among
    equal magnitudes at the cut, the lowest indices, as a stable descending sort does.
    ``levels`` draws magnitudes from a few values (many ties, zeros included)."""
    g = torch.Generator().manual_seed(seed)
    if levels is None:
        x = torch.randn(n, generator=g, dtype=torch.float64) * 10 ** torch.randint(
            -6, 6, (n,), generator=g
        )
    else:
        x = torch.randint(-levels, levels + 1, (n,), generator=g).double() / 7
    mag = x.to(dtype).abs()
    k = int(density * n)
    expected = torch.zeros(n, dtype=torch.bool)
    expected[mag.double().argsort(descending=True, stable=True)[:k]] = True
    assert torch.equal(topk_mask(mag, k, sort_max=0), expected)  # the histogram selection
    assert torch.equal(topk_mask(mag, k), expected)  # the stable sort (n <= SORT_MAX)
