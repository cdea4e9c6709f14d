"""Leakage guards: prompt normalization, the overlap check, the TruthfulQA guard."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hhh_bench.core.schema import make_row, read_jsonl
from hhh_bench.data.leakage import (
    LeakageError,
    check_overlap,
    drop_truthfulqa_prompts,
    normalize_prompt,
    prompt_hash,
    prompt_keys,
    wants_truthfulqa_guard,
)
from hhh_bench.data.sources import run_adapter

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "sources"


def uf_rows(aspect: str = "helpfulness") -> list[dict]:
    rows, _ = run_adapter(
        "ultrafeedback",
        read_jsonl(ASSETS / "ultrafeedback.jsonl"),
        source="uf",
        dimension="helpful",
        aspect=aspect,
    )
    return rows


def tqa_questions() -> list[str]:
    return [r["question"] for r in read_jsonl(ASSETS / "eval_truthfulqa.jsonl")]


def test_normalize_prompt():
    assert normalize_prompt("What's  the CAPITAL\tof France?") == "what s the capital of france"
    assert normalize_prompt("  Can pigs fly?\n") == "can pigs fly"
    assert normalize_prompt("¿Qué tal?") == "qué tal"
    assert normalize_prompt("ＡＢＣ") == "abc"  # NFKC folds full-width letters
    assert normalize_prompt("?!...") == ""
    assert (
        prompt_hash("Can pigs fly?")
        == prompt_hash("can PIGS fly")
        != prompt_hash("can pigs fly high")
    )


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_normalize_is_idempotent_and_case_blind(text):
    n = normalize_prompt(text)
    assert normalize_prompt(n) == n
    assert n == n.strip() and "  " not in n
    assert prompt_hash(text) == prompt_hash(n)


def test_prompt_keys_cover_every_user_turn_and_bare_question():
    row = make_row(
        [
            {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": "Hi"},
            {"role": "user", "content": "Knowledge: x\n\nQuestion: Can pigs fly?"},
        ],
        "a",
        "b",
        "honest",
        "s",
        "s/1",
        meta={"question": "Can pigs fly?"},
    )
    keys = prompt_keys(row)
    assert prompt_hash("hello there!") in keys and prompt_hash("Can pigs fly") in keys
    assert prompt_hash("Hi") not in keys  # assistant turns are not prompts
    assert len(keys) == 3


def test_truthfulqa_guard_removes_exactly_the_truthfulqa_sourced_prompts():
    """The fixture's rows 1 and 2 have source truthful_qa; with helpfulness both give a pair, so
    exactly those two pairs go and the evol_instruct one stays."""
    rows = uf_rows()
    kept, n = drop_truthfulqa_prompts(rows)
    assert n == 2
    assert [r["id"] for r in kept] == ["uf/train/0/0"]
    assert {r["prompt"][0]["content"] for r in rows} - {
        r["prompt"][0]["content"] for r in kept
    } == {
        "What happens if you crack your knuckles a lot?",
        "Can pigs fly?",
    }
    other = [make_row("q", "a", "b", "helpful", "hh", "hh/0")]  # rows without meta are kept
    assert drop_truthfulqa_prompts(other) == (other, 0)


def test_wants_truthfulqa_guard():
    assert wants_truthfulqa_guard("auto", ["truthfulqa_mc2", "alpaca_eval"]) is True
    assert wants_truthfulqa_guard("auto", ["TruthfulQA-gen"]) is True
    assert wants_truthfulqa_guard("auto", ["halueval_qa"]) is False
    assert wants_truthfulqa_guard("auto", None) is False
    assert (
        wants_truthfulqa_guard(True, None) is True
        and wants_truthfulqa_guard("false", ["truthfulqa"]) is False
    )
    with pytest.raises(ValueError, match="true, false or 'auto'"):
        wants_truthfulqa_guard("sometimes", [])


def test_overlap_between_fixture_train_and_eval_is_reported_and_fails():
    """The UltraFeedback fixture holds 2 of the 3 TruthfulQA fixture questions (rows 1, 2): the
    check reports 2 shared prompts in 2 training rows and fails at max_overlap 0 and 1."""
    train = {
        "ultrafeedback_helpfulness": uf_rows(),
        "other": [make_row("Unrelated?", "a", "b", "helpful", "o", "o/0")],
    }
    evals = {"truthfulqa_mc2": tqa_questions()}
    with pytest.raises(LeakageError) as err:
        check_overlap(train, evals, max_overlap=0)
    report = err.value.report
    by_pair = {(p.train, p.eval): p for p in report.pairs}
    hit = by_pair[("ultrafeedback_helpfulness", "truthfulqa_mc2")]
    assert (hit.overlap, hit.train_rows) == (2, 2)
    assert set(hit.examples) == {"What happens if you crack your knuckles a lot?", "Can pigs fly?"}
    assert by_pair[("other", "truthfulqa_mc2")].overlap == 0
    assert report.total == 2 and not report.passed
    msg = str(err.value)
    assert (
        "ultrafeedback_helpfulness x truthfulqa_mc2: 2 shared eval prompt(s) in 2 training row(s)"
        in msg
    )
    assert "max_overlap=0" in msg
    with pytest.raises(LeakageError):
        check_overlap(train, evals, max_overlap=1)
    ok = check_overlap(train, evals, max_overlap=2)  # at the threshold: passes, still reported
    assert ok.passed and ok.as_dict()["total"] == 2


def test_overlap_counts_distinct_eval_prompts_and_matches_normalized_text():
    """Three pairs share the prompt (best_vs_rest on one UltraFeedback row): 1 shared prompt, 3
    training rows. Case and punctuation do not hide it."""
    rows, _ = run_adapter(
        "ultrafeedback",
        read_jsonl(ASSETS / "ultrafeedback.jsonl")[:1],
        source="uf",
        dimension="helpful",
        pairing="best_vs_rest",
    )
    report = check_overlap(
        {"uf": rows},
        {"ev": ["GIVE three tips, for keeping a sourdough starter healthy"]},
        max_overlap=5,
    )
    assert (report.pairs[0].overlap, report.pairs[0].train_rows) == (1, 3)


def test_guard_then_overlap_passes():
    kept, _ = drop_truthfulqa_prompts(uf_rows())
    assert check_overlap({"uf": kept}, {"truthfulqa": tqa_questions()}).total == 0


def test_overlap_rejects_non_string_eval_items():
    with pytest.raises(TypeError, match="expected the prompt text"):
        check_overlap({"t": []}, {"ev": [{"question": "q"}]})


_words = st.sampled_from(["Can", "pigs", "fly", "fly?", "PIGS", "  ", "what's", "what s", "!"])
_prompt = st.lists(_words, min_size=1, max_size=4).map(" ".join)


@settings(max_examples=80, deadline=None)
@given(
    train=st.lists(st.lists(_prompt, min_size=1, max_size=2), max_size=6),
    evals=st.lists(_prompt, max_size=5),
)
def test_overlap_matches_a_brute_force_count(train, evals):
    """Reference: compare every normalized user turn with every normalized eval prompt."""
    rows = []
    for k, turns in enumerate(train):
        msgs = []
        for j, t in enumerate(turns):
            msgs += [{"role": "user", "content": t}] + (
                [{"role": "assistant", "content": "ok"}] if j < len(turns) - 1 else []
            )
        rows.append({"prompt": msgs, "id": str(k)})
    report = check_overlap({"t": rows}, {"e": evals}, max_overlap=10**6)
    norm_eval = {normalize_prompt(e) for e in evals} - {""}
    shared = {normalize_prompt(t) for turns in train for t in turns} & norm_eval
    hit_rows = sum(any(normalize_prompt(t) in norm_eval for t in turns) for turns in train)
    assert (report.pairs[0].overlap, report.pairs[0].train_rows) == (len(shared), hit_rows)
