"""Reference tests against independent implementations: peft's merge_utils for TA, TIES and
DARE; TSV-M written here from the paper's equations (polar factor via an eigendecomposition);
Breadcrumbs, DELLA, Model Stock, SLERP, SCE, Karcher mean and Multi-SLERP against formulations
written here from mergekit's code (``_mk_*``: loops over models, its order of operations);
Iso-C and Iso-CTS against formulations written here from FusionBench's code (``_fb_*``: full
SVDs, its index arithmetic, its SVD-based orthogonalisation)."""

from __future__ import annotations

import pytest
import torch
from merging_helpers import load_peft_merge_utils, models, state_dicts, write_statistics

from hhh_bench.merging import merge_state_dicts, merge_tensors
from hhh_bench.merging.methods.dare import dare_keep_mask

PEFT = load_peft_merge_utils()
pytestmark = pytest.mark.filterwarnings("ignore:The density .* no pruning:UserWarning")


@pytest.mark.parametrize("seed", range(3))
def test_task_arithmetic_matches_peft(seed):
    base, fts = models((7, 5), 3, seed)
    weights = [0.3, 1.2, -0.5]
    expected = base + PEFT.task_arithmetic([f - base for f in fts], torch.tensor(weights))
    out = merge_tensors("task_arithmetic", base, fts, weights=weights)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("density", "weight"), [(0.2, 1.0), (0.5, 0.7), (0.9, 1.3), (1.0, 1.0)])
def test_ties_matches_peft_with_equal_weights(density, weight):
    base, fts = models((6, 9), 3, seed=int(density * 10))
    expected = base + PEFT.ties([f - base for f in fts], torch.full((3,), weight), density)
    out = merge_tensors("ties", base, fts, density=density, weights=[weight] * 3)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("method", "peft_fn"), [("dare_ta", "dare_linear"), ("dare_ties", "dare_ties")]
)
@pytest.mark.parametrize("drop_rate", [0.0, 0.3, 0.8])
def test_dare_matches_peft_given_the_same_masks(monkeypatch, method, peft_fn, drop_rate):
    """peft draws its masks from the global RNG with ``torch.bernoulli``: hand it ours, in order."""
    base, fts = models((5, 8), 3, seed=7)
    weights = [0.6] * 3
    masks = [dare_keep_mask(base.shape, drop_rate, 11, "w", t) for t in range(3)]
    queue = list(masks)
    real = torch.bernoulli
    monkeypatch.setattr(torch, "bernoulli", lambda probs, *a, **k: queue.pop(0))
    args = ([f - base for f in fts], torch.tensor(weights), 1.0 - drop_rate)
    expected = base + getattr(PEFT, peft_fn)(*args)
    monkeypatch.setattr(torch, "bernoulli", real)
    assert queue == [] or drop_rate == 0.0  # peft skips pruning at density 1
    out = merge_tensors(method, base, fts, name="w", seed=11, drop_rate=drop_rate, weights=weights)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def _polar_by_eigh(a: torch.Tensor) -> torch.Tensor:
    """A (AᵀA)^(-1/2): the orthonormal polar factor of a full-column-rank A."""
    evals, evecs = torch.linalg.eigh(a.T @ a)
    return a @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T


def _tsv_from_equations(taus: list[torch.Tensor], k: int, weights: list[float]) -> torch.Tensor:
    """Gargiulo et al. 2025, Alg. 1: per task top-k SVD triplets, concatenated, U and V replaced by
    their polar factors, τ_m = U⊥ diag(σ) V⊥ᵀ (σ_t scaled by w_t)."""
    us, ss, vs = [], [], []
    for tau, w in zip(taus, weights, strict=True):
        u, s, vh = torch.linalg.svd(tau, full_matrices=False)
        us.append(u[:, :k])
        ss.append(w * s[:k])
        vs.append(vh[:k].T)
    u_p, v_p = _polar_by_eigh(torch.cat(us, 1)), _polar_by_eigh(torch.cat(vs, 1))
    return u_p @ torch.diag(torch.cat(ss)) @ v_p.T


@pytest.mark.parametrize(
    ("shape", "num", "rank_fraction"), [((12, 9), 3, None), ((8, 10), 2, 0.25), ((9, 9), 4, None)]
)
def test_tsv_matches_the_equations_in_float64(shape, num, rank_fraction):
    base, fts = models(shape, num, seed=sum(shape), dtype=torch.float64)
    r = min(shape)
    k = r // num if rank_fraction is None else int(r * rank_fraction)
    weights = [1.0, 0.5, 2.0, 1.5][:num]
    expected = base + 0.9 * _tsv_from_equations([f - base for f in fts], k, weights)
    out = merge_tensors(
        "tsv",
        base,
        fts,
        name="mlp.weight",
        rank_fraction=rank_fraction,
        weights=weights,
        scaling=0.9,
        compute_dtype="float64",
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-8)


def test_tsv_state_dict_matches_the_equations_in_float64():
    """Whole model: matrices by the equations, biases/norms/embeddings by the mean."""
    base, fts = state_dicts(3, seed=9, dtype=torch.float64)
    out = merge_state_dicts("tsv", base, fts, compute_dtype="float64")
    for key, b in base.items():
        taus = [sd[key] - b for sd in fts]
        if not b.is_floating_point():
            expected = b
        elif b.dim() == 2 and "embed" not in key and "lm_head" not in key:
            expected = b + _tsv_from_equations(taus, min(b.shape) // 3, [1.0] * 3)
        else:
            expected = b + sum(taus) / 3
        torch.testing.assert_close(out[key], expected, rtol=0, atol=1e-8, msg=key)


# ---------------------------------------------------------------------------------------------
# mergekit's formulations, written here from a reading of mergekit's merge_methods/ and
# sparsify.py (github.com/arcee-ai/mergekit, v0.1.4): independent code, the same rules.


def _mk_outliers(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """mergekit's magnitude_outliers: sort |δ| ascending, drop the n_bot smallest and the n_top
    largest, n_top = int(γ·n) lowered when n_bot = n − int(d·n) − n_top would be negative."""
    if density >= 1:
        return delta
    n = delta.numel()
    n_top = int(gamma * n)
    n_bot = n - int(density * n) - n_top
    if n_bot < 0:
        n_top, n_bot = n_top + n_bot, 0
    ascending = delta.abs().flatten().argsort()
    keep = torch.zeros(n, dtype=delta.dtype)
    keep[ascending[n_bot : n - n_top]] = 1
    return delta * keep.view_as(delta)


def _mk_l1(delta: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    before, after = delta.abs().sum(), masked.abs().sum()
    return masked if before < 1e-7 or after < 1e-7 else masked * (before / after)


def _mk_gta(deltas, weights, *, consensus: bool, normalize: bool) -> torch.Tensor:
    """mergekit's GTATask mixing of sparsified deltas (its get_mask with method 'sum')."""
    d = torch.stack(deltas)
    w = torch.tensor(weights, dtype=d.dtype).view(-1, *[1] * (d.dim() - 1))
    x = d * w
    if consensus:
        majority = (x.sum(0) >= 0).to(d.dtype) * 2 - 1
        mask = (x.sign() == majority).to(d.dtype)
        mixed, divisor = (x * mask).sum(0), (w * mask).sum(0)
        divisor[divisor == 0] = 1
    else:
        mixed, divisor = x.sum(0), w.sum(0)
        divisor[divisor.abs() < 1e-8] = 1
    return mixed / divisor if normalize else mixed


@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties"])
@pytest.mark.parametrize(
    ("density", "gamma", "normalize", "rescale"),
    [
        (0.9, 0.05, False, "none"),
        (0.5, 0.1, True, "l1"),
        (0.7, 0.4, False, "l1"),
        (1.0, 0.1, True, "none"),
    ],
)
def test_breadcrumbs_matches_mergekit(method, density, gamma, normalize, rescale):
    base, fts = models((6, 7), 3, seed=int(density * 100), dtype=torch.float64)
    weights = [0.7, 1.3, -0.4]
    deltas = []
    for f in fts:
        masked = _mk_outliers(f - base, density, gamma)
        deltas.append(_mk_l1(f - base, masked) if rescale == "l1" and density < 1 else masked)
    consensus = method == "breadcrumbs_ties"
    expected = base + 0.8 * _mk_gta(deltas, weights, consensus=consensus, normalize=normalize)
    out = merge_tensors(
        method, base, fts, density=density, gamma=gamma, normalize=normalize, rescale=rescale,
        weights=weights, scaling=0.8, compute_dtype="float64",
    )  # fmt: skip
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def _mk_della_probs(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """mergekit's della_magprune probabilities: 1-based ranks of |δ| along dim 1 (argsort of the
    argsort), min-max normalised per row, mapped to [density − ε, density + ε]."""
    rows = delta.unsqueeze(0) if delta.dim() < 2 else delta
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(torch.float64) + 1
    lo, hi = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    norm = ((ranks - lo) / (hi - lo)).clamp(0, 1)
    return ((density - epsilon) + norm * 2 * epsilon).view_as(delta)


def _mk_della_delta(delta, density, epsilon, rescale, bernoulli=torch.bernoulli):
    """mergekit's della_magprune with ``rescale`` 'l1' (v0.1.x) or 'inverse_p' (its first
    version, the paper's δ·m/p) or 'none'."""
    probs = _mk_della_probs(delta, density, epsilon)
    mask = bernoulli(probs)
    if rescale == "inverse_p":
        return delta * mask / probs
    return _mk_l1(delta, delta * mask) if rescale == "l1" else delta * mask


@pytest.mark.parametrize("method", ["della", "della_linear"])
@pytest.mark.parametrize(
    ("density", "epsilon", "normalize", "rescale"),
    [(0.5, 0.15, True, "inverse_p"), (0.3, 0.1, False, "l1"), (0.7, 0.25, True, "none")],
)
def test_della_matches_mergekit_given_the_same_masks(
    monkeypatch, method, density, epsilon, normalize, rescale
):
    """mergekit draws its masks with torch.bernoulli from the global RNG: hand it ours, in order."""
    from hhh_bench.merging.methods.della import della_keep_mask

    base, fts = models((5, 9), 3, seed=int(density * 10), dtype=torch.float64)
    weights = [0.6, 1.4, -0.5]
    masks = [della_keep_mask(f - base, density, epsilon, 4, "w", t)[0] for t, f in enumerate(fts)]
    queue = [m.to(torch.float64) for m in masks]
    deltas = [
        _mk_della_delta(f - base, density, epsilon, rescale, bernoulli=lambda p: queue.pop(0))
        for f in fts
    ]
    assert queue == []
    consensus = method == "della"
    expected = base + 1.2 * _mk_gta(deltas, weights, consensus=consensus, normalize=normalize)
    out = merge_tensors(
        method, base, fts, name="w", seed=4, density=density, epsilon=epsilon,
        normalize=normalize, rescale=rescale, weights=weights, scaling=1.2,
        compute_dtype="float64",
    )  # fmt: skip
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_della_keep_rates_match_mergekit_in_distribution():
    """4000 identical rows of 8 entries (|τ| ranks 0..7 in a shuffled order), one model:
    every row draws its own mask, so each column's keep rate estimates that rank's keep
    probability over 4000 draws (σ ≤ √(.25/4000) = .0079 per column).

    - our probabilities equal mergekit's formulation (to float64 rounding);
    - our per-column keep rates are within .032 (4σ) of them, and within .045 (4σ of a
      difference) of the rates of mergekit's own draws (torch.bernoulli, global RNG);
      measured at seed 0: max deviations .014 and .014 (1.8σ);
    - the overall keep rate is density within .011 (4σ over 32000 entries; measured .0053);
    - the rescaled entries average to τ (E[m/p] = 1): within 4σ of each column's mean
      (measured 1.95σ at most)."""
    from hhh_bench.merging.methods.della import keep_probabilities

    density, epsilon, rows = 0.4, 0.25, 4000
    row = torch.tensor([0.3, -2.0, 0.05, 1.1, -0.7, 4.0, -0.15, 0.9], dtype=torch.float64)
    tau = row.expand(rows, 8).clone()
    p_mk = _mk_della_probs(tau, density, epsilon)
    torch.testing.assert_close(keep_probabilities(tau, density, epsilon), p_mk, rtol=0, atol=1e-15)
    base = torch.zeros(rows, 8, dtype=torch.float64)
    kw = {"name": "w", "density": density, "epsilon": epsilon, "compute_dtype": "float64"}
    kept = merge_tensors("della_linear", base, [tau], rescale="none", **kw) != 0
    ours = kept.double().mean(0)
    assert (ours - p_mk[0]).abs().max() < 0.032
    torch.manual_seed(0)
    theirs = (_mk_della_delta(tau, density, epsilon, "none") != 0).double().mean(0)
    assert (ours - theirs).abs().max() < 0.045
    assert abs(float(kept.double().mean()) - density) < 0.011
    rescaled = merge_tensors("della_linear", base, [tau], **kw)
    sd = (row.abs() * ((1 - p_mk[0]) / p_mk[0]).sqrt()) / rows**0.5  # σ of the column mean
    assert ((rescaled.mean(0) - row).abs() < 4 * sd).all()


def test_della_masks_are_reproducible_from_the_seed():
    """Bit for bit: the same seed gives the same merge (and the same mask in float32 and
    float64); another seed, name or model order gives another."""
    base, fts = models((6, 10), 2, seed=3, dtype=torch.float64)
    kw = {"name": "w", "seed": 9, "density": 0.5, "epsilon": 0.2}
    a = merge_tensors("della", base, fts, **kw)
    assert torch.equal(a, merge_tensors("della", base, fts, **kw))
    zero, tau = torch.zeros_like(base), [fts[0] - base]
    b = merge_tensors("della_linear", zero, tau, rescale="none", **kw)
    c = merge_tensors("della_linear", zero, tau, rescale="none", compute_dtype="float64", **kw)
    assert torch.equal(b == 0, c == 0) and 0 < int((b == 0).sum()) < b.numel()
    for other in ({"seed": 10}, {"name": "v"}):
        assert not torch.equal(a, merge_tensors("della", base, fts, **{**kw, **other}))
    assert not torch.equal(a, merge_tensors("della", base, fts[::-1], **kw))


def _mk_model_stock(w0: torch.Tensor, ws: list[torch.Tensor], filter_wise: bool) -> torch.Tensor:
    """mergekit's ModelStockMergeTask on raw weights: pairwise cosines of w_i − w_0 (norm product
    clamped at 1e-6), averaged; t = N·cos/(1 + (N−1)·cos); t·mean(ws) + (1 − t)·w_0."""
    shape = w0.shape
    if filter_wise:
        if w0.dim() == 1:
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w0, ws = w0.view(-1), [w.view(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    cos = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1 :]:
            norm = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cos.append(((a * b).sum(dim=-1) / norm.clamp(min=1e-6)).clamp(-1, 1))
    c = torch.stack(cos).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    t = n * c / (1 + (n - 1) * c)
    return (t * (sum(ws) / n) + (1 - t) * w0).reshape(shape)


@pytest.mark.parametrize("filter_wise", [False, True])
@pytest.mark.parametrize(("shape", "num"), [((6, 7), 2), ((5, 4), 3), ((9,), 4)])
def test_model_stock_matches_mergekit(shape, num, filter_wise):
    base, fts = models(shape, num, seed=num, dtype=torch.float64)
    fts = [f + 0.05 for f in fts]  # a shared direction: cosines > 0, t in (0, 1]
    expected = _mk_model_stock(base, fts, filter_wise)
    out = merge_tensors("model_stock", base, fts, filter_wise=filter_wise, compute_dtype="float64")
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def _mk_slerp(t: float, v0, v1, dot_threshold=0.9995, eps=1e-8):
    """mergekit's slerp on NumPy arrays (it casts torch inputs to float32 first)."""
    import numpy as np

    c0, c1 = np.copy(v0), np.copy(v1)
    n0, n1 = np.linalg.norm(v0), np.linalg.norm(v1)
    v0 = v0 / n0 if n0 > eps else v0
    v1 = v1 / n1 if n1 > eps else v1
    dot = np.sum(v0 * v1)
    if np.abs(dot) > dot_threshold:
        return (1 - t) * c0 + t * c1
    theta = np.arccos(dot)
    return np.sin(theta - theta * t) / np.sin(theta) * c0 + np.sin(theta * t) / np.sin(theta) * c1


@pytest.mark.parametrize("t", [0.0, 0.3, 0.75, 1.0])
@pytest.mark.parametrize("layout", ["base_and_one", "two_models", "colinear"])
def test_slerp_matches_mergekit(t, layout):
    """mergekit's layout (its base_model is the t = 0 end) is one finetuned model; two models
    interpolate θ1 -> θ2. float64 to 1e-12; the float32 default against mergekit's float32
    NumPy to 2e-6 (entries of size ~1)."""
    base, fts = models((5, 6), 2, seed=11, dtype=torch.float64)
    if layout == "colinear":
        fts = [base * 1.5, base * 1.5 + 1e-4 * fts[0]]
    ends = (base, fts[0]) if layout == "base_and_one" else (fts[0], fts[1])
    given = fts[:1] if layout == "base_and_one" else fts
    expected = torch.from_numpy(_mk_slerp(t, ends[0].numpy(), ends[1].numpy()))
    out = merge_tensors("slerp", base, given, t=t, compute_dtype="float64")
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    mk32 = _mk_slerp(t, ends[0].float().numpy(), ends[1].float().numpy())
    out32 = merge_tensors("slerp", base.float(), [f.float() for f in given], t=t)
    torch.testing.assert_close(out32, torch.from_numpy(mk32), rtol=0, atol=2e-6)


def test_breadcrumbs_mask_of_a_large_tensor_matches_mergekit():
    """Above SORT_MAX entries the mask comes from topk_mask's histogram selection: the same
    entries as mergekit's sort (70 000 distinct magnitudes)."""
    from hhh_bench.merging.methods.breadcrumbs import SORT_MAX, breadcrumbs_mask

    x = torch.randn(70_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert x.numel() > SORT_MAX
    expected = _mk_outliers(x, 0.6, 0.05) != 0
    assert torch.equal(breadcrumbs_mask(x.abs(), 0.6, 0.05), expected)


def _mk_sce(base: torch.Tensor, fts: list[torch.Tensor], select_topk: float) -> torch.Tensor:
    """mergekit's sce_merge: task vectors; if select_topk < 1 the top int(nonzero·p) positions
    by population variance (torch.topk); sign-consensus mask (get_mask 'sum'); weights
    mean(τ²)/Σ (uniform below 1e-6); Σ τ·w·mask / clamp(Σ w·mask, 1e-6)."""
    tvs = torch.stack([f - base for f in fts])
    if select_topk < 1:
        var = torch.var(tvs, dim=0, unbiased=False)
        k = int(torch.count_nonzero(var) * select_topk)
        keep = torch.zeros_like(var)
        if k > 0:
            keep.view(-1)[torch.topk(var.abs().view(-1), k=k).indices] = 1
        tvs = tvs * keep.unsqueeze(0)
    majority = (tvs.sum(dim=0) >= 0).to(tvs.dtype) * 2 - 1
    erase = tvs.sign() == majority
    energies = [float((tv**2).mean()) for tv in tvs]
    total = sum(energies)
    coeffs = [1 / len(tvs)] * len(tvs) if abs(total) < 1e-6 else [e / total for e in energies]
    num = sum(c * tv * m for c, tv, m in zip(coeffs, tvs, erase, strict=True))
    den = sum(c * m.to(tvs.dtype) for c, m in zip(coeffs, erase, strict=True))
    return base + num / den.clamp(min=1e-6)


@pytest.mark.parametrize("select_topk", [1.0, 0.7, 0.3])
@pytest.mark.parametrize(("shape", "num"), [((6, 7), 2), ((5, 4), 3), ((9,), 4)])
def test_sce_matches_mergekit(shape, num, select_topk):
    """Continuous random task vectors (no equal variances at the cut): to 1e-12 in float64.
    Weights w_t are ours (mergekit has none): SCE of the models θ0 + w_t·τ_t."""
    base, fts = models(shape, num, seed=num + 7, dtype=torch.float64)
    kw = {"select_topk": select_topk, "compute_dtype": "float64"}
    out = merge_tensors("sce", base, fts, **kw)
    torch.testing.assert_close(out, _mk_sce(base, fts, select_topk), rtol=0, atol=1e-12)
    weights = [0.5 + 0.5 * t for t in range(num)]
    scaled = [base + w * (f - base) for w, f in zip(weights, fts, strict=True)]
    out_w = merge_tensors("sce", base, fts, weights=weights, **kw)
    torch.testing.assert_close(out_w, _mk_sce(base, scaled, select_topk), rtol=0, atol=1e-12)


def _mk_karcher(tensors, alphas, max_iter=10, tol=1e-5):
    """mergekit's karcher_merge_tensors, one model at a time (norms, unit vectors, valid models
    above tol, the normalised weighted mean as the first guess, the log/exp-map iteration, the
    scale Σ α_t‖θ_t‖ over all models)."""
    if len(tensors) == 1:
        return tensors[0]
    norms = [float(torch.linalg.norm(t)) for t in tensors]
    units = [
        t / n if n != 0.0 else torch.zeros_like(t) for t, n in zip(tensors, norms, strict=True)
    ]
    valid = [i for i, n in enumerate(norms) if n > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    a = [alphas[i] / sum(alphas[j] for j in valid) for i in valid]
    pts = [units[i] for i in valid]
    u = sum(ai * p for ai, p in zip(a, pts, strict=True))
    nu = float(torch.linalg.norm(u))
    u = pts[0].clone() if nu < tol else u / nu
    for _ in range(max_iter):
        step = torch.zeros_like(u)
        for ai, p in zip(a, pts, strict=True):
            dot = torch.clamp(torch.dot(u.flatten(), p.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if float(theta) < tol:
                continue
            step += ai * (theta / torch.sin(theta)) * (p - dot * u)
        ns = torch.linalg.norm(step)
        if float(ns) < tol:
            break
        u = torch.cos(ns) * u + torch.sin(ns) * (step / ns)
        un = torch.linalg.norm(u)
        if float(un) > tol:
            u = u / un
    return sum(al * n for al, n in zip(alphas, norms, strict=True)) * u


@pytest.mark.parametrize(("max_iter", "tol"), [(10, 1e-5), (1, 1e-5), (50, 1e-12)])
@pytest.mark.parametrize(("shape", "num"), [((6, 7), 2), ((5, 4), 3), ((9,), 4)])
def test_karcher_matches_mergekit(shape, num, max_iter, tol):
    """The finetuned weights spread far apart (so the iteration matters): to 1e-12 in float64,
    equal weights (mergekit's alphas 1/N) and ours [1, 2, ..] as alphas w/Σw."""
    base, fts = models(shape, num, seed=num + 3, dtype=torch.float64)
    fts = [f + 2.0 * (f - base) + 0.3 * t for t, f in enumerate(fts)]  # far apart
    kw = {"max_iter": max_iter, "tol": tol, "compute_dtype": "float64"}
    out = merge_tensors("karcher", base, fts, **kw)
    flat = [f.flatten() for f in fts]
    expected = _mk_karcher(flat, [1 / num] * num, max_iter, tol).view(shape)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    weights = [1.0 + t for t in range(num)]
    alphas = [w / sum(weights) for w in weights]
    out_w = merge_tensors("karcher", base, fts, weights=weights, **kw)
    expected_w = _mk_karcher(flat, alphas, max_iter, tol).view(shape)
    torch.testing.assert_close(out_w, expected_w, rtol=0, atol=1e-12)
    if max_iter == 1 and num > 2:  # the iteration matters (two equal-weight points: the
        # normalised Euclidean mean is already their Karcher mean, the arc's midpoint)
        assert not torch.allclose(out, merge_tensors("karcher", base, fts, compute_dtype="float64"))


def _mk_multislerp(tensors, weight, base=None, normalize_weights=True, eps=1e-8):
    """mergekit's multislerp: subtract the optional base, unit vectors x/(‖x‖ + eps), weighted
    mean direction (zero: lerp for two models), tangent projection, weighted tangent sum, exp map
    with ν = ‖v‖ + eps, times Σ w‖x‖, plus the base."""
    if len(tensors) == 1:
        return tensors[0]
    xs = [t - base if base is not None else t for t in tensors]
    w = [wi / sum(weight) for wi in weight] if normalize_weights else list(weight)
    norms = [torch.norm(x.flatten()) for x in xs]
    units = [x.flatten() / (n + eps) for x, n in zip(xs, norms, strict=True)]
    mean = sum(wi * u for wi, u in zip(w, units, strict=True))
    if torch.norm(mean) < eps:
        assert len(xs) == 2
        res = xs[0] * w[0] + xs[1] * w[1]
        return res + base if base is not None else res
    mean = mean / torch.norm(mean)
    tangent = sum(wi * (u - (u * mean).sum() * mean) for wi, u in zip(w, units, strict=True))
    nt = torch.norm(tangent) + eps
    res = mean * torch.cos(nt) + tangent * (torch.sin(nt) / nt)
    res = (res * sum(n * wi for n, wi in zip(norms, w, strict=True))).view(tensors[0].shape)
    return res + base if base is not None else res


@pytest.mark.parametrize("origin", ["base", "zero"])
@pytest.mark.parametrize("normalize_weights", [True, False])
@pytest.mark.parametrize(("shape", "num"), [((6, 7), 2), ((5, 4), 3), ((9,), 4)])
def test_multislerp_matches_mergekit(shape, num, normalize_weights, origin):
    """origin base = mergekit with base_model (the base subtracted and added back), zero =
    without; weights = mergekit's per-model weight; to 1e-12 in float64."""
    base, fts = models(shape, num, seed=num + 5, dtype=torch.float64)
    weights = [0.5 + 0.75 * t for t in range(num)]
    out = merge_tensors(
        "multislerp", base, fts, weights=weights, normalize_weights=normalize_weights,
        origin=origin, compute_dtype="float64",
    )  # fmt: skip
    mk_base = base if origin == "base" else None
    expected = _mk_multislerp(fts, weights, mk_base, normalize_weights)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_new_methods_float32_against_mergekit_formulation():
    """The float32 default against the float64 formulations: within float32 rounding."""
    base, fts = models((8, 6), 3, seed=21, dtype=torch.float64)
    cases = [
        ("sce", {"select_topk": 0.5}, _mk_sce(base, fts, 0.5)),
        ("karcher", {}, _mk_karcher([f.flatten() for f in fts], [1 / 3] * 3).view(8, 6)),
        ("multislerp", {}, _mk_multislerp(fts, [1.0] * 3, base)),
    ]
    for method, kw, expected in cases:
        out = merge_tensors(method, base.float(), [f.float() for f in fts], **kw)
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-6, msg=method)


# ---------------------------------------------------------------------------------------------
# Fisher merging and RegMean against formulations written from FusionBench's code: read at
# commit 54c9e8c9 of github.com/tanganke/fusion_bench, fusion_bench/method/fisher_merging/
# fisher_merging.py (get_models_fisher_norm, merging_with_fisher_weights) and
# fusion_bench/method/regmean/regmean.py (reduce_non_diagonal_elements,
# merging_with_regmean_weights). Written here in their full-weight form (θ_t, not τ_t), in
# their order of operations; never copied.


def _read_stats(paths):
    from safetensors.torch import load_file

    return [load_file(p) for p in paths]


def _fb_fisher(base, fts, fishers, normalize, eps):
    """FusionBench's Fisher merge of the floating keys: per model the L2 norm over every
    parameter of its Fisher (a norm per tensor, then the norm of those), scaling (1/T)·ĉ with
    ĉ_t = (1/(n_t + ε)) / Σ (1/(n_s + ε)), then Σ s_t (F_t + ε) θ_t / Σ s_t (F_t + ε)."""
    keys = [k for k in base if base[k].is_floating_point()]
    num = len(fts)
    scale = torch.full((num,), 1.0 / num, dtype=torch.float64)
    if normalize:
        per_tensor = torch.stack(
            [torch.stack([f[k].double().norm() for f in fishers]) for k in keys], dim=1
        )
        norms = per_tensor.norm(dim=1)
        inv = 1.0 / (norms + eps)
        scale = scale * inv / inv.sum()
    out = {}
    for k in keys:
        num_k = sum(scale[t] * (fishers[t][k].double() + eps) * fts[t][k] for t in range(num))
        den_k = sum(scale[t] * (fishers[t][k].double() + eps) for t in range(num))
        out[k] = num_k / den_k
    return out


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize(("num", "seed"), [(2, 0), (3, 1), (4, 2)])
def test_fisher_matches_fusionbench_formulation(tmp_path, num, seed, normalize):
    base, fts = state_dicts(num, seed, torch.float64)
    shapes = {k: tuple(v.shape) for k, v in base.items() if v.is_floating_point()}
    paths = write_statistics(tmp_path, shapes, num, seed)
    fishers = [{k[len("fisher/") :]: v for k, v in s.items()} for s in _read_stats(paths)]
    for eps in (1e-6, 0.1):  # 0.1: ε is of the order of the Fisher (uniform on [0, 1))
        expected = _fb_fisher(base, fts, fishers, normalize, eps)
        out = merge_state_dicts("fisher", base, fts, statistics=paths, compute_dtype="float64",
                                normalize_fisher_weight=normalize, minimal_fisher_weight=eps)  # fmt: skip
        for k, v in expected.items():
            torch.testing.assert_close(out[k], v, rtol=0, atol=1e-12, msg=k)


def _fb_regmean(base, fts, grams, alpha):
    """FusionBench's RegMean of the floating keys: for a weight with a Gram in the files,
    G ⊙ (diag(1 − α) + α) (off-diagonal entries times α), inverse of the sum, times
    Σ G̃_t W_tᵀ, transposed back; any other tensor the mean of the θ_t."""
    out = {}
    for k in (k for k in base if base[k].is_floating_point()):
        if k in grams[0]:
            n = grams[0][k].shape[0]
            mask = torch.diag(torch.ones(n, dtype=torch.float64) - alpha) + alpha
            reduced = [g[k].double() * mask for g in grams]
            inv = torch.inverse(sum(reduced))
            out[k] = (inv @ sum(r @ f[k].T for r, f in zip(reduced, fts, strict=True))).T
        else:
            out[k] = torch.stack([f[k] for f in fts]).mean(dim=0)
    return out


@pytest.mark.parametrize("alpha", [1.0, 0.9, 0.3, 0.0])
@pytest.mark.parametrize(("num", "seed"), [(2, 3), (3, 4), (4, 5)])
def test_regmean_matches_fusionbench_formulation(tmp_path, num, seed, alpha):
    base, fts = state_dicts(num, seed, torch.float64)
    linear = ["model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight",
              "lm_head.weight"]  # fmt: skip
    shapes = {k: tuple(v.shape) for k, v in base.items() if v.is_floating_point()}
    paths = write_statistics(tmp_path, shapes, num, seed, grams=linear)
    grams = [{k[len("gram/") :]: v for k, v in s.items() if k.startswith("gram/")}
             for s in _read_stats(paths)]  # fmt: skip
    expected = _fb_regmean(base, fts, grams, alpha)
    out = merge_state_dicts("regmean", base, fts, statistics=paths, compute_dtype="float64",
                            reduce_non_diagonal_ratio=alpha)  # fmt: skip
    for k, v in expected.items():
        torch.testing.assert_close(out[k], v, rtol=0, atol=1e-10, msg=k)
    assert torch.equal(out["model.position_ids"], base["model.position_ids"])


# Consensus merging, written here from a reading of the authors' code (github.com/nik-dim/tall_masks
# at d10af8b: src/utils/tallmask_utils.py generate_task_masks and construct_consensus_mask,
# src/eval/aggregation.py create_task_vector, src/utils/ties_utils.py ties_merging,
# src/utils/utils.py topk_values_mask; FusionBench 54c9e8c holds the same generate_task_masks and
# construct_consensus_mask in fusion_bench/method/tall_mask/utils.py): flat vectors of weights.


def _tall_topk(tvs: torch.Tensor, percent: float) -> torch.Tensor:
    """topk_values_mask: per row, keep |x| >= the (d − int(d·K))-th smallest |x| (K = percent/100):
    int(d·K) + 1 entries when the magnitudes are distinct."""
    d = tvs.shape[1]
    kth = tvs.abs().kthvalue(d - int(d * percent / 100), dim=1, keepdim=True).values
    return tvs * (tvs.abs() >= kth)


def _tall_ties(tvs: torch.Tensor, percent: float, agg: str) -> torch.Tensor:
    """ties_merging(reset_thresh=percent, merge_func='dis-' + agg)."""
    trimmed = _tall_topk(tvs, percent)
    sign = torch.sign(trimmed.sum(dim=0))
    sign[sign == 0] = torch.sign(sign.sum())  # zero sums take the majority sign
    selected = trimmed * torch.where(sign > 0, trimmed > 0, trimmed < 0)
    if agg == "sum":
        return selected.sum(dim=0)
    return selected.sum(dim=0) / (selected != 0).sum(dim=0).float().clamp(min=1)


def _tall_consensus(flat_ptm, flat_ft, lam, k, ties=None):
    """create_task_vector for 'consensus' with the TALL masks built for one λ: the weights θ_t
    stacked as rows of ``flat_ft``; ``ties`` = (percent, agg) or None (task arithmetic)."""
    tvs = flat_ft - flat_ptm
    merged_tv = tvs.sum(dim=0) if ties is None else _tall_ties(tvs, *ties)
    flat_multi = flat_ptm + merged_tv
    masks = (flat_ptm - flat_ft).abs() > (flat_multi - flat_ft).abs() * lam
    consensus = masks.float().sum(dim=0) >= k
    return merged_tv * consensus


CONSENSUS_CASES = [
    (shape, num, lam, k)
    for shape, num in [((6, 7), 2), ((5, 4), 3), ((9,), 4)]
    for lam, k in [(0.6, 2), (0.2, 2), (0.4, 1), (0.2, 3), (0.3, 0)]
    if k <= num  # more is an error here
]


@pytest.mark.parametrize(("shape", "num", "lam", "k"), CONSENSUS_CASES)
def test_consensus_ta_matches_the_authors_code(shape, num, lam, k):
    base, fts = models(shape, num, seed=sum(shape) + num, dtype=torch.float64)
    flat_ft = torch.stack([f.flatten() for f in fts])
    expected = base + 0.7 * _tall_consensus(base.flatten(), flat_ft, lam, k).view(shape)
    kw = {"tall_mask_lambda": lam, "min_agreement": k, "compute_dtype": "float64"}
    out = merge_tensors("consensus_ta", base, fts, scaling=0.7, **kw)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    # weights: the method applied to w_t·τ_t, i.e. the authors' code on θ0 + w_t·τ_t
    w = [0.5 + 0.4 * t for t in range(num)]
    scaled = torch.stack(
        [base.flatten() + wt * (f - base).flatten() for wt, f in zip(w, fts, strict=True)]
    )
    expected = base + _tall_consensus(base.flatten(), scaled, lam, k).view(shape)
    out = merge_tensors("consensus_ta", base, fts, weights=w, **kw)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_consensus_ta_state_dict_matches_the_authors_code_over_the_flat_model():
    """The authors flatten the whole model into one vector; every step is entrywise."""
    base, fts = state_dicts(3, seed=4, dtype=torch.float64)
    keys = [key for key in base if base[key].is_floating_point()]
    flat_ptm = torch.cat([base[key].flatten() for key in keys])
    flat_ft = torch.stack([torch.cat([sd[key].flatten() for key in keys]) for sd in fts])
    merged = flat_ptm + _tall_consensus(flat_ptm, flat_ft, 0.4, 2)
    out = merge_state_dicts(
        "consensus_ta", base, fts, tall_mask_lambda=0.4, compute_dtype="float64"
    )
    got = torch.cat([out[key].flatten() for key in keys])
    torch.testing.assert_close(got, merged, rtol=0, atol=1e-12)
    assert torch.equal(out["model.position_ids"], base["model.position_ids"])


@pytest.mark.parametrize("agg", ["sum", "mean"])
@pytest.mark.parametrize(("lam", "k"), [(0.6, 2), (0.3, 1), (0.2, 3)])
@pytest.mark.parametrize(("shape", "num"), [((6, 7), 3), ((8, 5), 4)])
def test_consensus_ties_matches_the_authors_code_per_tensor(shape, num, lam, k, agg):
    """The authors keep int(d·K) + 1 entries per task (K = 20%); our density keeps
    int(density·d): density = (int(.2·d) + 1.5)/d keeps the same entries."""
    base, fts = models(shape, num, seed=sum(shape) * num, dtype=torch.float64)
    d = base.numel()
    flat_ft = torch.stack([f.flatten() for f in fts])
    expected = base + _tall_consensus(base.flatten(), flat_ft, lam, k, (20, agg)).view(shape)
    out = merge_tensors(
        "consensus_ties", base, fts, density=(int(0.2 * d) + 1.5) / d, tall_mask_lambda=lam,
        min_agreement=k, aggregate=agg, compute_dtype="float64",
    )  # fmt: skip
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_consensus_in_pieces_matches_the_authors_code(monkeypatch):
    """4551 entries merged 1000 at a time (5 pieces, the last partial), both variants."""
    from hhh_bench.merging.methods import consensus

    monkeypatch.setattr(consensus, "MERGE_PIECE", 1000)
    base, fts = models((37, 123), 3, seed=5, dtype=torch.float64)
    d = base.numel()
    flat_ft = torch.stack([f.flatten() for f in fts])
    kw = {"tall_mask_lambda": 0.4, "compute_dtype": "float64"}
    expected = base + _tall_consensus(base.flatten(), flat_ft, 0.4, 2).view(base.shape)
    out = merge_tensors("consensus_ta", base, fts, **kw)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    expected = base + _tall_consensus(base.flatten(), flat_ft, 0.4, 2, (20, "mean")).view(37, 123)
    density = (int(0.2 * d) + 1.5) / d
    out = merge_tensors("consensus_ties", base, fts, density=density, aggregate="mean", **kw)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_consensus_ties_global_matches_the_authors_code_over_the_flat_model():
    """``scope: global`` against the authors' whole-model trim. Magnitudes are distinct bfloat16
    values (1 + j/128)·2^e, a disjoint set per model, so the global threshold's bfloat16 bin
    holds one entry and both keep exactly the top entries (int(.2·N) + 1 for the authors)."""
    base, fts = state_dicts(3, seed=8, dtype=torch.float64)
    keys = [key for key in base if base[key].is_floating_point()]
    sizes = [base[key].numel() for key in keys]
    n = sum(sizes)
    g = torch.Generator().manual_seed(8)
    flat_ptm = torch.cat([base[key].flatten().round() for key in keys])  # θ0 + τ exact
    rows = []
    for t in range(3):
        j = torch.arange(n, dtype=torch.float64) * 3 + t
        mags = (1 + (j % 128) / 128) * 2.0 ** torch.div(j, 128, rounding_mode="floor") / 64
        signs = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
        rows.append(flat_ptm + signs * mags[torch.randperm(n, generator=g)])
    flat_ft = torch.stack(rows)
    trimmed = _tall_topk(flat_ft - flat_ptm, 20)
    assert ((trimmed.sum(0) != 0) | (trimmed == 0).all(0)).all()  # no exact zero sign sums
    expected = flat_ptm + _tall_consensus(flat_ptm, flat_ft, 0.5, 2, (20, "sum"))
    split = lambda flat: dict(zip(keys, flat.split(sizes), strict=True))  # noqa: E731
    base_sd = {key: v.view(base[key].shape) for key, v in split(flat_ptm).items()}
    ft_sds = [{key: v.view(base[key].shape) for key, v in split(row).items()} for row in rows]
    out = merge_state_dicts(
        "consensus_ties", base_sd, ft_sds, density=(int(0.2 * n) + 1.5) / n, scope="global",
        tall_mask_lambda=0.5, compute_dtype="float64",
    )  # fmt: skip
    torch.testing.assert_close(torch.cat([out[key].flatten() for key in keys]), expected)


# ---------------------------------------------------------------------------------------------
# PCB-merging, written here from a reading of the authors' code (github.com/duguodong7/pcb-merging
# at 5897888: pcb-merging.py PCB_merge, normalize, clamp; the per-model coefficients as
# vision_source_code/pcb_ES.py compute_acc applies them): rows of flat task vectors.


def _pcb_quantile_clamp(x: torch.Tensor, low_ratio: float, high_ratio: float) -> torch.Tensor:
    """clamp(x, min_ratio, max_ratio): each row clamped to its sorted values at indices
    int(d·min_ratio) and int(d·(1 − max_ratio) − 1)."""
    d = x.shape[1]
    ordered = x.sort(dim=1).values
    lo = ordered[:, int(d * low_ratio)].unsqueeze(1)
    hi = ordered[:, int(d * (1 - high_ratio) - 1)].unsqueeze(1)
    return torch.clamp(x, lo, hi)


def _pcb_minmax(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
    return (x - lo) / (hi - lo)


def _pcb_authors(tvs: torch.Tensor, pcb_ratio: float, clip: float, lams) -> torch.Tensor:
    n = tvs.shape[0]
    mags = _pcb_quantile_clamp(tvs.abs(), clip, clip)
    clipped = torch.sign(tvs) * mags
    intra = torch.exp(n * _pcb_minmax(mags) ** 2)
    inter = torch.tanh(tvs * tvs.sum(dim=0))
    scale = _pcb_minmax(_pcb_quantile_clamp(intra * inter, 1 - pcb_ratio, 0))
    weighted = clipped * torch.tensor(lams, dtype=tvs.dtype).unsqueeze(1)
    return (weighted * scale).sum(dim=0) / scale.sum(dim=0).clamp(min=1e-12)


@pytest.mark.parametrize(("pcb_ratio", "clip"), [(0.05, 1e-4), (0.2, 0.01), (0.5, 0.0), (1.0, 0.1)])
@pytest.mark.parametrize(("shape", "num"), [((8, 6), 2), ((12, 9), 3), ((60,), 4)])
def test_pcb_matches_the_authors_code(shape, num, pcb_ratio, clip):
    base, fts = models(shape, num, seed=sum(shape) + num, dtype=torch.float64)
    tvs = torch.stack([(f - base).flatten() for f in fts])
    lams = [1.2 - 0.1 * t for t in range(num)]
    expected = base + 0.8 * _pcb_authors(tvs, pcb_ratio, clip, lams).view(shape)
    out = merge_tensors(
        "pcb", base, fts, pcb_ratio=pcb_ratio, clip_ratio=clip, weights=lams, scaling=0.8,
        compute_dtype="float64",
    )  # fmt: skip
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_consensus_and_pcb_float32_against_the_authors_formulations():
    """The float32 default against the float64 formulations: within float32 rounding."""
    base, fts = models((10, 8), 3, seed=23, dtype=torch.float64)
    flat_ft = torch.stack([f.flatten() for f in fts])
    tvs = flat_ft - base.flatten()
    cases = [
        ("consensus_ta", {}, _tall_consensus(base.flatten(), flat_ft, 0.6, 2)),
        ("pcb", {"pcb_ratio": 0.2}, _pcb_authors(tvs, 0.2, 1e-4, [1.0] * 3)),
    ]
    for method, kw, tau in cases:
        out = merge_tensors(method, base.float(), [f.float() for f in fts], **kw)
        expected = base + tau.view(base.shape)
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-6, msg=method)


# FusionBench's Iso-C / Iso-CTS, written here from a reading of fusion_bench/method/
# isotropic_merging/iso_utils.py (functions iso_c and iso_cts; github.com/tanganke/fusion_bench at
# commit 54c9e8c) and the authors' src/utils/iso.py (github.com/danielm1405/iso-merging at
# d34010a; the same algorithm): independent code, the same rules, full SVDs in float64.


def _fb_iso_c(taus: list[torch.Tensor]) -> torch.Tensor:
    """The sum's thin SVD with every singular value replaced by their mean."""
    u, s, vh = torch.linalg.svd(torch.stack(taus).sum(0), full_matrices=False)
    return s.mean() * u @ vh


def _fb_orthogonal(x: torch.Tensor) -> torch.Tensor:
    """FusionBench's orthogonalisation of a stack: X = P S Qᵀ ↦ P Qᵀ."""
    p, _, qh = torch.linalg.svd(x, full_matrices=False)
    return p @ qh


def _fb_iso_cts(taus: list[torch.Tensor], fraction: float) -> torch.Tensor:
    """Common space: the sum's top k_c directions, k_c = r − round((r − int(r·f))/T)·T; each task:
    the top (r − k_c)/T directions of τ_t − U_c U_cᵀ τ_t; tasks first, then the common part;
    both stacks orthogonalised, the r singular values replaced by their mean."""
    r, num = min(taus[0].shape), len(taus)
    per_task = round((r - int(r * fraction)) / num)
    k_c = r - per_task * num
    u, s, vh = torch.linalg.svd(torch.stack(taus).sum(0), full_matrices=False)
    uc = u[:, :k_c]
    us, ss, vhs = [], [], []
    for tau in taus:
        ut, st, vht = torch.linalg.svd(tau - uc @ uc.T @ tau, full_matrices=False)
        us.append(ut[:, :per_task])
        ss.append(st[:per_task])
        vhs.append(vht[:per_task])
    big_u = _fb_orthogonal(torch.cat([*us, uc], dim=1))
    big_vh = _fb_orthogonal(torch.cat([*vhs, vh[:k_c]], dim=0).T).T
    return torch.cat([*ss, s[:k_c]]).mean() * big_u @ big_vh


ISO_CASES = [  # (shape, T, common_space_fraction): k_c, k_t as the test ids say
    ((12, 9), 3, 0.5),  # r 9: k 4, k_t round(5/3) = 2, k_c 3
    ((9, 12), 2, 0.5),  # r 9: k 4, k_t round(2.5) = 2 (half to even), k_c 5
    ((16, 10), 3, 0.8),  # r 10: k 8, k_t round(2/3) = 1, k_c 7
    ((20, 20), 4, 0.3),  # r 20: k 6, k_t round(3.5) = 4, k_c 4
    ((7, 11), 1, 0.6),  # r 7: k 4, k_t 3, k_c 4
    ((6, 5), 3, 0.8),  # r 5: k 4, k_t round(1/3) = 0: Iso-CTS = Iso-C
]


@pytest.mark.parametrize(("shape", "num", "fraction"), ISO_CASES)
def test_iso_matches_fusionbench_formulation_in_float64(shape, num, fraction):
    """Random full-rank task vectors, weights (the reference has none: it gets w_t·τ_t) and
    λ = 0.9: ours equals the reference to float64 rounding."""
    base, fts = models(shape, num, seed=sum(shape) + num, dtype=torch.float64)
    weights = [1.0, 0.5, 2.0, -0.7][:num]
    taus = [w * (f - base) for w, f in zip(weights, fts, strict=True)]
    kw = {"weights": weights, "scaling": 0.9, "compute_dtype": "float64"}
    out = merge_tensors("iso_c", base, fts, name="mlp.weight", **kw)
    torch.testing.assert_close(out, base + 0.9 * _fb_iso_c(taus), rtol=0, atol=1e-10)
    out = merge_tensors(
        "iso_cts", base, fts, name="mlp.weight", common_space_fraction=fraction, **kw
    )
    torch.testing.assert_close(out, base + 0.9 * _fb_iso_cts(taus, fraction), rtol=0, atol=1e-10)


@pytest.mark.parametrize("embeddings", ["mean", "iso"])
def test_iso_state_dict_matches_fusionbench_formulation(embeddings):
    """Whole model: matrices by the reference (embeddings and LM head too with embeddings='iso',
    FusionBench's rule without exclude_keys), biases and norms by the mean as the reference."""
    base, fts = state_dicts(3, seed=9, dtype=torch.float64)
    for method in ("iso_c", "iso_cts"):
        kw = {"embeddings": embeddings, "compute_dtype": "float64"}
        out = merge_state_dicts(method, base, fts, **kw)
        for key, b in base.items():
            taus = [sd[key] - b for sd in fts]
            embedding = "embed" in key or "lm_head" in key
            if not b.is_floating_point():
                expected = b
            elif b.dim() == 2 and (embeddings == "iso" or not embedding):
                ref = _fb_iso_c(taus) if method == "iso_c" else _fb_iso_cts(taus, 0.8)
                expected = b + ref
            else:
                expected = b + sum(taus) / 3
            torch.testing.assert_close(out[key], expected, rtol=0, atol=1e-10, msg=(method, key))


def test_iso_float32_default_against_the_float64_formulation():
    """The float32 default (decomposed in float64, cast once) against the float64 reference:
    within float32 rounding of the result."""
    base, fts = models((24, 18), 3, seed=22, dtype=torch.float64)
    taus = [f - base for f in fts]
    b32, f32 = base.float(), [f.float() for f in fts]
    cases = [("iso_c", {}, _fb_iso_c(taus)), ("iso_cts", {}, _fb_iso_cts(taus, 0.8))]
    for method, kw, ref in cases:
        out = merge_tensors(method, b32, f32, name="w", **kw)
        torch.testing.assert_close(out.double(), base + ref, rtol=0, atol=2e-6, msg=method)
