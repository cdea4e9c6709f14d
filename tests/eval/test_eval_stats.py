"""Standard errors, bootstraps and paired tests on hand-made item scores, checked by hand and
against lm-eval's own ``mean_stderr``; and length-fair multiple choice on a length-biased item."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from hhh_bench.core.items import item_clusters, item_values, leaf_tasks, parse_items
from hhh_bench.core.scoring import TaskSpec
from hhh_bench.core.stats import (
    bootstrap_stderr,
    combine_stderr,
    hierarchical_bootstrap_ci,
    mean_stderr,
    paired_combination,
    paired_test,
    stratified_bootstrap_stderr,
    win_values,
)
from hhh_bench.core.uncertainty import column_parts, paired_column_test, summary_stderr
from hhh_bench.evaluation.tasks.utils import process_mc

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "eval"
CONF = Path(__file__).resolve().parents[2] / "conf"


def test_stderr_of_a_hand_made_example():
    """Items 1, 0, 1, 1: mean 3/4; squared deviations 1/16 x 3 + 9/16 = 12/16, sample variance
    (12/16) / 3 = 1/4, SE = sqrt((1/4) / 4) = 1/4."""
    mu, se = mean_stderr([1, 0, 1, 1])
    assert mu == 0.75
    assert se == pytest.approx(0.25, abs=1e-15)
    assert mean_stderr([0.5]) == (0.5, None)  # one item: no stderr


def test_stderr_matches_lm_evals_reference_formulation():
    from lm_eval.api.metrics import mean_stderr as lm_eval_mean_stderr

    values = [0.0, 1.0, 1.0, 0.0, 1.0, 0.25, 0.75, 1.0, 0.0, 0.5]
    assert mean_stderr(values)[1] == pytest.approx(lm_eval_mean_stderr(values), rel=1e-12)


def test_combined_stderr_of_independent_parts():
    """A dimension of two tasks, weights 2 and 1 (coefficients 2/3, 1/3), SEs .03 and .06:
    sqrt((2/3 x .03)^2 + (1/3 x .06)^2) = sqrt(.0004 + .0004) = .028284..."""
    assert combine_stderr([2 / 3, 1 / 3], [0.03, 0.06]) == pytest.approx(math.sqrt(0.0008))
    assert combine_stderr([1.0, 1.0], [0.1, None]) is None


def test_paired_test_by_hand():
    """a = 1 1 0 1, b = 0 1 0 0 on the same items: d = 1 0 0 1, mean 1/2, sample variance
    (4 x 1/4) / 3 = 1/3, SE = sqrt(1/12) = .288675, z = sqrt 3 = 1.732, p = erfc(z / sqrt 2)
    = .0833: not resolved at .05."""
    t = paired_test({"q1": 1, "q2": 1, "q3": 0, "q4": 1}, {"q1": 0, "q2": 1, "q3": 0, "q4": 0})
    assert t.diff == 0.5
    assert t.stderr == pytest.approx(math.sqrt(1 / 12))
    assert t.z == pytest.approx(math.sqrt(3))
    assert t.p_value == pytest.approx(0.083265, abs=1e-6)
    assert not t.resolved and t.n == 4
    assert (t.ci_low, t.ci_high) == pytest.approx(
        (0.5 - 1.959964 * 0.288675, 0.5 + 1.959964 * 0.288675), abs=1e-5
    )


def test_paired_test_sees_what_an_unpaired_comparison_cannot():
    """40 items, a right on 28, b on 20, a ⊇ b: d = 1 on 8 items, 0 on 32. Paired: mean .2,
    sample variance (8 x .64 + 32 x .04) / 39 = .16410, SE = sqrt(.16410 / 40) = .06405,
    z = 3.12: resolved. Unpaired: SE = hypot(sqrt(.21/39), sqrt(.25/39)) = .1086, z = 1.84:
    not resolved at .05. The items' shared difficulty cancels in the pairs."""
    a = {i: 1.0 if i < 28 else 0.0 for i in range(40)}
    b = {i: 1.0 if i < 20 else 0.0 for i in range(40)}
    t = paired_test(a, b)
    assert t.diff == pytest.approx(0.2)
    assert t.stderr == pytest.approx(math.sqrt((8 * 0.64 + 32 * 0.04) / 39 / 40))
    assert t.resolved
    unpaired = math.hypot(mean_stderr(list(a.values()))[1], mean_stderr(list(b.values()))[1])
    assert unpaired == pytest.approx(math.hypot(math.sqrt(0.21 / 39), math.sqrt(0.25 / 39)))
    assert 0.2 / unpaired < 1.959964  # an unpaired z-test would not resolve it


def test_paired_test_edge_cases_and_errors():
    same = paired_test({1: 0.5, 2: 1.0}, {1: 0.5, 2: 1.0})
    assert (same.diff, same.p_value, same.resolved) == (0.0, 1.0, False)
    shifted = paired_test({1: 1.0, 2: 1.0}, {1: 0.0, 2: 0.0})  # every difference is +1
    assert shifted.resolved and shifted.p_value == 0.0 and shifted.as_dict()["z"] is None
    with pytest.raises(ValueError, match=r"different items .*1 only in the first, e\.g\. \['3'\]"):
        paired_test({1: 1.0, 3: 1.0}, {1: 1.0})


def test_paired_combination_is_the_weighted_sum_of_task_differences():
    """Task A (coefficient 2/3): d = 1 0 0 1 (mean .5, SE sqrt(1/12)); task B (1/3): d = 1 1
    (mean 1, SE 0): diff = 2/3 x .5 + 1/3 x 1 = 2/3, SE = 2/3 x sqrt(1/12) = .19245."""
    a1, b1 = {1: 1, 2: 1, 3: 0, 4: 1}, {1: 0, 2: 1, 3: 0, 4: 0}
    a2, b2 = {1: 1, 2: 1}, {1: 0, 2: 0}
    t = paired_combination([(2 / 3, a1, b1), (1 / 3, a2, b2)])
    assert t.diff == pytest.approx(2 / 3)
    assert t.stderr == pytest.approx(2 / 3 * math.sqrt(1 / 12))
    assert t.n == 6


def test_win_values_count_ties_half():
    w = win_values({1: 2.0, 2: 1.0, 3: 0.5}, {1: 1.0, 2: 1.0, 3: 0.7})
    assert w == {1: 1.0, 2: 0.5, 3: 0.0}
    assert mean_stderr(list(w.values()))[0] == 0.5


def test_bootstraps_recover_the_standard_error_of_a_mean():
    """The bootstrap SE of a mean is the plug-in sqrt(Σ(x − x̄)² / n) / sqrt(n): for 1 0 1 1,
    sqrt(.1875) / 2 = .21651 (Monte Carlo error ~ .001 at 20000 draws)."""
    xs = [1.0, 0.0, 1.0, 1.0]
    assert bootstrap_stderr(xs, iters=20000, seed=1) == pytest.approx(0.21651, abs=0.005)
    se = stratified_bootstrap_stderr({"a": xs}, lambda m: m["a"], iters=20000, seed=1)
    assert se == pytest.approx(0.21651, abs=0.005)
    # the minimum of two groups far apart is the lower group's mean: the same SE
    se_min = stratified_bootstrap_stderr(
        {"low": xs, "high": [5.0, 5.0, 5.0]}, lambda m: min(m.values()), iters=20000, seed=1
    )
    assert se_min == pytest.approx(0.21651, abs=0.005)
    assert stratified_bootstrap_stderr({"a": [1.0]}, lambda m: m["a"]) is None


def test_a_vectorized_statistic_gives_the_same_standard_error_bit_for_bit():
    import numpy as np

    groups = {"a": [1.0, 0.0, 1.0, 1.0, 0.0], "b": [0.2, 0.9, 0.4], "c": [0.0, 1.0]}

    def scalar(m):
        return min((2 * m["a"] + m["b"]) / 3, m["c"])

    def vector(m):
        return np.minimum.reduce([(2 * m["a"] + m["b"]) / 3, m["c"]])

    se = stratified_bootstrap_stderr(groups, scalar, iters=500, seed=3)
    assert se == stratified_bootstrap_stderr(groups, vector, iters=500, seed=3, vectorized=True)
    with pytest.raises(ValueError, match="returned 1 values for 500"):
        stratified_bootstrap_stderr(
            groups, lambda m: np.array([0.0]), iters=500, seed=3, vectorized=True
        )


def test_hierarchical_bootstrap_on_hand_made_examples():
    """One seed, one task, differences 0 and 1: a resample of two items has mean 0 (both 0),
    1/2 (one of each, two orders) or 1, with probabilities 1/4, 1/2, 1/4. Its 2.5% and 97.5%
    quantiles are 0 and 1, its 30% and 70% quantiles both 1/2 (P(0) = .25 < .3, P(≤ 1/2) =
    .75 > .7; Monte Carlo error of those shares at 4000 draws: ~.007). Two seeds of constant
    differences 0 and 1 give the same law (two seed draws, each 0 or 1)."""
    assert hierarchical_bootstrap_ci([[(1.0, [0.0, 1.0])]], iters=4000) == (0.5, 0.0, 1.0)
    mid = hierarchical_bootstrap_ci([[(1.0, [0.0, 1.0])]], level=0.4, iters=4000)
    assert mid == (0.5, 0.5, 0.5)
    two = [[(1.0, [0.0, 0.0, 0.0])], [(1.0, [1.0, 1.0])]]
    assert hierarchical_bootstrap_ci(two, iters=4000) == (0.5, 0.0, 1.0)
    assert hierarchical_bootstrap_ci(two, level=0.4, iters=4000) == (0.5, 0.5, 0.5)
    # constant differences: nothing to resample, a degenerate interval at the constant
    assert hierarchical_bootstrap_ci([[(2.0, [0.25] * 5)]]) == pytest.approx((0.5, 0.5, 0.5))
    # coefficients weight the tasks: .5 · 1 + .25 · (−2) = 0 in every resample
    parts = [[(0.5, [1.0, 1.0]), (0.25, [-2.0, -2.0, -2.0])]]
    assert hierarchical_bootstrap_ci(parts) == pytest.approx((0.0, 0.0, 0.0))
    # seeded: the same seed, the same interval; the statistic is the data's, not the draws'
    x = [[(1.0, [0.3, -0.2, 0.9, 0.1])], [(1.0, [0.0, 0.4, -0.1])]]
    assert hierarchical_bootstrap_ci(x, seed=3) == hierarchical_bootstrap_ci(x, seed=3)
    assert hierarchical_bootstrap_ci(x)[0] == pytest.approx((0.275 + 0.1) / 2)


def test_hierarchical_bootstrap_refuses_bad_input():
    with pytest.raises(ValueError, match="no seeds"):
        hierarchical_bootstrap_ci([])
    with pytest.raises(ValueError, match="seed 1 has no tasks"):
        hierarchical_bootstrap_ci([[(1.0, [0.0])], []])
    with pytest.raises(ValueError, match=r"seed 0, task 1\]: no values"):
        hierarchical_bootstrap_ci([[(1.0, [0.0]), (1.0, [])]])
    with pytest.raises(ValueError, match="not finite"):
        hierarchical_bootstrap_ci([[(1.0, [0.0, float("nan")])]])
    with pytest.raises(ValueError, match="coefficient"):
        hierarchical_bootstrap_ci([[(float("inf"), [0.0])]])
    with pytest.raises(ValueError, match="level"):
        hierarchical_bootstrap_ci([[(1.0, [0.0])]], level=95)
    with pytest.raises(ValueError, match="iters"):
        hierarchical_bootstrap_ci([[(1.0, [0.0])]], iters=1)


def _plain_nested_bootstrap(seeds, iters, seed, level=0.95):
    """The same two-stage bootstrap in plain Python, one draw at a time: pick a seed, redraw its
    tasks' items, average; then numpy's linear-interpolation quantiles by hand."""
    rng = random.Random(seed)
    k = len(seeds)
    draws = []
    for _ in range(iters):
        total = 0.0
        for _ in range(k):
            for c, d in seeds[rng.randrange(k)]:
                total += c * sum(d[rng.randrange(len(d))] for _ in d) / len(d)
        draws.append(total / k)
    draws.sort()

    def quantile(p):
        x = p * (iters - 1)
        i = int(x)
        return draws[i] + (x - i) * (draws[min(i + 1, iters - 1)] - draws[i])

    return quantile((1 - level) / 2), quantile((1 + level) / 2)


def test_hierarchical_bootstrap_matches_a_plain_python_bootstrap():
    """Against an independent plain-Python formulation at 20000 draws each. Measured Monte Carlo
    error of an end (numpy seeds 0-9 against plain seed 1; plain seeds 2-5 among themselves):
    one seed of 60 items, interval ~.13 wide: at most .0012; two seeds of two tasks, ~.24 wide:
    at most .004. The bars leave 4x and 3x that."""
    g = random.Random(7)
    one = [[(1.0, [g.gauss(0.05, 0.3) for _ in range(60)])]]
    two = [
        [(0.5, [g.gauss(0.1, 0.3) for _ in range(30)]), (0.5, [g.gauss(-0.1, 0.5) for _ in range(20)])],
        [(0.5, [g.gauss(0.0, 0.3) for _ in range(30)]), (0.5, [g.gauss(0.2, 0.5) for _ in range(20)])],
    ]  # fmt: skip
    for data, tol in ((one, 0.005), (two, 0.012)):
        low, high = _plain_nested_bootstrap(data, 20000, seed=1)
        _, lo, hi = hierarchical_bootstrap_ci(data, iters=20000, seed=0)
        assert lo == pytest.approx(low, abs=tol) and hi == pytest.approx(high, abs=tol)
        assert hi - lo > 10 * tol  # a real interval, not a degenerate one


def test_length_biased_choice_is_scored_right_by_acc_norm():
    """Gold is the long, specific answer (63 bytes, total log-likelihood −20, i.e. −0.317 per
    byte); the short wrong one has −6 in total but −1.5 per byte. acc (summed) picks the short
    one; acc_norm (per byte, lm-eval's definition) picks gold."""
    doc = {
        "choices": ["Paris is the capital of France, a fact recorded in every atlas.", "Rome"],
        "gold": 0,
    }
    assert len(doc["choices"][0].encode()) == 63
    out = process_mc(doc, [(-20.0, False), (-6.0, False)])
    assert out["acc"] == 0.0
    assert out["acc_norm"] == 1.0


def test_real_suite_uses_acc_norm_wherever_candidates_differ_in_length():
    """Every shipped multiple-choice task of harness_3h whose candidates differ in length on
    the real-schema fixtures is scored by acc_norm (length-fair by default)."""
    import datasets
    import yaml

    from hhh_bench.evaluation.harness import shipped_tasks
    from hhh_bench.evaluation.tasks import utils

    cfg = yaml.safe_load((CONF / "eval" / "harness_3h.yaml").read_text())
    hooks = {
        "halueval_qa_mc": (utils.halueval_qa_docs, "halueval_qa"),
        "pku_saferlhf_mc": (utils.pku_saferlhf_mc_docs, "pku_saferlhf"),
        "pku_saferlhf_refusal": (utils.pku_saferlhf_refusal_docs, "pku_saferlhf"),
    }
    shipped = shipped_tasks()
    # the MC probes are diagnostics (issue 32): report columns, each naming its metric
    named = {c["task"]: c["metric"] for c in cfg["columns"].values()}
    named.update({t: cfg["metrics"].get(t) or cfg["metric"]
                  for tasks in cfg["dimensions"].values() for t in tasks})  # fmt: skip
    ours = [
        t
        for t in named
        if t in shipped and "_real_mc_template.yaml" in shipped[t]["path"].read_text()
    ]
    assert sorted(ours) == sorted(hooks)  # a new MC task of the suite needs a line here
    for task in ours:
        hook, data = hooks[task]
        ds = datasets.Dataset.from_json(str(ASSETS / f"{data}.jsonl"))
        assert any(len({len(c) for c in d["choices"]}) > 1 for d in hook(ds)), task
        assert named[task] == "acc_norm", task


def test_items_from_logged_samples_and_group_pooling():
    raw = {
        "samples": {
            "t_a": [
                {"doc_id": 0, "filter": "none", "metrics": ["acc"], "acc": 1.0, "doc": {}},
                {"doc_id": 1, "filter": "none", "metrics": ["acc"], "acc": 0.0, "doc": {}},
            ],
            "t_c": [  # documents naming their entity or object: the item's cluster
                {
                    "doc_id": 0,
                    "filter": "none",
                    "metrics": ["acc"],
                    "acc": 1.0,
                    "doc": {"entity": "Zorba", "object": "lamp"},
                },
                {
                    "doc_id": 1,
                    "filter": "none",
                    "metrics": ["acc"],
                    "acc": 1.0,
                    "doc": {"object": "lamp"},
                },
            ],
            "t_b": [
                {"doc_id": 0, "filter": "none", "metrics": ["acc"], "acc": 1.0, "doc": {}},
            ],
            "gen": [
                {
                    "doc_id": 0,
                    "filter": "none",
                    "metrics": ["refused_strmatch"],
                    "refused_strmatch": 1.0,
                    "doc": {"prompt": "hi", "tags": ["x"]},
                    "arguments": [["<user> hi <assistant> ", {"until": []}]],
                    "filtered_resps": ["Sorry, no."],
                }
            ],
        }
    }
    items, gens = parse_items(raw)
    assert items["t_a"] == [{"doc_id": 0, "acc": 1.0}, {"doc_id": 1, "acc": 0.0}]
    assert items["t_c"][0] == {"doc_id": 0, "acc": 1.0, "cluster": "entity=Zorba"}
    assert item_clusters(items, "t_c") == {"t_c/0": "entity=Zorba", "t_c/1": "object=lamp"}
    assert item_clusters(items, "t_a") == {"t_a/0": None, "t_a/1": None}
    assert gens["gen"][0]["prompt"] == "hi" and gens["gen"][0]["response"] == "Sorry, no."
    assert gens["gen"][0]["doc"] == {"prompt": "hi"}  # scalar fields only
    groups = {"g": ["t_a", "t_b"]}
    assert leaf_tasks("g", groups) == ["t_a", "t_b"]
    vals = item_values(items, "g", "acc", groups=groups, expected=2 / 3)
    assert vals == {"t_a/0": 1.0, "t_a/1": 0.0, "t_b/0": 1.0}
    # a reported value the items do not average to: not a mean metric, no per-item values
    assert item_values(items, "g", "acc", groups=groups, expected=0.9) is None


def test_summary_stderr_and_paired_column_test_on_hand_made_items():
    """helpful = task h (1 0 1 1), honest = task o (1 1 0 0), harmless = task s (1 1 1 0):
    SEs .25, .288675, .25; average SE = sqrt(.0625 + .083333 + .0625) / 3 = .15215."""
    specs = [TaskSpec("h", "helpful", 1.0, "acc"), TaskSpec("o", "honest", 1.0, "acc"),
             TaskSpec("s", "harmless", 1.0, "acc")]  # fmt: skip
    vals = {"h": [1, 0, 1, 1], "o": [1, 1, 0, 0], "s": [1, 1, 1, 0]}
    items = {
        t: [{"doc_id": i, "acc": float(v)} for i, v in enumerate(xs)] for t, xs in vals.items()
    }
    metrics = {t: {"acc": sum(xs) / 4} for t, xs in vals.items()}
    scores = {"helpful_stderr": 0.25, "honest_stderr": math.sqrt(1 / 12), "harmless_stderr": 0.25}
    out = summary_stderr(scores, metrics, specs, items, iters=4000, seed=0)
    assert out["average_stderr"] == pytest.approx(math.sqrt(0.0625 + 1 / 12 + 0.0625) / 3)
    assert 0.05 < out["min_stderr"] < 0.3
    # paired: a model that is right everywhere on h, same elsewhere: helpful diff = 1/4
    better = {**items, "h": [{"doc_id": i, "acc": 1.0} for i in range(4)]}
    t = paired_column_test("helpful", specs, {"items": better}, {"items": items})
    assert t.diff == pytest.approx(0.25)
    avg = paired_column_test("average", specs, {"items": better}, {"items": items})
    assert avg.diff == pytest.approx(0.25 / 3)
    assert [c for c, _, _ in column_parts("average", specs)] == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError, match="no paired test for `min`"):
        column_parts("min", specs)
    with pytest.raises(ValueError, match="has no per-item 'acc' values for task 'h'"):
        paired_column_test("helpful", specs, {"items": {}}, {"items": items})
