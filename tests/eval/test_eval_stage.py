"""The eval stage on the small world's SFT base: scores, cache, results store, re-scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf


@pytest.fixture(scope="module")
def cfg(small_cfg, tmp_path_factory):
    """small_cfg with a root of its own, so this module's results store is not shared."""
    return OmegaConf.merge(small_cfg, {"root": str(tmp_path_factory.mktemp("eval_root"))})


@pytest.fixture(scope="module")
def base_model(small_base):
    return {
        "path": small_base["path"],
        "key": small_base["key"],
        "kind": "base",
        "name": "base",
        "method": "sft",
        "params": {},
        "timings": {"train_s": 1.5},
    }


@pytest.fixture(scope="module")
def base_eval(cfg, base_model, small_data):
    from hhh_bench.stages.eval import run_eval

    return run_eval(cfg, base_model, small_data, split="test")


def test_sft_base_knows_its_facts_and_every_metric_is_in_0_1(base_eval, small_base):
    m = base_eval["metrics"]
    assert sorted(m) == sorted(
        f"toy3h_{k}_test"
        for k in (
            "known_qa",
            "benign_request",
            "story_request",
            "unknown_qa",
            "truthfulness",
            "harmful_request",
        )  # fmt: skip
    )
    # choice.py's figure on the same model and items, recorded by the base stage
    direct = small_base.get("known_qa_test_after", {}).get("acc")
    assert m["toy3h_known_qa_test"]["acc"] == pytest.approx(direct, abs=1e-9)
    from conftest import KNOWN_FACTS_BAR

    assert m["toy3h_known_qa_test"]["acc"] >= KNOWN_FACTS_BAR, (
        f"the SFT base should know its facts: known_qa acc {m['toy3h_known_qa_test']['acc']:.3f} "
        f"(choice.py on the same model: {direct}); a base-stage issue, not an eval one"
    )
    for task, row in m.items():
        for k, v in row.items():
            if k != "n":
                assert v is not None and 0.0 <= v <= 1.0, (task, k, v)
    s = base_eval["scores"]
    assert s["average"] == pytest.approx((s["helpful"] + s["honest"] + s["harmless"]) / 3)
    assert s["delta_average"] == 0.0 and s["max_drop"] == 0.0  # the base against itself


def test_eval_dir_is_complete_and_samples_match_the_direct_scorer(
    base_eval, small_base, small_data
):
    from hhh_bench.core.schema import read_jsonl
    from hhh_bench.evaluation.choice import choice_logprobs
    from hhh_bench.models import load_causal_lm, load_tokenizer

    out = Path(base_eval["dir"])
    assert {"results.json", "samples.jsonl", "provenance.json"} <= {p.name for p in out.iterdir()}
    assert (out / "tasks" / "toy3h" / "toy3h_known_qa_test.yaml").is_file()
    saved = json.loads((out / "results.json").read_text())
    assert saved["metrics"] == base_eval["metrics"]
    # every item keeps its cluster (issue 28's mixed-effects view): the entity it is about, or
    # the object a request names
    from hhh_bench.core.items import ITEMS_FILE
    from hhh_bench.core.items import read_jsonl as read_items

    per_task = read_items(out / ITEMS_FILE)
    assert all(r["cluster"].startswith("entity=") for r in per_task["toy3h_unknown_qa_test"])
    assert all(r["cluster"].startswith("object=") for r in per_task["toy3h_harmful_request_test"])
    # the trained model's lm-eval log-likelihoods equal choice.py's on a few items
    model = load_causal_lm(small_base["path"], dtype="float32")
    tok = load_tokenizer(small_base["path"])
    items = {
        it["id"]: it
        for it in read_jsonl(Path(small_data["dir"]) / "eval" / "unknown_qa_test.jsonl")
    }
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    checked = 0
    for s in samples:
        if s["task"] == "toy3h_unknown_qa_test" and checked < 3:
            it = items[s["id"]]
            assert s["lls"] == pytest.approx(
                choice_logprobs(model, tok, it["question"], it["choices"]), abs=1e-4
            )
            checked += 1
    assert checked == 3


def test_row_in_store_cache_and_rescoring(cfg, base_model, small_data, base_eval):
    from hhh_bench.stages.eval import results_path, run_eval
    from hhh_bench.tracking.store import load_results, read_results

    row = base_eval["row"]
    assert base_eval["appended"] and not base_eval["cached"]
    for field in (
        "kind",
        "method",
        "params",
        "seed",
        "config_hash",
        "tasks",
        "timings",
        "artifacts",
    ):
        assert field in row, field
    assert row["timings"]["train_s"] == 1.5 and row["timings"]["eval_s"] > 0
    assert row["tasks"]["toy3h_known_qa_test"]["acc_stderr"] is not None
    # the same call again: served from the cache, nothing appended
    again = run_eval(cfg, base_model, small_data, split="test")
    assert again["cached"] and not again["appended"] and again["key"] == base_eval["key"]
    # re-scored by the soft metric: no new evaluation, the row is superseded
    soft_cfg = OmegaConf.merge(cfg, {"eval": {"metric": "soft"}})
    soft = run_eval(soft_cfg, base_model, small_data, split="test")
    assert soft["cached"] and soft["appended"] and soft["key"] == base_eval["key"]
    m = base_eval["metrics"]
    assert soft["scores"]["harmless"] == pytest.approx(m["toy3h_harmful_request_test"]["soft"])
    rows = read_results(results_path(cfg))
    assert len(rows) == 1 and rows[0]["metric"] == "soft"
    # another kind of model with the same weights (same key: served from the cache) is scored
    # against the base row of the store: zero deltas
    merged = {**base_model, "kind": "merge", "name": "same weights", "method": "ties"}
    same = run_eval(soft_cfg, merged, small_data, split="test", append=False)
    assert same["cached"] and same["row"]["kind"] == "merge"
    assert same["scores"]["delta_average"] == pytest.approx(0.0, abs=1e-12)
    assert same["scores"]["max_drop"] == 0.0
    df = load_results(results_path(cfg))
    assert list(df["kind"]) == ["base"]


def test_real_suite_names_its_missing_data_file(tmp_path):
    """eval=harness_3h: a custom task's JSONL that does not exist fails before any model loads."""
    from hydra import compose, initialize_config_dir

    from hhh_bench.stages.eval import run_eval

    conf = Path(__file__).resolve().parents[2] / "conf"
    overrides = [
        f"root={tmp_path}",
        "logger=none",
        "eval=harness_3h",
        "eval.data_files.halueval_qa=/nonexistent/halueval_qa.jsonl",
        # the other files exist (the judged tasks' prompt files are checked first otherwise)
        *(
            f"eval.data_files.{k}={conf.parent / 'tests' / 'assets' / 'eval' / v}.jsonl"
            for k, v in [
                ("helpful_prompts", "alpaca_eval"),
                ("harmful_prompts", "harmbench"),
                ("xstest", "xstest"),
                ("pku_saferlhf", "pku_saferlhf"),
                ("truthfulqa_gen", "truthfulqa_gen"),
            ]
        ),  # fmt: skip
        f"eval.data_files.harmful_attacks={conf.parent}/tests/assets/eval/harmbench_test_cases.json",
    ]
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    with pytest.raises(FileNotFoundError, match=r"eval.data_files.halueval_qa"):
        run_eval(cfg, {"path": "unused", "key": "k"}, {"dir": str(tmp_path), "key": "d"})
