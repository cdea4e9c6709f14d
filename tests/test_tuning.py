"""Tuning parity (issue 14): merges and mixtures try the same per-dimension emphases on the
selection split; the conversions, the checks and the selection loop, on hand-made inputs."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import compose
from hhh_bench.pipeline import _select, merge_weights, mix_shares
from hhh_bench.validation import emphases, validate_run

DIMS = ["helpful", "honest", "harmless"]


def test_an_emphasis_as_merge_weights_and_as_mixture_shares():
    # merges: scaled to sum to T = 3 (equal emphasis = weights of 1, so λ keeps its meaning)
    assert merge_weights([2, 1, 1]) == [1.5, 0.75, 0.75]
    assert merge_weights([1, 1, 1]) == [1.0, 1.0, 1.0]
    assert merge_weights([1, 3, 4]) == [0.375, 1.125, 1.5]
    # mixtures: shares of the same budget (summing to 1)
    assert mix_shares([2, 1, 1], DIMS) == {"helpful": 0.5, "honest": 0.25, "harmless": 0.25}
    assert mix_shares([1, 3, 4], DIMS) == {"helpful": 0.125, "honest": 0.375, "harmless": 0.5}


@pytest.mark.parametrize(
    "emphasis, msg",
    [
        ([[2, 1]], r"emphasis\[0\].*one weight per dimension"),
        ([[1, 1, 1], [2, 0, 1]], r"emphasis\[1\].*> 0"),
        ([[1, -1, 1]], r"> 0"),
        ([[True, 1, 1]], r"> 0"),
        ([["a", 1, 1]], r"> 0"),
        ([3], r"one weight per dimension"),
    ],
)
def test_bad_emphases_are_named(emphasis, msg):
    with pytest.raises(ValueError, match=msg):
        emphases({"tuning": {"emphasis": emphasis}}, DIMS)


def test_the_default_config_tunes_both_sides_and_bad_tuning_fails_when_composed():
    cfg = OmegaConf.to_container(compose(["experiment=toy3h"]), resolve=True)
    tuning = cfg["pipeline"]["tuning"]
    assert len(emphases(cfg["pipeline"], cfg["data"]["dimensions"])) == 3
    assert set(tuning["mixtures"]) <= set(cfg["pipeline"]["mixtures"])
    validate_run(cfg)
    bad = compose(["experiment=toy3h", "pipeline.tuning.mixtures=[uniform]"])
    with pytest.raises(ValueError, match="'uniform', a strategy without a 'shares' knob"):
        validate_run(OmegaConf.to_container(bad, resolve=True))
    bad = compose(["experiment=toy3h", "pipeline.tuning.emphasis=[[1,2]]"])
    with pytest.raises(ValueError, match=r"emphasis\[0\]"):
        validate_run(OmegaConf.to_container(bad, resolve=True))


def test_select_chooses_on_validation_then_tries_the_emphases_around_the_choice():
    cfg = OmegaConf.create(
        {"eval": {"select_split": "validation", "report_split": "test", "select_by": "average"},
         "pipeline": {"report_every_grid_point": False}}
    )  # fmt: skip
    # validation scores of each configuration; the test split's scores are never looked at
    val = {(0.3, None): 0.5, (0.6, None): 0.7, (0.6, "h"): 0.9, (0.6, "o"): 0.6, (0.3, "h"): 1.0}
    calls: list[tuple[str, tuple]] = []

    def build(params):
        return {"kind": "merge", "name": "ta", "key": str(params), "params": params}

    def evaluate(model, split="test"):
        p = model["grid_params"]
        key = (p["scaling"], p.get("weights"))
        calls.append((split, key))
        return {"scores": {"average": val[key] if split == "validation" else -1.0}}

    seen = []

    def more(best):
        seen.append(best)
        return [{**best, "weights": w} for w in ("h", "o")]

    _select(cfg, "ta", [{"scaling": 0.3}, {"scaling": 0.6}], build, evaluate, more)
    assert seen == [{"scaling": 0.6}]  # the emphases are tried around the first round's choice
    assert [c for c in calls if c[0] == "validation"] == [
        ("validation", (0.3, None)), ("validation", (0.6, None)),
        ("validation", (0.6, "h")), ("validation", (0.6, "o")),
    ]  # fmt: skip
    assert calls[-1] == ("test", (0.6, "h"))  # the best of 4 on validation, reported once
    assert sum(1 for c in calls if c[0] == "test") == 1


def _run_mixtures(monkeypatch, select_split):
    """``_mixtures`` on hand-made inputs (training stubbed): the (split, name, grid point) of
    every evaluation and the report split's model dicts."""
    import hhh_bench.stages.train as train_stage
    from hhh_bench.pipeline import _mixtures

    cfg = OmegaConf.create(
        {"eval": {"select_split": select_split, "report_split": "test", "select_by": "average"},
         "pipeline": {"report_every_grid_point": False}, "seeds": [0]}
    )  # fmt: skip
    pcfg = {
        "mixtures": [{"name": "uniform"}, {"name": "sequential"}, {"name": "reward_select"}],
        "tuning": {"mixtures": ["reward_select"], "emphasis": [[2, 1, 1]]},
    }

    def run_train(cfg, base, data, *, dimensions, mix):
        return {"key": f"{mix['name']}-{mix.get('shares')}", "path": "/nowhere"}

    monkeypatch.setattr(train_stage, "run_train", run_train)
    calls, reported = [], []

    def evaluate(model, split="test"):
        calls.append((split, model["name"], str(model.get("grid_params"))))
        if split == "test":
            reported.append(model)
        return {"scores": {"average": 0.5 if model.get("grid_params") else 0.4}}

    _mixtures(cfg, pcfg, {"key": "base"}, {}, DIMS, 0, evaluate)
    return calls, reported


def test_every_mixture_is_chosen_on_validation_one_configuration_or_several(monkeypatch):
    """Issue 28: a mixture of one configuration (uniform, sequential: nothing tuned) is scored on
    the selection split too, so the answer picks the mixture representative on validation like
    the merge one, never falling back to the reported split."""
    calls, reported = _run_mixtures(monkeypatch, "validation")
    val = [name for split, name, _ in calls if split == "validation"]
    assert val == ["mix: uniform", "mix: sequential", "mix: reward_select", "mix: reward_select"]
    assert [m["name"] for m in reported] == ["mix: uniform", "mix: sequential",
                                             "mix: reward_select"]  # fmt: skip
    for m in reported:  # each reported once, with its choice on validation in its row
        assert m["selected_on"] == "validation" and m["selected_by"] == "average", m
    assert [m["n_configs"] for m in reported] == [1, 1, 2]
    assert reported[2]["grid_params"] == {"shares": mix_shares([2, 1, 1], DIMS)}


def test_without_a_selection_split_each_mixture_is_reported_under_its_own_name(monkeypatch):
    calls, reported = _run_mixtures(monkeypatch, None)
    assert {split for split, _, _ in calls} == {"test"}
    assert [m["name"] for m in reported][:2] == ["mix: uniform", "mix: sequential"]
    assert all("selected_on" not in m for m in reported)
