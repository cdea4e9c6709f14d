"""Adding a baseline from outside the package (docs/extending.md): a merge method and a mixing
strategy defined in a user module, loaded with ``plugins=[...]``, run through the pipeline."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO, SMALL_WORLD, compose

PLUGIN_DIR = REPO / "tests" / "assets" / "plugins"


@pytest.fixture(autouse=True)
def _restore_registries():
    """A plugin registers into process-wide registries; undo that so later tests see only the
    built-in methods and strategies."""
    from hhh_bench.data.mixing import registry as mixing_registry
    from hhh_bench.merging import base as merging_base

    saved = dict(mixing_registry._REGISTRY), dict(merging_base._REGISTRY)
    yield
    mixing_registry._REGISTRY.clear()
    mixing_registry._REGISTRY.update(saved[0])
    merging_base._REGISTRY.clear()
    merging_base._REGISTRY.update(saved[1])
    sys.modules.pop("my_hhh_ext", None)


@pytest.mark.e2e
def test_user_merge_method_and_mixing_strategy_run_in_the_pipeline(session_root, small_base):
    sys.path.insert(0, str(PLUGIN_DIR))
    try:
        from hhh_bench.pipeline import run

        cfg = compose(
            [
                f"root={session_root}",
                "experiment=toy3h",
                "logger=none",
                *SMALL_WORLD,
                "plugins=[my_hhh_ext]",
                "pipeline.oracle.enabled=false",
                "pipeline.mixtures=[{name: first_half_each, budget: per_specialist}]",
                "pipeline.merge_grid={}",
                "+pipeline.merge_grid.median_tv.scaling=[1.0]",
            ]
        )
        run(cfg)
    finally:
        sys.path.remove(str(PLUGIN_DIR))
    from hhh_bench.tracking.store import load_results

    df = load_results(session_root / "results.jsonl")
    test = df[df["split"] == "test"]
    assert "median_tv" in set(test["name"]), set(test["name"])
    assert "mix: first_half_each" in set(test["name"]), set(test["name"])
    row = test[test["name"] == "median_tv"].iloc[-1]
    assert 0.0 <= row["average"] <= 1.0


def test_unimportable_plugin_is_named():
    from hhh_bench.pipeline import load_plugins

    with pytest.raises(ValueError, match="no_such_plugin_module"):
        load_plugins(["no_such_plugin_module"])
