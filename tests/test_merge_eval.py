"""``stage=merge_eval``: merge with ``cfg.merge`` and score on the selection split; the score is
the objective the CLI's task function hands to a sweeper (experiment=merge_optuna)."""

from __future__ import annotations

import pytest

from conftest import compose


@pytest.fixture
def fake_stages(monkeypatch, tmp_path):
    """Data, merge inputs, merge and eval replaced by stubs that record what they were asked."""
    import hhh_bench.pipeline as pipeline
    import hhh_bench.stages.data as data_stage
    import hhh_bench.stages.eval as eval_stage
    import hhh_bench.stages.merge as merge_stage

    calls: dict = {}
    monkeypatch.setattr(data_stage, "run_data", lambda cfg: {"dir": str(tmp_path), "key": "d"})
    monkeypatch.setattr(
        pipeline,
        "_merge_inputs",
        lambda cfg, data: ("base", ["help", "honest", "harmless"], None),
    )

    def run_merge(cfg, *, base, models, names=None, data=None):
        calls["merge"] = {"base": base, "models": models, "params": dict(cfg.merge.params)}
        return {"out_dir": str(tmp_path / "merged"), "key": "m"}

    def run_eval(cfg, model, data, *, split):
        calls["eval"] = {"split": split, "model": model}
        return {"scores": {"average": 0.625, "min": 0.5}}

    monkeypatch.setattr(merge_stage, "run_merge", run_merge)
    monkeypatch.setattr(eval_stage, "run_eval", run_eval)
    return calls


def test_merge_eval_returns_the_validation_score_as_objective(fake_stages, tmp_path):
    from hhh_bench.cli import task

    overrides = ["stage=merge_eval", "merge=resm", "merge.params.kappa=4.5"]
    cfg = compose([f"root={tmp_path}", "logger=none", *overrides])
    objective = task(cfg)
    assert isinstance(objective, float) and 0.0 <= objective <= 1.0
    assert objective == 0.625  # eval.select_by (average) of the stub's scores
    assert fake_stages["eval"]["split"] == "validation"  # never the test split
    assert fake_stages["merge"]["models"] == ["help", "honest", "harmless"]
    assert fake_stages["merge"]["params"]["kappa"] == 4.5  # the sampled knob reaches the merge
    assert fake_stages["eval"]["model"]["params"]["kappa"] == 4.5


def test_merge_eval_objective_follows_select_by(fake_stages, tmp_path):
    from hhh_bench.cli import task

    cfg = compose([f"root={tmp_path}", "logger=none", "stage=merge_eval", "eval.select_by=min"])
    assert task(cfg) == 0.5


def test_merge_eval_refuses_to_search_on_the_report_split(fake_stages, tmp_path):
    from hhh_bench.pipeline import run

    cfg = compose([f"root={tmp_path}", "logger=none", "stage=merge_eval", "eval.select_split=test"])
    with pytest.raises(ValueError, match="must not read the split it reports on"):
        run(cfg)
    assert "eval" not in fake_stages


def test_other_stages_return_no_objective(monkeypatch, tmp_path):
    import hhh_bench.stages.data as data_stage
    from hhh_bench.cli import task

    monkeypatch.setattr(data_stage, "run_data", lambda cfg: {"dir": str(tmp_path), "key": "d"})
    assert task(compose([f"root={tmp_path}", "logger=none", "stage=data"])) is None
