"""LoRA adapters are read exactly (peft's merge_and_unload within 1e-6) or refused with a message
naming the adapter and the feature; the engine decomposes them from their factors; a small LoRA
update survives a bf16 base (issues 12 and 13)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from hhh_bench.merging.engine import merge_models
from hhh_bench.models import TinyModelSpec, build_tiny_model, build_word_tokenizer

WORDS = [chr(c) for c in range(ord("a"), ord("q"))]
SPEC = TinyModelSpec(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=2, max_position_embeddings=16)  # fmt: skip


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    tok = build_word_tokenizer(WORDS)
    model = build_tiny_model(SPEC, tok, seed=0)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    return root / "base"


def _adapter(base_dir, out, seed=3, **lora_kw):
    """A peft adapter with random non-zero B (and bias, with lora_bias) saved to ``out/adapter``,
    and peft's own ``merge_and_unload`` of it in float32 to ``out/full``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    kw = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"], **lora_kw}
    pm = get_peft_model(model, LoraConfig(**kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n or "lora_magnitude" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(out / "adapter")
    pm.merge_and_unload().save_pretrained(out / "full")
    return out / "adapter", out / "full"


def _sd(folder):
    return load_file(str(folder / "model.safetensors"))


def _merged_as_one(base_dir, adapter, out):
    """task arithmetic of the adapter alone, λ = 1, float32 out: θ0 + τ as the engine reads τ."""
    merge_models("task_arithmetic", base_dir, [adapter], out, out_dtype="float32", progress=False)
    return _sd(out)


@pytest.mark.parametrize(
    "lora_kw",
    [
        {},
        {"rank_pattern": {"v_proj": 2, "layers.1.mlp.up_proj": 6}},
        {"alpha_pattern": {"q_proj": 3, "up_proj": 32}},
        {"rank_pattern": {"q_proj": 2}, "alpha_pattern": {"q_proj": 5}},
        {"use_rslora": True},
    ],
    ids=["plain", "rank_pattern", "alpha_pattern", "both_patterns", "rslora"],
)
def test_adapter_reads_like_peft_merge_and_unload(base_dir, tmp_path, lora_kw):
    adapter, full = _adapter(base_dir, tmp_path, **lora_kw)
    got = _merged_as_one(base_dir, adapter, tmp_path / "m")
    want = _sd(full)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k].float(), rtol=0, atol=1e-6, msg=k)


@pytest.fixture(scope="module")
def biased_base_dir(tmp_path_factory):
    """A tiny Llama with attention biases (for lora_bias)."""
    root = tmp_path_factory.mktemp("lora_bias")
    tok = build_word_tokenizer(WORDS)
    model = build_tiny_model(SPEC, tok, seed=0)
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{**model.config.to_dict(), "attention_bias": True})
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.02)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    return root / "base"


def test_lora_bias_is_added_like_peft(biased_base_dir, tmp_path):
    adapter, full = _adapter(
        biased_base_dir, tmp_path, lora_bias=True, target_modules=["q_proj", "v_proj"]
    )
    raw = load_file(str(adapter / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.bias") for k in raw)
    got = _merged_as_one(biased_base_dir, adapter, tmp_path / "m")
    want = _sd(full)
    moved = [k for k in want if k.endswith("q_proj.bias")]
    assert moved and any(not torch.equal(want[k], _sd(biased_base_dir)[k]) for k in moved)
    for k in want:
        torch.testing.assert_close(got[k], want[k].float(), rtol=0, atol=1e-6, msg=k)


def test_an_adapter_config_whose_r_is_not_its_factors_is_refused(base_dir, tmp_path):
    """Battery 9: r 4 -> 32 (and lora_alpha 8 -> 128) in a copy's adapter_config.json was read
    with alpha over the factors' rank (x4 the update); peft refuses to load such an adapter."""
    import json

    adapter, _ = _adapter(base_dir, tmp_path)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg.update(r=32, lora_alpha=128)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"adapter_config.json says r=32 but its LoRA factors "
                       r"have rank 4"):  # fmt: skip
        merge_models("task_arithmetic", base_dir, [adapter], tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists()


def test_dora_is_refused_naming_the_adapter(base_dir, tmp_path):
    adapter, _ = _adapter(base_dir, tmp_path, use_dora=True)
    with pytest.raises(ValueError, match=r"finetuned model 0 \(.*adapter\): DoRA"):
        merge_models("task_arithmetic", base_dir, [adapter], tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(("drop", "have", "lacks"), [("lora_A", "lora_B", "lora_A"),
                                                     ("lora_B", "lora_A", "lora_B")])  # fmt: skip
def test_an_orphan_lora_factor_is_refused_naming_its_module(base_dir, tmp_path, drop, have, lacks):
    """One module's lora_A (or lora_B) deleted: its other factor is an orphan, whose update the
    merge would silently drop (issue 27); refused naming the module, and no output is left."""
    adapter, _ = _adapter(base_dir, tmp_path)
    raw = load_file(str(adapter / "adapter_model.safetensors"))
    gone = next(k for k in sorted(raw) if f"layers.1.self_attn.v_proj.{drop}." in k)
    save_file(
        {k: v for k, v in raw.items() if k != gone}, str(adapter / "adapter_model.safetensors")
    )
    want = rf"module 'model\.layers\.1\.self_attn\.v_proj' has a {have} but no matching {lacks}:"
    with pytest.raises(ValueError, match=want):
        merge_models("task_arithmetic", base_dir, [adapter], tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists()


def test_adapter_without_lora_tensors_is_refused(base_dir, tmp_path):
    adapter, _ = _adapter(base_dir, tmp_path)
    raw = load_file(str(adapter / "adapter_model.safetensors"))
    save_file(
        {k: v for k, v in raw.items() if ".lora_" not in k},
        str(adapter / "adapter_model.safetensors"),
    )
    with pytest.raises(ValueError, match="no lora_A/lora_B tensors"):
        merge_models("task_arithmetic", base_dir, [adapter], tmp_path / "m", progress=False)
    save_file({}, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="no lora_A/lora_B tensors"):
        merge_models("task_arithmetic", base_dir, [adapter], tmp_path / "m", progress=False)


@pytest.mark.parametrize(
    "method",
    [
        "tsv",
        "resm",
        "sce",
        "karcher",
        "multislerp",
        "consensus_ta",
        "consensus_ties",
        "pcb",
        "iso_c",
        "iso_cts",
    ],
)
def test_engine_merges_adapters_from_their_factors_like_dense_weights(base_dir, tmp_path, method):
    """Three adapters (factor path) and their float32 merged full weights (dense path) give the
    same merge within 1e-5 relative (TSV-M / RESM decompose the factors; the others densify
    them; the tensors outside the adapters' targets have τ = 0 for every model)."""
    adapters, fulls = [], []
    for i in range(3):
        a, f = _adapter(base_dir, tmp_path / f"s{i}", seed=10 + i)
        adapters.append(a)
        fulls.append(f)
    kw = {"compute_dtype": "float64", "out_dtype": "float32", "progress": False}
    if method == "resm":
        kw["reweight"] = "none"
    merge_models(method, base_dir, adapters, tmp_path / "a", **kw)
    merge_models(method, base_dir, fulls, tmp_path / "d", **kw)
    base, a, d = _sd(base_dir), _sd(tmp_path / "a"), _sd(tmp_path / "d")
    num = sum(float((a[k].double() - d[k].double()).norm() ** 2) for k in a) ** 0.5
    den = sum(float((d[k].double() - base[k].double()).norm() ** 2) for k in d) ** 0.5
    assert den > 0 and num / den < 1e-5


def test_small_lora_update_survives_a_bf16_base(base_dir, tmp_path):
    """A LoRA update of entry size ~3e-5 on a bf16 base: read from the adapter, its task vector
    has relative error < 1e-3; read through bf16 merged weights (θ0 + s·B·A rounded to bf16,
    what a merged-adapter specialist saved in bf16 holds), most of it is lost to rounding."""
    from transformers import AutoModelForCausalLM

    bf16 = tmp_path / "base_bf16"
    AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16).save_pretrained(bf16)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if (base_dir / f).is_file():
            (bf16 / f).write_text((base_dir / f).read_text())
    adapter, _ = _adapter(bf16, tmp_path / "s", seed=5)
    raw = load_file(str(adapter / "adapter_model.safetensors"))
    scale = 8 / 4
    for k in list(raw):
        if "lora_B" in k:
            raw[k] = raw[k] * 1e-3  # entries of s·B·A ~ 3e-5
    save_file(raw, str(adapter / "adapter_model.safetensors"))
    base = _sd(bf16)
    got = _merged_as_one(bf16, adapter, tmp_path / "m")
    exact_err, rounded_err = [], []
    for k in raw:
        if ".lora_A." not in k:
            continue
        mod = k.split(".lora_A.")[0].removeprefix("base_model.model.")
        a, b = raw[k].double(), raw[k.replace("lora_A", "lora_B")].double()
        tau = scale * b @ a
        w = mod + ".weight"
        read = got[w].double() - base[w].double()
        exact_err.append(float((read - tau).norm() / tau.norm()))
        rounded = (base[w].double() + tau).to(torch.bfloat16).double() - base[w].double()
        rounded_err.append(float((rounded - tau).norm() / tau.norm()))
    assert max(exact_err) < 1e-3
    assert min(rounded_err) > 0.3  # what reading bf16 merged weights would have given


def test_data_methods_on_adapters_equal_them_on_the_merged_models(base_dir, tmp_path):
    """A LoRA specialist's statistics are those of its full weights θ0 + s·B·A (the adapter is
    merged before the passes), and Fisher merging and RegMean of two adapters (RegMean's right
    side from the factors) equal them on peft's merge_and_unload of the same adapters."""
    from hhh_bench.merging.datastats import StatsOptions, specialist_statistics

    rows = [{"prompt": [{"role": "user", "content": "a b c"}],
             "chosen": [{"role": "assistant", "content": c}]} for c in ("d e", "f g h")]  # fmt: skip
    adapters, fulls, stats = [], [], []
    for i in range(2):
        adapter, full = _adapter(base_dir, tmp_path / f"m{i}", seed=3 + i)
        adapters.append(adapter)
        fulls.append(full)
        a, f = tmp_path / f"a{i}.safetensors", tmp_path / f"f{i}.safetensors"
        specialist_statistics(adapter, rows, a, StatsOptions())
        specialist_statistics(full, rows, f, StatsOptions(), tokenizer_from=base_dir)
        sa, sf = load_file(str(a)), load_file(str(f))
        assert sa.keys() == sf.keys() and any(k.startswith("gram/") for k in sa)
        for k in sf:
            torch.testing.assert_close(sa[k], sf[k], rtol=1e-4, atol=1e-7, msg=k)
        stats.append(str(a))
    for method in ("fisher", "regmean"):
        merge_models(method, base_dir, adapters, tmp_path / f"{method}-a", statistics=stats,
                     out_dtype="float32", progress=False)  # fmt: skip
        merge_models(method, base_dir, fulls, tmp_path / f"{method}-f", statistics=stats,
                     out_dtype="float32", progress=False)  # fmt: skip
        got, want = _sd(tmp_path / f"{method}-a"), _sd(tmp_path / f"{method}-f")
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=(method, k))


@pytest.mark.parametrize("how", ["lora_B zero", "lora_alpha 0"])
def test_an_adapter_whose_update_is_zero_is_refused(base_dir, tmp_path, how):
    """Battery 16, B3: an untrained adapter (peft's lora_B init, 0) or one scaled by α = 0 merged
    as nothing (weight_average gave it a third of the weight, towards θ0), without a word, where
    a full copy of θ0 is refused."""
    import json

    adapter, _ = _adapter(base_dir, tmp_path)
    if how == "lora_B zero":
        raw = load_file(str(adapter / "adapter_model.safetensors"))
        save_file({k: torch.zeros_like(v) if ".lora_B." in k else v for k, v in raw.items()},
                  str(adapter / "adapter_model.safetensors"))  # fmt: skip
    else:
        cfg = json.loads((adapter / "adapter_config.json").read_text())
        (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "lora_alpha": 0}))
    with pytest.raises(ValueError, match=r"its update is 0 in every module .*it would merge as "
                       r"nothing; give the trained adapter"):  # fmt: skip
        merge_models("weight_average", base_dir, [adapter], tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists()


def test_an_adapter_config_without_lora_alpha_reads_as_peft_reads_it(base_dir, tmp_path):
    """Battery 20, B-F2: no ``lora_alpha`` in adapter_config.json was read as α = r (scale 1),
    where peft (LoraConfig's default, α = 8) scales by 8/r: the merge doubled the update."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter, _ = _adapter(base_dir, tmp_path, r=4, lora_alpha=16)
    cfg_path = adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["lora_alpha"]
    cfg_path.write_text(json.dumps(cfg))
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter)
    want = {k: v.detach() for k, v in peft_model.merge_and_unload().state_dict().items()}
    got = _merged_as_one(base_dir, adapter, tmp_path / "m")
    for k in got:
        torch.testing.assert_close(got[k], want[k].float(), rtol=0, atol=1e-6, msg=k)


@pytest.mark.parametrize(
    ("field", "value"),
    [("layers_to_transform", [1]), ("layers_pattern", "layers"), ("exclude_modules", ["v_proj"])],
)
def test_an_adapter_that_selects_part_of_its_modules_is_refused(base_dir, tmp_path, field, value):
    """Battery 22, B-F3: ``layers_to_transform=[1]``: peft changes layer 1 only, the merge
    added the file's layer-0 deltas too (1.7e-3 from peft's model), without a word."""
    import json

    adapter, _ = _adapter(base_dir, tmp_path)
    cfg_path = adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg[field] = value
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=rf"\(.*adapter\): .*\({field}"):
        _merged_as_one(base_dir, adapter, tmp_path / "m")
