"""Task-vector diagnostics: every statistic on hand-made task vectors with known answers, the
streaming guarantee, and the engine's errors on bad inputs.

The arithmetic behind each expected number is spelled out in the test's docstring.
"""

from __future__ import annotations

import json
import math
import weakref

import pytest
import torch
from safetensors.torch import load_file, save_file

from hhh_bench.merging import diagnose
from hhh_bench.merging.diagnostics import (
    kurtosis,
    layer_of,
    parameter_table,
    sign_conflict,
    subspace_stats,
    tail_shares,
)
from hhh_bench.merging.engine import merge_models
from hhh_bench.merging.sources import SafetensorsModel
from hhh_bench.models import TinyModelSpec, build_tiny_model, build_word_tokenizer
from hhh_bench.tracking.diagnostics_view import summary_markdown

Q = "model.layers.0.self_attn.q_proj.weight"


def _sd(tau: torch.Tensor, name: str = Q) -> dict[str, torch.Tensor]:
    return {name: tau.clone()}


def _diag(taus: list[torch.Tensor], name: str = Q, **kw) -> dict:
    """diagnose() on θ0 = 0 and θ_t = τ_t (so the task vectors are exactly ``taus``)."""
    base = {name: torch.zeros_like(taus[0])}
    return diagnose(base, [_sd(t, name) for t in taus], progress=False, **kw)


def _rec(report: dict, name: str = Q) -> dict:
    return next(r for r in report["params"] if r["name"] == name)


# -- the planted outlier -------------------------------------------------------------------------


def planted() -> torch.Tensor:
    """103 entries: one 0, fifty +1, fifty −1, and the outliers +6 and −30.

    median = 0 (the 52nd of 103 sorted values is the 0); |x − med| = |x|: one 0, a hundred 1s,
    6 and 30, so MAD = 1 and σ_r = 1.4826. 3σ_r = 4.448 < 6 < 5σ_r = 7.413 < 30.
    ‖x‖² = 100 + 36 + 900 = 1036: beyond 3σ_r: (36 + 900)/1036, beyond 5σ_r: 900/1036.
    """
    return torch.tensor([0.0] + [1.0] * 50 + [-1.0] * 50 + [6.0, -30.0])


def test_kurtosis_closed_forms():
    """Pearson kurtosis: a ±1 vector has m2 = 1, m4 = 1 -> 1. One non-zero among n entries
    (p = 1/n) has kurtosis (1 − 3p(1 − p)) / (p(1 − p)) = (n² − 3n + 3)/(n − 1): 9703/99 for
    n = 100. A constant has m2 = 0 -> None. Scale-free: 1e-12·x gives the same value."""
    assert kurtosis(torch.tensor([1.0, -1.0] * 8)) == pytest.approx(1.0, rel=1e-9)
    spike = torch.zeros(100)
    spike[7] = 5.0
    assert kurtosis(spike) == pytest.approx(9703 / 99, rel=1e-6)
    assert kurtosis(1e-12 * spike) == pytest.approx(9703 / 99, rel=1e-6)
    assert kurtosis(torch.full((10,), 2.0)) is None


def test_kurtosis_of_the_planted_outlier_matches_the_moments():
    """m_p = (1/n)·Σ(x − x̄)^p computed in exact Python floats on the planted vector."""
    x = planted().tolist()
    mean = sum(x) / len(x)
    m2 = sum((v - mean) ** 2 for v in x) / len(x)
    m4 = sum((v - mean) ** 4 for v in x) / len(x)
    got = _rec(_diag([planted().reshape(1, -1)]))["kurtosis"][0]
    assert got == pytest.approx(m4 / m2**2, rel=1e-6)
    assert got > 50  # the planted outlier makes it heavy-tailed (normal: 3)


def test_tail_shares_of_the_planted_outlier():
    """See :func:`planted`: (936/1036, 900/1036) beyond 3 and 5 robust σ; beyond 40σ_r: 0."""
    shares = tail_shares(planted(), [3.0, 5.0, 40.0])
    assert shares == pytest.approx([936 / 1036, 900 / 1036, 0.0], rel=1e-6)
    rec = _rec(_diag([planted().reshape(1, -1)]))
    assert rec["tail_share_3"] == pytest.approx([936 / 1036], rel=1e-6)
    assert rec["tail_share_5"] == pytest.approx([900 / 1036], rel=1e-6)
    # a zero task vector has no share; all-equal non-zero entries have no outlier (σ_r = 0)
    assert tail_shares(torch.zeros(5), [3.0]) == [None]
    assert tail_shares(torch.full((5,), 2.0), [3.0]) == [0.0]


def test_reweight_change_is_resms_huber_step():
    """RESM's huber_mad with κ = 3 scales entries with z > 3 to ±κ·σ_r = ±4.4478: the +6 and
    the −30 move by 6 − 4.4478 and 30 − 4.4478, so ‖τ − ρ(τ)‖/‖τ‖ =
    sqrt(1.5522² + 25.5522²)/sqrt(1036). With κ = 40 nothing moves; with reweight=none neither."""
    tau = planted().repeat(2, 1).T  # (103 × 2), each value twice: same median, MAD and ratio
    s = 3 * 1.4826
    want = math.sqrt((6 - s) ** 2 + (30 - s) ** 2) / math.sqrt(1036)
    assert _rec(_diag([tau, tau]))["reweight_change"] == pytest.approx([want, want], rel=1e-5)
    assert _rec(_diag([tau], resm_params={"kappa": 40.0}))["reweight_change"] == [0.0]
    assert _rec(_diag([tau], resm_params={"reweight": "none"}))["reweight_change"] == [0.0]
    # RESM does not decompose 1-D parameters: no reweighting statistic there
    norm = _rec(_diag([planted()], name="model.norm.weight"), "model.norm.weight")
    assert norm["reweight_change"] == [None] and norm["resm_route"] == "mean"


# -- sign conflicts --------------------------------------------------------------------------


def test_sign_conflict_pattern():
    """Three tasks, six entries (signs per task):
    (+,+,+) agree; (+,−,0) conflict; (0,0,+) not eligible (one non-zero); (−,−,0) agree;
    (+,+,−) conflict; (0,0,0) not eligible -> 2 conflicting of 4 eligible = 0.5."""
    t1 = torch.tensor([[1.0, 2.0, 0.0, -1.0, 3.0, 0.0]])
    t2 = torch.tensor([[2.0, -1.0, 0.0, -4.0, 1.0, 0.0]])
    t3 = torch.tensor([[5.0, 0.0, 7.0, 0.0, -2.0, 0.0]])
    assert sign_conflict(torch.stack([t1, t2, t3])) == (2, 4)
    rec = _rec(_diag([t1, t2, t3]))
    assert rec["sign_conflict"] == pytest.approx(0.5)
    assert rec["sign_conflict_counts"] == [2, 4]
    # one task: nothing is non-zero in two tasks
    assert _rec(_diag([t1]))["sign_conflict"] is None


# -- singular subspaces ----------------------------------------------------------------------


def _outer(i: int, j: int, m: int = 8, n: int = 6) -> torch.Tensor:
    x = torch.zeros(m, n)
    x[i, j] = 1.0
    return x


def test_orthogonal_subspaces_give_overlap_and_sti_zero():
    """τ_1 = 3·e0f0ᵀ + 2·e1f1ᵀ, τ_2 = 3·e2f2ᵀ + 2·e3f3ᵀ: disjoint rows and columns, so
    U_1ᵀU_2 = 0 and V_1ᵀV_2 = 0 -> overlap 0, UᵀU − I = 0 -> STI 0 (k = 6 // 2 = 3, cut to the
    numerical rank 2)."""
    t1 = 3 * _outer(0, 0) + 2 * _outer(1, 1)
    t2 = 3 * _outer(2, 2) + 2 * _outer(3, 3)
    rec = _rec(_diag([t1, t2]))
    assert rec["svd_k"] == 3 and rec["svd_rank"] == [2, 2]
    assert rec["subspace_overlap"] == pytest.approx(0.0, abs=1e-7)
    assert rec["subspace_overlap_right"] == pytest.approx(0.0, abs=1e-7)
    assert rec["sti"] == pytest.approx(0.0, abs=1e-6)
    assert rec["sti_normalized"] == pytest.approx(0.0, abs=1e-6)


def test_identical_subspaces_give_overlap_and_normalized_sti_one():
    """τ_1 = τ_2 = 3·e0f0ᵀ + 2·e1f1ᵀ: U_1ᵀU_2 = I_2 -> overlap 2/2 = 1. UᵀU − I = VᵀV − I =
    [[0, I], [I, 0]], so (UᵀU − I)Σ(VᵀV − I) = blockdiag(Σ_2, Σ_1): STI = 3 + 2 + 3 + 2 = 10 and
    STI / ((T − 1)²·Σσ) = 10/10 = 1. Three identical tasks: (T − 1)² = 4 -> still 1."""
    t = 3 * _outer(0, 0) + 2 * _outer(1, 1)
    rec = _rec(_diag([t, t]))
    assert rec["subspace_overlap"] == pytest.approx(1.0, rel=1e-6)
    assert rec["sti"] == pytest.approx(10.0, rel=1e-6)
    assert rec["sti_normalized"] == pytest.approx(1.0, rel=1e-6)
    rec3 = _rec(_diag([t, t, t], top_k=2))
    assert rec3["subspace_overlap"] == pytest.approx(1.0, rel=1e-6)
    assert rec3["sti_normalized"] == pytest.approx(1.0, rel=1e-6)


def test_half_shared_subspace():
    """τ_1 = 3·e0f0ᵀ + 2·e1f1ᵀ, τ_2 = 3·e0f0ᵀ + 2·e2f2ᵀ (k = 2): U_1 = [e0 e1], U_2 = [e0 e2] up
    to signs, ‖U_1ᵀU_2‖² = 1 -> overlap 1/2. Only the shared pair (σ = 3 in each task) couples:
    (UᵀU − I)Σ(VᵀV − I) has the two diagonal entries σ = 3 -> STI = 6, normalized 6/10."""
    t1 = 3 * _outer(0, 0) + 2 * _outer(1, 1)
    t2 = 3 * _outer(0, 0) + 2 * _outer(2, 2)
    got = subspace_stats(torch.stack([t1, t2]), 2)
    assert got["subspace_overlap"] == pytest.approx(0.5, rel=1e-6)
    assert got["sti"] == pytest.approx(6.0, rel=1e-6)
    assert got["sti_normalized"] == pytest.approx(0.6, rel=1e-6)


def test_shared_subspace_in_a_rotated_basis_gives_normalized_sti_above_one():
    """τ_1 = 2·e0f0ᵀ + e1f1ᵀ, τ_2 = 2·u_a f0ᵀ + u_b f1ᵀ with u_a = (e0 + e1)/√2,
    u_b = (e1 − e0)/√2: the same left subspace in a basis turned by 45°. A = U_1ᵀU_2 has four
    entries ±1/√2 and V_1ᵀV_2 = I (up to signs), so (UᵀU − I)Σ(VᵀV − I) = blockdiag(AΣ_2, AᵀΣ_1):
    STI = (2 + 1 + 2 + 1)/√2 · 2 = 12/√2, normalized 12/√2 / 6 = √2 > 1 (the same tasks in one
    basis: 1). docs/merging.md: sti_normalized is not bounded by 1."""
    r = 1 / math.sqrt(2)
    t1 = 2 * _outer(0, 0) + _outer(1, 1)
    t2 = 2 * r * (_outer(0, 0) + _outer(1, 0)) + r * (_outer(1, 1) - _outer(0, 1))
    got = subspace_stats(torch.stack([t1, t2]), 2)
    assert got["subspace_overlap"] == pytest.approx(1.0, rel=1e-6)
    assert got["sti"] == pytest.approx(12 * r, rel=1e-6)
    assert got["sti_normalized"] == pytest.approx(math.sqrt(2), rel=1e-6)


def test_sti_equals_the_papers_block_formula_on_random_matrices():
    """Reference: STI = Σ_ab |Σ_l (UᵀU − I)_al σ_l (VᵀV − I)_lb| written as explicit sums over
    the T·k singular triplets (float64), against ours (float64)."""
    g = torch.Generator().manual_seed(0)
    taus = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    k = 2
    u, s, vh = torch.linalg.svd(taus, full_matrices=False)
    cols = [(t, i) for t in range(3) for i in range(k)]
    uu = [[float(u[a[0], :, a[1]] @ u[b[0], :, b[1]]) - (a == b) for b in cols] for a in cols]
    vv = [[float(vh[a[0], a[1]] @ vh[b[0], b[1]]) - (a == b) for b in cols] for a in cols]
    sig = [float(s[t, i]) for t, i in cols]
    n = len(cols)
    want = sum(
        abs(sum(uu[a][c] * sig[c] * vv[c][b] for c in range(n))) for a in range(n) for b in range(n)
    )
    assert subspace_stats(taus, k)["sti"] == pytest.approx(want, rel=1e-9)


def test_zero_task_vector_has_no_subspace_statistics():
    """A task vector of 0 has no subspace (e.g. a parameter a LoRA adapter did not touch)."""
    t = 3 * _outer(0, 0)
    rec = _rec(_diag([t, torch.zeros(8, 6)]))
    assert rec["subspace_overlap"] is None and rec["sti"] is None and rec["kurtosis"][1] is None


# -- RESM's density and ranks ----------------------------------------------------------------


def test_resm_density_by_hand():
    """A (4 × 25) τ with 98 entries of 1 and 2 of 100: mean|τ| = (98 + 200)/100 = 2.98, M = 5
    -> entries above 14.9: the 2 -> D = 0.02 (mean over identical tasks)."""
    tau = torch.ones(100)
    tau[[3, 50]] = 100.0
    rec = _rec(_diag([tau.reshape(4, 25), tau.reshape(4, 25)]))
    assert rec["resm_density"] == pytest.approx(0.02)
    assert _rec(_diag([tau.reshape(4, 25)], resm_params={"outlier_ratio_M": 200.0}))[
        "resm_density"
    ] == pytest.approx(0.0)


def _layers_sd(g: torch.Generator, heavy: int, n_layers: int = 4) -> dict[str, torch.Tensor]:
    """Layer ``heavy``'s q_proj gets sparse large entries (a high outlier density)."""
    sd = {}
    for i in range(n_layers):
        w = 0.01 * torch.randn(12, 12, generator=g)
        if i == heavy:
            w[torch.rand(12, 12, generator=g) < 0.1] = 0.5
        sd[f"model.layers.{i}.self_attn.q_proj.weight"] = w
    return sd


def test_resm_ranks_are_the_merges_plan():
    """The ranks diagnose reports are those RESM merges with: the engine's plan, here with a
    rank_fraction below 1/T so that the outlier-rich layer gains rank and the others lose it."""
    g = torch.Generator().manual_seed(0)
    base = {k: torch.zeros_like(v) for k, v in _layers_sd(g, 0).items()}
    fts = [_layers_sd(g, 1) for _ in range(3)]
    params = {"rank_fraction": 0.2, "rank_spread": 1.0}
    rep = diagnose(base, fts, resm_params=params, progress=False)
    from hhh_bench.merging import get_method

    m = get_method("resm")
    p = m.make_params(**params)
    from hhh_bench.merging.base import task_vectors_of

    stats = {
        k: m.tensor_stats(k, base[k], task_vectors_of(base[k], [f[k] for f in fts], p), p)
        for k in base
    }
    want = {k: m.rank_for(12, 3, p, e) for k, e in m.plan(stats, p).items()}
    assert rep["resm"]["ranks"] == want
    heavy = "model.layers.1.self_attn.q_proj.weight"
    light = "model.layers.0.self_attn.q_proj.weight"
    assert want[heavy] > rep["resm"]["uniform_ranks"][heavy]  # the rule engaged here
    assert want[light] < rep["resm"]["uniform_ranks"][light]
    assert rep["resm"]["layers_with_changed_rank"] == 4
    assert _rec(rep, heavy)["resm_rank_ratio"] == pytest.approx(want[heavy] / 2)
    # uniform rank: every k is TSV-M's
    uni = diagnose(base, fts, resm_params={"rank": "uniform"}, progress=False)
    assert uni["resm"]["layers_with_changed_rank"] == 0


# -- aggregation -----------------------------------------------------------------------------


def test_layer_of():
    assert layer_of("model.layers.3.self_attn.q_proj.weight") == (3, "self_attn.q_proj")
    assert layer_of("model.layers.12.mlp.down_proj.weight") == (12, "mlp.down_proj")
    assert layer_of("model.layers.0.self_attn.q_proj.bias") == (0, "self_attn.q_proj.bias")
    assert layer_of("model.embed_tokens.weight") == (None, "embed_tokens")
    assert layer_of("lm_head.weight") == (None, "lm_head")
    assert layer_of("transformer.h.2.attn.c_attn.weight") == (2, "attn.c_attn")


def test_layer_type_and_model_summaries():
    """Two q_proj layers with ‖τ‖ = 3 and 4 (one task): layer type mean 3.5, median 3.5;
    model-wide ‖τ‖ = sqrt(9 + 16 + 1) = sqrt(26) with a norm vector of ‖τ‖ = 1; tail shares
    pooled by energy: layer 0 has all its energy (9) beyond 3σ, nothing else -> 9/26."""
    q0, q1 = "model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"
    spike = torch.zeros(4, 25)
    spike[0, 0] = 3.0
    base = {q0: torch.zeros(4, 25), q1: torch.zeros(4, 25), "model.norm.weight": torch.zeros(4)}
    ft = {q0: spike, q1: torch.full((4, 25), 0.4), "model.norm.weight": torch.full((4,), 0.5)}
    rep = diagnose(base, [ft], progress=False)
    q = rep["layer_types"]["self_attn.q_proj"]
    assert q["n_params"] == 2 and set(rep["layer_types"]) == {"self_attn.q_proj", "norm"}
    assert q["norm"]["mean"] == pytest.approx(3.5) and q["norm"]["median"] == pytest.approx(3.5)
    assert rep["model"]["pooled"]["norm"] == pytest.approx([math.sqrt(26)])
    assert rep["model"]["pooled"]["tail_share_3"] == pytest.approx([9 / 26])
    table = {p["name"]: p for p in parameter_table(rep)}
    assert table[q0]["layer"] == 0 and table[q0]["norm"] == pytest.approx(3.0)
    md = summary_markdown(rep)
    assert "| self_attn.q_proj | 2 |" in md and "## Task-vector diagnostics" in md
    json.dumps(rep, allow_nan=False)  # JSON-serializable, no NaN


# -- inputs: folders, LoRA adapters, streaming, errors -----------------------------------------

WORDS = ["a", "b", "c", "d", "e", "f", "g", "h"]


def _tiny(n_layers: int):
    return TinyModelSpec(hidden_size=16, intermediate_size=32, num_hidden_layers=n_layers,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)  # fmt: skip


def _save_models(root, n_layers: int, n_ft: int = 3):
    tok = build_word_tokenizer(WORDS)
    base = build_tiny_model(_tiny(n_layers), tok, seed=0)
    base.save_pretrained(root / "base")
    g = torch.Generator().manual_seed(1)
    paths = []
    for i in range(n_ft):
        m = build_tiny_model(_tiny(n_layers), tok, seed=0)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        m.save_pretrained(root / f"ft{i}")
        paths.append(root / f"ft{i}")
    return root / "base", paths


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("diag")
    return _save_models(root, 2)


def test_folders_equal_state_dicts(folders):
    """Reading HF folders through the engine's readers gives what the state dicts give."""
    base, fts = folders
    a = diagnose(base, fts, progress=False)
    sd = lambda f: load_file(str(f / "model.safetensors"))  # noqa: E731
    b = diagnose(sd(base), [sd(f) for f in fts], progress=False)
    assert [r["name"] for r in a["params"]] == [r["name"] for r in b["params"]]
    for ra, rb in zip(a["params"], b["params"], strict=True):
        assert ra["norm"] == rb["norm"] and ra["sign_conflict"] == rb["sign_conflict"]
    assert a["inputs"]["base"] == str(base)


def _count_live_reader_tensors(monkeypatch) -> dict[str, int]:
    """Patch SafetensorsModel.get so every tensor it hands out is counted while alive."""
    state = {"live": 0, "peak": 0, "total": 0}
    original = SafetensorsModel.get

    def dead() -> None:
        state["live"] -= 1

    def get(self, key):
        t = original(self, key)
        state["live"] += 1
        state["total"] += 1
        state["peak"] = max(state["peak"], state["live"])
        weakref.finalize(t, dead)
        return t

    monkeypatch.setattr(SafetensorsModel, "get", get)
    return state


def test_diagnose_streams_one_tensor_per_model(tmp_path, monkeypatch):
    """Peak memory does not grow with the number of layers: the tensors read from the model
    files that are alive at once stay at most T + 1 (one per model), for 2 layers as for 6,
    while the number read grows with the layers. Deterministic: counted by weak references."""
    peaks, totals = [], []
    for n_layers in (2, 6):
        base, fts = _save_models(tmp_path / f"l{n_layers}", n_layers)
        state = _count_live_reader_tensors(monkeypatch)
        rep = diagnose(base, fts, progress=False)
        monkeypatch.undo()
        assert state["live"] == 0
        peaks.append(state["peak"])
        totals.append(state["total"])
        assert len(rep["params"]) == len(load_file(str(base / "model.safetensors")))
    # at most three tensors of each model: the one the caller still holds while it asks for the
    # next, that next one, and the one after it, which the reader thread starts reading as soon
    # as the next is handed over (how many of it are read before the caller lets go of the first
    # depends on the threads' timing: 7, 8 or 9 seen, 9 on a loaded machine); the tensors read
    # number far more, and grow with the layers
    bound = 3 * (len(fts) + 1)
    assert max(peaks) <= bound < totals[0] < totals[1]


def test_lora_adapter_reads_as_its_merged_weights(folders, tmp_path):
    """A peft LoRA adapter is diagnosed as θ0 + s·B·A, exactly like its merged full model; the
    modules it did not adapt have τ = 0 (no kurtosis, no subspace)."""
    from conftest import save_random_lora

    base, fts = folders
    adapter, full = save_random_lora(base, tmp_path, r=2, alpha=4, targets=["q_proj"])
    a = diagnose(base, [adapter, fts[0]], progress=False)
    b = diagnose(base, [full, fts[0]], progress=False)
    for ra, rb in zip(a["params"], b["params"], strict=True):
        assert ra["norm"] == pytest.approx(rb["norm"], rel=1e-4, abs=1e-7)
    q = _rec(a, "model.layers.0.self_attn.q_proj.weight")
    assert q["svd_rank"][0] == 2  # the adapter's rank
    k = _rec(a, "model.layers.0.self_attn.k_proj.weight")
    assert k["norm"][0] == 0.0 and k["kurtosis"][0] is None and k["subspace_overlap"] is None


def _engine_error(base, fts, tmp_path) -> str:
    with pytest.raises(ValueError) as e:
        merge_models("task_arithmetic", base, fts, tmp_path / "never", progress=False)
    return str(e.value)


def test_bad_inputs_give_the_engines_errors(folders, tmp_path):
    """Missing tensor, shape mismatch, vocabulary size, NaN: diagnose raises the engine's
    ValueError with the same message (naming the model and the tensor)."""
    base, fts = folders
    sd = load_file(str(fts[0] / "model.safetensors"))
    cases = {}
    missing = dict(sd)
    missing.pop("model.layers.1.mlp.up_proj.weight")
    cases["lacks tensor"] = missing
    shape = dict(sd)
    shape["model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)
    cases["has shape"] = shape
    vocab = dict(sd)
    emb = "model.embed_tokens.weight"
    vocab[emb] = torch.cat([sd[emb], torch.zeros(2, sd[emb].shape[1])])
    cases["vocabulary sizes differ"] = vocab
    nan = dict(sd)
    nan[emb] = sd[emb].clone()
    nan[emb][0, 0] = float("nan")
    cases["NaN"] = nan
    for i, (needle, bad) in enumerate(cases.items()):
        folder = tmp_path / f"bad{i}"
        folder.mkdir()
        save_file(bad, str(folder / "model.safetensors"))
        want = _engine_error(base, [folder, fts[1]], tmp_path)
        with pytest.raises(ValueError) as e:
            diagnose(base, [folder, fts[1]], progress=False)
        assert str(e.value) == want and needle in want
    # the same from in-memory state dicts, naming the model and the tensor
    with pytest.raises(ValueError, match=r"finetuned model 0 \(in-memory state dict\) lacks"):
        diagnose(load_file(str(base / "model.safetensors")), [missing], progress=False)
    with pytest.raises(ValueError, match="no finetuned models"):
        diagnose(base, [], progress=False)
    with pytest.raises(ValueError, match="top_k"):
        diagnose(base, fts, top_k=0, progress=False)
    with pytest.raises(ValueError, match="kappa"):
        diagnose(base, fts, resm_params={"kappa": -1.0}, progress=False)


def _heavy_lowrank(g: torch.Generator, rank: int, shape=(12, 12)) -> torch.Tensor:
    """A rank-``rank`` task vector plus a few sparse large entries (which raise its rank)."""
    m, n = shape
    tau = torch.randn(m, rank, generator=g) @ torch.randn(rank, n, generator=g) / rank
    tau[torch.rand(m, n, generator=g) < 0.05] += 8.0
    return tau


def test_reweight_merge_change_is_resm_against_tsv_m():
    """reweight_merge_change = ‖RESM(rank uniform) − TSV-M‖/‖TSV-M − θ0‖ at λ = 1, what the
    public merge API gives; 0 with reweight=none; None where RESM takes the mean."""
    from hhh_bench.merging import merge_tensors

    g = torch.Generator().manual_seed(3)
    taus = [_heavy_lowrank(g, 2) for _ in range(3)]
    base = torch.zeros(12, 12)
    resm = merge_tensors("resm", base, taus, name=Q, rank="uniform")
    tsv = merge_tensors("tsv", base, taus, name=Q)
    want = float((resm - tsv).norm() / tsv.norm())
    assert want > 0.05  # the planted entries are clipped
    rep = _diag(taus)
    assert _rec(rep)["reweight_merge_change"] == pytest.approx(want, rel=1e-4)
    assert rep["resm"]["reweight_merge_change"] == {Q: pytest.approx(want, rel=1e-4)}
    assert rep["resm"]["layers_reweight_moved"] == 1 and rep["resm"]["moved_at"] == 0.01
    off = _diag(taus, resm_params={"reweight": "none"})
    assert _rec(off)["reweight_merge_change"] == 0.0
    assert off["resm"]["layers_reweight_moved"] == 0
    norm = "model.norm.weight"
    assert _rec(_diag([t[0] for t in taus], name=norm), norm)["reweight_merge_change"] is None


def test_kept_directions_are_k_capped_by_numerical_rank():
    """Rank-2 task vectors of 12 × 12 matrices, T = 3: TSV-M's k = 4, but each task has 2
    directions, so RESM's rank rule changes no kept direction unless it cuts k below 2."""
    g = torch.Generator().manual_seed(1)
    fts = []
    for _ in range(3):
        sd = {}
        for i in range(4):
            a, b = torch.randn(12, 2, generator=g), torch.randn(2, 12, generator=g)
            sd[f"model.layers.{i}.self_attn.q_proj.weight"] = a @ b
        fts.append(sd)
    base = {k: torch.zeros(12, 12) for k in fts[0]}
    rep = diagnose(base, fts, progress=False)
    for name, kept in rep["resm"]["uniform_kept"].items():
        assert rep["resm"]["uniform_ranks"][name] == 4 and kept == [2, 2, 2]
        assert _rec(rep, name)["numerical_rank"] == [2, 2, 2]
    assert rep["resm"]["layers_with_changed_kept"] == 0
    # a rank fraction that gives k = 1 on every layer keeps one direction per task
    one = diagnose(base, fts, resm_params={"rank_fraction": 0.1}, progress=False)
    assert set(map(tuple, one["resm"]["kept"].values())) == {(1, 1, 1)}
    assert _rec(one, next(iter(base)))["resm_kept_ratio"] == 1.0  # both k = 1: same kept
