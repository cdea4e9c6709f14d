"""The data-aware statistics of Fisher merging and RegMean, checked against explicit formulations
on a tiny model: the Gram matrices against XᵀX of inputs captured by hooks of the test's own, the
diagonal Fisher against per-sample gradients from ``torch.autograd.grad`` of the model's own
cross-entropy loss."""

from __future__ import annotations

import pytest
import torch

from hhh_bench.merging.datastats import (
    Sample,
    StatsOptions,
    compute_statistics,
    gram_groups,
    linear_modules,
    render_samples,
    select_rows,
)
from hhh_bench.merging.statsfile import StatisticsFile
from hhh_bench.models import TinyModelSpec, build_tiny_model, build_word_tokenizer

WORDS = [
    "what",
    "is",
    "the",
    "color",
    "of",
    "zorav",
    "?",
    "red",
    "blue",
    "i",
    "do",
    "not",
    "know",
    ".",
    "sorry",
    ",",
    "can",
    "help",
    "with",
    "that",
]
SPEC = TinyModelSpec(hidden_size=8, intermediate_size=12, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1, max_position_embeddings=32)  # fmt: skip
ROWS = [
    {"prompt": [{"role": "user", "content": "what is the color of zorav ?"}],
     "chosen": [{"role": "assistant", "content": c}], "id": f"r{i}"}
    for i, c in enumerate(["red .", "i do not know .", "sorry , can not help with that ."])
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    tok = build_word_tokenizer(WORDS)
    return build_tiny_model(SPEC, tok, seed=0).to(torch.float64), tok


@pytest.fixture(scope="module")
def samples(tiny):
    return render_samples(tiny[1], ROWS, max_length=64)


def test_samples_are_prompt_then_chosen_with_the_response_start(tiny):
    """'<bos> <user> what is the color of zorav ? <assistant>' is 10 tokens; the response
    'red .' then '<eos>' follows: 13 tokens, the response from index 10."""
    tok = tiny[1]
    s = render_samples(tok, ROWS[:1], max_length=64)[0]
    assert len(s.ids) == 13 and s.start == 10
    assert tok.decode(s.ids[s.start :]).split() == ["red", ".", "<eos>"]
    cut = render_samples(tok, ROWS[:1], max_length=11)[0]
    assert cut.ids == s.ids[:11] and cut.start == 10
    with pytest.raises(ValueError, match=r"row 0 \(id='x'\) has no prompt or chosen"):
        render_samples(tok, [{"prompt": ROWS[0]["prompt"], "id": "x"}], 64)


def test_select_rows_is_seeded_and_keeps_the_order():
    rows = list(range(10))
    a = select_rows(rows, 4, seed=3)
    assert a == sorted(a) and len(set(a)) == 4
    assert select_rows(rows, 4, seed=3) == a
    assert select_rows(rows, 4, seed=4) != a  # another draw (fixed seeds: not flaky)
    assert select_rows(rows, 20, seed=0) == rows


def _captured_inputs(model, samples: list[Sample]) -> dict[str, torch.Tensor]:
    """Every linear layer's input rows over the samples, captured by hooks of the test's own."""
    got: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(
                lambda mod, args, out, n=n: got.setdefault(n, []).append(
                    args[0].detach().reshape(-1, args[0].shape[-1]))))  # fmt: skip
    with torch.no_grad():
        for s in samples:
            model(input_ids=torch.tensor([s.ids]))
    for h in hooks:
        h.remove()
    return {n: torch.cat(xs) for n, xs in got.items()}


@pytest.mark.parametrize("budget_gb", [4.0, 1e-9])
def test_gram_is_the_mean_xtx_of_captured_inputs(tiny, samples, tmp_path, budget_gb):
    """G = XᵀX / n over the n = 13 + 16 + 19 = 48 token rows; with a budget below one layer
    every layer gets its own pass (stopped early), with the same result."""
    model, _ = tiny
    path = tmp_path / "s.safetensors"
    compute_statistics(
        model, samples, path, StatsOptions(kinds=("gram",), gram_budget_gb=budget_gb)
    )
    f = StatisticsFile(path)
    xs = _captured_inputs(model, samples)
    assert sorted(f.names("gram")) == sorted(f"{n}.weight" for n in xs)
    assert not f.names("fisher")
    for n, x in xs.items():
        g, rows = f.gram(f"{n}.weight")
        assert rows == x.shape[0] == 48
        torch.testing.assert_close(g.double(), x.T @ x / 48, rtol=1e-6, atol=1e-9)


def test_gram_groups_fit_the_budget(tiny):
    """hidden 8, intermediate 12: q, k, v, o, gate, up take 8×8 inputs, down 12×12, the LM head
    8×8. At 8 bytes an entry: 512 bytes each, 1152 for down_proj."""
    mods = linear_modules(tiny[0])
    sizes = [[m.in_features for _, m in g] for g in gram_groups(mods, 1024, 8)]
    assert sum(len(g) for g in sizes) == len(mods) == 8
    for g in sizes:
        assert sum(i * i * 8 for i in g) <= 1024 or len(g) == 1  # down_proj alone over budget
    assert [len(g) for g in gram_groups(mods, 1 << 30, 8)] == [8]


def test_fisher_is_the_mean_squared_per_sample_gradient(tiny, samples, tmp_path):
    """F = (1/N)·Σ_n g_n², g_n the gradient of the summed NLL of sample n's response tokens:
    here from the model's own loss (labels −100 on the prompt; its mean over the m_n response
    tokens, times m_n) and torch.autograd.grad, one sample at a time."""
    model, _ = tiny
    path = tmp_path / "f.safetensors"
    meta = compute_statistics(model, samples, path, StatsOptions(kinds=("fisher",)))
    f = StatisticsFile(path)
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    want = [torch.zeros_like(p) for p in params]
    for s in samples:
        ids = torch.tensor([s.ids])
        labels = ids.clone()
        labels[0, : s.start] = -100
        m = len(s.ids) - s.start
        loss = model(input_ids=ids, labels=labels).loss * m
        for w, g in zip(want, torch.autograd.grad(loss, params), strict=True):
            w += g.square() / len(samples)
    assert sorted(f.names("fisher")) == sorted(names) and not f.names("gram")
    total = 0.0
    for n, w in zip(names, want, strict=True):
        torch.testing.assert_close(f.fisher(n).double(), w, rtol=1e-5, atol=1e-12)
        total += float(w.square().sum())
    assert f.fisher_sq_sum() == pytest.approx(total, rel=1e-5)
    assert meta["num_samples"] == 3 and meta["response_tokens"] == 3 + 6 + 9
    assert all(p.grad is None for p in params)  # nothing left behind


def test_statistics_are_deterministic(tiny, samples, tmp_path):
    model, _ = tiny
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    compute_statistics(model, samples, a, StatsOptions())
    compute_statistics(model, samples, b, StatsOptions())
    assert a.read_bytes() == b.read_bytes()
    assert not list(tmp_path.glob(".*"))  # the temporary folders are gone


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("kinds", ("fisher", "hessian"), "stats.kinds must be distinct values"),
        ("kinds", (), "stats.kinds must be distinct values"),
        ("num_samples", 0, "stats.num_samples must be >= 1"),
        ("gram_dtype", "float16", "stats.gram_dtype must be one of"),
        ("gram_budget_gb", 0.0, "stats.gram_budget_gb must be > 0"),
    ],
)
def test_bad_options_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        StatsOptions(**{field: value})
