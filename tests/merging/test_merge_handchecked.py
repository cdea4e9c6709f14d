"""Every method on tensors small enough to check on paper; the arithmetic is in each docstring."""

from __future__ import annotations

import math

import pytest
import torch

from hhh_bench.merging import merge_state_dicts, merge_tensors
from hhh_bench.merging.methods.dare import dare_keep_mask, dare_merge
from hhh_bench.merging.methods.della import della_keep_mask, keep_probabilities
from hhh_bench.merging.methods.iso import iso_cts_sizes
from hhh_bench.merging.methods.resm import (
    ResmParams,
    allocate_by_outlier_density,
    outlier_density,
    reweight_huber_mad,
)
from hhh_bench.merging.methods.tsv import is_embedding, tsv_factors, tsv_rank
from hhh_bench.merging.taskvec import LowRank

T = torch.tensor


def test_task_arithmetic_by_hand():
    """θ0 = [[1, 2], [3, 4]], τ1 = [[1, 0], [0, -1]], τ2 = [[.5, .5], [-1, 2]], w = (2, 1), λ = .5:
    Σ w τ = [[2.5, .5], [-1, 0]];  λ·Σ = [[1.25, .25], [-.5, 0]];  θ = [[2.25, 2.25], [2.5, 4]]."""
    base = T([[1.0, 2.0], [3.0, 4.0]])
    fts = [base + T([[1.0, 0.0], [0.0, -1.0]]), base + T([[0.5, 0.5], [-1.0, 2.0]])]
    out = merge_tensors("task_arithmetic", base, fts, weights=[2, 1], scaling=0.5)
    assert torch.equal(out, T([[2.25, 2.25], [2.5, 4.0]]))


def test_weight_average_by_hand():
    """θ0 = [1, 1, 1], θ1 = [1, 2, 3], θ2 = [3, 2, 1], w = (1, 3):
    (1·[1, 2, 3] + 3·[3, 2, 1]) / 4 = [10, 8, 6] / 4 = [2.5, 2, 1.5] (the base drops out)."""
    base = T([1.0, 1.0, 1.0])
    out = merge_tensors(
        "weight_average", base, [T([1.0, 2.0, 3.0]), T([3.0, 2.0, 1.0])], weights=[1, 3]
    )
    assert torch.equal(out, T([2.5, 2.0, 1.5]))


def test_ties_by_hand():
    """θ0 = 0, density .5 on 6 entries: k = int(.5·6) = 3 per model.

    τ1 = [[ 4, -1,  2], [.5, -3,  1]]  top-3 |.| = 4, 3, 2  -> [[ 4,  0, 0], [0, -3, 0]] (+2 at (0,2))
    τ2 = [[-2,  5, -1], [ 3,  1, -.5]] top-3 |.| = 5, 3, 2  -> [[-2,  5, 0], [3,  0, 0]]
    τ3 = [[-3, -4,  1], [-1,  2,  6]]  top-3 |.| = 6, 4, 3  -> [[-3, -4, 0], [0,  0, 6]]
    trimmed sum = [[-1, 1, 2], [3, -3, 6]] -> elected signs [[-, +, +], [+, -, +]]
    disjoint mean: (0,0) (-2 - 3)/2 = -2.5; (0,1) 5 (τ3's -4 disagrees); (0,2) 2; (1,0) 3;
    (1,1) -3; (1,2) 6.  θ = [[-2.5, 5, 2], [3, -3, 6]].
    """
    taus = [
        T([[4.0, -1.0, 2.0], [0.5, -3.0, 1.0]]),
        T([[-2.0, 5.0, -1.0], [3.0, 1.0, -0.5]]),
        T([[-3.0, -4.0, 1.0], [-1.0, 2.0, 6.0]]),
    ]
    out = merge_tensors("ties", torch.zeros(2, 3), taus, density=0.5)
    assert torch.equal(out, T([[-2.5, 5.0, 2.0], [3.0, -3.0, 6.0]]))


def test_ties_zero_sum_elects_plus():
    """τ1 = [2, -1], τ2 = [-2, 1], density 1 (nothing trimmed): sums [0, 0] -> elected + (a tie
    goes to +); entry 0 keeps τ1's 2, entry 1 keeps τ2's 1: θ = [2, 1]."""
    out = merge_tensors("ties", torch.zeros(2), [T([2.0, -1.0]), T([-2.0, 1.0])], density=1.0)
    assert torch.equal(out, T([2.0, 1.0]))


def test_ties_weights_vote_in_the_election():
    """τ1 = [1], τ2 = [-3], w = (4, 1), density 1: weighted τ = [4], [-3]; sum 1 -> +;
    mean over agreeing weighted entries = 4.  (peft elects from the unweighted sum -2 -> -, and
    would give w2·τ2 = -3.)"""
    out = merge_tensors("ties", torch.zeros(1), [T([1.0]), T([-3.0])], density=1.0, weights=[4, 1])
    assert torch.equal(out, T([4.0]))


def test_ties_global_scope_by_hand():
    """One model, θ0 = 0, density .5 over a 'model' of 3 + 4 = 7 entries: k = int(3.5) = 3.
    a = [5, 4.5, .5], b = [[2, -1], [.25, 3]]: global top-3 |.| = 5, 4.5, 3 ->
    a = [5, 4.5, 0], b = [[0, 0], [0, 3]].  Per tensor instead: a keeps int(1.5) = 1 -> [5, 0, 0],
    b keeps int(2) = 2 -> [[2, 0], [0, 3]].  (FusionBench would keep k + 1 = 4: also b's 2.)"""
    a, b = T([5.0, 4.5, 0.5]), T([[2.0, -1.0], [0.25, 3.0]])
    base = {"a": torch.zeros(3), "b": torch.zeros(2, 2)}
    out = merge_state_dicts("ties", base, [{"a": a, "b": b}], density=0.5, scope="global")
    assert torch.equal(out["a"], T([5.0, 4.5, 0.0]))
    assert torch.equal(out["b"], T([[0.0, 0.0], [0.0, 3.0]]))
    per_tensor = merge_state_dicts("ties", base, [{"a": a, "b": b}], density=0.5)
    assert torch.equal(per_tensor["a"], T([5.0, 0.0, 0.0]))
    assert torch.equal(per_tensor["b"], T([[2.0, 0.0], [0.0, 3.0]]))


def test_dare_by_hand_given_masks():
    """p = .5, τ1 = [1, 2, 3, 4] with mask [1, 0, 1, 0] -> τ̂1 = [2, 0, 6, 0];
    τ2 = [-1, 1, -2, 2] with mask [1, 1, 0, 0] -> τ̂2 = [-2, 2, 0, 0].
    dare_ta: Σ = [0, 2, 6, 0].  dare_ties: sum [0, 2, 6, 0] elects + everywhere; agreeing means:
    [2 (τ̂2's -2 disagrees), 2, 6, 0 (no non-zero entry)] = [2, 2, 6, 0]."""
    taus = torch.stack([T([1.0, 2.0, 3.0, 4.0]), T([-1.0, 1.0, -2.0, 2.0])])
    masks = torch.stack([T([1.0, 0.0, 1.0, 0.0]), T([1.0, 1.0, 0.0, 0.0])])
    w = torch.ones(2, 1)
    assert torch.equal(dare_merge(taus, masks, w, 0.5, consensus=False), T([0.0, 2.0, 6.0, 0.0]))
    assert torch.equal(dare_merge(taus, masks, w, 0.5, consensus=True), T([2.0, 2.0, 6.0, 0.0]))


def test_dare_merge_tensors_uses_the_seeded_masks():
    """merge_tensors('dare_ta') = θ0 + λ·Σ_t m_t ⊙ τ_t / (1 - p) with m_t = dare_keep_mask(.., t)."""
    base = torch.zeros(4, 5)
    taus = [torch.arange(20.0).view(4, 5), -torch.ones(4, 5)]
    out = merge_tensors("dare_ta", base, taus, name="w", drop_rate=0.25, seed=3, scaling=2.0)
    masks = [dare_keep_mask((4, 5), 0.25, 3, "w", t) for t in range(2)]
    expected = 2.0 * sum(m * tau / 0.75 for m, tau in zip(masks, taus, strict=True))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_dare_masks_are_seeded_per_seed_name_and_model():
    """Same (seed, name, model) -> same mask; changing any of them -> another mask; the keep
    rate is 1 - p (10k draws at p = .3: 0.7 ± 0.014 at 3σ)."""
    m = dare_keep_mask((100, 100), 0.3, 0, "w", 0)
    assert torch.equal(m, dare_keep_mask((100, 100), 0.3, 0, "w", 0))
    for other in [(1, "w", 0), (0, "v", 0), (0, "w", 1)]:
        assert not torch.equal(m, dare_keep_mask((100, 100), 0.3, *other))
    assert abs(float(m.mean()) - 0.7) < 0.014
    assert set(m.unique().tolist()) == {0.0, 1.0}


def test_tsv_orthogonal_tasks_by_hand():
    """τ1 = diag(3, 1), τ2 = [[0, 0], [0, 2]]; T = 2, r = 2, k = r // T = 1.
    Top triplets: (3, e1, e1) and (2, e2, e2); the stacks [e1 e2] are already orthonormal, so
    U⊥ = V⊥ = I and τ_m = diag(3, 2) (task arithmetic would give diag(3, 3))."""
    out = merge_tensors(
        "tsv", torch.zeros(2, 2), [T([[3.0, 0.0], [0.0, 1.0]]), T([[0.0, 0.0], [0.0, 2.0]])]
    )
    torch.testing.assert_close(out, T([[3.0, 0.0], [0.0, 2.0]]), rtol=0, atol=1e-6)


def test_tsv_polar_step_by_hand():
    """τ1 = 3·e1 e1ᵀ, τ2 = 2·u uᵀ with u = (e1 + e2)/√2 at 45° to e1; k = 1.
    The stack [e1 u] is not orthonormal; its polar factor is Löwdin's symmetric orthogonalisation,
    which turns the two directions apart by (90° − 45°)/2 = 22.5° each: a at −22.5°, b at 67.5°.
    Same for V (τ_t symmetric), so τ_m = 3·a aᵀ + 2·b bᵀ."""
    u = T([1.0, 1.0], dtype=torch.float64) / math.sqrt(2)
    e1 = T([1.0, 0.0], dtype=torch.float64)
    taus = [3 * torch.outer(e1, e1), 2 * torch.outer(u, u)]
    out = merge_tensors(
        "tsv", torch.zeros(2, 2, dtype=torch.float64), taus, compute_dtype="float64"
    )
    ang_a, ang_b = math.radians(-22.5), math.radians(67.5)
    a = T([math.cos(ang_a), math.sin(ang_a)], dtype=torch.float64)
    b = T([math.cos(ang_b), math.sin(ang_b)], dtype=torch.float64)
    torch.testing.assert_close(
        out, 3 * torch.outer(a, a) + 2 * torch.outer(b, b), rtol=0, atol=1e-12
    )


def test_tsv_non_matrix_and_embedding_rules():
    """A bias gets the mean: τ1 = [1, 2], τ2 = [3, -2] -> [2, 0]. An embedding gets the mean by
    default, θ0 with embeddings='base', and the matrix rule with 'tsv' (as for another name)."""
    assert torch.equal(
        merge_tensors("tsv", torch.zeros(2), [T([1.0, 2.0]), T([3.0, -2.0])], name="x.bias"),
        T([2.0, 0.0]),
    )
    base = torch.ones(2, 2)
    fts = [base + T([[3.0, 0.0], [0.0, 1.0]]), base + T([[0.0, 0.0], [0.0, 2.0]])]
    name = "model.embed_tokens.weight"
    assert torch.equal(
        merge_tensors("tsv", base, fts, name=name), base + T([[1.5, 0.0], [0.0, 1.5]])
    )
    assert torch.equal(merge_tensors("tsv", base, fts, name=name, embeddings="base"), base)
    torch.testing.assert_close(
        merge_tensors("tsv", base, fts, name=name, embeddings="tsv"),
        merge_tensors("tsv", base, fts, name="model.layers.0.q_proj.weight"),
    )


def test_embedding_names():
    for name in [
        "model.embed_tokens.weight",
        "lm_head.weight",
        "transformer.wte.weight",
        "output.weight",
        "gpt_neox.embed_in.weight",
    ]:
        assert is_embedding(name), name
    for name in [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.output.dense.weight",
        "embed_tokens_norm.weight",
    ]:
        assert not is_embedding(name), name


def test_tsv_rank_rule():
    """k = r // T by default (exact: int(49·(1/49)) would be 0); int(r·f) otherwise, clipped to
    [1, r // T]; 0 (fall back to the mean) when r < T."""
    assert tsv_rank(49, 49, None) == 1
    assert tsv_rank(7, 3, None) == 2
    assert tsv_rank(10, 2, 0.3) == 3
    assert tsv_rank(10, 2, 0.9) == 5  # clipped to r // T
    assert tsv_rank(10, 2, 0.01) == 1  # raised to 1
    assert tsv_rank(2, 3, None) == 0


def test_huber_mad_by_hand():
    """x = [-2, -1, 0, 1, 2, 3, 40]: median 1; |x - 1| = [3, 2, 1, 0, 1, 2, 39], MAD = 2,
    scale = 1.4826·2 = 2.9652; only 40 has z = 39/2.9652 = 13.15 > κ = 3, and becomes
    40·3/z = 40·3·2.9652/39 = 9.1237; the rest is unchanged."""
    x = T([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 40.0], dtype=torch.float64)
    out = reweight_huber_mad(x, ResmParams(kappa=3.0))
    expected = x.clone()
    expected[-1] = 40 * 3 * 1.4826 * 2 / 39
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_huber_mad_falls_back_to_mean_deviation_when_mad_is_zero():
    """x = [0, 0, 0, 0, 10]: median 0, MAD 0 -> scale = 1.2533·mean|x| = 1.2533·2 = 2.5066;
    z(10) = 3.99 > 3 -> 10·3/z = 3·2.5066 = 7.5198. An all-zero x is returned as it is."""
    x = T([0.0, 0.0, 0.0, 0.0, 10.0], dtype=torch.float64)
    out = reweight_huber_mad(x, ResmParams())
    torch.testing.assert_close(out, T([0.0, 0.0, 0.0, 0.0, 3 * 1.2533 * 2], dtype=torch.float64))
    assert torch.equal(reweight_huber_mad(torch.zeros(4), ResmParams()), torch.zeros(4))


def test_outlier_density_by_hand():
    """One task, nine entries of 1 and one of 100: mean |τ| = 109/10 = 10.9, M = 5 -> threshold
    54.5, one entry of ten above it: D = 0.1. Two tasks average their shares: (0.1 + 0)/2."""
    tau = torch.ones(10)
    tau[3] = 100.0
    assert outlier_density(tau[None], ResmParams())["density"] == pytest.approx(0.1)
    assert outlier_density(torch.stack([tau, torch.ones(10)]), ResmParams())[
        "density"
    ] == pytest.approx(0.05)


def test_outlier_density_allocation_by_hand():
    """Three layers with r = 16, T = 2, D = (0, .1, .3), spread .5: mean D = .1333, max − min = .3,
    (D − mean)/(max − min) = (−.444, −.111, .556), multipliers (.778, .944, 1.278).
    f = .25: k = int(16·.25·mult) = int(4·mult) = (3, 3, 5).
    f = 1/T: k = int(8·mult) = (6, 7, 10), the last clipped to r // T = 8: (6, 7, 8)."""
    stats = {
        n: {"density": d, "r": 16, "num_models": 2}
        for n, d in zip("abc", (0.0, 0.1, 0.3), strict=True)
    }
    ks = allocate_by_outlier_density(stats, ResmParams(rank_spread=0.5, rank_fraction=0.25))
    assert ks == {"a": 3, "b": 3, "c": 5}
    assert allocate_by_outlier_density(stats, ResmParams(rank_spread=0.5)) == {
        "a": 6,
        "b": 7,
        "c": 8,
    }
    same = {n: {**s, "density": 0.2} for n, s in stats.items()}
    assert allocate_by_outlier_density(same, ResmParams(rank_spread=0.5)) == {
        "a": 8,
        "b": 8,
        "c": 8,
    }


def test_resm_plan_sets_the_rank_of_each_layer():
    """Two 8×8 layers, T = 2, f = .25 (k = 2 uniform), spread 1: the layer with outliers gets
    int(8·.25·1.5) = 3 triplets per task, the other int(8·.25·.5) = 1, so the merged task vectors
    have rank 2·3 = 6 and 2·1 = 2."""
    g = torch.Generator().manual_seed(0)
    f64 = torch.float64
    base = {"spiky": torch.zeros(8, 8, dtype=f64), "flat": torch.zeros(8, 8, dtype=f64)}
    fts = []
    for _ in range(2):
        spiky = torch.randn(8, 8, generator=g, dtype=f64)
        spiky[0, :4] = 100.0  # 4 of 64 entries far above 5 × the mean magnitude
        fts.append({"spiky": spiky, "flat": torch.randn(8, 8, generator=g, dtype=f64).sign()})
    out = merge_state_dicts(
        "resm", base, fts, rank_fraction=0.25, rank_spread=1.0, compute_dtype="float64"
    )
    assert torch.linalg.matrix_rank(out["spiky"]) == 6
    assert torch.linalg.matrix_rank(out["flat"]) == 2


def test_tsv_factors_shapes():
    """(T, m, n) = (3, 5, 4) full-rank, k = 1: U⊥ is 5 × 3, σ has 3 entries (one per task, task
    ids 0, 1, 2), V⊥ is 4 × 3."""
    u, s, v, task = tsv_factors(list(torch.randn(3, 5, 4)), 1)
    assert (u.shape, s.shape, v.shape) == ((5, 3), (3,), (4, 3))
    assert task.tolist() == [0, 1, 2]


BC_T1 = [1.0, -8.0, 3.0, 0.5, -5.0, 2.0, 7.0, -4.0, 6.0, 0.25]
BC_T2 = [2.0, 1.0, -3.0, 4.0, 0.5, -6.0, 1.5, 10.0, -2.5, 0.75]


def test_breadcrumbs_by_hand():
    """n = 10, density .5, gamma .1: k = 5 kept after removing top = 1 largest.
    τ1 by |.|: -8, 7, 6, -5, -4, 3, 2, 1, .5, .25 -> drop -8, keep 7, 6, -5, -4, 3:
        τ̂1 = [0, 0, 3, 0, -5, 0, 7, -4, 6, 0]
    τ2 by |.|: 10, -6, 4, -3, -2.5, 2, 1.5, 1, .75, .5 -> drop 10, keep -6, 4, -3, -2.5, 2:
        τ̂2 = [2, 0, -3, 4, 0, -6, 0, 0, -2.5, 0]
    breadcrumbs: τ̂1 + τ̂2 = [2, 0, 0, 4, -5, -6, 7, -4, 3.5, 0].
    breadcrumbs_ties: sums elect + at 2 (3 - 3 = 0) and 8 (6 - 2.5), where τ̂2 disagrees:
        agreeing sums [2, 0, 3, 4, -5, -6, 7, -4, 6, 0].
    With weights (2, 1) and normalize, ties divides by the agreeing weights (one model each):
        the same [2, 0, 3, 4, -5, -6, 7, -4, 6, 0]; breadcrumbs divides 2τ̂1 + τ̂2 by 3."""
    base, fts = torch.zeros(10), [T(BC_T1), T(BC_T2)]
    kw = {"density": 0.5, "gamma": 0.1}
    assert torch.equal(
        merge_tensors("breadcrumbs", base, fts, **kw), T([2, 0, 0, 4, -5, -6, 7, -4, 3.5, 0.0])
    )
    ties = T([2, 0, 3, 4, -5, -6, 7, -4, 6, 0.0])
    assert torch.equal(merge_tensors("breadcrumbs_ties", base, fts, **kw), ties)
    weighted = {**kw, "weights": [2, 1], "normalize": True}
    assert torch.equal(merge_tensors("breadcrumbs_ties", base, fts, **weighted), ties)
    torch.testing.assert_close(
        merge_tensors("breadcrumbs", base, fts, **weighted),
        T([2, 0, 3, 4, -10, -6, 14, -8, 9.5, 0.0]) / 3,
    )


def test_breadcrumbs_gamma_cap_gamma_zero_and_l1_rescale_by_hand():
    """τ1 above, n = 10.  density .95, gamma .2: k = 9, top = min(2, 10 - 9) = 1: only -8 goes.
    gamma 0, density .3: top = 0, the top 3 (-8, 7, 6) stay (mergekit would keep nothing here).
    τ = [4, -3, 2, 1], density .5, gamma .25, rescale l1: keep -3, 2 (L1 5 of 10) -> ×2."""
    base, fts = torch.zeros(10), [T(BC_T1)]
    capped = merge_tensors("breadcrumbs", base, fts, density=0.95, gamma=0.2)
    assert torch.equal(capped, T([1.0, 0, 3, 0.5, -5, 2, 7, -4, 6, 0.25]))
    top = merge_tensors("breadcrumbs", base, fts, density=0.3, gamma=0.0)
    assert torch.equal(top, T([0.0, -8, 0, 0, 0, 0, 7, 0, 6, 0]))
    l1 = merge_tensors(
        "breadcrumbs", torch.zeros(4), [T([4.0, -3, 2, 1])], density=0.5, gamma=0.25, rescale="l1"
    )
    assert torch.equal(l1, T([0.0, -6, 4, 0]))


def test_della_keep_probabilities_by_hand():
    """density .5, ε .2, a row of n = 5: ascending |τ| ranks r = 0..4 get p = .3 + .4·r/4.
    Row [3, -1, 2, -4, .5]: ranks [3, 1, 2, 4, 0] -> p = [.6, .4, .5, .7, .3] (mean .5).
    Row [-.1, .2, -.3, .4, -.5]: ranks [0, 1, 2, 3, 4] -> p = [.3, .4, .5, .6, .7].
    A 1-D tensor is one row; a row of one entry gets the density."""
    tau = T([[3.0, -1.0, 2.0, -4.0, 0.5], [-0.1, 0.2, -0.3, 0.4, -0.5]])
    p = keep_probabilities(tau, 0.5, 0.2)
    expected = T([[0.6, 0.4, 0.5, 0.7, 0.3], [0.3, 0.4, 0.5, 0.6, 0.7]], dtype=torch.float64)
    torch.testing.assert_close(p, expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(keep_probabilities(tau[0], 0.5, 0.2), p[0])
    one = keep_probabilities(T([[2.0], [-1.0]]), 0.5, 0.2)
    assert torch.equal(one, T([[0.5], [0.5]], dtype=torch.float64))


def test_della_merge_tensors_uses_the_seeded_masks():
    """della_linear = θ0 + λ·Σ_t w_t m_t ⊙ τ_t / p_t, della = the elected-sign sum of the same
    τ̂_t divided by the agreeing weights, with (m_t, p_t) = della_keep_mask(τ_t, .., t)."""
    base = torch.zeros(3, 6)
    taus = [torch.arange(18.0).view(3, 6) - 8, torch.linspace(-2, 3, 18).view(3, 6)]
    kw = {"name": "w", "density": 0.4, "epsilon": 0.3, "seed": 5, "weights": [1, 2]}
    hat = []
    for t, tau in enumerate(taus):
        keep, p = della_keep_mask(tau, 0.4, 0.3, 5, "w", t)
        hat.append(tau * keep / p.float())
    linear = merge_tensors("della_linear", base, taus, scaling=0.5, **kw)
    torch.testing.assert_close(linear, 0.5 * (hat[0] + 2 * hat[1]), rtol=0, atol=1e-6)
    x = [hat[0], 2 * hat[1]]
    positive = (x[0] + x[1]) >= 0
    agree = [torch.where(positive, xi > 0, xi < 0) for xi in x]
    divisor = (agree[0] * 1.0 + agree[1] * 2.0).clamp(min=1)  # no agreeing model: 0 / 1
    expected = (x[0] * agree[0] + x[1] * agree[1]) / divisor
    torch.testing.assert_close(
        merge_tensors("della", base, taus, **kw), expected, atol=1e-6, rtol=0
    )


def test_model_stock_by_hand():
    """θ0 = [[1, 2], [3, 4]], τ1 = [[1, 1], [0, 0]], τ2 = [[1, 0], [1, 0]]:
    cos = 1/(√2·√2) = .5, N = 2: t = 2·.5/(1 + .5) = 2/3; mean τ = [[1, .5], [.5, 0]];
    θ = θ0 + (2/3)·mean = [[5/3, 7/3], [10/3, 4]].
    Add τ3 = [[0, 1], [1, 0]]: every pair has cos .5; N = 3: t = 1.5/2 = .75;
    mean τ = [[2, 2], [2, 0]]/3 -> θ = θ0 + [[.5, .5], [.5, 0]]."""
    base = T([[1.0, 2.0], [3.0, 4.0]])
    taus = [T([[1.0, 1.0], [0.0, 0.0]]), T([[1.0, 0.0], [1.0, 0.0]]), T([[0.0, 1.0], [1.0, 0.0]])]
    fts = [base + tau for tau in taus]
    two = merge_tensors("model_stock", base, fts[:2])
    torch.testing.assert_close(two, base + T([[2.0, 1.0], [1.0, 0.0]]) / 3)
    torch.testing.assert_close(
        merge_tensors("model_stock", base, fts), base + T([[0.5, 0.5], [0.5, 0]])
    )


def test_model_stock_filter_wise_by_hand():
    """τ1 = [[1, 0], [1, 1]], τ2 = [[0, 1], [1, 1]], θ0 = 0.
    Per row: row 0 cos 0 -> t = 0 (stays at θ0); row 1 cos 1 -> t = 2/(1 + 1) = 1 -> [1, 1].
    Per tensor: cos = 2/(√3·√3) = 2/3, t = (4/3)/(5/3) = .8, mean [[.5, .5], [1, 1]] ->
    [[.4, .4], [.8, .8]]."""
    fts = [T([[1.0, 0.0], [1.0, 1.0]]), T([[0.0, 1.0], [1.0, 1.0]])]
    rows = merge_tensors("model_stock", torch.zeros(2, 2), fts, filter_wise=True)
    torch.testing.assert_close(rows, T([[0.0, 0.0], [1.0, 1.0]]))
    whole = merge_tensors("model_stock", torch.zeros(2, 2), fts)
    torch.testing.assert_close(whole, T([[0.4, 0.4], [0.8, 0.8]]))


def test_slerp_by_hand():
    """One model: θ0 = [1, 0], θ1 = [0, 1] (90° apart), t = .5: sin(45°)/sin(90°) each ->
    [√2/2, √2/2] (lerp would give [.5, .5]).  Two models: θ1 = [2, 0], θ2 = [0, 2] about θ0 = 0,
    t = 1/3: Ω = 90°, weights sin(60°) = √3/2 and sin(30°) = 1/2 -> [√3, 1].  Near-colinear
    θ1 = [1, 1], θ2 = [2, 2.001] (cos > .9995): lerp at t = .5 -> [1.5, 1.5005]."""
    r = math.sqrt(0.5)
    one = merge_tensors("slerp", T([1.0, 0.0]), [T([0.0, 1.0])], t=0.5)
    torch.testing.assert_close(one, T([r, r]))
    two = merge_tensors("slerp", torch.zeros(2), [T([2.0, 0.0]), T([0.0, 2.0])], t=1 / 3)
    torch.testing.assert_close(two, T([math.sqrt(3), 1.0]))
    near = merge_tensors("slerp", torch.zeros(2), [T([1.0, 1.0]), T([2.0, 2.001])], t=0.5)
    torch.testing.assert_close(near, T([1.5, 1.5005]))


def test_slerp_falls_back_to_lerp_when_near_colinear():
    """Unit endpoints [1, 0] and [c, √(1 − c²)], t = .5: SLERP keeps the norm 1, lerp gives
    √((1 + c)/2).  c = .9994 (below mergekit's .9995): norm 1; c = .9996: √(.9998).
    Antipodal θ1 = [1, 2], θ2 = [-1, -2] (cos −1, where SLERP divides by sin π = 0): lerp,
    [0, 0] at t = .5 and [.5, 1] at t = .25."""
    for c, norm in [(0.9994, 1.0), (0.9996, math.sqrt(0.9998))]:
        ends = [
            T([1.0, 0.0], dtype=torch.float64),
            T([c, math.sqrt(1 - c * c)], dtype=torch.float64),
        ]
        out = merge_tensors(
            "slerp", torch.zeros(2, dtype=torch.float64), ends, compute_dtype="float64"
        )
        assert abs(float(out.norm()) - norm) < 1e-9, c
    anti = [T([1.0, 2.0]), T([-1.0, -2.0])]
    assert torch.equal(merge_tensors("slerp", torch.zeros(2), anti, t=0.5), T([0.0, 0.0]))
    assert torch.equal(merge_tensors("slerp", torch.zeros(2), anti, t=0.25), T([0.5, 1.0]))


def test_sce_by_hand():
    """θ0 = 0, τ1 = [2, −1, 0, 3], τ2 = [4, 1, −2, −1], no selection (select_topk = 1).
    Calculate: mean τ1² = (4 + 1 + 0 + 9)/4 = 3.5, mean τ2² = (16 + 1 + 4 + 1)/4 = 5.5, sum 9:
    c = [7/18, 11/18].  Erase: Σ τ = [6, 0, −2, 2] -> γ = [+, + (zero sum), −, +].
    Entry 0: both agree, (7/18·2 + 11/18·4)/(7/18 + 11/18) = 58/18 = 29/9; entry 1: only τ2 (+1)
    agrees -> 1; entry 2: τ1 = 0 never agrees, τ2 = −2 -> −2; entry 3: only τ1 -> 3.
    With θ0 = 1 everywhere the same τ_m is added to it."""
    fts = [T([2.0, -1.0, 0.0, 3.0]), T([4.0, 1.0, -2.0, -1.0])]
    torch.testing.assert_close(merge_tensors("sce", torch.zeros(4), fts), T([29 / 9, 1, -2, 3]))
    ones = torch.ones(4)
    moved = merge_tensors("sce", ones, [f + 1 for f in fts])
    torch.testing.assert_close(moved, ones + T([29 / 9, 1, -2, 3]))


def test_sce_select_by_hand():
    """τ1 = [1, −1, 0, 3], τ2 = [4, 1, −1, −1], select_topk = .5.  Population variances:
    [2.25, 1, .25, 4], all 4 non-zero: k = int(.5·4) = 2 keeps entries 3 and 0:
    τ̂1 = [1, 0, 0, 3], τ̂2 = [4, 0, 0, −1].  Calculate on τ̂: mean squares 10/4 and 17/4 ->
    c = [10/27, 17/27].  Erase: Σ τ̂ = [5, 0, 0, 2]: entry 0 both agree, (10 + 68)/27 = 26/9;
    entry 3 only τ1, 3; entries 1, 2 hold zeros only (no model agrees) -> 0.
    Only positions whose values differ count: τ1 = [5, 1], τ2 = [5, 3] have variances [0, 1],
    one position varies, k = int(.5·1) = 0 and the tensor stays at θ0 (mergekit's rule)."""
    fts = [T([1.0, -1.0, 0.0, 3.0]), T([4.0, 1.0, -1.0, -1.0])]
    out = merge_tensors("sce", torch.zeros(4), fts, select_topk=0.5)
    torch.testing.assert_close(out, T([26 / 9, 0, 0, 3]))
    same = merge_tensors("sce", torch.zeros(2), [T([5.0, 1.0]), T([5.0, 3.0])], select_topk=0.5)
    assert torch.equal(same, torch.zeros(2))


def test_sce_uniform_coefficients_below_the_threshold_by_hand():
    """τ1 = [1e-4, 0], τ2 = [3e-4, 0]: Σ mean τ² = (1e-8 + 9e-8)/2 = 5e-8 < 1e-6 -> c = [.5, .5]
    and entry 0 = (.5e-4 + 1.5e-4)/1 = 2e-4; with uniform_below = 0: c = [.1, .9] ->
    .1e-4 + 2.7e-4 = 2.8e-4."""
    z = torch.zeros(2, dtype=torch.float64)
    fts = [T([1e-4, 0.0], dtype=torch.float64), T([3e-4, 0.0], dtype=torch.float64)]
    kw = {"compute_dtype": "float64"}
    torch.testing.assert_close(merge_tensors("sce", z, fts, **kw), T([2e-4, 0.0]).double())
    exact = merge_tensors("sce", z, fts, uniform_below=0.0, **kw)
    torch.testing.assert_close(exact, T([2.8e-4, 0.0]).double())


def test_karcher_by_hand():
    """θ1 = [2, 0], θ2 = [0, 4]: unit vectors 90° apart, equal weights: the spherical mean is at
    45°, [r, r] with r = √½, times the mean norm (2 + 4)/2 = 3 -> [3r, 3r] (the linear mean
    would be [1, 2]).  The points are the weights, not the task vectors: the same with
    θ0 = [1, 1]; λ = .5 gives θ0 + .5·(K − θ0).  Weights [2, 1] on [1, 0], [0, 1]: the
    weighted Karcher mean of two points lies 1/3 of the way along the arc, at 30°:
    [√3/2, 1/2] (the first step moves the initial guess, at atan(1/2), onto it exactly).
    A zero model counts in the norm, not the direction: θ1 = 0, θ2 = [0, 4] -> [0, 2].
    One model comes back as it is."""
    r = math.sqrt(0.5)
    fts = [T([2.0, 0.0]), T([0.0, 4.0])]
    torch.testing.assert_close(merge_tensors("karcher", torch.zeros(2), fts), T([3 * r, 3 * r]))
    base = T([1.0, 1.0])
    torch.testing.assert_close(merge_tensors("karcher", base, fts), T([3 * r, 3 * r]))
    half = merge_tensors("karcher", base, fts, scaling=0.5)
    torch.testing.assert_close(half, base + 0.5 * (T([3 * r, 3 * r]) - base))
    axes = [T([1.0, 0.0]), T([0.0, 1.0])]
    weighted = merge_tensors("karcher", torch.zeros(2), axes, weights=[2.0, 1.0])
    torch.testing.assert_close(weighted, T([math.sqrt(3) / 2, 0.5]))
    zero = merge_tensors("karcher", torch.zeros(2), [torch.zeros(2), T([0.0, 4.0])])
    torch.testing.assert_close(zero, T([0.0, 2.0]))
    assert torch.equal(merge_tensors("karcher", base, fts[:1]), fts[0])


def _mean_log(u: torch.Tensor, points: list[torch.Tensor], a: list[float]) -> torch.Tensor:
    """Σ_t a_t·log_u(p_t) on the unit sphere, log_u(p) = φ/sin φ·(p − cos φ·u), φ = ∠(u, p):
    zero exactly at the Karcher mean (its first-order condition)."""
    out = torch.zeros_like(u)
    for p, w in zip(points, a, strict=True):
        c = float(u @ p)
        phi = math.acos(max(-1.0, min(1.0, c)))
        out += w * phi / math.sin(phi) * (p - c * u)
    return out


def test_karcher_max_iter_stops_the_iteration_by_hand():
    """Unit points e1, e2, e3 weighted [4, 1, 1] (α = [2/3, 1/6, 1/6]): the initial guess is the
    normalised weighted mean [4, 1, 1]/√18.  The Karcher mean is the unit u where the weighted
    mean of the log maps is 0; it lies on the symmetry plane y = z, and farther from e1 than the
    guess (the squared arc length grows faster than the chord the Euclidean mean minimises, so
    the far points pull harder).  max_iter = 1 stops after one step: not yet there."""
    pts = [T([1.0, 0, 0]).double(), T([0, 1.0, 0]).double(), T([0, 0, 1.0]).double()]
    alpha = [2 / 3, 1 / 6, 1 / 6]
    kw = {"weights": [4.0, 1.0, 1.0], "compute_dtype": "float64", "tol": 1e-12}
    z = torch.zeros(3, dtype=torch.float64)
    guess = T([4.0, 1.0, 1.0]).double() / math.sqrt(18)
    one = merge_tensors("karcher", z, pts, max_iter=1, **kw)
    many = merge_tensors("karcher", z, pts, max_iter=100, **kw)
    assert float(_mean_log(many, pts, alpha).norm()) < 1e-10
    assert float(_mean_log(one, pts, alpha).norm()) > 1e-4
    assert float(_mean_log(guess, pts, alpha).norm()) > 1e-2
    assert abs(float(many.norm()) - 1.0) < 1e-12 and abs(float(many[1] - many[2])) < 1e-12
    assert float(many[0]) < float(guess[0])


def test_multislerp_by_hand():
    """origin base: the task vectors τ1 = [2, 0], τ2 = [0, 4] about θ0 = [1, 1], equal weights:
    units [1, 0], [0, 1], mean direction [r, r]; the tangent sum Σ w_t (u_t − ⟨u_t, μ⟩μ) is 0;
    times Σ w_t n_t = 3 -> θ0 + [3r, 3r].  Weights [2, 1] (normalised 2/3, 1/3): μ = [2, 1]/√5,
    scale 2/3·2 + 1/3·4 = 8/3; normalize_weights = false: the same μ, scale 2·2 + 4 = 8.
    origin zero: θ0 = [1, 0], θ1 = [0, 1], θ2 = [2, 0]: units [0, 1], [1, 0], μ = [r, r], scale
    (1 + 2)/2 -> [1.5r, 1.5r].  Two antipodal models (τ1 = [1, 0], τ2 = [−3, 0]): the mean
    direction is 0, mergekit lerps: .5·1 + .5·(−3) = −1."""
    r = math.sqrt(0.5)
    base = T([1.0, 1.0])
    taus = [T([2.0, 0.0]), T([0.0, 4.0])]
    fts = [base + t for t in taus]
    torch.testing.assert_close(merge_tensors("multislerp", base, fts), base + 3 * r)
    mu = T([2.0, 1.0]) / math.sqrt(5)
    w = merge_tensors("multislerp", base, fts, weights=[2.0, 1.0])
    torch.testing.assert_close(w, base + 8 / 3 * mu)
    raw = merge_tensors("multislerp", base, fts, weights=[2.0, 1.0], normalize_weights=False)
    torch.testing.assert_close(raw, base + 8 * mu)
    zero = merge_tensors("multislerp", T([1.0, 0.0]), [T([0.0, 1.0]), T([2.0, 0.0])], origin="zero")
    torch.testing.assert_close(zero, T([1.5 * r, 1.5 * r]))
    lerp = merge_tensors("multislerp", torch.zeros(2), [T([1.0, 0.0]), T([-3.0, 0.0])])
    torch.testing.assert_close(lerp, T([-1.0, 0.0]))


def test_multislerp_is_the_mean_direction_times_the_mean_norm():
    """Σ_t w_t (u_t − ⟨u_t, μ⟩μ) = m − ‖m‖μ = 0 (docs/merging.md): Multi-SLERP equals
    normalise(Σ_t w_t x_t/‖x_t‖)·Σ_t w_t ‖x_t‖ on random task vectors, weights normalised; to
    rounding with eps = 1e-15, within the eps-sized shift of u_t = x_t/(‖x_t‖ + eps) by default."""
    g = torch.Generator().manual_seed(4)
    taus = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    base = torch.randn(5, 4, generator=g, dtype=torch.float64)
    w = torch.tensor([0.5, 1.0, 2.5], dtype=torch.float64) / 4.0
    norms = taus.flatten(1).norm(dim=1)
    direction = (w.view(3, 1, 1) * taus / norms.view(3, 1, 1)).sum(dim=0)
    expected = base + direction / direction.norm() * float(w @ norms)
    fts = list(base + taus)
    kw = {"weights": [0.5, 1.0, 2.5], "compute_dtype": "float64"}
    out = merge_tensors("multislerp", base, fts, eps=1e-15, **kw)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    default = merge_tensors("multislerp", base, fts, **kw)
    torch.testing.assert_close(default, expected, rtol=0, atol=1e-8)


def _stats_file(path, fisher=None, grams=None):
    """A statistics file holding the given Fisher tensors and mean Gram matrices by name."""
    from safetensors.torch import save_file

    from hhh_bench.merging.statsfile import FISHER, GRAM, GRAM_ROWS

    out = {FISHER + k: v for k, v in (fisher or {}).items()}
    for k, g in (grams or {}).items():
        out[GRAM + k], out[GRAM_ROWS + k] = g, torch.tensor(10)
    save_file(out, str(path))
    return str(path)


def test_fisher_by_hand(tmp_path):
    """θ0 = [1, 1], θ1 = [2, 5], θ2 = [4, 1]: τ1 = [1, 4], τ2 = [3, 0]; F1 = [3, 4] (‖F1‖ = 5),
    F2 = [6, 8] (‖F2‖ = 10); ε = 0.

    Unnormalised: θ = (F1 θ1 + F2 θ2)/(F1 + F2) = [(6 + 24)/9, (20 + 8)/12] = [10/3, 7/3]
    (= θ0 + [21/9, 16/12] = [1 + 7/3, 1 + 4/3]).
    Normalised: c ∝ (1/5, 1/10) -> (2/3, 1/3); c1 F1 = [2, 8/3] = c2 F2, so ŵ = (1/2, 1/2):
    the plain mean θ = [3, 3]. With w = (2, 1) and λ = 1/2 on top:
    θ = θ0 + ½·(½·2·[1, 4] + ½·1·[3, 0]) = [1, 1] + ½·[2.5, 4] = [2.25, 3]."""
    base, fts = T([1.0, 1.0]), [T([2.0, 5.0]), T([4.0, 1.0])]
    stats = [
        _stats_file(tmp_path / "1.safetensors", {"w": T([3.0, 4.0])}),
        _stats_file(tmp_path / "2.safetensors", {"w": T([6.0, 8.0])}),
    ]
    kw = {"name": "w", "statistics": stats, "minimal_fisher_weight": 0.0}
    out = merge_tensors("fisher", base, fts, normalize_fisher_weight=False, **kw)
    torch.testing.assert_close(out, T([10 / 3, 7 / 3]), rtol=0, atol=1e-6)
    torch.testing.assert_close(merge_tensors("fisher", base, fts, **kw), T([3.0, 3.0]))
    out = merge_tensors("fisher", base, fts, weights=[2, 1], scaling=0.5, **kw)
    torch.testing.assert_close(out, T([2.25, 3.0]), rtol=0, atol=1e-6)


def test_fisher_without_gradient_is_the_mean_by_hand(tmp_path):
    """F1 = F2 = [0, 0] (no gradient reached the parameter): with ε = 1e-6 the weights are
    ε/(2ε) = ½ each, the mean of θ1 = [2, 5] and θ2 = [4, 1]: [3, 3]."""
    stats = [_stats_file(tmp_path / f"{i}.safetensors", {"w": T([0.0, 0.0])}) for i in (1, 2)]
    out = merge_tensors("fisher", T([1.0, 1.0]), [T([2.0, 5.0]), T([4.0, 1.0])], name="w",
                        statistics=stats)  # fmt: skip
    torch.testing.assert_close(out, T([3.0, 3.0]), rtol=0, atol=1e-6)


def test_regmean_disjoint_inputs_by_hand(tmp_path):
    """One output, two inputs. Model 1's data only ever uses input 0 (G1 = diag(1, 0)), model 2's
    only input 1 (G2 = diag(0, 1)): Σ G = I, and Wᵀ = G1 W1ᵀ + G2 W2ᵀ takes column 0 from W1 and
    column 1 from W2 (α does not touch diagonal Grams). θ0 = [[1, 1]], W1 = [[2, 7]],
    W2 = [[9, 3]] -> [[2, 3]]. The bias b (no Gram) gets the mean: ([1] + [3])/2 = [2]."""
    base = {"w": T([[1.0, 1.0]]), "b": T([0.0])}
    fts = [{"w": T([[2.0, 7.0]]), "b": T([1.0])}, {"w": T([[9.0, 3.0]]), "b": T([3.0])}]
    stats = [
        _stats_file(tmp_path / "1.safetensors", grams={"w": T([[1.0, 0.0], [0.0, 0.0]])}),
        _stats_file(tmp_path / "2.safetensors", grams={"w": T([[0.0, 0.0], [0.0, 1.0]])}),
    ]
    out = merge_state_dicts("regmean", base, fts, statistics=stats)
    torch.testing.assert_close(out["w"], T([[2.0, 3.0]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(out["b"], T([2.0]), rtol=0, atol=1e-6)


def test_regmean_by_hand(tmp_path):
    """θ0 = 0, τ1 = [[1, 0]], τ2 = [[0, 5]] (1 output, 2 inputs); G1 = [[2, 1], [1, 1]], G2 = I.

    α = 1: Σ G = [[3, 1], [1, 2]], det 5, inverse (1/5)·[[2, −1], [−1, 3]];
    G1 τ1ᵀ + G2 τ2ᵀ = [2, 1] + [0, 5] = [2, 6]; (1/5)·[4 − 6, −2 + 18] = [−0.4, 3.2].
    α = 0: G̃1 = diag(2, 1), Σ = diag(3, 2), right side [2, 0] + [0, 5] = [2, 5] -> [2/3, 5/2].
    The same with τ1 given as LoRA factors B = [[1]], A = [[1, 0]] (s = 1)."""
    g1, g2 = T([[2.0, 1.0], [1.0, 1.0]]), T([[1.0, 0.0], [0.0, 1.0]])
    stats = [
        _stats_file(tmp_path / "1.safetensors", grams={"w": g1}),
        _stats_file(tmp_path / "2.safetensors", grams={"w": g2}),
    ]
    base, fts = torch.zeros(1, 2), [T([[1.0, 0.0]]), T([[0.0, 5.0]])]
    kw = {"name": "w", "statistics": stats}
    out = merge_tensors("regmean", base, fts, reduce_non_diagonal_ratio=1.0, **kw)
    torch.testing.assert_close(out, T([[-0.4, 3.2]]), rtol=0, atol=1e-6)
    out = merge_tensors("regmean", base, fts, reduce_non_diagonal_ratio=0.0, **kw)
    torch.testing.assert_close(out, T([[2 / 3, 2.5]]), rtol=0, atol=1e-6)
    lora = [LowRank(T([[1.0]]), T([[1.0, 0.0]])), fts[1]]
    out = merge_tensors("regmean", base, lora, reduce_non_diagonal_ratio=1.0, **kw)
    torch.testing.assert_close(out, T([[-0.4, 3.2]]), rtol=0, atol=1e-6)


def test_consensus_ta_by_hand():
    """θ0 = [[1, 2], [3, 4]], λ_tall = .5; entries A, B (row 0), C, D (row 1):

    entry  τ1  τ2  τ3   τ_MTL  m_t = |τ_t| > .5·|τ_MTL − τ_t|                      count
    A       1   1   1     3    1 > .5·2 = 1: no (strict), for all three              0
    B       2   2   0     4    2 > 1 yes, 2 > 1 yes, 0 > 2 no                        2
    C       3   0   0     3    3 > 0 yes, 0 > 1.5 no, 0 > 1.5 no                     1
    D       1  -1  .5    .5    1 > .25 yes, 1 > .75 yes, .5 > 0 yes                  3
    k = 2 keeps B, D: τ_m = [[0, 4], [0, .5]]; λ = .5: θ = [[1, 4], [3, 4.25]].
    k = 1 keeps B, C, D; k = 3 keeps D; k = 0 is task arithmetic (A too).
    Weights (1, 1, 2), k = 2: A (1, 1, 2), MTL 4: 1 > 1.5 no, no, 2 > 1 yes -> 1, dropped;
    B unchanged (x3 = 0) -> 4; C -> 1, dropped; D (1, -1, 1), MTL 1: 1 > 0 yes, 1 > 1 no,
    1 > 0 yes -> 2, kept: τ_m = [[0, 4], [0, 1]]."""
    base = T([[1.0, 2.0], [3.0, 4.0]])
    taus = [T([[1.0, 2.0], [3.0, 1.0]]), T([[1.0, 2.0], [0.0, -1.0]]), T([[1.0, 0.0], [0.0, 0.5]])]
    fts = [base + tau for tau in taus]
    kw = {"tall_mask_lambda": 0.5}
    out = merge_tensors("consensus_ta", base, fts, scaling=0.5, **kw)
    assert torch.equal(out, T([[1.0, 4.0], [3.0, 4.25]]))
    expected = {0: [[3, 4], [3, 0.5]], 1: [[0, 4], [3, 0.5]], 3: [[0, 0], [0, 0.5]]}
    for k, tau_m in expected.items():
        got = merge_tensors("consensus_ta", base, fts, min_agreement=k, **kw)
        assert torch.equal(got, base + T(tau_m)), k
    weighted = merge_tensors("consensus_ta", base, fts, weights=[1, 1, 2], **kw)
    assert torch.equal(weighted, base + T([[0.0, 4.0], [0.0, 1.0]]))


def test_consensus_ties_by_hand():
    """The TIES example above (θ0 = 0, density .5: each τ_t keeps its top 3 of 6), λ_tall = .5.
    Trimmed τ̂ and elected signs as there; the agreeing entries summed (the authors' dis-sum):
    τ_MTL = [[-2 - 3, 5, 2], [3, -3, 6]] = [[-5, 5, 2], [3, -3, 6]]. TALL masks on the untrimmed τ:

    entry  τ1   τ2   τ3  τ_MTL  m_t = |τ_t| > .5·|τ_MTL − τ_t|            count
    (0,0)   4   -2   -3   -5    4 > 4.5 no, 2 > 1.5 yes, 3 > 1 yes         2
    (0,1)  -1    5   -4    5    1 > 3 no, 5 > 0 yes, 4 > 4.5 no            1
    (0,2)   2   -1    1    2    2 > 0 yes, 1 > 1.5 no, 1 > .5 yes          2
    (1,0)  .5    3   -1    3    .5 > 1.25 no, 3 > 0 yes, 1 > 2 no          1
    (1,1)  -3    1    2   -3    3 > 0 yes, 1 > 2 no, 2 > 2.5 no            1
    (1,2)   1  -.5    6    6    1 > 2.5 no, .5 > 3.25 no, 6 > 0 yes        1
    k = 2: τ_m = [[-5, 0, 2], [0, 0, 0]]; k = 1 keeps every entry: the disjoint sum.
    aggregate mean: τ_MTL = TIES = [[-2.5, 5, 2], [3, -3, 6]]; only (0,0) changes:
    4 > 3.25 yes, 2 > .25 yes, 3 > .25 yes -> 3, kept: τ_m = [[-2.5, 0, 2], [0, 0, 0]]."""
    taus = [
        T([[4.0, -1.0, 2.0], [0.5, -3.0, 1.0]]),
        T([[-2.0, 5.0, -1.0], [3.0, 1.0, -0.5]]),
        T([[-3.0, -4.0, 1.0], [-1.0, 2.0, 6.0]]),
    ]
    kw = {"density": 0.5, "tall_mask_lambda": 0.5}
    out = merge_tensors("consensus_ties", torch.zeros(2, 3), taus, **kw)
    assert torch.equal(out, T([[-5.0, 0.0, 2.0], [0.0, 0.0, 0.0]]))
    every = merge_tensors("consensus_ties", torch.zeros(2, 3), taus, min_agreement=1, **kw)
    assert torch.equal(every, T([[-5.0, 5.0, 2.0], [3.0, -3.0, 6.0]]))
    mean = merge_tensors("consensus_ties", torch.zeros(2, 3), taus, aggregate="mean", **kw)
    assert torch.equal(mean, T([[-2.5, 0.0, 2.0], [0.0, 0.0, 0.0]]))


def test_pcb_by_hand():
    """θ0 = 0, T = 2, d = 4, clip_ratio 0 (no clip): τ1 = [.4, -.1, .2, 0], τ2 = [.1, .3, -.2, 0],
    Σ τ = [.5, .2, 0, 0].  inter: tanh(τ1·Σ) = tanh([.2, -.02, 0, 0]),
    tanh(τ2·Σ) = tanh([.05, .06, 0, 0]).  intra ∝ exp(s·N(|τ_t|)²), s = T = 2:
    N(|τ1|) = [1, .25, .5, 0], N(|τ2|) = [1/3, 1, 2/3, 0].
    β1 ∝ [e²·tanh .2, −e^(1/8)·tanh .02, 0, 0]; β2 ∝ [e^(2/9)·tanh .05, e²·tanh .06, 0, 0].

    pcb_ratio .5: cut = the 3rd smallest (index int(4·.5) = 2): β1 -> 0, β2 -> its β2[0];
    each task keeps its top entry only, rescaled to 1: s1 = [1, 0, 0, 0], s2 = [0, 1, 0, 0];
    τ_m = [.4, .3, 0, 0] (0/1e-12 = 0 where no task is kept); weights (2, 1): [.8, .3, 0, 0].
    pcb_ratio .75: cut index int(4·.25) = 1, the 2nd smallest: 0 for both; s1 unchanged,
    s2 = [q, 1, 0, 0], q = β2[0]/β2[1] = e^(s·(1/9 − 1))·tanh .05/tanh .06 (≈ .141 at s = 2):
    τ_m[0] = (.4·1 + .1·q)/(1 + q), τ_m[1] = .3.  intra_temperature 1: the same with s = 1.
    Default clip (1e-4 of 4 entries: indices int(4e-4) = 0 and int(4·.9999 − 1) = 2) lowers
    each task's largest magnitude to its second largest: |τ1| -> [.2, .1, .2, 0], |τ2| ->
    [.1, .2, .2, 0]; pcb_ratio .5 still keeps entry 0 of τ1 and entry 1 of τ2 (N(|τ1|) =
    [1, .5, 1, 0]: β1 = [e²·tanh .2, −e^(1/2)·tanh .02, 0, 0]; β2 = [e^(1/2)·tanh .05,
    e²·tanh .06, 0, 0]), now clipped: τ_m = [.2, .2, 0, 0]."""
    f64 = torch.float64
    base = torch.zeros(4, dtype=f64)
    fts = [T([0.4, -0.1, 0.2, 0.0], dtype=f64), T([0.1, 0.3, -0.2, 0.0], dtype=f64)]
    kw = {"clip_ratio": 0.0, "compute_dtype": "float64"}
    half = merge_tensors("pcb", base, fts, pcb_ratio=0.5, **kw)
    torch.testing.assert_close(half, T([0.4, 0.3, 0.0, 0.0], dtype=f64), rtol=0, atol=1e-15)
    weighted = merge_tensors("pcb", base, fts, pcb_ratio=0.5, weights=[2, 1], **kw)
    torch.testing.assert_close(weighted, T([0.8, 0.3, 0.0, 0.0], dtype=f64), rtol=0, atol=1e-15)
    for s, temperature in [(2.0, None), (1.0, 1.0)]:
        q = math.exp(s * (1 / 9 - 1)) * math.tanh(0.05) / math.tanh(0.06)
        out = merge_tensors("pcb", base, fts, pcb_ratio=0.75, intra_temperature=temperature, **kw)
        expected = T([(0.4 + 0.1 * q) / (1 + q), 0.3, 0.0, 0.0], dtype=f64)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-15)
    clipped = merge_tensors("pcb", base, fts, pcb_ratio=0.5, compute_dtype="float64")
    torch.testing.assert_close(clipped, T([0.2, 0.2, 0.0, 0.0], dtype=f64), rtol=0, atol=1e-15)


def test_pcb_degenerate_tensors_by_hand():
    """Where the authors' code divides 0 by 0 (docs/merging.md, deviations):

    - τ2 = 0 on the tensor: N(|τ2|) = 0, β2 = 0 everywhere, s2 = 0, so τ2 does not dilute τ1.
      τ1 = [.4, -.1, .2, 0] with Σ τ = τ1, pcb_ratio 1 (cut index 0: the smallest β1 = 0, entry 3):
      β1 ∝ [e²·tanh .16, e^(1/8)·tanh .01, e^(1/2)·tanh .04, 0] > 0 on entries 0-2, so
      τ_m = τ1·s1/s1 = τ1 there and 0/1e-12 = 0 on entry 3: τ_m = τ1.
    - d = 2 with pcb_ratio .05: the cut index int(2·.95) = 1 would keep nothing; lowered to 0,
      each task keeps its top entry. τ1 = [1, 3], τ2 = [2, -1], Σ = [3, 2], clip 0:
      β1 = [e^(2·0)·tanh 3, e^(2·1)·tanh 6] -> s1 = [0, 1]; β2 = [e²·tanh 6, e⁰·tanh(−2)]
      -> s2 = [1, 0]; τ_m = [2, 3].
    - d = 1: every task gets s_t = 1, τ_m = Σ_t w_t τ_t / T = (2·1 + 4·.5)/2 = 2."""
    tau1 = T([0.4, -0.1, 0.2, 0.0], dtype=torch.float64)
    zero = merge_tensors(
        "pcb", torch.zeros_like(tau1), [tau1, torch.zeros_like(tau1)],
        pcb_ratio=1.0, clip_ratio=0.0, compute_dtype="float64",
    )  # fmt: skip
    torch.testing.assert_close(zero, tau1, rtol=0, atol=1e-15)
    two = merge_tensors("pcb", torch.zeros(2), [T([1.0, 3.0]), T([2.0, -1.0])], clip_ratio=0.0)
    assert torch.equal(two, T([2.0, 3.0]))
    one = merge_tensors("pcb", torch.zeros(1), [T([2.0]), T([4.0])], weights=[1.0, 0.5])
    assert torch.equal(one, T([2.0]))


def test_iso_c_by_hand():
    """τ1 = [[0, 1], [0, 0]], τ2 = [[0, 0], [1, 0]], w = (2, 1): τ_Σ = [[0, 2], [1, 0]] = P·D with
    P = [[0, 1], [1, 0]] (orthogonal) and D = diag(1, 2): σ = (2, 1), and U Vᵀ = τ_Σ (τ_Σᵀτ_Σ)^(-1/2)
    = P D D⁻¹ = P. σ̄ = (2 + 1)/2 = 1.5, τ_m = 1.5·P; θ0 = 1, λ = 0.5: θ = [[1, 1.75], [1.75, 1]]
    (task arithmetic would give [[1, 2], [1.5, 1]])."""
    base = torch.ones(2, 2)
    fts = [base + T([[0.0, 1.0], [0.0, 0.0]]), base + T([[0.0, 0.0], [1.0, 0.0]])]
    out = merge_tensors("iso_c", base, fts, name="w", weights=[2, 1], scaling=0.5)
    torch.testing.assert_close(out, T([[1.0, 1.75], [1.75, 1.0]]), rtol=0, atol=1e-6)


def test_iso_c_of_a_rank_deficient_sum_by_hand():
    """τ1 = diag(2, 0, 0), τ2 = diag(0, 1, 0): τ_Σ = diag(2, 1, 0) has rank 2. Its 2 directions
    are flattened to σ̄ = (2 + 1)/2 = 1.5: τ_m = diag(1.5, 1.5, 0). (The reference averages over
    all 3 singular values, σ̄ = 1, and gives the null direction, whose u₃v₃ᵀ = ±e₃e₃ᵀ is
    arbitrary, that weight too.)"""
    f64 = torch.float64
    taus = [torch.diag(T([2.0, 0.0, 0.0], dtype=f64)), torch.diag(T([0.0, 1.0, 0.0], dtype=f64))]
    out = merge_tensors("iso_c", torch.zeros(3, 3, dtype=f64), taus, compute_dtype="float64")
    torch.testing.assert_close(out, torch.diag(T([1.5, 1.5, 0.0], dtype=f64)))


def test_iso_non_matrix_and_embedding_rules():
    """A bias gets the mean: τ1 = [1, 2], τ2 = [3, -2] -> [2, 0]. An embedding gets the mean of
    τ1 = diag(3, 1), τ2 = diag(0, 2) by default (diag(1.5, 1.5)), θ0 with embeddings='base', and
    the matrix rule with 'iso': τ_Σ = diag(3, 3), σ̄ = 3, τ_m = diag(3, 3)."""
    for method in ("iso_c", "iso_cts"):
        bias = merge_tensors(method, torch.zeros(2), [T([1.0, 2.0]), T([3.0, -2.0])], name="x.bias")
        assert torch.equal(bias, T([2.0, 0.0]))
        base = torch.ones(2, 2)
        fts = [base + T([[3.0, 0.0], [0.0, 1.0]]), base + T([[0.0, 0.0], [0.0, 2.0]])]
        name = "model.embed_tokens.weight"
        assert torch.equal(merge_tensors(method, base, fts, name=name), base + 1.5 * torch.eye(2))
        assert torch.equal(merge_tensors(method, base, fts, name=name, embeddings="base"), base)
        iso = merge_tensors(method, base, fts, name=name, embeddings="iso")
        torch.testing.assert_close(iso, base + 3 * torch.eye(2), rtol=0, atol=1e-6)


def test_iso_cts_sizes_by_hand():
    """k = int(r·f), k_t = round((r − k)/T) (halves to even), clipped to r // T; k_c = r − T·k_t.
    r = 10, T = 3, f = .8: k = 8, k_t = round(2/3) = 1, k_c = 7.  r = 9, T = 2, f = .5: k = 4,
    k_t = round(2.5) = 2, k_c = 5.  r = 5, T = 2, f = .8: k = 4, k_t = round(.5) = 0: Iso-C.
    r = 5, T = 3, f = .1: k = 0, round(5/3) = 2 > 5 // 3 = 1, so k_t = 1, k_c = 2 (the
    reference's k_c = 5 − 6 = −1 here). r = 1, T = 1, f = .5: k = 0, k_t = 1, k_c = 0."""
    assert iso_cts_sizes(10, 3, 0.8) == (7, 1)
    assert iso_cts_sizes(9, 2, 0.5) == (5, 2)
    assert iso_cts_sizes(5, 2, 0.8) == (5, 0)
    assert iso_cts_sizes(5, 3, 0.1) == (2, 1)
    assert iso_cts_sizes(1, 1, 0.5) == (0, 1)


def test_iso_cts_task_specific_directions_by_hand():
    """4 × 4, T = 2, f = .5: k_c = 2, k_t = 1 (sizes above). τ1 = diag(3, 0, 1, 0),
    τ2 = diag(0, 2, −.5, 1); τ_Σ = diag(3, 2, .5, 1): common = e1, e2 (σ 3, 2). Residuals after
    projecting out e1, e2: diag(0, 0, 1, 0), top (1, e3, e3); diag(0, 0, −.5, 1), top (1, e4, e4).
    The stacks [e3 e4 e1 e2] are orthonormal, U⊥V⊥ᵀ = I; σ = (1, 1, 3, 2), σ̄ = 7/4:
    τ_m = 1.75·I. (Iso-C flattens τ_Σ's own σ = (3, 2, 1, .5): 1.625·I.)"""
    base = torch.zeros(4, 4)
    fts = [torch.diag(T([3.0, 0.0, 1.0, 0.0])), torch.diag(T([0.0, 2.0, -0.5, 1.0]))]
    cts = merge_tensors("iso_cts", base, fts, name="w", common_space_fraction=0.5)
    torch.testing.assert_close(cts, 1.75 * torch.eye(4), rtol=0, atol=1e-6)
    torch.testing.assert_close(merge_tensors("iso_c", base, fts, name="w"), 1.625 * torch.eye(4))


def test_iso_cts_orthogonalisation_by_hand():
    """4 × 4, T = 2, f = .5 (k_c = 2, k_t = 1); x = (e3 + e4)/√2. τ1 = 3·e1e1ᵀ + e3e3ᵀ,
    τ2 = 4·e2e2ᵀ + x e4ᵀ. τ_Σ = 3·e1e1ᵀ + 4·e2e2ᵀ + B, B = [[1, 1/√2], [0, 1/√2]] on (e3, e4),
    whose σ² = 1 ± 1/√2 (σ = 1.31, .54) are below 3: common = e2, e1. Residuals: e3e3ᵀ, top
    (1, e3, e3), and x e4ᵀ, top (1, x, e4). U stack [e3 x e2 e1]: its polar factor turns e3 and x,
    45° apart, symmetrically to 90° apart: a at −22.5°, b at 67.5° (e1, e2 unchanged); the V stack
    [e3 e4 e2 e1] is orthonormal already. σ = (1, 1, 4, 3), σ̄ = 9/4:
    τ_m = 2.25·(e1e1ᵀ + e2e2ᵀ + a e3ᵀ + b e4ᵀ)."""
    f64 = torch.float64
    eye = torch.eye(4, dtype=f64)
    e1, e2, e3, e4 = eye
    x = (e3 + e4) / math.sqrt(2)
    taus = [
        3 * torch.outer(e1, e1) + torch.outer(e3, e3),
        4 * torch.outer(e2, e2) + torch.outer(x, e4),
    ]
    out = merge_tensors(
        "iso_cts", torch.zeros(4, 4, dtype=f64), taus, name="w", common_space_fraction=0.5,
        compute_dtype="float64",
    )  # fmt: skip
    a = math.cos(math.radians(-22.5)) * e3 + math.sin(math.radians(-22.5)) * e4
    b = math.cos(math.radians(67.5)) * e3 + math.sin(math.radians(67.5)) * e4
    want = 2.25 * (
        torch.outer(e1, e1) + torch.outer(e2, e2) + torch.outer(a, e3) + torch.outer(b, e4)
    )
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
