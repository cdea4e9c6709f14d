"""The streaming engine equals the in-memory merge, reads LoRA adapters exactly, fails cleanly."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from hhh_bench.merging import list_methods, merge_state_dicts
from hhh_bench.merging.engine import merge_models
from hhh_bench.models import TinyModelSpec, build_tiny_model, build_word_tokenizer

WORDS = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p"]
SPEC = TinyModelSpec(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=2, max_position_embeddings=16)  # fmt: skip
PARAMS = {"ties": {"density": 0.5}, "dare_ta": {"drop_rate": 0.3}, "dare_ties": {"drop_rate": 0.3},
          "sce": {"select_topk": 0.5}, "multislerp": {"origin": "zero"}}  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A base and three perturbed copies saved as HF folders (safetensors)."""
    root = tmp_path_factory.mktemp("engine")
    tok = build_word_tokenizer(WORDS)
    base = build_tiny_model(SPEC, tok, seed=0)
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    paths = []
    g = torch.Generator().manual_seed(1)
    for i in range(3):
        m = build_tiny_model(SPEC, tok, seed=0)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        m.save_pretrained(root / f"ft{i}")
        paths.append(root / f"ft{i}")
    return root, root / "base", paths


def _sd(folder):
    return load_file(str(folder / "model.safetensors"))


ROWS = [
    {
        "prompt": [{"role": "user", "content": "a b c"}],
        "chosen": [{"role": "assistant", "content": c}],
    }
    for c in ("d e", "f g h", "i")
]


@pytest.fixture(scope="module")
def statistics(models):
    """Fisher and Gram statistics of each finetuned model on three rows (the stats stage's code)."""
    from hhh_bench.merging.datastats import StatsOptions, specialist_statistics

    root, _, fts = models
    out = []
    for i, ft in enumerate(fts):
        path = root / f"stats{i}.safetensors"
        specialist_statistics(ft, ROWS, path, StatsOptions(), tokenizer_from=root / "base")
        out.append(str(path))
    return out


@pytest.mark.parametrize("method", sorted(list_methods()))
def test_streaming_equals_in_memory(models, method, tmp_path, request):
    _, base, fts = models
    fts = fts[:2] if method == "slerp" else fts  # two models at most
    params = PARAMS.get(method, {})
    if method in ("fisher", "regmean"):
        params = {"statistics": request.getfixturevalue("statistics")}
    res = merge_models(method, base, fts, tmp_path / "out", progress=False, **params)
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    want = merge_state_dicts(method, _sd(base), [_sd(f) for f in fts], **params)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    assert res.n_tensors == len(want)
    for f in ("config.json", "tokenizer.json", "README.md", "merge_info.json"):
        assert (tmp_path / "out" / f).is_file(), f
    assert method in (tmp_path / "out" / "README.md").read_text()


def test_sharding_writes_an_index(models, tmp_path):
    _, base, fts = models
    merge_models(
        "task_arithmetic", base, fts, tmp_path / "o", max_shard_size="20KB", progress=False
    )
    index = json.loads((tmp_path / "o" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((tmp_path / "o" / s).is_file() for s in shards)
    # the shards hold exactly the one-file merge
    merge_models("task_arithmetic", base, fts, tmp_path / "one", progress=False)
    one = _sd(tmp_path / "one")
    sharded = {k: v for s in shards for k, v in load_file(str(tmp_path / "o" / s)).items()}
    assert sharded.keys() == one.keys() and all(torch.equal(sharded[k], one[k]) for k in one)


def test_shard_writer_writes_tensors_in_any_order(tmp_path):
    """Mixed dtypes, a 0-d and an empty tensor, written in reverse order, across shards of at
    most 64 bytes: every shard is valid safetensors and holds exactly what was written."""
    from hhh_bench.merging.engine import ShardWriter

    g = torch.Generator().manual_seed(0)
    tensors = {
        "a.bf16": torch.randn(3, 5, generator=g).bfloat16(),
        "b.f32": torch.randn(7, generator=g),
        "c.i64": torch.arange(4).reshape(2, 2),
        "d.bool": torch.tensor([True, False, True, True]),
        "e.f16": torch.tensor(1.5, dtype=torch.float16),
        "f.empty": torch.zeros(0, 3),
    }
    layout = [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    writer = ShardWriter(tmp_path, layout, max_bytes=64)
    for k in reversed(list(tensors)):
        writer.write(k, tensors[k])
    writer.close()
    assert len(writer.shards) > 1
    back = {k: v for name, _ in writer.shards for k, v in load_file(str(tmp_path / name)).items()}
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def test_shard_writer_refuses_a_missing_tensor(tmp_path):
    from hhh_bench.merging.engine import ShardWriter

    writer = ShardWriter(
        tmp_path, [("x", torch.float32, (2,)), ("y", torch.float32, (2,))], 1 << 20
    )
    writer.write("x", torch.ones(2))
    with pytest.raises(RuntimeError, match="never written"):
        writer.close()
    with pytest.raises(ValueError, match="shape"):
        ShardWriter(tmp_path, [("x", torch.float32, (2,))], 1 << 20).write("x", torch.ones(3))


def test_lora_adapter_equals_merged_full_model(models, tmp_path):
    from conftest import save_random_lora

    _, base, _ = models
    save_random_lora(base, tmp_path, r=4, alpha=8, targets=["q_proj", "v_proj", "up_proj"])
    a = merge_models(
        "task_arithmetic", base, [tmp_path / "adapter"], tmp_path / "a", progress=False
    )
    b = merge_models("task_arithmetic", base, [tmp_path / "full"], tmp_path / "b", progress=False)
    sa = load_file(str(tmp_path / "a" / "model.safetensors"))
    sb = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.n_tensors == b.n_tensors
    for k in sb:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6)


def test_exception_mid_merge_leaves_no_output(models, tmp_path, monkeypatch):
    _, base, fts = models
    from hhh_bench.merging.engine import ShardWriter

    calls = {"n": 0}
    original = ShardWriter.write

    def boom(self, *a, **k):  # the fifth merged tensor fails on its way to disk
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("injected failure")
        return original(self, *a, **k)

    monkeypatch.setattr(ShardWriter, "write", boom)
    with pytest.raises(RuntimeError, match="injected"):
        merge_models("task_arithmetic", base, fts, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*"))


def test_sweep_cache_hits_on_new_scaling_and_misses_on_changed_input(models, tmp_path):
    root, base, fts = models
    cache = tmp_path / "cache"
    first = merge_models("tsv", base, fts, tmp_path / "o1", cache_dir=cache, progress=False)
    assert first.cache_hits == 0 and first.cache_misses > 0
    second = merge_models(
        "tsv", base, fts, tmp_path / "o2", cache_dir=cache, scaling=0.5, progress=False
    )
    assert second.cache_misses == 0 and second.cache_hits == first.cache_misses
    # the cached SVD gives the same result as a fresh merge at that scaling
    merge_models("tsv", base, fts, tmp_path / "o3", scaling=0.5, progress=False)
    s2, s3 = _sd(tmp_path / "o2"), _sd(tmp_path / "o3")
    assert all(torch.equal(s2[k], s3[k]) for k in s3)
    # a changed input file is never served from the cache
    changed = tmp_path / "ft0b"
    changed.mkdir()
    sd = _sd(fts[0])
    k0 = next(k for k in sd if k.endswith("q_proj.weight"))
    sd[k0] = sd[k0] + 0.1
    save_file(sd, str(changed / "model.safetensors"), metadata={"format": "pt"})
    (changed / "config.json").write_text((fts[0] / "config.json").read_text())
    third = merge_models(
        "tsv", base, [changed, *fts[1:]], tmp_path / "o4", cache_dir=cache, progress=False
    )
    assert third.cache_hits == 0


def test_sweep_cache_entries_from_before_a_code_edit_are_not_served(models, tmp_path, monkeypatch):
    """The precomputes' key holds the code computing them (the review found a stale SVD served
    after an edit of linalg.py): a stand-in source file edited between two merges."""
    from hhh_bench.merging import engine

    root, base, fts = models
    cache, src = tmp_path / "cache", tmp_path / "linalg_standin.py"
    src.write_text("X = 1\n")
    monkeypatch.setattr(engine, "PRECOMPUTE_CODE", (*engine.PRECOMPUTE_CODE, src))
    first = merge_models("tsv", base, fts, tmp_path / "o1", cache_dir=cache, progress=False)
    again = merge_models("tsv", base, fts, tmp_path / "o2", cache_dir=cache, progress=False)
    assert first.cache_misses > 0 and again.cache_hits == first.cache_misses
    src.write_text("X = 2\n")
    edited = merge_models("tsv", base, fts, tmp_path / "o3", cache_dir=cache, progress=False)
    assert edited.cache_hits == 0 and edited.cache_misses == first.cache_misses


@pytest.mark.parametrize(
    ("method", "helpers"), [("breadcrumbs", ["gta"]), ("della", ["gta", "dare"])]
)
def test_sweep_cache_key_holds_the_helper_modules_a_prepare_step_calls(method, helpers):
    """breadcrumbs' prepare rescales with gta.rescale_l1_, della's also seeds with dare.mask_seed:
    an edit of either must change the key, so their files are in it (not only the class's)."""
    from hhh_bench.core.codeid import code_identity
    from hhh_bench.merging import engine, get_method

    files = code_identity(type(get_method(method)), *engine.PRECOMPUTE_CODE)["files"]
    for helper in helpers:
        assert f"hhh_bench/merging/methods/{helper}.py" in files, helper


def test_bad_inputs_are_named(models, tmp_path):
    root, base, fts = models
    # θ0's weights at another path as a specialist, and one specialist listed twice (copied)
    shutil.copytree(base, tmp_path / "base_copy")
    with pytest.raises(ValueError, match=r"holds the same weights as the base .*task vector is 0"):
        merge_models("task_arithmetic", base, [fts[0], tmp_path / "base_copy"], tmp_path / "x",
                     progress=False)  # fmt: skip
    shutil.copytree(fts[0], tmp_path / "ft0_copy")
    with pytest.raises(ValueError, match=r"one model listed twice; to weigh a model more"):
        merge_models("task_arithmetic", base, [fts[0], fts[1], tmp_path / "ft0_copy"],
                     tmp_path / "x", progress=False)  # fmt: skip
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="would overwrite an input model"):
        merge_models("task_arithmetic", base, fts, base, progress=False)
    with pytest.raises(ValueError, match="unknown merge method"):
        merge_models("tie", base, fts, tmp_path / "x", progress=False)
    # a missing tensor
    sd = _sd(fts[0])
    sd.pop(next(iter(sd)))
    (tmp_path / "miss").mkdir()
    save_file(sd, str(tmp_path / "miss" / "model.safetensors"))
    with pytest.raises(ValueError, match="lacks tensor"):
        merge_models("task_arithmetic", base, [tmp_path / "miss"], tmp_path / "x", progress=False)
    # a different architecture
    (tmp_path / "arch").mkdir()
    save_file(_sd(fts[0]), str(tmp_path / "arch" / "model.safetensors"))
    cfg = json.loads((fts[0] / "config.json").read_text())
    cfg["architectures"] = ["MistralForCausalLM"]
    (tmp_path / "arch" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="same architecture"):
        merge_models("task_arithmetic", base, [tmp_path / "arch"], tmp_path / "x", progress=False)
    # a vocabulary-size mismatch, then resolved by the policy
    sd = _sd(fts[0])
    emb = next(k for k in sd if "embed_tokens" in k)
    sd[emb] = torch.cat([sd[emb], torch.zeros(2, sd[emb].shape[1])])
    (tmp_path / "vocab").mkdir()
    save_file(sd, str(tmp_path / "vocab" / "model.safetensors"))
    with pytest.raises(ValueError, match="vocabulary sizes differ"):
        merge_models("task_arithmetic", base, [tmp_path / "vocab"], tmp_path / "x", progress=False)
    merge_models(
        "task_arithmetic",
        base,
        [tmp_path / "vocab"],
        tmp_path / "v",
        vocab_policy="truncate_to_base",
        progress=False,
    )
    # NaN weights
    sd = _sd(fts[0])
    sd[emb][0, 0] = float("nan")
    (tmp_path / "nan").mkdir()
    save_file(sd, str(tmp_path / "nan" / "model.safetensors"))
    # named by its folder, not by its index only (battery 11, m16)
    said = rf"finetuned model 0 \({re.escape(str(tmp_path / 'nan'))}\) holds 1 NaN/Inf value"
    with pytest.raises(ValueError, match=said):
        merge_models("task_arithmetic", base, [tmp_path / "nan"], tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_pickle_checkpoints_are_refused(models, tmp_path):
    _, base, fts = models
    (tmp_path / "pkl").mkdir()
    torch.save(_sd(fts[0]), tmp_path / "pkl" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle"):
        merge_models("task_arithmetic", base, [tmp_path / "pkl"], tmp_path / "x", progress=False)
    merge_models(
        "task_arithmetic",
        base,
        [tmp_path / "pkl"],
        tmp_path / "ok",
        allow_pickle=True,
        progress=False,
    )


def test_model_card_names_each_specialist_and_carries_its_scores(models, tmp_path):
    from hhh_bench.tracking.diagnostics_view import CARD_HEADING, attach_scores, attach_to_model

    _, base, fts = models
    out = tmp_path / "out"
    names = ["helpful", "honest", "harmless"]
    merge_models("task_arithmetic", base, fts, out, progress=False, finetuned_names=names)
    card = out / "README.md"
    for i, n in enumerate(names):
        assert f"- finetuned {i} ({n} specialist): `{fts[i]}`" in card.read_text()

    def row(split, helpful):
        return {"row_key": f"k-{split}", "split": split, "suite": "toy3h", "metric": "acc",
                "seed": 0, "setup_key": "s", "helpful": helpful, "honest": 0.5,
                "harmless": 0.25, "average": 0.4, "min": 0.25}  # fmt: skip

    assert attach_scores(out, row("validation", 0.7))
    assert attach_scores(out, row("test", 0.625))
    assert attach_scores(out, row("test", 0.625))  # the same row again: nothing added
    text = card.read_text()
    assert text.count("## Scores (hhh-bench)") == 1
    assert "| test | toy3h | acc | 0 | 0.625 | 0.500 | 0.250 | 0.400 | 0.250 |" in text
    assert "| validation | toy3h | acc | 0 | 0.700 |" in text
    # a re-diagnosed model keeps its scores (they sit before the diagnostics section)
    diag = tmp_path / "diagnostics.json"
    diag.write_text("{}")
    attach_to_model(out, {"path": diag, "markdown": f"{CARD_HEADING}\n\nfirst\n"})
    attach_to_model(out, {"path": diag, "markdown": f"{CARD_HEADING}\n\nsecond\n"})
    assert attach_scores(out, row("test", 0.5))  # a changed row replaces its entry
    text = card.read_text()
    assert "second" in text and "first" not in text and text.count("## Scores") == 1
    assert "| test | toy3h | acc | 0 | 0.500 |" in text and "0.625" not in text
    assert text.index("## Scores") < text.index(CARD_HEADING)
    # not a merge output: untouched
    assert not attach_scores(fts[0], row("test", 0.5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "tsv", "resm"])
def test_device_cuda_computes_on_the_gpu_with_the_cpus_result(models, method, tmp_path):
    """``device: cuda`` (``merge_engine.device`` in the pipeline): the same merge as on the CPU,
    to float32 rounding (GPU kernels sum in another order)."""
    _, base, fts = models
    params = PARAMS.get(method, {})
    merge_models(method, base, fts, tmp_path / "cpu", progress=False, **params)
    merge_models(method, base, fts, tmp_path / "gpu", progress=False, device="cuda", **params)
    got, want = _sd(tmp_path / "gpu"), _sd(tmp_path / "cpu")
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)


def test_device_cuda_without_a_gpu_is_refused_before_any_work(models, tmp_path, monkeypatch):
    _, base, fts = models
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'device' is 'cuda' but CUDA is not available"):
        merge_models("tsv", base, fts, tmp_path / "o", progress=False, device="cuda")
    assert not (tmp_path / "o").exists()


def test_data_methods_sweep_cache_is_keyed_by_the_statistics_content(models, statistics, tmp_path):
    """RegMean's solves are cached: a new λ reuses them, so do the same statistics in another
    folder (the key holds their content), and a statistics file changed in place is never
    served."""
    _, base, fts = models
    cache = tmp_path / "cache"

    def merge(out, stats, **kw):
        return merge_models("regmean", base, fts, tmp_path / out, cache_dir=cache,
                            statistics=stats, progress=False, **kw)  # fmt: skip

    first = merge("o1", statistics)
    assert first.cache_hits == 0 and first.cache_misses > 0
    assert merge("o2", statistics, scaling=0.5).cache_hits == first.cache_misses
    (tmp_path / "moved").mkdir()  # the same files in another folder (a file's name is content)
    copies = [str(shutil.copy(p, tmp_path / "moved")) for p in statistics]
    assert merge("o3", copies).cache_hits == first.cache_misses
    sd = load_file(copies[0])
    sd = {k: v * 2 if k.startswith("gram/") and "q_proj" in k else v for k, v in sd.items()}
    save_file(sd, copies[0])
    changed = merge("o4", copies)
    assert changed.cache_hits == 0
    q = next(k for k in _sd(tmp_path / "o4") if k.endswith("q_proj.weight"))
    assert not torch.equal(_sd(tmp_path / "o4")[q], _sd(tmp_path / "o3")[q])


def test_a_failed_merge_closes_its_progress_bar_before_the_error_leaves(
    models, tmp_path, monkeypatch
):
    """Battery 11 (m16): the bar of a merge that failed was closed when collected, after the
    run's console session, and drew its last line on the console under the error."""
    import hhh_bench.merging.engine as engine

    _, base, fts = models
    closed = []

    def progress(it, desc, total, enabled=True):
        try:
            yield from it
        finally:
            closed.append(desc)

    monkeypatch.setattr(engine, "_progress", progress)
    sd = _sd(fts[0])
    sd[sorted(sd)[0]].view(-1)[0] = float("nan")
    (tmp_path / "nan").mkdir()
    save_file(sd, str(tmp_path / "nan" / "model.safetensors"))
    with pytest.raises(ValueError, match="NaN") as err:
        merge_models("task_arithmetic", base, [tmp_path / "nan"], tmp_path / "x", progress=False)
    assert closed and err.value is not None  # closed while the traceback still holds the frames
