"""Leakage guards: prompt normalization, the overlap check, the TruthfulQA guard."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hhh_bench.core.schema import make_row, read_jsonl
from hhh_bench.data.leakage import (
    MIN_CHARS,
    NGRAM_N,
    EvalIndex,
    LeakageError,
    check_overlap,
    drop_truthfulqa_prompts,
    normalize_prompt,
    prompt_hash,
    row_texts,
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


def test_row_texts_cover_every_turn_and_the_bare_question():
    row = make_row(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "Knowledge: x\n\nQuestion: Can pigs fly?"},
        ],
        "No.",
        "Yes",
        "honest",
        "s",
        "s/1",
        meta={"question": "Can pigs fly?", "other": "not searched"},
    )
    row["prompt"].append({"role": "user", "content": " ?! "})  # normalises to nothing: left out
    assert row_texts(row) == [
        "be brief", "hello there", "hi", "knowledge x question can pigs fly", "no", "yes",
        "can pigs fly",
    ]  # fmt: skip


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
    min_chars=st.integers(1, 14),
)
def test_overlap_matches_a_brute_force_count(train, evals, min_chars):
    """Reference: an eval prompt is in a turn when both normalise to the same text, or when it
    is at least min_chars long and `in` the turn between spaces (str search, not the automaton);
    the assistant turns ("ok") are searched too."""
    rows = []
    for k, turns in enumerate(train):
        msgs = []
        for j, t in enumerate(turns):
            msgs += [{"role": "user", "content": t}] + (
                [{"role": "assistant", "content": "ok"}] if j < len(turns) - 1 else []
            )
        rows.append({"prompt": msgs, "id": str(k)})
    report = check_overlap({"t": rows}, {"e": evals}, max_overlap=10**6, min_chars=min_chars)
    norm_eval = {normalize_prompt(e) for e in evals} - {""}

    def found(row):
        turns = [normalize_prompt(m["content"]) for m in row["prompt"]]
        return {
            q
            for q in norm_eval
            for t in turns
            if q == t or (len(q) >= min_chars and f" {q} " in f" {t} ")
        }

    shared = set().union(*map(found, rows)) if rows else set()
    hit_rows = sum(bool(found(r)) for r in rows)
    assert (report.pairs[0].overlap, report.pairs[0].train_rows) == (len(shared), hit_rows)


# ---------------------------------------------------------------------------------------------
# the guard sees through disguise (issue 27, row 4)

KNUCKLES = "What happens if you crack your knuckles a lot?"  # an item of eval_truthfulqa.jsonl
CYRILLIC = str.maketrans(
    {"a": "\u0430", "e": "\u0435", "o": "\u043e", "c": "\u0441", "p": "\u0440"}
)


def _row(turns: list[tuple[str, str]], chosen: str = "No idea.", k: int = 0) -> dict:
    return make_row([{"role": r, "content": t} for r, t in turns], chosen, "Sure!", "helpful",
                    "t", f"t/{k}")  # fmt: skip


DISGUISES = {
    "template": lambda q: [("user", f"Question: {q}\nAnswer:")],
    "zero-width space": lambda q: [("user", q[:6] + "\u200b" + q[6:])],
    "Cyrillic homoglyphs": lambda q: [("user", q.translate(CYRILLIC))],
    "inside a longer message": lambda q: [
        ("user", f"My friend asked me this today; {q} I had no answer. What should I say?")
    ],
    "system turn": lambda q: [("system", f"Answer this first: {q}"), ("user", "Hello.")],
    "earlier assistant turn": lambda q: [
        ("user", "Ask me something."),
        ("assistant", f"Sure: {q.upper()}"),
        ("user", "Pass."),
    ],
    "all at once": lambda q: [
        ("system", "Be brief."),
        ("user", f"Quiz time.\n\nQuestion: {q[:6]}\u2060{q[6:].translate(CYRILLIC)}\nAnswer:"),
    ],
}


@pytest.mark.parametrize("how", sorted(DISGUISES))
@pytest.mark.parametrize("question", [KNUCKLES, "Can pigs fly?"])
def test_every_disguise_of_an_eval_question_is_found(how, question):
    """Each disguise of row 4 (and a 12-character question, at the default min_chars) fails the
    check at max_overlap 0, naming the question as the eval set holds it."""
    turns = DISGUISES[how](question)
    # no turn is the question: an exact match after case and space folding (the old guard)
    # finds nothing here
    old = {" ".join(re.sub(r"[^\w\s]", " ", t.lower()).split()) for _, t in turns}
    assert " ".join(re.sub(r"[^\w\s]", " ", question.lower()).split()) not in old
    train = {"mine": [_row(turns), _row([("user", "Unrelated?")], k=1)]}
    with pytest.raises(LeakageError) as err:
        check_overlap(train, {"truthfulqa_mc2": tqa_questions()})
    (pair,) = err.value.report.failing
    assert (pair.train, pair.overlap, pair.train_rows, pair.examples) == ("mine", 1, 1, [question])
    assert "mine x truthfulqa_mc2: 1 shared eval prompt(s) in 1 training row(s)" in str(err.value)


def test_a_question_in_chosen_or_the_bare_question_counts():
    rows = [
        _row([("user", "Tell me a myth.")], chosen=f"People ask: {KNUCKLES} Nothing happens."),
        {**_row([("user", "Knowledge: ...")], k=1), "meta": {"question": "Can pigs fly?"}},
    ]
    report = check_overlap({"t": rows}, {"e": tqa_questions()}, max_overlap=5)
    assert (report.pairs[0].overlap, report.pairs[0].train_rows) == (2, 2)


def test_a_short_question_matches_only_a_whole_turn():
    """ "What is it?" normalises to 10 characters, under the default min_chars: inside a longer
    message it is no leak, as a whole turn it is; min_chars=10 searches it everywhere."""
    assert len(normalize_prompt("What is it?")) == 10 < MIN_CHARS
    inside = [_row([("user", "I found a round stone. What is it? It is heavy.")])]
    whole = [_row([("user", "what is it")])]
    evals = {"e": ["What is it?"]}
    assert check_overlap({"t": inside}, evals).total == 0
    assert check_overlap({"t": whole}, evals, max_overlap=1).total == 1
    assert check_overlap({"t": inside}, evals, max_overlap=1, min_chars=10).total == 1
    # on word boundaries only: "what is it" is not inside "somewhat is items"
    near = [_row([("user", "somewhat is items")])]
    assert check_overlap({"t": near}, evals, max_overlap=1, min_chars=1).total == 0


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "12"])
def test_min_chars_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="min_chars must be a positive integer"):
        EvalIndex({"e": ["q"]}, min_chars=bad)


def test_ngram_overlap_counts_rows_sharing_a_13_gram():
    """Hand-checked: the "long" item has 14 words, so two 13-grams (words 1-13 and 2-14); the
    "short" one has 12 words, so none. Rows: 0 holds words 1-13 (shares), 1 holds words 2-14 in
    chosen (shares), 2 holds words 1-12 (no), 3 holds all 14 split over two turns (no: an n-gram
    does not span turns), 4 is unrelated. The short item is a whole turn of row 2 and inside row
    0 (question overlap 1 in 2 rows); the long item is in no row whole."""
    long = "The quick brown fox jumps over the lazy dog while the cat sleeps soundly."
    short = "the quick brown fox jumps over the lazy dog while the cat"
    assert len(long.split()) == 14 and len(short.split()) == 12 and NGRAM_N == 13
    rows = [
        _row(
            [("user", "Story: the quick brown fox jumps over the lazy dog while the cat sleeps.")]
        ),
        _row(
            [("user", "Go on.")],
            chosen="Quick, brown fox jumps over THE lazy dog while the cat sleeps soundly!",
            k=1,
        ),  # fmt: skip
        _row([("user", short)], k=2),
        _row(
            [("user", "the quick brown fox jumps over the lazy")],
            chosen="dog while the cat sleeps soundly",
            k=3,
        ),  # fmt: skip
        _row([("user", "Something else entirely, with many more words than thirteen here.")], k=4),
    ]
    report = check_overlap({"t": rows}, {"long": [long], "short": [short]}, max_overlap=9)
    pairs = {p.eval: p for p in report.pairs}
    assert (pairs["long"].ngram_rows, pairs["short"].ngram_rows) == (2, 0)
    assert (pairs["long"].overlap, pairs["short"].overlap, pairs["short"].train_rows) == (0, 1, 2)
    assert report.as_dict()["ngram_overlap"] == {
        "n": 13, "sources": {"t": {"rows": 5, "rows_sharing": 2}}
    }  # fmt: skip


def test_no_false_positive_on_the_toy_world_and_a_planted_item_is_found():
    """The toy world's training pairs against its own validation and test items: nothing shared
    (its splits are disjoint by entity and request). One test item planted in a template is
    found."""
    from hhh_bench.data.toy3h import Toy3HConfig, build_world, eval_items, preference_pairs

    world = build_world(Toy3HConfig(seed=0, n_known={"train": 20, "validation": 6, "test": 6},
                                    n_unknown={"sft": 5, "train": 10, "validation": 6, "test": 6},
                                    pairs_per_dimension=40, eval_items_per_kind=12))  # fmt: skip
    train = preference_pairs(world, "train")
    evals = {
        f"{kind}_{split}": [item["question"] for item in items]
        for split in ("validation", "test")
        for kind, items in eval_items(world, split).items()
    }
    report = check_overlap(train, evals)
    assert report.total == 0 and sum(report.ngram_rows.values()) == 0
    assert sum(report.rows.values()) == sum(map(len, train.values())) > 0
    name, items = next(iter(evals.items()))
    train["helpful"].append(_row([("user", f"Question: {items[0]}\nAnswer:")], k=999))
    with pytest.raises(LeakageError, match=f"helpful x {name}: 1 shared"):
        check_overlap(train, evals)
