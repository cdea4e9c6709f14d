"""``hhh-bench merge CONFIG.yaml OUT_DIR``: mergekit YAMLs run with our methods.

Each shared method's YAML gives what ``merge_models`` gives with the mapped params (the table of
docs/merging.md, spelled out here by hand), and for linear, task arithmetic, TIES and SLERP what an
independent formulation of mergekit's documented rules gives; gradients and filters resolve per
tensor as mergekit documents; mergekit's own example YAMLs run or stop with the clear error; bad
input names the parameter."""

from __future__ import annotations

import json
import math
import re
import shutil
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from hhh_bench.mergeyaml import MergekitConfigError, evaluate, layer_position, main, run
from hhh_bench.merging.engine import merge_models
from hhh_bench.models import TinyModelSpec, build_tiny_model, build_word_tokenizer

# 5 layers, so that mergekit's 5-point gradient examples have one value per layer
SPEC = TinyModelSpec(hidden_size=8, intermediate_size=16, num_hidden_layers=5, num_attention_heads=2,
                     num_key_value_heads=2, max_position_embeddings=8)  # fmt: skip


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A base and three perturbed copies (HF folders)."""
    root = tmp_path_factory.mktemp("mergeyaml")
    tok = build_word_tokenizer(["a", "b", "c", "d", "e", "f"])
    base = build_tiny_model(SPEC, tok, seed=0)
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    g = torch.Generator().manual_seed(3)
    for i in range(3):
        m = build_tiny_model(SPEC, tok, seed=0)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=g))
        m.save_pretrained(root / f"m{i}")
    return root


def sd(folder):
    return load_file(str(folder / "model.safetensors"))


def merge_yaml(zoo, tmp_path, text, **kw):
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(textwrap.dedent(text).format(root=zoo))
    out = tmp_path / "out"
    run(cfg, out, progress=False, **kw)
    return sd(out)


def ours(zoo, tmp_path, method, models, base="base", **params):
    out = tmp_path / f"ref-{method}"
    merge_models(method, zoo / base, [zoo / m for m in models], out, progress=False, **params)
    return sd(out)


def assert_same(got, want, atol=0.0):
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=atol, msg=k)


# ---------------------------------------------------------------------------------------------
# Settings: scalars, gradients, filters


def test_gradient_interpolates_across_layers():
    """[0, 1] over 5 layers: layer i at t = i/4 gets i/4; 3 values [0, 1, 0]: t = 0.25 sits
    halfway between the first two (0.5), t = 0.75 halfway between the last two (0.5)."""
    assert [layer_position(f"model.layers.{i}.mlp.up_proj.weight", 5) for i in range(5)] == [
        0,
        0.25,
        0.5,
        0.75,
        1.0,
    ]
    assert layer_position("model.embed_tokens.weight", 5) == 0.0
    assert layer_position("lm_head.weight", 5) == 0.0
    assert evaluate([0, 1], "x", 0.25) == 0.25
    assert evaluate([0, 1, 0], "x", 0.25) == 0.5 and evaluate([0, 1, 0], "x", 0.75) == 0.5
    assert evaluate([0, 0.5, 0.3, 0.7, 1], "x", 0.5) == 0.3


def test_filters_take_the_first_match_then_the_fallback():
    setting = [{"filter": "self_attn", "value": 1}, {"filter": "mlp", "value": [2, 4]},
               {"value": 9}]  # fmt: skip
    assert evaluate(setting, "model.layers.0.self_attn.q_proj.weight", 0.0) == 1
    assert evaluate(setting, "model.layers.4.mlp.up_proj.weight", 1.0) == 4
    assert evaluate(setting, "model.norm.weight", 0.0) == 9
    assert evaluate(setting[:2], "model.norm.weight", 0.0) is None  # the next level is asked


# ---------------------------------------------------------------------------------------------
# Every shared method: the YAML equals merge_models with the mapped params

HEAD = """\
base_model: {root}/base
models:
  - model: {root}/m0
    parameters: {{weight: 0.7, density: 0.6}}
  - model: {root}/m1
    parameters: {{weight: 0.4, density: 0.6}}
"""

CASES = {
    # mergekit method: (extra YAML, our method, our params)
    "task_arithmetic": ("parameters: {{lambda: 0.8}}",
                        "task_arithmetic", {"weights": [0.7, 0.4], "scaling": 0.8}),
    "ties": ("parameters: {{lambda: 0.8}}", "breadcrumbs_ties",
             {"weights": [0.7, 0.4], "scaling": 0.8, "density": 0.6, "gamma": 0.0,
              "normalize": True, "rescale": "none"}),
    "dare_ties": ("", "della", {"weights": [0.7, 0.4], "density": 0.6, "epsilon": 0.0,
                                "normalize": False, "rescale": "l1"}),
    "dare_linear": ("parameters: {{rescale: false}}", "della_linear",
                    {"weights": [0.7, 0.4], "density": 0.6, "epsilon": 0.0, "normalize": False,
                     "rescale": "none"}),
    "breadcrumbs": ("parameters: {{gamma: 0.05}}", "breadcrumbs",
                    {"weights": [0.7, 0.4], "density": 0.6, "gamma": 0.05, "normalize": False,
                     "rescale": "none"}),
    "breadcrumbs_ties": ("parameters: {{gamma: 0.05, normalize: true}}", "breadcrumbs_ties",
                         {"weights": [0.7, 0.4], "density": 0.6, "gamma": 0.05,
                          "normalize": True, "rescale": "none"}),
    "della": ("parameters: {{epsilon: 0.1}}", "della",
              {"weights": [0.7, 0.4], "density": 0.6, "epsilon": 0.1, "normalize": True,
               "rescale": "l1"}),
    "della_linear": ("parameters: {{epsilon: 0.1, lambda: 1.5}}", "della_linear",
                     {"weights": [0.7, 0.4], "density": 0.6, "epsilon": 0.1, "normalize": False,
                      "rescale": "l1", "scaling": 1.5}),
    "multislerp": ("", "multislerp", {"weights": [0.7, 0.4], "origin": "base"}),
}  # fmt: skip


@pytest.mark.parametrize("method", sorted(CASES))
def test_gta_family_maps_to_our_method(zoo, tmp_path, method):
    extra, our_method, params = CASES[method]
    text = HEAD + f"merge_method: {method}\n" + extra + "\n"
    if method in ("multislerp", "task_arithmetic"):  # no density (sparsifies nothing)
        text = text.replace(", density: 0.6", "")
    got = merge_yaml(zoo, tmp_path, text)
    assert_same(got, ours(zoo, tmp_path, our_method, ["m0", "m1"], **params))


WEIGHTLESS = {
    "model_stock": ("parameters: {{filter_wise: true}}", {"filter_wise": True}),
    "sce": ("parameters: {{select_topk: 0.5}}", {"select_topk": 0.5}),
}


@pytest.mark.parametrize("method", sorted(WEIGHTLESS))
def test_weightless_methods(zoo, tmp_path, method):
    extra, params = WEIGHTLESS[method]
    text = f"""\
    merge_method: {method}
    base_model: {{root}}/base
    models:
      - model: {{root}}/base
      - model: {{root}}/m0
      - model: {{root}}/m1
    {extra}
    """
    got = merge_yaml(zoo, tmp_path, text)
    assert_same(got, ours(zoo, tmp_path, method, ["m0", "m1"], **params))


def test_karcher_takes_the_base_as_one_more_point(zoo, tmp_path):
    """mergekit adds a base_model to the models; karcher averages them all."""
    got = merge_yaml(zoo, tmp_path, """\
        merge_method: karcher
        base_model: {root}/base
        models: [{{model: {root}/m0}}, {{model: {root}/m1}}]
        parameters: {{max_iter: 20}}
        """)  # fmt: skip
    want_dir = tmp_path / "ref"
    merge_models("karcher", zoo / "base", [zoo / "m0", zoo / "m1", zoo / "base"], want_dir,
                 progress=False, base_as_model=True, max_iter=20)  # fmt: skip
    assert_same(got, sd(want_dir))


def test_multislerp_without_a_base_interpolates_the_weights(zoo, tmp_path):
    got = merge_yaml(zoo, tmp_path, """\
        merge_method: multislerp
        models:
          - {{model: {root}/m0, parameters: {{weight: 1.0}}}}
          - {{model: {root}/m1, parameters: {{weight: 2.0}}}}
          - {{model: {root}/m2, parameters: {{weight: 1.0}}}}
        """)  # fmt: skip
    want_dir = tmp_path / "ref"
    merge_models("multislerp", zoo / "m0", [zoo / "m0", zoo / "m1", zoo / "m2"], want_dir,
                 progress=False, base_as_model=True, weights=[1.0, 2.0, 1.0], origin="zero")  # fmt: skip
    assert_same(got, sd(want_dir))


# ---------------------------------------------------------------------------------------------
# Independent formulations of mergekit's documented rules


def test_linear_is_the_weighted_mean_of_the_listed_models(zoo, tmp_path):
    """mergekit's examples/linear.yml (text as documented), pointed at the tiny models:
    Σ w_t θ_t / Σ w_t over the three listed models, dtype float16."""
    got = merge_yaml(
        zoo,
        tmp_path,
        """\
        models:
          - model: {root}/m0
            parameters:
              weight: 1.0
          - model: {root}/m1
            parameters:
              weight: 0.3
          - model: {root}/m2
            parameters:
              weight: 0.5
        merge_method: linear
        dtype: float16
        """,
    )
    sds = [sd(zoo / f"m{i}") for i in range(3)]
    for k, v in got.items():
        want = (1.0 * sds[0][k] + 0.3 * sds[1][k] + 0.5 * sds[2][k]) / 1.8
        assert v.dtype == torch.float16
        torch.testing.assert_close(v, want.half(), rtol=1e-3, atol=1e-3, msg=k)


def test_task_arithmetic_by_hand(zoo, tmp_path):
    got = merge_yaml(zoo, tmp_path, HEAD.replace(", density: 0.6", "")
                     + "merge_method: task_arithmetic\nparameters: {{lambda: 0.5}}\n")  # fmt: skip
    b, m0, m1 = sd(zoo / "base"), sd(zoo / "m0"), sd(zoo / "m1")
    for k in b:
        want = b[k] + 0.5 * (0.7 * (m0[k] - b[k]) + 0.4 * (m1[k] - b[k]))
        torch.testing.assert_close(got[k], want, rtol=0, atol=1e-6, msg=k)


def _mergekit_ties(b, fts, weights, density, normalize):
    """TIES as mergekit documents it, per tensor: keep the int(density·n) largest |τ_t|, weigh,
    elect the sign of the weighted sum (0 counts +), sum the agreeing entries, divide by the
    agreeing weights' sum (normalize; 0 → 1)."""
    xs, ws = [], []
    for ft, w in zip(fts, weights, strict=True):
        tau = (ft - b).flatten()
        k = int(density * tau.numel())
        keep = torch.zeros_like(tau)
        keep[tau.abs().argsort(descending=True, stable=True)[:k]] = 1
        xs.append(w * tau * keep)
        ws.append(w)
    x = torch.stack(xs)
    sign = torch.where(x.sum(0) >= 0, 1.0, -1.0)
    agree = (torch.sign(x) == sign).float()
    total = (x * agree).sum(0)
    if normalize:
        div = (torch.tensor(ws).view(-1, 1) * agree).sum(0)
        total = total / torch.where(div == 0, 1.0, div)
    return b + total.view(b.shape)


@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.7, 0.4)])
def test_ties_by_hand(zoo, tmp_path, weights):
    """Weights 1 and normalize: our ties; other weights: breadcrumbs_ties with gamma 0 (its
    divisor is the agreeing weights' sum, as mergekit's)."""
    text = f"""\
    merge_method: ties
    base_model: {{root}}/base
    parameters: {{{{density: 0.5}}}}
    models:
      - {{{{model: {{root}}/m0, parameters: {{{{weight: {weights[0]}}}}}}}}}
      - {{{{model: {{root}}/m1, parameters: {{{{weight: {weights[1]}}}}}}}}}
    """
    got = merge_yaml(zoo, tmp_path, text)
    info = json.loads((tmp_path / "out" / "merge_info.json").read_text())
    assert info["method"] == ("ties" if weights == (1.0, 1.0) else "breadcrumbs_ties")
    b, m0, m1 = sd(zoo / "base"), sd(zoo / "m0"), sd(zoo / "m1")
    for k in b:
        want = _mergekit_ties(b[k], [m0[k], m1[k]], weights, 0.5, True)
        torch.testing.assert_close(got[k], want, rtol=0, atol=1e-6, msg=k)


def _slerp(t, v0, v1):
    """SLERP of two flattened tensors as mergekit documents it (lerp when |cos| > 0.9995)."""
    a, b = v0.flatten().double(), v1.flatten().double()
    cos = float((a / a.norm()) @ (b / b.norm()))
    if abs(cos) > 0.9995:
        return ((1 - t) * v0.double() + t * v1.double()).float()
    om = math.acos(cos)
    out = (math.sin((1 - t) * om) * a + math.sin(t * om) * b) / math.sin(om)
    return out.view(v0.shape).float()


def test_gradient_slerp_example_by_hand(zoo, tmp_path):
    """mergekit's examples/gradient-slerp.yml (text as documented, the layer range set to the tiny
    model's 5 layers): t per tensor from the filter, then the layer's place in the gradient."""
    got = merge_yaml(
        zoo,
        tmp_path,
        """\
        slices:
          - sources:
              - model: {root}/base
                layer_range: [0, 5]
              - model: {root}/m0
                layer_range: [0, 5]
        # or, the equivalent models: syntax:
        # models:
        #   - model: psmathur/orca_mini_v3_13b
        #   - model: garage-bAInd/Platypus2-13B
        merge_method: slerp
        base_model: {root}/base
        parameters:
          t:
            - filter: self_attn
              value: [0, 0.5, 0.3, 0.7, 1]
            - filter: mlp
              value: [1, 0.5, 0.7, 0.3, 0]
            - value: 0.5 # fallback for rest of tensors
        dtype: float32
        """,
    )
    b, m0 = sd(zoo / "base"), sd(zoo / "m0")
    attn, mlp = [0, 0.5, 0.3, 0.7, 1], [1, 0.5, 0.7, 0.3, 0]
    for k in b:
        layer = int(k.split(".")[2]) if k.startswith("model.layers.") else None
        t = attn[layer] if "self_attn" in k else mlp[layer] if "mlp" in k else 0.5
        torch.testing.assert_close(got[k], _slerp(t, b[k], m0[k]), rtol=0, atol=1e-6, msg=k)
    info = json.loads((tmp_path / "out" / "merge_info.json").read_text())
    assert info["params"]["t"] == 0.5  # the most common value; the others per tensor
    assert info["tensor_params"]["model.layers.2.self_attn.q_proj.weight"]["t"] == 0.3
    assert info["tensor_params"]["model.layers.2.mlp.up_proj.weight"]["t"] == 0.7


def test_weight_gradient_and_filter_per_tensor(zoo, tmp_path):
    """A model's weight [0, 1] across layers on mlp tensors only, 0.5 elsewhere (the global
    fallback fills in what the model's own setting leaves out)."""
    got = merge_yaml(
        zoo,
        tmp_path,
        """\
        merge_method: task_arithmetic
        base_model: {root}/base
        parameters: {{weight: 0.5}}
        models:
          - model: {root}/m0
            parameters:
              weight:
                - filter: mlp
                  value: [0, 1]
        """,
    )
    b, m0 = sd(zoo / "base"), sd(zoo / "m0")
    for k in b:
        w = int(k.split(".")[2]) / 4 if ".mlp." in k else 0.5
        torch.testing.assert_close(got[k], b[k] + w * (m0[k] - b[k]), rtol=0, atol=1e-6, msg=k)


def test_tensor_params_hook_caches_per_tensor_knobs(zoo, tmp_path):
    """merge_models' tensor_params: each tensor merged with its own density (equal to merging it
    alone with that density); a sweep cache keyed on the tensor's own knobs is reused."""
    from hhh_bench.merging import merge_tensors

    def dens(k):
        return {"density": 0.5} if ".mlp." in k else {}

    fts = [zoo / "m0", zoo / "m1"]
    for name in ("a", "b"):
        res = merge_models("breadcrumbs", zoo / "base", fts, tmp_path / name, progress=False,
                           cache_dir=tmp_path / "cache", tensor_params=dens, density=0.9)  # fmt: skip
    assert res.cache_hits > 0 and res.cache_misses == 0
    got, b = sd(tmp_path / "b"), sd(zoo / "base")
    m0, m1 = sd(zoo / "m0"), sd(zoo / "m1")
    for k in ("model.layers.0.mlp.up_proj.weight", "model.layers.0.self_attn.q_proj.weight"):
        want = merge_tensors("breadcrumbs", b[k], [m0[k], m1[k]], name=k,
                             density=0.5 if ".mlp." in k else 0.9)  # fmt: skip
        torch.testing.assert_close(got[k], want, rtol=0, atol=0)
    info = json.loads((tmp_path / "b" / "merge_info.json").read_text())
    assert info["tensor_params"]["model.layers.0.mlp.up_proj.weight"] == {"density": 0.5}
    with pytest.raises(ValueError, match="plans over all tensors"):
        merge_models("ties", zoo / "base", fts, tmp_path / "c", progress=False, scope="global",
                     tensor_params=dens)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# mergekit's documented examples, the output folder, the command


def test_documented_ties_example_refuses_per_model_densities(zoo, tmp_path):
    """mergekit's examples/ties.yml gives each model its own density (one a gradient): our
    methods take one density, so it stops naming the parameter."""
    text = """\
        models:
          - model: {root}/m0
            parameters:
              density: [1, 0.7, 0.1] # density gradient
              weight: 1.0
          - model: {root}/m1
            parameters:
              density: 0.5
              weight: [0, 0.3, 0.7, 1] # weight gradient
          - model: {root}/m2
            parameters:
              density: 0.33
              weight:
                - filter: mlp
                  value: 0.5
                - value: 0
        merge_method: ties
        base_model: {root}/base
        parameters:
          normalize: true
          int8_mask: true
        dtype: float16
        """
    with pytest.raises(MergekitConfigError, match="parameter 'density' differs between the models"):
        merge_yaml(zoo, tmp_path, text)


def test_documented_bio_merge_example_runs_and_loads(zoo, tmp_path):
    """mergekit's examples/bio-merge.yml: ties, equal densities, normalize false, int8_mask."""
    got = merge_yaml(
        zoo,
        tmp_path,
        """\
        models:
          - model: {root}/m0
            parameters:
              density: 0.5
              weight: 0.5
          - model: {root}/m1
            parameters:
              density: 0.5
              weight: 0.5
        merge_method: ties
        base_model: {root}/base
        parameters:
          normalize: false
          int8_mask: true
        dtype: float16
        """,
    )
    b, m0, m1 = sd(zoo / "base"), sd(zoo / "m0"), sd(zoo / "m1")
    for k in b:
        want = _mergekit_ties(b[k].float(), [m0[k], m1[k]], (0.5, 0.5), 0.5, False).half()
        torch.testing.assert_close(got[k], want, rtol=1e-3, atol=1e-3, msg=k)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "out"
    model = AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out) is not None
    assert next(model.parameters()).dtype == torch.float16
    for f in ("README.md", "merge_info.json", "mergekit_config.yml", "config.json"):
        assert (out / f).is_file(), f
    assert "bio" not in (out / "mergekit_config.yml").read_text()  # the YAML as given
    assert "int8_mask: true" in (out / "mergekit_config.yml").read_text()


def test_documented_passthrough_example_is_refused(zoo, tmp_path):
    """mergekit's examples/orcamini-platy-44layer.yml (a frankenmerge)."""
    text = """\
        slices:
          - sources:
            - model: {root}/m0
              layer_range: [0, 3]
          - sources:
            - model: {root}/m1
              layer_range: [2, 5]
        merge_method: passthrough
        dtype: float16
        """
    with pytest.raises(MergekitConfigError, match="'passthrough' is not supported"):
        merge_yaml(zoo, tmp_path, text)


def test_cli_runs_and_errors_exit_2_without_traceback(zoo, tmp_path, capsys):
    from hhh_bench.cli import SUBCOMMANDS

    assert "merge" in SUBCOMMANDS
    cfg = tmp_path / "c.yaml"
    cfg.write_text(HEAD.format(root=zoo) + "merge_method: task_arithmetic\n"
                   + "tokenizer_source: union\n")  # fmt: skip
    assert main([str(cfg), str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "option 'tokenizer_source' is not supported" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    cfg.write_text(HEAD.replace(", density: 0.6", "").format(root=zoo)
                   + "merge_method: task_arithmetic\n")  # fmt: skip
    assert SUBCOMMANDS["merge"]([str(cfg), str(tmp_path / "o"), "--no-progress"]) == 0
    assert "merged" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Bad input names the parameter or option

BAD = {
    "density above 1": (HEAD.replace("density: 0.6", "density: 1.5") + "merge_method: ties\n",
                        "parameter 'density' must be in \\(0, 1\\]"),
    "density 0": (HEAD.replace("density: 0.6", "density: 0") + "merge_method: dare_ties\n",
                  "parameter 'density' must be in \\(0, 1\\]"),
    "negative multislerp weight": (
        HEAD.replace(", density: 0.6", "").replace("weight: 0.4", "weight: -0.4")
        + "merge_method: multislerp\n", "parameter 'weight' of model 1 is -0.4"),
    "slerp with three models": (
        "merge_method: slerp\nbase_model: {root}/base\nparameters: {{t: 0.5}}\n"
        "models: [{{model: {root}/m0}}, {{model: {root}/m1}}]\n",
                                "'slerp' interpolates two models"),
    "model_stock with one model": (
        "merge_method: model_stock\nbase_model: {root}/base\nmodels: [{{model: {root}/m0}}]\n",
        "'model_stock' needs a base_model and at least 2"),
    "t gradient too long": (
        "merge_method: slerp\nbase_model: {root}/base\nmodels: [{{model: {root}/m0}}]\n"
        "parameters: {{t: [0, 0.1, 0.2, 0.3, 0.4, 0.5, 1]}}\n",
        "parameter 't' is a gradient of 7 values but the model has 5 layers"),
    "t gradient empty": (
        "merge_method: slerp\nbase_model: {root}/base\nmodels: [{{model: {root}/m0}}]\n"
        "parameters: {{t: []}}\n", "parameter 't' must be a value"),
    "t missing": ("merge_method: slerp\nbase_model: {root}/base\nmodels: [{{model: {root}/m0}}]\n",
                  "parameter 't' of slerp is required"),
    "t out of range": (
        "merge_method: slerp\nbase_model: {root}/base\nmodels: [{{model: {root}/m0}}]\n"
        "parameters: {{t: 1.5}}\n", "merge parameter 't' must be in \\[0, 1\\]"),
    "weight missing": (HEAD.replace("weight: 0.4, ", "") + "merge_method: ties\n",
                       "parameter 'weight' is required for model"),
    "unknown parameter": (HEAD + "merge_method: ties\nparameters: {{densty: 0.5}}\n",
                          "parameter 'densty' is not one of ties's"),
    "global parameter per model": (HEAD.replace("density: 0.6}}", "density: 0.6, lambda: 2}}")
                                   + "merge_method: ties\n", "parameter 'lambda' is global"),
    "density for task_arithmetic": (HEAD + "merge_method: task_arithmetic\n",
                                    "parameter 'density' is 0.6 for task_arithmetic"),
    "tokenizer_source": (HEAD + "merge_method: ties\ntokenizer_source: base\n",
                         "option 'tokenizer_source' is not supported"),
    "unknown option": (HEAD + "merge_method: ties\nout_dtpye: float16\n",
                       "unknown option 'out_dtpye'"),
    "bad dtype": (HEAD + "merge_method: ties\ndtype: int8\n", "dtype 'int8' is not one of"),
    "partial slice": (
        "merge_method: slerp\nbase_model: {root}/base\nparameters: {{t: 0.5}}\nslices:\n"
        "  - sources:\n    - {{model: {root}/base, layer_range: [0, 4]}}\n"
        "    - {{model: {root}/m0, layer_range: [0, 4]}}\n",
        "option 'layer_range' is \\[0, 4\\] but .* has 5 layers"),
    "two slices": (
        "merge_method: slerp\nbase_model: {root}/base\nparameters: {{t: 0.5}}\nslices:\n"
        "  - sources: [{{model: {root}/base, layer_range: [0, 5]}}]\n"
        "  - sources: [{{model: {root}/m0, layer_range: [0, 5]}}]\n",
        "option 'slices' has 2 slices"),
    "lora syntax": (HEAD.replace("m1\n", "m1+{root}/adapter\n") + "merge_method: ties\n",
                    "MODEL\\+LORA syntax"),
    "nuslerp": (HEAD + "merge_method: nuslerp\n", "'nuslerp' is not supported"),
    "linear with normalize false": (
        HEAD.replace(", density: 0.6", "").replace("base_model: {root}/base\n", "")
        + "merge_method: linear\nparameters: {{normalize: false}}\n",
        "parameter 'normalize' is false for linear and the weights sum to 1.1"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_a_clear_error(zoo, tmp_path, case):
    text, match = BAD[case]
    with pytest.raises(ValueError, match=match):
        merge_yaml(zoo, tmp_path, text)
    assert not (tmp_path / "out").exists()


def test_models_of_another_base_or_tokenizer_are_refused_as_by_the_merge_stage(zoo, tmp_path):
    """Battery 9 (7): the YAML merge took m1 whatever it was trained from and whatever its
    tokenizer; the pipeline's merge stage's checks now run here too (a train output recording
    another θ0; a tokenizer whose ids stand for other words). The zoo's own models pass."""
    import shutil

    from hhh_bench.stages.merge import check_tokenizers

    m1 = tmp_path / "m1"
    shutil.copytree(zoo / "m1", m1)
    (m1 / "key.json").write_text(json.dumps({"stage": "train", "payload": {"base": "c" * 64},
                                             "inputs": ["base/cccccccccccc"]}))  # fmt: skip
    text = HEAD.replace("{root}/m1", str(m1)) + "merge_method: ties\n"
    # a base folder that is no stage output: said as one hhh-bench cannot match (battery 11, m19)
    with pytest.raises(ValueError, match=r"merge.yaml: models\[1\]='.*m1' was trained from the θ0 "
                       r"stage output base/cccccccccccc, which is not on this machine beside it "
                       r"\(looked for .*base/cccccccccccc\), so .*merge.yaml: base_model='.*' "
                       r"cannot be compared with it"):  # fmt: skip
        merge_yaml(zoo, tmp_path, text)
    (m1 / "key.json").unlink()
    tok = json.loads((zoo / "base" / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]  # the same words, two ids swapped
    (m1 / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ValueError, match=r"models\[1\]='.*m1' has another tokenizer than .*: 2 "
                       r"token id\(s\) stand for other tokens \(id \d+ is 'b' there, 'a'"):  # fmt: skip
        merge_yaml(zoo, tmp_path, text)
    assert not (tmp_path / "out").exists()
    shutil.copy(zoo / "base" / "tokenizer.json", m1 / "tokenizer.json")
    check_tokenizers(str(zoo / "base"), [str(m1), str(zoo / "m0")])  # the same words: fine


def test_a_specialist_with_another_chat_template_is_said(zoo, tmp_path, caplog):
    """The merged folder takes the base's tokenizer files: a specialist whose chat template
    differs is merged without a word otherwise (battery 14), and evaluated with the base's."""
    import logging
    import shutil

    from hhh_bench.stages.merge import check_tokenizers

    m1 = tmp_path / "m1"
    shutil.copytree(zoo / "m1", m1)
    for f in (zoo / "base").glob("*token*"):  # its tokenizer: the base's
        shutil.copy(f, m1 / f.name)
    with caplog.at_level(logging.WARNING, logger="hhh_bench"):
        check_tokenizers(str(zoo / "base"), [str(zoo / "m0"), str(m1)])
        assert not caplog.records  # the zoo's own: the same template
        (m1 / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
        check_tokenizers(str(zoo / "base"), [str(zoo / "m0"), str(m1)])
    [rec] = caplog.records
    assert re.search(r"merge.models\[1\]='.*m1' has another chat template than merge.base=",
                     rec.getMessage()), rec.getMessage()  # fmt: skip


def test_battery17_u5_overwrite_refuses_a_folder_holding_files_no_merge_wrote(
    tmp_path, zoo, capsys
):
    """U5: ``hhh-bench merge ... --overwrite`` removed the notes a user had added to an earlier
    merge's folder, unnamed."""
    cfg, out = tmp_path / "m.yaml", tmp_path / "out"
    cfg.write_text(f"merge_method: task_arithmetic\nbase_model: {zoo / 'base'}\nmodels:\n"
                   f"  - model: {zoo / 'm0'}\n    parameters: {{weight: 1.0}}\n")  # fmt: skip
    assert main([str(cfg), str(out), "--no-progress"]) == 0
    written = json.loads((out / "merge_info.json").read_text())["files"]
    assert "model.safetensors" in written and "README.md" in written
    assert main([str(cfg), str(out), "--overwrite", "--no-progress"]) == 0  # its own files only
    (out / "notes.txt").write_text("mine")
    (out / "sub").mkdir()
    (out / "sub" / "keep.txt").write_text("mine too")
    capsys.readouterr()
    assert main([str(cfg), str(out), "--overwrite", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds file(s) the earlier merge did not write: notes.txt, sub/keep.txt" in err
    assert (out / "notes.txt").read_text() == "mine" and (out / "sub" / "keep.txt").is_file()
    # battery 18, F4: a file the merge wrote, changed since (a user's notes in its model card)
    (out / "notes.txt").unlink()
    shutil.rmtree(out / "sub")
    with open(out / "README.md", "a") as f:
        f.write("my notes\n")
    assert main([str(cfg), str(out), "--overwrite", "--no-progress"]) == 2
    assert "the earlier merge wrote, changed since: README.md" in capsys.readouterr().err
    assert (out / "README.md").read_text().endswith("my notes\n")
