"""Bad input gets a ValueError that names the parameter (and the model index)."""

from __future__ import annotations

import pytest
import torch

from hhh_bench.merging import get_method, merge_state_dicts, merge_tensors

B = torch.zeros(2, 3)
FT = [torch.ones(2, 3), torch.full((2, 3), 2.0)]


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown merge method 'tie'.*'ties'.*'tsv'"):
        merge_tensors("tie", B, FT)


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(
        ValueError, match=r"unknown parameter\(s\) \['densty'\]; valid: .*'density'"
    ):
        merge_tensors("ties", B, FT, densty=0.3)


@pytest.mark.parametrize("density", [0.0, -0.1, 1.01, float("nan")])
def test_density_outside_0_1(density):
    for method in ("ties", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"):
        with pytest.raises(ValueError, match="'density' must be in \\(0, 1\\]"):
            merge_tensors(method, B, FT, density=density)


def test_a_density_that_keeps_nothing_of_a_tensor_names_it_and_the_least_density():
    """k = int(density·n) = 0 for the 6-entry 'b' (and the 12-entry 'a' too at 1e-9): TIES
    would zero it whole and leave θ0 there, silently (issue 27); the smallest tensor is named
    with the density that keeps one entry, 1/6."""
    base = {"a": torch.zeros(3, 4), "b": torch.zeros(6)}
    fts = [{"a": torch.arange(1.0, 13.0).view(3, 4), "b": torch.arange(13.0, 19.0)}]
    for density in (1e-9, 0.1):
        with pytest.raises(
            ValueError,
            match=rf"'density' = {density:g} keeps k = int\({density:g} × 6\) = 0 of the 6 "
            r"entries of tensor 'b' \(its smallest\).*at least 1/6 \(≈ 0\.167\)",
        ):
            merge_state_dicts("ties", base, fts, density=density)
    with pytest.raises(ValueError, match=r"× 18\) = 0 of the 18 entries of the model \(scope"):
        merge_state_dicts("ties", base, fts, density=0.05, scope="global")
    out = merge_state_dicts("ties", base, fts, density=0.2, scope="global")  # k = 3 of 18
    assert out["b"].tolist() == [0, 0, 0, 16, 17, 18] and not out["a"].any()


def test_a_drop_rate_that_keeps_under_one_entry_of_a_tensor_is_refused():
    """(1 − p)·n < 1: on average DARE keeps less than one entry of the 6-entry 'b'."""
    base = {"a": torch.zeros(3, 4), "b": torch.zeros(6)}
    fts = [{"a": torch.ones(3, 4), "b": torch.ones(6)}]
    for method in ("dare_ta", "dare_ties"):
        with pytest.raises(
            ValueError, match=r"'drop_rate' = 0\.9 keeps on average .* = 0\.6 of the 6 entries "
            r"of tensor 'b' \(its smallest\).*at most 1 − 1/6"
        ):  # fmt: skip
            merge_state_dicts(method, base, fts, drop_rate=0.9)
    assert merge_state_dicts("dare_ta", base, fts, drop_rate=0.8)["b"].shape == (6,)


@pytest.mark.parametrize("drop_rate", [1.0, -0.01, 1.5])
def test_drop_rate_outside_0_1(drop_rate):
    for method in ("dare_ta", "dare_ties"):
        with pytest.raises(ValueError, match="'drop_rate' must be in \\[0, 1\\)"):
            merge_tensors(method, B, FT, drop_rate=drop_rate)


@pytest.mark.parametrize(
    ("method", "params", "match"),
    [
        ("tsv", {"rank_fraction": 0.0}, "'rank_fraction'"),
        ("tsv", {"rank_fraction": 1.5}, "'rank_fraction'"),
        ("tsv", {"embeddings": "keep"}, "'embeddings' must be one of"),
        ("iso_cts", {"common_space_fraction": 0.0}, r"'common_space_fraction' must be in \(0, 1\)"),
        ("iso_cts", {"common_space_fraction": 1.0}, r"'common_space_fraction' .* got 1.0"),
        ("iso_cts", {"common_space_fraction": -0.2}, "'common_space_fraction' must be in"),
        ("iso_cts", {"common_space_fraction": 1.5}, "'common_space_fraction' must be in"),
        ("iso_cts", {"common_space_fraction": float("nan")}, "'common_space_fraction' must be"),
        ("iso_cts", {"common_space_fraction": "0.8"}, "'common_space_fraction' must be float"),
        ("iso_c", {"rank_rtol": 0.0}, r"'rank_rtol' must be in \(0, 1\) or null, got 0.0"),
        ("iso_cts", {"rank_rtol": 1.0}, "'rank_rtol' must be in"),
        ("iso_c", {"embeddings": "tsv"}, r"'embeddings' must be one of \['mean', 'iso', 'base'\]"),
        ("iso_cts", {"storage_floor": "yes"}, "'storage_floor' must be bool"),
        (
            "iso_c",
            {"common_space_fraction": 0.5},
            r"unknown parameter\(s\) \['common_space_fraction'\]",
        ),
        ("resm", {"kappa": 0.0}, "'kappa'"),
        ("resm", {"outlier_ratio_M": -1.0}, "'outlier_ratio_M'"),
        ("resm", {"rank_spread": 2.0}, "'rank_spread'"),
        ("resm", {"reweight": "huber"}, r"'reweight' must be one of \['huber_mad', 'none'\]"),
        ("resm", {"rank": "owl"}, "'rank' must be one of"),
        ("ties", {"scope": "layer"}, "'scope' must be one of"),
        ("breadcrumbs", {"gamma": 1.0}, r"'gamma' must be in \[0, 1\)"),
        ("breadcrumbs_ties", {"gamma": -0.01}, r"'gamma' must be in \[0, 1\)"),
        ("breadcrumbs", {"rescale": "l2"}, r"'rescale' must be one of \['none', 'l1'\]"),
        ("breadcrumbs", {"normalize": "yes"}, "'normalize' must be bool"),
        ("della", {"epsilon": -0.1}, "'epsilon' must be >= 0"),
        ("slerp", {"t": 1.5}, r"'t' must be in \[0, 1\], got 1.5"),
        ("slerp", {"t": -0.1}, r"'t' must be in \[0, 1\]"),
        ("model_stock", {"filter_wise": 1}, "'filter_wise' must be bool"),
        ("sce", {"select_topk": 0.0}, r"'select_topk' must be in \(0, 1\], got 0.0"),
        ("sce", {"select_topk": 1.5}, r"'select_topk' must be in \(0, 1\]"),
        ("sce", {"select_topk": -0.2}, r"'select_topk' must be in \(0, 1\]"),
        ("sce", {"select_topk": float("nan")}, r"'select_topk' must be in \(0, 1\]"),
        ("sce", {"uniform_below": -1e-6}, "'uniform_below' must be >= 0"),
        ("karcher", {"max_iter": 0}, "'max_iter' must be >= 1, got 0"),
        ("karcher", {"max_iter": 2.5}, "'max_iter' must be int"),
        ("karcher", {"tol": 0.0}, "'tol' must be > 0"),
        ("karcher", {"tol": -1e-5}, "'tol' must be > 0"),
        ("karcher", {"tol": float("inf")}, "'tol' must be > 0 and finite"),
        ("karcher", {"weights": [1.0, -0.5]}, r"'weights' entry 1 is -0.5: karcher .* >= 0"),
        ("karcher", {"weights": [0.0, 0.0]}, "'weights' are all 0: karcher"),
        ("multislerp", {"weights": [-1.0, 2.0]}, r"'weights' entry 0 is -1: multislerp .* >= 0"),
        ("multislerp", {"weights": [0.0, 0.0]}, "'weights' are all 0: multislerp"),
        ("multislerp", {"eps": 0.0}, "'eps' must be > 0"),
        ("multislerp", {"eps": -1e-8}, "'eps' must be > 0"),
        ("multislerp", {"origin": "mean"}, r"'origin' must be one of \['base', 'zero'\]"),
        ("multislerp", {"normalize_weights": "no"}, "'normalize_weights' must be bool"),
        ("della", {"density": 0.3, "epsilon": 0.3}, r"'epsilon' = 0.3 .* \[0, 0.6\] outside"),
        (
            "della_linear",
            {"density": 0.8, "epsilon": 0.2},
            r"epsilon < min\(density, 1 − density\)",
        ),
        ("della", {"rescale": "l2"}, r"'rescale' must be one of \['inverse_p', 'l1', 'none'\]"),
        ("ties", {"density": "0.2"}, "'density' must be float"),
        ("task_arithmetic", {"scaling": float("inf")}, "'scaling' must be finite"),
        ("ties", {"scaling": 1e40}, r"'scaling' = 1e\+40 is beyond .* float32 \(\|λ\| ≤ 3\.4e\+38"),
        ("task_arithmetic", {"weights": [1, -1e39]}, r"'weights' entry 1 = -1e\+39 is beyond"),
        ("task_arithmetic", {"seed": 1.5}, "'seed' must be int"),
        ("task_arithmetic", {"weights": "1,2"}, "'weights' must be"),
        ("task_arithmetic", {"weights": [1.0, float("nan")]}, "'weights' entry 1"),
        ("task_arithmetic", {"compute_dtype": "float16"}, "'compute_dtype' must be one of"),
        ("task_arithmetic", {"device": "gpu0"}, "'device'"),
        ("fisher", {"minimal_fisher_weight": -1e-6}, "'minimal_fisher_weight' must be >= 0"),
        ("fisher", {"normalize_fisher_weight": 1}, "'normalize_fisher_weight' must be bool"),
        ("fisher", {"statistics": []}, "'statistics' is empty"),
        ("fisher", {"statistics": "a.safetensors"}, "'statistics' must be"),
        ("regmean", {"statistics": ["a", " "]}, "'statistics' entry 1 is an empty path"),
        (
            "regmean",
            {"reduce_non_diagonal_ratio": 1.5},
            r"'reduce_non_diagonal_ratio' must be in \[0, 1\]",
        ),
        ("regmean", {"reduce_non_diagonal_ratio": -0.1}, "'reduce_non_diagonal_ratio'"),
    ],
)
def test_bad_hyperparameters_are_named(method, params, match):
    with pytest.raises(ValueError, match=match):
        get_method(method).make_params(**params)


def test_a_non_finite_merged_value_names_the_tensor_and_the_scaling():
    """λ = 1e40 is a float64 number, so float64 arithmetic takes it, but the float32 result
    overflows: the error names the tensor and the knobs that scaled it (issue 27), for the
    fused linear path and the stack path alike."""
    for method in ("task_arithmetic", "ties"):
        with pytest.raises(
            ValueError,
            match=r"parameter 'w': the merged tensor .*holds \d NaN/Inf value\(s\) with merge "
            r"parameter 'scaling' = 1e\+40, 'weights' = null \(overflow: lower the scaling",
        ):
            merge_tensors(method, B, FT, name="w", scaling=1e40, compute_dtype="float64")


def test_weights_length_must_match_the_models():
    with pytest.raises(ValueError, match="'weights' has 3 entries but 2 finetuned models"):
        merge_tensors("task_arithmetic", B, FT, weights=[1, 1, 1])


def test_weight_average_refuses_weights_summing_to_zero():
    with pytest.raises(ValueError, match="'weights' sums to 0"):
        merge_tensors("weight_average", B, FT, weights=[1, -1])


def test_no_finetuned_models():
    with pytest.raises(ValueError, match="no finetuned models"):
        merge_tensors("ties", B, [])
    with pytest.raises(ValueError, match="no finetuned models"):
        merge_state_dicts("ties", {"w": B}, [])


def test_shape_mismatch_names_parameter_and_model():
    with pytest.raises(ValueError, match=r"'lm_head.weight': finetuned model 1 has shape \(3, 3\)"):
        merge_tensors("task_arithmetic", B, [FT[0], torch.zeros(3, 3)], name="lm_head.weight")


def test_dtype_mismatch_names_parameter_and_model():
    with pytest.raises(ValueError, match="'w': finetuned model 0 has dtype torch.bfloat16"):
        merge_tensors("ties", B, [FT[0].bfloat16(), FT[1]], name="w")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_names_parameter_and_model(bad):
    broken = FT[1].clone()
    broken[0, 1] = bad
    with pytest.raises(ValueError, match="'w': finetuned model 1 holds 1 NaN/Inf"):
        merge_tensors("tsv", B, [FT[0], broken], name="w")
    base = B.clone()
    base[1, 2] = bad
    with pytest.raises(ValueError, match="'w': the base model holds 1 NaN/Inf"):
        merge_tensors("tsv", base, FT, name="w")


def test_integer_tensors_must_be_equal():
    ids = torch.arange(4)
    assert torch.equal(merge_tensors("ties", ids, [ids.clone(), ids.clone()], name="pos"), ids)
    with pytest.raises(
        ValueError, match="'pos': finetuned model 1 is a torch.int64 tensor that differs"
    ):
        merge_tensors("ties", ids, [ids.clone(), ids + 1], name="pos")


def test_key_mismatch_names_the_model():
    base = {"a": B, "b": B}
    with pytest.raises(
        ValueError, match=r"finetuned model 1 lacks 1 of the base's keys, e.g. \['b'\]"
    ):
        merge_state_dicts("task_arithmetic", base, [base, {"a": B}])
    with pytest.raises(
        ValueError, match=r"finetuned model 0 has 1 keys the base lacks, e.g. \['c'\]"
    ):
        merge_state_dicts("task_arithmetic", base, [{**base, "c": B}])


def test_state_dict_shape_mismatch_names_the_key():
    base = {"a": B, "b": B}
    with pytest.raises(ValueError, match=r"'b': finetuned model 0 has shape \(3,\)"):
        merge_state_dicts("ties", base, [{"a": B, "b": torch.zeros(3)}])


@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties", "della", "della_linear"])
def test_breadcrumbs_and_della_density_that_keeps_nothing_names_the_smallest_tensor(method):
    """int(0.1 × 6) = 0 entries of the 6-entry 'b' (the 12-entry 'a' keeps 1): refused from the
    shapes with TIES's check and message (DELLA: under one entry kept in expectation), not
    zeroed silently; 0.2 keeps one entry of 'b' and passes."""
    base = {"a": torch.zeros(3, 4), "b": torch.zeros(6)}
    fts = [{"a": torch.ones(3, 4), "b": torch.ones(6)}]
    eps = {"epsilon": 0.05} if method.startswith("della") else {}
    with pytest.raises(
        ValueError, match=r"'density' = 0.1 keeps k = int\(0.1 × 6\) = 0 of the 6 entries of "
        r"tensor 'b' \(its smallest\).*at least 1/6"
    ):  # fmt: skip
        merge_state_dicts(method, base, fts, density=0.1, **eps)
    assert merge_state_dicts(method, base, fts, density=0.2, **eps)["b"].shape == (6,)


def test_slerp_takes_one_or_two_models_and_model_stock_two_or_more():
    three = [*FT, torch.full((2, 3), 3.0)]
    with pytest.raises(ValueError, match="'slerp' interpolates two models: .* got 3"):
        merge_tensors("slerp", B, three)
    with pytest.raises(ValueError, match="'model_stock' needs at least 2 finetuned models.* got 1"):
        merge_tensors("model_stock", B, FT[:1])


def test_model_stock_with_antipodal_task_vectors_names_the_tensor():
    """N = 2, τ2 = −τ1: cos = −1 = −1/(N − 1), t = 2·(−1)/0."""
    with pytest.raises(ValueError, match=r"parameter 'w': model_stock's mean cosine .* infinite"):
        merge_tensors("model_stock", B, [FT[0], -FT[0]], name="w")


def test_sce_takes_two_or_more_models_and_a_select_topk_that_keeps_something():
    """One model: nothing to select by variance.  select_topk = .1 keeps int(.1 × 6) = 0 of the
    6-entry 'b': refused from the shapes with TIES's message, naming select_topk."""
    with pytest.raises(ValueError, match="'sce' needs at least 2 finetuned models.* got 1"):
        merge_tensors("sce", B, FT[:1])
    base = {"a": torch.zeros(3, 4), "b": torch.zeros(6)}
    fts = [{"a": torch.randn(3, 4), "b": torch.randn(6)} for _ in range(2)]
    with pytest.raises(
        ValueError, match=r"'select_topk' = 0.1 keeps k = int\(0.1 × 6\) = 0 of the 6 entries "
        r"of tensor 'b' \(its smallest\).*use a select_topk of at least 1/6"
    ):  # fmt: skip
        merge_state_dicts("sce", base, fts, select_topk=0.1)
    assert merge_state_dicts("sce", base, fts, select_topk=0.2)["b"].shape == (6,)


def test_karcher_and_multislerp_with_antipodal_models_name_the_tensor():
    """θ1 = [1, 2, 0], θ2 = −θ1: the Karcher mean is undefined (the running mean is antipodal to
    one of them); Multi-SLERP's mean direction is zero, which it lerps for two models but
    refuses for three (a third zero model adds no direction)."""
    one = torch.tensor([1.0, 2.0, 0.0])
    with pytest.raises(ValueError, match=r"parameter 'w': karcher's running mean is antipodal"):
        merge_tensors("karcher", torch.zeros(3), [one, -one], name="w")
    with pytest.raises(ValueError, match=r"parameter 'w': multislerp's weighted mean .* is zero"):
        merge_tensors("multislerp", torch.zeros(3), [one, -one, torch.zeros(3)], name="w")
    assert torch.equal(merge_tensors("multislerp", torch.zeros(3), [one, -one]), torch.zeros(3))
    base = torch.tensor([1.0, -2.0, 3.0])  # no model changed it: θ0, not the zero-mean error
    assert torch.equal(merge_tensors("multislerp", base, [base] * 3), base)


# -- Fisher merging and RegMean: their statistics files ------------------------------------------


def _stats(path, fisher=None, grams=None):
    from safetensors.torch import save_file

    from hhh_bench.merging.statsfile import FISHER, GRAM

    out = {FISHER + k: v for k, v in (fisher or {}).items()}
    out.update({GRAM + k: v for k, v in (grams or {}).items()})
    save_file(out, str(path))
    return str(path)


@pytest.mark.parametrize("method", ["fisher", "regmean"])
def test_data_methods_without_data_say_so(method):
    with pytest.raises(
        ValueError, match=rf"{method} needs data: merge parameter 'statistics' is null"
    ):
        merge_tensors(method, B, FT)


def test_statistics_count_and_files_are_checked_before_merging(tmp_path):
    one = _stats(tmp_path / "a.safetensors", fisher={"w": torch.ones(2, 3)})
    with pytest.raises(ValueError, match=r"'statistics' has 1 file\(s\) but 2 finetuned models"):
        merge_tensors("fisher", B, FT, name="w", statistics=[one])
    missing = str(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match=r"'statistics' entry 1 \(finetuned model 1\): .*nope"):
        merge_tensors("fisher", B, FT, name="w", statistics=[one, missing])
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="entry 1 .* is not a safetensors file"):
        merge_tensors(
            "fisher", B, FT, name="w", statistics=[one, str(tmp_path / "junk.safetensors")]
        )


def test_fisher_file_without_the_tensor_or_of_another_shape_names_both(tmp_path):
    good = _stats(tmp_path / "a.safetensors", fisher={"w": torch.ones(2, 3)})
    other = _stats(tmp_path / "b.safetensors", fisher={"v": torch.ones(2, 3)})
    with pytest.raises(
        ValueError, match=r"entry 1 .*b.safetensors\) has no Fisher of parameter 'w'"
    ):
        merge_tensors("fisher", B, FT, name="w", statistics=[good, other])
    wrong = _stats(tmp_path / "c.safetensors", fisher={"w": torch.ones(3, 2)})
    with pytest.raises(
        ValueError, match=r"the Fisher of 'w' has shape \(3, 2\), the parameter \(2, 3\)"
    ):
        merge_tensors("fisher", B, FT, name="w", statistics=[good, wrong])
    neg = _stats(tmp_path / "d.safetensors", fisher={"w": -torch.ones(2, 3)})
    with pytest.raises(ValueError, match="the Fisher of 'w' holds negative, NaN or Inf"):
        merge_tensors("fisher", B, FT, name="w", statistics=[good, neg])


def test_regmean_gram_problems_name_the_tensor_and_file(tmp_path):
    g = torch.eye(3)
    a = _stats(tmp_path / "a.safetensors", grams={"w": g})
    none = _stats(tmp_path / "b.safetensors", fisher={"w": torch.ones(2, 3)})
    with pytest.raises(ValueError, match=r"entry 1 .* has no Gram matrix for 'w' but other"):
        merge_tensors("regmean", B, FT, name="w", statistics=[a, none])
    with pytest.raises(ValueError, match="holds no Gram matrix for any merged tensor"):
        merge_tensors("regmean", B, FT, name="w", statistics=[none, none])
    small = _stats(tmp_path / "c.safetensors", grams={"w": torch.eye(2)})
    with pytest.raises(ValueError, match=r"Gram matrix of 'w' is \(2, 2\), its weight \(2, 3\)"):
        merge_tensors("regmean", B, FT, name="w", statistics=[a, small])
    dead = torch.diag(torch.tensor([1.0, 1.0, 0.0]))
    d = _stats(tmp_path / "d.safetensors", grams={"w": dead})
    with pytest.raises(ValueError, match=r"inputs of 'w' are singular: input feature\(s\) \[2\]"):
        merge_tensors("regmean", B, FT, name="w", statistics=[d, d])


@pytest.mark.parametrize(
    ("method", "params", "match"),
    [
        ("pcb", {"pcb_ratio": 0.0}, r"'pcb_ratio' must be in \(0, 1\], got 0.0"),
        ("pcb", {"pcb_ratio": -0.1}, r"'pcb_ratio' must be in \(0, 1\]"),
        ("pcb", {"pcb_ratio": 1.01}, r"'pcb_ratio' must be in \(0, 1\], got 1.01"),
        ("pcb", {"pcb_ratio": float("nan")}, r"'pcb_ratio' must be in \(0, 1\]"),
        ("pcb", {"clip_ratio": 0.5}, r"'clip_ratio' must be in \[0, 0.5\), got 0.5"),
        ("pcb", {"clip_ratio": -1e-4}, r"'clip_ratio' must be in \[0, 0.5\)"),
        ("pcb", {"intra_temperature": 0.0}, "'intra_temperature' must be > 0 and finite"),
        ("pcb", {"intra_temperature": float("inf")}, "'intra_temperature' must be > 0"),
        ("consensus_ta", {"tall_mask_lambda": -0.1}, "'tall_mask_lambda' must be >= 0"),
        ("consensus_ties", {"tall_mask_lambda": float("nan")}, "'tall_mask_lambda' must be >= 0"),
        ("consensus_ta", {"min_agreement": -1}, "'min_agreement' must be >= 0, got -1"),
        ("consensus_ta", {"min_agreement": 1.5}, "'min_agreement' must be int"),
        ("consensus_ties", {"aggregate": "max"}, r"'aggregate' must be one of \['sum', 'mean'\]"),
        ("consensus_ties", {"density": 0.0}, r"'density' must be in \(0, 1\]"),
    ],
)
def test_bad_consensus_and_pcb_hyperparameters_are_named(method, params, match):
    with pytest.raises(ValueError, match=match):
        get_method(method).make_params(**params)


def test_consensus_needs_as_many_models_as_min_agreement():
    """No entry is on in more TALL masks than there are models: k > T would return θ0 silently.
    The default k = 2 therefore needs two models; k = 1 takes one."""
    for method in ("consensus_ta", "consensus_ties"):
        with pytest.raises(
            ValueError, match=r"'min_agreement' = 2 exceeds the 1 finetuned model\(s\).*<= 1"
        ):
            merge_tensors(method, B, FT[:1])
        with pytest.raises(ValueError, match=r"'min_agreement' = 3 exceeds the 2 finetuned"):
            merge_tensors(method, B, FT, min_agreement=3)
        assert merge_tensors(method, B, FT[:1], min_agreement=1).shape == B.shape


def test_consensus_ties_refuses_a_density_that_keeps_nothing_of_a_tensor():
    """TIES's shape check, before any tensor is read: int(.1 × 6) = 0 of the 6-entry 'b'."""
    base = {"a": torch.zeros(3, 4), "b": torch.zeros(6)}
    fts = [{"a": torch.randn(3, 4), "b": torch.randn(6)} for _ in range(2)]
    with pytest.raises(ValueError, match=r"'density' = 0.1 keeps k = int\(0.1 × 6\) = 0 .* 'b'"):
        merge_state_dicts("consensus_ties", base, fts, density=0.1)
