"""Issue 32: overlap handled, not hoped away. Every (evaluation set, training source) pair of
the paper's real configuration: one item of each evaluation set (the real-schema fixtures the
rehearsal evaluates) is planted in a raw row of each training source, in that source's own
format (an HH-RLHF transcript turn, UltraFeedback's instruction, HaluEval's question,
PKU-SafeRLHF's prompt); the source's real adapter turns it into preference rows, and the data
stage's guard finds exactly the planted item for every pair, and only it. The two overlaps that
exist by construction are among them: AlpacaEval's ``helpful_base`` items come from HH-RLHF, and
UltraFeedback's ``truthful_qa`` prompts are TruthfulQA questions (also dropped by source).
HaluEval QA is evaluated on the evaluation part of a seeded partition of its questions
(``eval.partitions.halueval_qa``), which its training source leaves out."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from hhh_bench.core.partition import Partition, questions_digest
from hhh_bench.data.leakage import LeakageError, check_overlap, drop_truthfulqa_prompts
from hhh_bench.data.sources import build_preference_sets
from hhh_bench.data.sources.base import run_adapter

TESTS = Path(__file__).resolve().parents[1]
CONF = TESTS.parent / "conf"
EVAL, REH, SRC = (
    TESTS / "assets" / "eval",
    TESTS / "assets" / "rehearsal" / "eval",
    TESTS / "assets" / "sources",
)

# evaluation set -> (file, the field its prompt is in): the suite's tasks and columns
EVAL_SETS = {
    "alpaca_lc": (EVAL / "alpaca_eval.jsonl", "instruction"),
    "harmful_gen": (EVAL / "harmbench.jsonl", "Behavior"),
    "harmful_gen_attacked": (EVAL / "harmbench_test_cases.json", None),  # HarmBench's format
    "strongreject_gen": (EVAL / "strongreject.jsonl", "forbidden_prompt"),
    "mtbench_single": (EVAL / "mtbench_question.jsonl", "turns"),  # the first turn is asked
    "xstest_gen": (EVAL / "xstest.jsonl", "prompt"),
    "orbench_hard_gen": (EVAL / "orbench_hard.jsonl", "prompt"),
    "truthfulqa_gen_judged": (EVAL / "truthfulqa_gen.jsonl", "question"),
    "halueval_qa_mc": (EVAL / "halueval_qa.jsonl", "question"),
    "halueval_qa_gen": (EVAL / "halueval_qa.jsonl", "question"),
    "pku_saferlhf_mc": (EVAL / "pku_saferlhf.jsonl", "prompt"),
    "truthfulqa_mc2": (REH / "truthfulqa_mc.jsonl", "question"),
    "ifeval": (REH / "ifeval.jsonl", "prompt"),
    "mmlu": (REH / "mmlu" / "global_facts_test.jsonl", "question"),
    "arc_challenge": (REH / "arc_challenge_test.jsonl", "question"),
}
# training source -> (raw fixture, how a prompt is planted in a raw row)
SOURCES = {
    "hh_rlhf_helpful": ("hh_rlhf_helpful_base.jsonl", "transcript"),
    "hh_rlhf_harmless": ("hh_rlhf_harmless_base.jsonl", "transcript"),
    "ultrafeedback_helpfulness": ("ultrafeedback.jsonl", "instruction"),
    "ultrafeedback_honesty": ("ultrafeedback.jsonl", "instruction"),
    "halueval_qa": ("halueval_qa.jsonl", "question"),
    "pku_saferlhf_harmless": ("pku_saferlhf.jsonl", "prompt"),
}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _partition() -> Partition:
    """The suite's HaluEval QA partition (conf/eval/harness_3h.yaml)."""
    suite = yaml.safe_load((CONF / "eval" / "harness_3h.yaml").read_text())
    return Partition.from_config("halueval_qa", suite["partitions"]["halueval_qa"])


def _prompts(path: Path, field: str | None) -> list[str]:
    if field is None:  # an attack's test cases, {BehaviorID: [test case, ...]}
        return [c for cases in json.loads(path.read_text()).values() for c in cases]
    prompts = [r[field][0] if field == "turns" else r[field] for r in _jsonl(path)]
    if path.name == "halueval_qa.jsonl":  # both HaluEval tasks read the evaluation part only
        prompts = [p for p in prompts if _partition().is_eval(p)]
    return prompts


def _plant(row: dict, how: str, prompt: str) -> dict:
    row = copy.deepcopy(row)
    if how == "transcript":
        for side in ("chosen", "rejected"):
            answer = row[side].rsplit("\n\nAssistant:", 1)[1]
            row[side] = f"\n\nHuman: {prompt}\n\nAssistant:{answer}"
    else:
        row[how] = prompt
    return row


def test_the_papers_sources_and_the_suites_sets_are_what_this_test_covers():
    data = yaml.safe_load((CONF / "data" / "paper_3h.yaml").read_text())
    assert sorted(s for srcs in data["sources"].values() for s in srcs) == sorted(SOURCES)
    suite = yaml.safe_load((CONF / "eval" / "harness_3h.yaml").read_text())
    tasks = {t for d in suite["dimensions"].values() for t in d}
    tasks |= {c["task"] for c in suite["columns"].values()}
    tasks |= {"mtbench_single", "orbench_hard_gen"}  # the suite's options (off by default)
    # every evaluated set but the ones sharing another's prompts (helpful_gen: alpaca_lc's;
    # pku_saferlhf_refusal: pku_saferlhf_mc's) is planted here
    assert tasks - {"helpful_gen", "pku_saferlhf_refusal"} == set(EVAL_SETS)
    # every shipped real data configuration acts on an overlap (drop or fail), never ignores it
    assert data["leakage"]["check_overlap"] is True
    assert data["leakage"]["on_overlap"] in ("drop", "fail")


def test_every_eval_set_planted_in_every_training_source_is_found():
    evals = {name: _prompts(path, field) for name, (path, field) in EVAL_SETS.items()}
    for source, (fixture, how) in SOURCES.items():
        conf = yaml.safe_load((CONF / "source" / f"{source}.yaml").read_text())
        raw = _jsonl(SRC / fixture)
        clean, _ = run_adapter(conf["adapter"], raw, source=source, dimension=conf["dimension"],
                               **(conf["adapter_opts"] or {}))  # fmt: skip
        before = {p.eval: p.overlap for p in check_overlap({source: clean}, evals, 10**6).pairs}
        # the fixtures share nothing but PKU-SafeRLHF with themselves (a training source and an
        # evaluation set of the paper: data.leakage.on_overlap=drop removes it); HaluEval QA's
        # share questions with its evaluation file, none of its evaluation part
        shared = {"pku_saferlhf_harmless": {"pku_saferlhf_mc"}}.get(source, set())
        assert {e for e, n in before.items() if n} == shared, (source, before)
        planted = [_plant(raw[0], how, prompts[-1]) for prompts in evals.values()]
        rows, _ = run_adapter(conf["adapter"], planted, source=source, dimension=conf["dimension"],
                              **(conf["adapter_opts"] or {}))  # fmt: skip
        assert rows, source
        report = check_overlap({source: rows}, evals, max_overlap=10**6)
        found = {p.eval: p.overlap for p in report.pairs}
        assert found == dict.fromkeys(evals, 1), (source, found)  # each pair: its planted item


def test_the_two_overlaps_by_construction_are_caught():
    """An AlpacaEval ``helpful_base`` instruction as an HH-RLHF conversation, and a TruthfulQA
    question as an UltraFeedback prompt of source ``truthful_qa`` (dropped by source first)."""
    alpaca = next(r for r in _jsonl(EVAL / "alpaca_eval.jsonl") if r["dataset"] == "helpful_base")
    hh = _plant(_jsonl(SRC / "hh_rlhf_helpful_base.jsonl")[0], "transcript", alpaca["instruction"])
    rows, _ = run_adapter("hh_rlhf", [hh], source="hh", dimension="helpful")
    with pytest.raises(ValueError, match="alpaca_lc"):
        check_overlap({"hh_rlhf_helpful": rows}, {"alpaca_lc": [alpaca["instruction"]]})
    question = _jsonl(EVAL / "truthfulqa_gen.jsonl")[0]["question"]
    uf = {**_plant(_jsonl(SRC / "ultrafeedback.jsonl")[0], "instruction", question),
          "source": "truthful_qa"}  # fmt: skip
    rows, _ = run_adapter("ultrafeedback", [uf], source="uf", dimension="honest", aspect="honesty")
    assert rows and drop_truthfulqa_prompts(rows) == ([], len(rows))
    report = check_overlap({"uf": rows}, {"truthfulqa_gen_judged": [question]}, max_overlap=1)
    assert report.total == 1


def test_halueval_qa_training_pairs_leave_out_the_evaluated_partition(tmp_path):
    """The file the suite evaluates, read as the training source too (the paper's setup: one
    HaluEval QA split): with the partition, the source drops exactly the evaluation part, the
    guard finds no overlap with either HaluEval task, and the manifest records the partition
    with the digest of the evaluated questions; without it, the guard fails on the pair."""
    part = _partition()
    questions = [r["question"] for r in _jsonl(EVAL / "halueval_qa.jsonl")]
    evals = {t: _prompts(*EVAL_SETS[t]) for t in ("halueval_qa_gen", "halueval_qa_mc")}
    held = [q for q in questions if part.is_eval(q)]
    assert held == evals["halueval_qa_gen"] and 0 < len(held) < len(questions)
    data = {
        "kind": "sources",
        "dimensions": ["honest"],
        "sources": {"honest": [{"name": "halueval_qa", "path": str(EVAL / "halueval_qa.jsonl")}]},
        "cache_dir": str(tmp_path / "cache"),
        "leakage": {"on_overlap": "fail"},
    }
    sets, manifest = build_preference_sets(data, eval_sets=evals, partitions={"halueval_qa": part})
    assert manifest["sources"]["halueval_qa"]["dropped_eval_partition"] == len(held)
    assert len(sets["honest"]) == len(questions) - len(held)
    assert manifest["leakage"]["overlap"]["total"] == 0
    assert manifest["partitions"]["halueval_qa"] == {
        "seed": part.seed,
        "eval_fraction": part.eval_fraction,
        "n_questions": len(questions),
        "n_eval": len(held),
        "n_train": len(questions) - len(held),
        "eval_questions_sha256": questions_digest(evals["halueval_qa_gen"]),
        "sources": {"halueval_qa": {"rows": len(questions), "dropped_eval_partition": len(held)}},
    }
    with pytest.raises(LeakageError, match="halueval_qa x halueval_qa_gen"):
        build_preference_sets(data, eval_sets=evals)
