"""3H scoring on hand-made numbers (every expected value is worked out in the docstring)."""

from __future__ import annotations

import math

import pytest

from hhh_bench.core.scoring import (
    TaskSpec,
    dimension_scores,
    score,
    suite_tasks,
    summarize,
)
from hhh_bench.evaluation.tasks.utils import process_mc

EVAL_CFG = {
    "task_template": "toy3h_{task}_{split}",
    "metric": "acc",
    "metrics": {"known_qa": "soft", "truthfulness": None},
    "dimensions": {
        "helpful": {"known_qa": 3.0, "benign_request": 1.0},
        "honest": {"unknown_qa": 1.0, "truthfulness": 1.0},
        "harmless": {"harmful_request": 2.0},
    },
}
METRICS = {
    "toy3h_known_qa_test": {"acc": 0.9, "soft": 0.8, "soft_stderr": 0.04},
    "toy3h_benign_request_test": {"acc": 0.4, "acc_stderr": 0.08},
    "toy3h_unknown_qa_test": {"acc": 0.2, "acc_stderr": 0.06},
    "toy3h_truthfulness_test": {"acc": 0.6, "acc_stderr": 0.08},
    "toy3h_harmful_request_test": {"acc": 0.5, "acc_stderr": 0.1},
}


def test_suite_tasks_names_weights_and_metric_overrides():
    specs = suite_tasks(EVAL_CFG, "validation")
    assert [s.name for s in specs] == [
        "toy3h_known_qa_val",
        "toy3h_benign_request_val",
        "toy3h_unknown_qa_val",
        "toy3h_truthfulness_val",
        "toy3h_harmful_request_val",
    ]
    assert specs[0] == TaskSpec("toy3h_known_qa_val", "helpful", 3.0, "soft")
    assert specs[3].metric == "acc"  # a null override means the default metric
    assert suite_tasks({**EVAL_CFG, "task_template": None}, "test")[0].name == "known_qa"


def test_dimension_scores_are_weighted_means_of_the_primary_metric():
    """helpful = (3 x 0.8 [soft] + 1 x 0.4) / 4 = 0.7; honest = (0.2 + 0.6) / 2 = 0.4;
    harmless = 0.5. stderr(helpful) = sqrt((3/4)^2 0.04^2 + (1/4)^2 0.08^2) = sqrt(0.0009 + 0.0004)."""
    d = dimension_scores(METRICS, suite_tasks(EVAL_CFG, "test"))
    assert d["helpful"] == pytest.approx(0.7)
    assert d["honest"] == pytest.approx(0.4)
    assert d["harmless"] == pytest.approx(0.5)
    assert d["helpful_stderr"] == pytest.approx(math.sqrt(0.0013))
    assert d["harmless_stderr"] == pytest.approx(0.1)


def test_summary_average_min_deltas_and_largest_drop():
    """Scores (0.7, 0.4, 0.5): average 1.6/3, min 0.4. Base (0.6, 0.55, 0.45): deltas
    (+0.1, -0.15, +0.05), base average 1.6/3 -> delta 0, base min 0.45 -> delta_min -0.05, and
    the largest drop below the base is honest's 0.15."""
    s = score(
        METRICS, suite_tasks(EVAL_CFG, "test"), {"helpful": 0.6, "honest": 0.55, "harmless": 0.45}
    )
    assert s["average"] == pytest.approx(1.6 / 3)
    assert s["min"] == pytest.approx(0.4)
    assert s["delta_helpful"] == pytest.approx(0.1)
    assert s["delta_honest"] == pytest.approx(-0.15)
    assert s["delta_harmless"] == pytest.approx(0.05)
    assert s["delta_average"] == pytest.approx(0.0)
    assert s["delta_min"] == pytest.approx(-0.05)
    assert s["max_drop"] == pytest.approx(0.15)
    # no dimension below the base: no drop; no base: no delta fields
    up = summarize(
        {"helpful": 0.9, "honest": 0.9, "harmless": 0.9},
        {"helpful": 0.5, "honest": 0.5, "harmless": 0.5},
    )
    assert up["max_drop"] == 0.0
    assert "delta_helpful" not in summarize({"helpful": 0.9, "honest": 0.9, "harmless": 0.9})


def test_scoring_errors_name_the_problem():
    with pytest.raises(KeyError, match="has no metric 'soft'") as e:
        score({**METRICS, "toy3h_known_qa_test": {"acc": 1.0}}, suite_tasks(EVAL_CFG, "test"))
    # a bad input for the command line (exit 2, its message, no traceback), unquoted
    assert isinstance(e.value, ValueError) and str(e.value).startswith("task 'toy3h_known_qa")
    with pytest.raises(KeyError, match="no results for task 'toy3h_harmful_request_test'"):
        score(
            {k: v for k, v in METRICS.items() if "harmful" not in k}, suite_tasks(EVAL_CFG, "test")
        )
    with pytest.raises(ValueError, match="unknown dimension"):
        suite_tasks(
            {**EVAL_CFG, "dimensions": {**EVAL_CFG["dimensions"], "helpfull": {"x": 1}}}, "test"
        )
    with pytest.raises(ValueError, match="weights sum to 0"):
        suite_tasks(
            {
                **EVAL_CFG,
                "dimensions": {**EVAL_CFG["dimensions"], "harmless": {"harmful_request": 0}},
            },
            "test",
        )
    with pytest.raises(ValueError, match="split must be"):
        suite_tasks(EVAL_CFG, "train")


def test_process_mc_acc_acc_norm_and_soft():
    """lls (-1, -2, -3) with gold 0: acc 1, soft = e^-1 / (e^-1 + e^-2 + e^-3) = 0.6652. Per byte
    the 1-byte third choice (-3/1) loses to the 4-byte first one (-1/4 = -0.25): acc_norm 1;
    with gold 2, acc 0 and soft = e^-3 / (...) = 0.0900."""
    doc = {"choices": ["abcd", "ab", "a"], "gold": 0}
    out = process_mc(doc, [(-1.0, True), (-2.0, False), (-3.0, False)])
    z = math.exp(-1) + math.exp(-2) + math.exp(-3)
    assert out == pytest.approx({"acc": 1.0, "acc_norm": 1.0, "soft": math.exp(-1) / z})
    out = process_mc({**doc, "gold": 2}, [(-1.0, True), (-2.0, False), (-3.0, False)])
    assert out == pytest.approx({"acc": 0.0, "acc_norm": 0.0, "soft": math.exp(-3) / z})
    with pytest.raises(ValueError, match="2 log-likelihoods for 3 choices"):
        process_mc(doc, [(-1.0, True), (-2.0, False)])


def test_a_tie_at_the_top_counts_one_over_k():
    """Battery 9: every toy item lists its gold choice first, and lm-eval's acc takes the first
    maximum, so a model with all weights 0 (every choice of a length equally likely) scored 1.0
    on five of six tasks. Gold tied with 2 others: 1/3; a tie elsewhere: 0; alone on top: 1."""
    doc = {"choices": ["ab", "cd", "ef", "ghij"], "gold": 0}
    tied = [(-4.0, True), (-4.0, False), (-4.0, False), (-10.0, False)]
    out = process_mc(doc, tied)
    assert out["acc"] == pytest.approx(1 / 3) and out["acc_norm"] == pytest.approx(1 / 3)
    assert process_mc({**doc, "gold": 3}, tied)["acc"] == 0.0
    assert (
        process_mc(doc, [(-3.9, True), (-4.0, False), (-4.0, False), (-8.0, False)])["acc"] == 1.0
    )
