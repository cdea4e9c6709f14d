"""The registry, its configs and the protocol the streaming engine relies on."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from merging_helpers import data_params, fit_count, models, state_dicts

from hhh_bench.merging import (
    describe_method,
    get_method,
    list_methods,
    merge_state_dicts,
    merge_tensors,
    method_defaults,
)
from hhh_bench.merging.base import task_vectors_of
from hhh_bench.merging.methods.ties import magnitude_key
from hhh_bench.merging.taskvec import TaskVectors
from hhh_bench.stages.common import load_option

CONF = Path(__file__).resolve().parents[2] / "conf" / "merge"
EXPECTED = {"task_arithmetic", "weight_average", "ties", "dare_ta", "dare_ties", "tsv", "resm"}
EXPECTED |= {"breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "model_stock", "slerp"}
EXPECTED |= {"sce", "karcher", "multislerp", "fisher", "regmean"}
EXPECTED |= {"consensus_ta", "consensus_ties", "pcb"}
EXPECTED |= {"iso_c", "iso_cts"}
NO_PAPER = {"slerp": "Shoemake 1985", "karcher": "Karcher 1977", "multislerp": "goddard.blog"}
"""Methods without an arXiv paper, and the reference their docstring names instead."""


def test_registry_and_configs_match_one_to_one():
    assert set(list_methods()) == EXPECTED
    options = sorted(p.stem for p in CONF.glob("*.yaml") if not p.stem.startswith("_"))
    assert options == list_methods()


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_config_lists_every_param_with_its_default(method):
    path = CONF / f"{method}.yaml"
    text = path.read_text()
    first = text.splitlines()[0]
    assert first.startswith(f"# hhh-bench stage=merge merge={method}"), first
    cfg = load_option("merge", method)  # with what it extends (merge_common.yaml)
    assert cfg["method"] == method
    # seed: null in the YAML, the run's seed for a method that draws (battery 12, F5), the
    # params' own default otherwise
    assert cfg["params"].pop("seed") is None
    assert cfg["params"] == {k: v for k, v in method_defaults(method).items() if k != "seed"}
    assert cfg["base"] is None and cfg["models"] is None
    for f in (path, CONF.parent / "merge_common.yaml"):  # every param documented where it is set
        own = f.read_text().split("params:")[1].split("\nbase:")[0].strip().splitlines()
        for line in own:
            assert "# " in line, f"{f.name}: param line without a comment: {line!r}"


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_config_params_merge(method, tmp_path):
    """The yaml's params, passed as they are (with statistics files for the methods that need
    data), merge a tiny model."""
    params = load_option("merge", method)["params"]
    base, fts = state_dicts(fit_count(method, 3), seed=0)
    params.update(data_params(method, base, len(fts), folder=tmp_path))
    out = merge_state_dicts(method, base, fts, **params)
    assert set(out) == set(base)


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_describe_method(method):
    rows = describe_method(method)
    names = [r["name"] for r in rows]
    assert names[:5] == ["scaling", "weights", "seed", "compute_dtype", "device"]
    assert {r["name"]: r["default"] for r in rows} == {
        k: (tuple(v) if isinstance(v, list) else v) for k, v in method_defaults(method).items()
    }
    for r in rows:
        assert set(r) == {"name", "type", "default", "description"}
        assert r["type"] and len(r["description"]) > 20, r
    cls = type(get_method(method))
    doc = (cls.__doc__ or "") + (sys.modules[cls.__module__].__doc__ or "")
    assert (NO_PAPER[method] in doc) if method in NO_PAPER else ("arXiv:" in doc)


def test_describe_shows_choices():
    rows = {r["name"]: r for r in describe_method("resm")}
    assert rows["reweight"]["type"] == "str (huber_mad | none)"
    assert rows["rank_fraction"]["type"] == "float | None"
    assert rows["weights"]["type"] == "tuple[float, ...] | None"


def test_params_coerce_yaml_like_values():
    p = get_method("ties").make_params(density=1, weights=[1, 2], scaling=2)
    assert p.density == 1.0 and isinstance(p.density, float)
    assert p.weights == (1.0, 2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.density = 0.5  # type: ignore[misc]


ALTERNATIVES = {
    "scaling": 0.5,
    "weights": (2.0, -1.0, 0.5),  # cut to the method's model count
    "seed": 7,
    "density": 0.6,
    "scope": "global",
    "drop_rate": 0.3,
    "rank_fraction": 0.5,
    "embeddings": "tsv",
    "reweight": "none",
    "kappa": 2.0,
    "rank": "uniform",
    "outlier_ratio_M": 3.0,
    "rank_spread": 0.5,
    "compute_dtype": "float64",
    "gamma": 0.05,
    "normalize": True,
    "rescale": "l1",
    "epsilon": 0.1,
    "filter_wise": True,
    "t": 0.3,
    "select_topk": 0.5,
    "uniform_below": 0.0,
    "max_iter": 3,
    "tol": 1e-3,
    "normalize_weights": False,
    "eps": 1e-6,
    "origin": "zero",
    "tall_mask_lambda": 0.3,
    "min_agreement": 1,
    "aggregate": "mean",
}
ALTERNATIVE_FOR = {
    "karcher": {"weights": (2.0, 1.0, 0.5)},
    "multislerp": {"weights": (2.0, 1.0, 0.5)},
}
"""Per-method alternatives where the shared one is invalid (interpolation weights are >= 0)."""


@pytest.mark.parametrize("method", sorted(EXPECTED))
@pytest.mark.parametrize(
    "name", ["model.layers.0.mlp.up_proj.weight", "model.embed_tokens.weight", "model.norm.weight"]
)
def test_precompute_depends_only_on_its_keys(method, name, tmp_path):
    """The engine's cache contract: changing a param outside ``precompute_keys`` leaves
    ``precompute`` unchanged, and ``compose`` on the cached result equals a fresh merge."""
    m = get_method(method)
    shape = (5,) if name.endswith("norm.weight") else (6, 4)
    base, fts = models(shape, fit_count(method, 3), seed=3)
    data = data_params(method, {name: base}, len(fts), folder=tmp_path)
    default = m.make_params(**data)
    entry = {"thresholds": [int(magnitude_key(torch.tensor(0.05)))] * 3}  # for scope=global
    pre = m.precompute(name, base, task_vectors_of(base, fts, default), default, entry)
    fields = [f.name for f in dataclasses.fields(m.params_cls)]
    for key in fields:
        if key in m.precompute_keys or key == "device":
            continue
        value = ALTERNATIVE_FOR.get(method, {}).get(key, ALTERNATIVES[key])
        params = m.make_params(**data, **{key: value[: len(fts)] if key == "weights" else value})
        again = m.precompute(name, base, task_vectors_of(base, fts, params), params, entry)
        assert again.keys() == pre.keys(), key
        for k in pre:
            assert torch.equal(again[k], pre[k]), (key, k)
        fresh = m.compose(name, base, again, params, entry)
        torch.testing.assert_close(m.compose(name, base, pre, params, entry), fresh, rtol=0, atol=0)


def test_needs_global_pass_per_params():
    assert get_method("ties").needs_global_pass(get_method("ties").make_params(scope="global"))
    assert not get_method("ties").needs_global_pass(get_method("ties").make_params())
    resm = get_method("resm")
    assert resm.needs_global_pass(resm.make_params())
    assert not resm.needs_global_pass(resm.make_params(rank="uniform"))
    for name in ("task_arithmetic", "weight_average", "dare_ta", "dare_ties", "tsv"):
        m = get_method(name)
        assert not m.needs_global_pass(m.make_params())


def test_plan_entries_are_plain_values():
    """The engine keys its cache on plan entries: ints/floats/lists only."""
    base, fts = state_dicts(3, seed=2)
    for method, params in [("ties", {"scope": "global"}), ("resm", {})]:
        m = get_method(method)
        p = m.make_params(**params)
        stats = {}
        for k, b in base.items():
            if b.is_floating_point():
                s = m.tensor_stats(k, b, task_vectors_of(b, [sd[k] for sd in fts], p), p)
                if s is not None:
                    stats[k] = s
        plan = m.plan(stats, p)
        assert plan, method
        for entry in plan.values():
            for v in entry.values():
                assert isinstance(v, (int, float)) or all(isinstance(x, int) for x in v), (
                    method,
                    v,
                )


@pytest.mark.parametrize("seed", range(3))
def test_global_ties_keeps_the_global_top_k(seed):
    """Over the whole model, each task vector keeps its exact top k = int(density·N) entries plus,
    at most, entries tied with the k-th one at bfloat16 resolution."""
    base, fts = state_dicts(2, seed)
    density = 0.3
    out = merge_state_dicts("ties", base, fts[:1], density=density, scope="global")
    keys = [k for k in base if base[k].is_floating_point()]
    tau = torch.cat([(fts[0][k] - base[k]).flatten() for k in keys])
    kept = torch.cat([(out[k] != base[k]).flatten() for k in keys])
    k = int(density * tau.numel())
    kth = tau.abs().sort(descending=True).values[k - 1]
    assert kept[tau.abs() >= kth].all()  # the exact top k
    extra = kept & (tau.abs() < kth)
    assert (magnitude_key(tau[extra]) == magnitude_key(kth)).all()  # only ties at bf16 resolution


def test_merge_tensors_plans_over_one_tensor():
    """On one tensor, RESM's outlier_density equals uniform, and global TIES keeps its top k."""
    base, fts = models((8, 6), 2, seed=1)
    torch.testing.assert_close(
        merge_tensors("resm", base, fts),
        merge_tensors("resm", base, fts, rank="uniform"),
        rtol=0,
        atol=0,
    )
    one = merge_tensors("ties", base, fts[:1], density=0.25, scope="global") - base
    assert int((one != 0).sum()) >= int(0.25 * base.numel())


def test_float64_compute_and_device_roundtrip():
    base, fts = models((5, 4), 2, seed=4)
    out = merge_tensors("tsv", base, fts, compute_dtype="float64")
    assert out.dtype == torch.float32 and out.device == base.device
    torch.testing.assert_close(out, merge_tensors("tsv", base, fts), rtol=0, atol=1e-5)


def test_custom_resm_strategies_plug_in():
    """A user-registered reweighting and rank rule are accepted by name and used."""
    from hhh_bench.merging import RankStrategy, register_rank, register_reweight
    from hhh_bench.merging.methods import resm

    @register_reweight("zero_test")
    def zero(tau, params):
        return torch.zeros_like(tau)

    register_rank(
        "one_test",
        RankStrategy(
            needs_stats=True,
            layer_stats=lambda taus, params: {"norm": float(taus.norm())},
            allocate=lambda stats, params: {n: 1 for n in stats},
        ),
    )
    try:
        base, fts = state_dicts(2, seed=3, dtype=torch.float64)
        out = merge_state_dicts("resm", base, fts, reweight="zero_test", compute_dtype="float64")
        assert torch.equal(
            out["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"]
        )
        out = merge_state_dicts(
            "resm", base, fts, rank="one_test", reweight="none", compute_dtype="float64"
        )
        assert (
            torch.linalg.matrix_rank(
                out["model.layers.0.mlp.up_proj.weight"] - base["model.layers.0.mlp.up_proj.weight"]
            )
            == 2
        )
        with pytest.raises(ValueError, match="already registered"):
            register_reweight("zero_test")(zero)
    finally:
        resm.REWEIGHTS.remove("zero_test")
        resm.RANKS.remove("one_test")


@pytest.mark.parametrize("method", ["ties", "dare_ta", "dare_ties"])
def test_prepare_overwrites_only_task_vectors_built_for_one_use(method):
    """A method's prepare trims or drops in place only when the task vectors were handed over
    (the driver's single-use ones); a caller's task vectors are left as they were."""
    base, fts = models((6, 5), 3, 0, torch.float32)
    m = get_method(method)
    params = m.params_cls(density=0.3) if method == "ties" else m.params_cls(drop_rate=0.5)
    kept = task_vectors_of(base, fts, params)
    before = kept.stack().clone()
    out_kept = m.merge_tensor("w", base, kept, params)
    assert torch.equal(kept.stack(), before)
    once = TaskVectors.from_weights(base, fts, torch.float32, single_use=True)
    out_once = m.merge_tensor("w", base, once, params)
    torch.testing.assert_close(out_once, out_kept, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="consumed"):
        once.stack()
