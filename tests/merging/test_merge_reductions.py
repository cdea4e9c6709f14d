"""Reductions: each method collapses to the obvious answer in the obvious special case."""

from __future__ import annotations

import pytest
import torch
from merging_helpers import data_params, fit_count, models, state_dicts

from hhh_bench.merging import list_methods, merge_state_dicts, merge_tensors

F64 = {"compute_dtype": "float64"}


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("task_arithmetic", {}),
        ("weight_average", {}),
        ("ties", {"density": 1.0}),
        ("ties", {"density": 1.0, "scope": "global"}),
        ("dare_ta", {"drop_rate": 0.0}),
        ("dare_ties", {"drop_rate": 0.0}),
        ("tsv", {"rank_fraction": 1.0}),
        ("tsv", {}),  # rank_fraction null = 1/T = 1: full rank
        ("resm", {"reweight": "none", "rank": "uniform"}),
    ],
)
def test_one_model_at_scaling_one_returns_it(method, params):
    """T = 1, λ = 1: TA, TIES at density 1, DARE at p = 0, TSV at full rank give θ_1 back."""
    base, fts = state_dicts(1, seed=1, dtype=torch.float64)
    out = merge_state_dicts(method, base, fts, **params, **F64)
    for k, v in out.items():
        torch.testing.assert_close(v, fts[0][k], rtol=0, atol=1e-12, msg=k)


@pytest.mark.parametrize(
    "method",
    [
        "task_arithmetic", "ties", "dare_ta", "dare_ties", "tsv", "resm", "weight_average",
        "iso_c", "iso_cts",
    ],
)  # fmt: skip
def test_zero_task_vectors_return_the_base(method):
    """τ_t = 0 for all t: every method returns θ0 exactly (bf16 included)."""
    base, _ = models((6, 5), 1, seed=2, dtype=torch.bfloat16)
    out = merge_tensors(method, base, [base.clone() for _ in range(3)], name="w", scaling=1.7)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, base)


def test_identical_models_under_ta_with_weights_summing_to_one():
    """θ_t = θ for all t and Σ w_t = 1: θ0 + Σ w_t (θ − θ0) = θ."""
    base, (ft,) = models((4, 3), 1, seed=3, dtype=torch.float64)
    out = merge_tensors("task_arithmetic", base, [ft, ft, ft], weights=[0.2, 0.5, 0.3], **F64)
    torch.testing.assert_close(out, ft, rtol=0, atol=1e-12)


def test_resm_without_its_components_is_tsv_exactly():
    """reweight=none, rank=uniform: bitwise the TSV-M result, for every tensor of a model."""
    base, fts = state_dicts(3, seed=4)
    tsv = merge_state_dicts("tsv", base, fts, scaling=0.8, weights=[1, 2, 0.5])
    resm = merge_state_dicts(
        "resm", base, fts, scaling=0.8, weights=[1, 2, 0.5], reweight="none", rank="uniform"
    )
    for k in tsv:
        assert torch.equal(tsv[k], resm[k]), k


@pytest.mark.parametrize(("shape", "num", "fraction"), [((6, 5), 3, 0.8), ((9, 7), 2, 0.95)])
def test_iso_cts_without_task_directions_is_iso_c(shape, num, fraction):
    """k_t = round((r − int(r·f))/T) = 0 (r = 5, T = 3, f = .8: round(1/3); r = 7, T = 2,
    f = .95: round(.5), half to even): the common subspace is all of τ_Σ, Iso-CTS is Iso-C."""
    base, fts = models(shape, num, seed=7, dtype=torch.float64)
    cts = merge_tensors("iso_cts", base, fts, name="w", common_space_fraction=fraction, **F64)
    torch.testing.assert_close(
        cts, merge_tensors("iso_c", base, fts, name="w", **F64), rtol=0, atol=1e-12
    )


def test_resm_rank_spread_zero_is_uniform():
    """rank=outlier_density with spread 0 gives every layer TSV-M's k: the same merge."""
    base, fts = state_dicts(2, seed=5)
    a = merge_state_dicts("resm", base, fts, rank="outlier_density", rank_spread=0.0)
    b = merge_state_dicts("resm", base, fts, rank="uniform")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_scaling_zero_returns_the_base(tmp_path):
    base, fts = state_dicts(3, seed=6)
    for method in list_methods():
        if method == "weight_average":
            continue
        n = fit_count(method, 3)
        out = merge_state_dicts(
            method, base, fts[:n], scaling=0.0, **data_params(method, base, n, folder=tmp_path)
        )
        for k in base:
            assert torch.equal(out[k], base[k]), (method, k)


@pytest.mark.parametrize("scaling, says", [(0.0, "unchanged"), (-1.0, "task negation")])
def test_non_positive_scaling_is_allowed_but_never_silent(scaling, says, caplog):
    base, fts = state_dicts(2, seed=1)
    with caplog.at_level("WARNING", logger="hhh_bench.merging"):
        merge_state_dicts("task_arithmetic", base, fts, scaling=scaling)
    assert any(says in r.getMessage() and "'scaling'" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="hhh_bench.merging"):
        merge_state_dicts("task_arithmetic", base, fts, scaling=0.5)
    assert not caplog.records
