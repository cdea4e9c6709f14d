"""The engine's fast paths equal the plain formulations they replace.

- Linear methods (task arithmetic, weight average): ``driver.merge_linear`` computes
  θ0 + λ·Σ c_t (θ_t − θ0) piecewise; it must equal the method's own stack function, on tensors
  cut into several pieces (the last one partial), and check its inputs and output.
- TIES's elect + disjoint mean runs piece by piece: equal to the whole-tensor formula.
- DARE's masks drawn as ``rand < 1 − p`` in threads: equal to ``torch.bernoulli``'s."""

from __future__ import annotations

import pytest
import torch

from hhh_bench.merging import driver, get_method, list_methods
from hhh_bench.merging.base import FunctionMethod
from hhh_bench.merging.driver import Raw, merge_linear


def _inputs(shape=(37, 123), t=3, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    fts = [(base + 0.05 * torch.randn(shape, generator=g)).to(dtype) for _ in range(t)]
    return base.to(dtype), fts


def _stack_path(name, base, fts, **params):
    """The method's own (T, *shape) stack function, then θ0 + λ·τ in float32."""
    m = get_method(name)
    p = m.make_params(**params)
    stack = torch.stack([f.float() - base.float() for f in fts])
    tau = type(m).merge_fn(stack, p.weight_tensor(len(fts), stack), p)
    return base.float() + p.scaling * tau


def test_the_linear_methods_are_task_arithmetic_and_weight_average():
    linear = {
        n
        for n in list_methods()
        if get_method(n).linear_coefficients(get_method(n).make_params(), 3)
    }
    assert linear == {"task_arithmetic", "weight_average"}


@pytest.mark.parametrize("name", ["task_arithmetic", "weight_average"])
@pytest.mark.parametrize(
    "params", [{}, {"scaling": 0.3}, {"weights": [0.5, -0.25, 2.0], "scaling": 1.7}]
)
def test_coefficients_agree_with_the_stack_function(name, params):
    """Σ c_t τ_t with the declared coefficients is the method's merge function (independent
    formulations: one contracts the stack, the other adds the coefficients by hand)."""
    m = get_method(name)
    p = m.make_params(**params)
    g = torch.Generator().manual_seed(1)
    stack = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    c = m.linear_coefficients(p, 3)
    by_hand = sum(ci * stack[i] for i, ci in enumerate(c))
    fn = type(m).merge_fn(stack, p.weight_tensor(3, stack), p)
    torch.testing.assert_close(fn, by_hand, rtol=1e-12, atol=1e-12)


def test_by_hand_on_two_entries():
    """θ0 = [1, 2], θ1 = [2, 2], θ2 = [1, 5], w = (1, 0.5), λ = 2:
    τ1 = [1, 0], τ2 = [0, 3], Σ w τ = [1, 1.5], θ = [1 + 2, 2 + 3] = [3, 5]."""
    base = torch.tensor([1.0, 2.0])
    fts = [torch.tensor([2.0, 2.0]), torch.tensor([1.0, 5.0])]
    m = get_method("task_arithmetic")
    p = m.make_params(weights=[1.0, 0.5], scaling=2.0)
    out = merge_linear("w", Raw(base, fts), m.linear_coefficients(p, 2), p, torch.float32)
    assert out.tolist() == [3.0, 5.0]


@pytest.mark.parametrize("name", ["task_arithmetic", "weight_average"])
@pytest.mark.parametrize("params", [{}, {"weights": [0.2, 1.0, 0.7], "scaling": 0.6}])
def test_piecewise_equals_the_stack_path(name, params, monkeypatch):
    monkeypatch.setattr(driver, "CHUNK_ENTRIES", 1000)  # 4551 entries: 5 pieces, the last partial
    base, fts = _inputs()
    m = get_method(name)
    p = m.make_params(**params)
    p.resolve_weights(len(fts))
    want = _stack_path(name, base, fts, **params)
    got32 = merge_linear("w", Raw(base, list(fts)), m.linear_coefficients(p, 3), p, torch.float32)
    torch.testing.assert_close(got32, want, rtol=1e-6, atol=1e-6)
    got16 = merge_linear("w", Raw(base, list(fts)), m.linear_coefficients(p, 3), p, torch.bfloat16)
    assert got16.dtype == torch.bfloat16 and got16.shape == base.shape
    assert torch.equal(got16, got32.to(torch.bfloat16))


def test_engine_and_in_memory_api_use_it_and_agree_with_the_class_path(monkeypatch):
    """merge_state_dicts goes through the driver: its result equals the method's generic
    precompute/compose path (the one used with LoRA inputs)."""
    from hhh_bench.merging import merge_state_dicts

    monkeypatch.setattr(driver, "CHUNK_ENTRIES", 777)
    base, fts = _inputs(shape=(40, 50), dtype=torch.float32)
    got = merge_state_dicts("task_arithmetic", {"w": base}, [{"w": f} for f in fts], scaling=0.8)
    m = get_method("task_arithmetic")
    p = m.make_params(scaling=0.8)
    p.resolve_weights(3)
    assert isinstance(m, FunctionMethod)
    want = FunctionMethod.merge_tensor(
        m, "w", base, driver.TaskVectors.from_weights(base, fts, torch.float32), p
    )
    torch.testing.assert_close(got["w"], want, rtol=1e-6, atol=1e-6)


def test_a_nan_in_a_later_piece_names_the_model_and_counts_every_bad_value(monkeypatch):
    monkeypatch.setattr(driver, "CHUNK_ENTRIES", 1000)
    base, fts = _inputs(dtype=torch.float32)
    fts[1].view(-1)[3500] = float("nan")
    fts[1].view(-1)[10] = float("inf")
    m = get_method("task_arithmetic")
    p = m.make_params(weights=[1.0, 0.0, 1.0])  # a zero weight still sees the NaN
    with pytest.raises(ValueError, match=r"parameter 'w': finetuned model 1 holds 2 NaN/Inf"):
        merge_linear("w", Raw(base, list(fts)), m.linear_coefficients(p, 3), p, torch.float32)


def test_overflow_in_the_output_dtype_names_the_tensor(monkeypatch):
    monkeypatch.setattr(driver, "CHUNK_ENTRIES", 1000)
    base, fts = _inputs(dtype=torch.float32)
    m = get_method("task_arithmetic")
    p = m.make_params(scaling=1e8)
    with pytest.raises(ValueError, match=r"'w': the merged tensor in torch.float16 holds \d+"):
        merge_linear(
            "w",
            Raw(base, list(fts)),
            m.linear_coefficients(p, 3),
            p,
            torch.float16,
            "the merged tensor in torch.float16",  # what the driver names a cast output
        )


def _ties_whole(trimmed, w):
    """Elect + disjoint mean on whole tensors (the formula before the piecewise version)."""
    positive = (w.reshape(-1, *[1] * (trimmed.dim() - 1)) * trimmed).sum(0) >= 0
    x = trimmed * w.reshape(-1, *[1] * (trimmed.dim() - 1))
    agree = torch.where(positive, x > 0, x < 0)
    return (x * agree).sum(0) / agree.sum(0).clamp(min=1)


def test_ties_merge_piecewise_equals_the_whole_tensor_formula(monkeypatch):
    from hhh_bench.merging.methods import ties

    monkeypatch.setattr(ties, "MERGE_PIECE", 1000)  # 4551 entries: 5 pieces, the last partial
    g = torch.Generator().manual_seed(3)
    stack = torch.randn(3, 37, 123, generator=g) * (torch.rand(3, 37, 123, generator=g) > 0.4)
    w = torch.tensor([1.0, 0.5, 2.0])
    got = ties.ties_merge(stack, w.reshape(3, 1, 1))
    torch.testing.assert_close(got, _ties_whole(stack, w), rtol=1e-6, atol=1e-7)
    assert got.shape == stack.shape[1:]


@pytest.mark.parametrize("shape", [(5,), (333, 777), (300, 300)])
@pytest.mark.parametrize("drop_rate", [0.1, 0.5, 0.9])
def test_dare_masks_equal_bernoulli_draws(shape, drop_rate):
    from hhh_bench.merging.methods.dare import dare_keep_mask, keep_masks

    masks = keep_masks(shape, drop_rate, 7, "layer.w", 3)  # 333 x 777 takes the threaded path
    for t, m in enumerate(masks):
        assert m.dtype == torch.bool and tuple(m.shape) == shape
        assert torch.equal(m, dare_keep_mask(shape, drop_rate, 7, "layer.w", t).bool())
    assert not torch.equal(masks[0], masks[1]) or masks[0].numel() < 10


def test_a_linear_merge_leaves_the_read_ahead_a_core_and_restores_the_thread_count(monkeypatch):
    from hhh_bench.merging.base import CommonParams

    seen = []
    real = torch.set_num_threads
    monkeypatch.setattr(driver.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    before = torch.get_num_threads()
    try:
        real(4)
        monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real(n)))
        with driver._reader_core(CommonParams()):
            assert torch.get_num_threads() == 2  # 3 cores: 2 compute, 1 for the reader
        assert torch.get_num_threads() == 4 and seen == [2, 4]
        real(1)
        seen.clear()
        with driver._reader_core(CommonParams()):  # never more threads than asked for
            assert torch.get_num_threads() == 1
        assert seen == []
    finally:
        real(before)
