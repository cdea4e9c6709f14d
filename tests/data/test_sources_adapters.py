"""Every adapter on its hand-written raw fixture (tests/assets/sources/, the real raw schemas).

Each test spells out, from the fixture, which raw row gives which pair and why the others are
dropped; every pair's direction (which text is chosen) is checked. Property tests then check
the invariants on random raw rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hhh_bench.core.schema import validate_rows
from hhh_bench.data.sources import (
    STANDARD_REASONS,
    AdapterStats,
    adapter_options,
    get_adapter,
    list_adapters,
    register_source,
    run_adapter,
)
from hhh_bench.data.sources.halueval import parse_dialogue_history
from hhh_bench.data.sources.helpsteer import parse_helpsteer_prompt
from hhh_bench.data.sources.hh_rlhf import parse_transcript

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "sources"


def raw(name: str) -> list[dict[str, Any]]:
    from hhh_bench.core.schema import read_jsonl

    return read_jsonl(ASSETS / name)


def adapt(adapter: str, fixture: str, **opts: Any) -> tuple[list[dict], dict]:
    rows, stats = run_adapter(
        adapter, raw(fixture), source="src", dimension="helpful", split="train", **opts
    )
    assert validate_rows(rows) == len(rows)
    d = stats.as_dict()
    assert d["rows_in"] == d["rows_used"] + sum(d["dropped"].values())
    assert d["rows_out"] == len(rows)
    return rows, d


def triples(rows: list[dict]) -> list[tuple[str, str, str]]:
    """(id, chosen text, rejected text) of each row."""
    return [(r["id"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows]


def dropped(d: dict, **nonzero: int) -> dict:
    """The expected ``dropped`` dict: the standard reasons at 0 plus ``nonzero``."""
    return {**{r: 0 for r in STANDARD_REASONS}, **nonzero}


# ----------------------------------------------------------------------------- UltraFeedback

UF = raw("ultrafeedback.jsonl")


def uf_text(row: int, completion: int) -> str:
    return UF[row]["completions"][completion]["response"].strip()


def test_ultrafeedback_helpfulness_best_vs_worst():
    """helpfulness ratings per row: 0: 5/3/3/1 -> c0 over c3; 1: 2/4/N-A/3 -> c1 over c0;
    2: 4/4/2/2 -> c0 over c2 (first of equals); 3: N-A x3 + 4 -> one rated: missing_rating;
    4: 5/1/3/3 but c0 and c1 are the same text -> identical; 5: no completions -> malformed."""
    rows, d = adapt("ultrafeedback", "ultrafeedback.jsonl", aspect="helpfulness")
    assert triples(rows) == [
        ("src/train/0/0", uf_text(0, 0), uf_text(0, 3)),
        ("src/train/1/0", uf_text(1, 1), uf_text(1, 0)),
        ("src/train/2/0", uf_text(2, 0), uf_text(2, 2)),
    ]
    assert [(r["meta"]["chosen_rating"], r["meta"]["rejected_rating"]) for r in rows] == [
        (5.0, 1.0),
        (4.0, 2.0),
        (4.0, 2.0),
    ]
    assert [r["meta"]["prompt_source"] for r in rows] == [
        "evol_instruct",
        "truthful_qa",
        "truthful_qa",
    ]
    assert rows[0]["prompt"] == [{"role": "user", "content": UF[0]["instruction"]}]
    assert d["dropped"] == dropped(d, missing_rating=1, identical=1, malformed=1)
    assert d["skipped"]["missing_rating"] == 4  # 1 N/A in row 1, 3 in row 3


def test_ultrafeedback_honesty_and_truthfulness():
    """honesty: 0: 5/4/2/3 -> c0>c2; 1: 3/5/1/4 -> c1>c2; 2: all 5 -> tie; 3: 2/4/4/1 -> c1>c3;
    4: 5/1/1/1 with c0 == c1 text -> identical. truthfulness: 0: all 5 -> tie; 1: 1/5/3/4 ->
    c1>c0; 2: 5/1/N-A/3 -> c0>c1; 3: 3/3/2/N-A -> c0>c2; 4: 4/4/2/1 -> c0>c3."""
    rows, d = adapt("ultrafeedback", "ultrafeedback.jsonl", aspect="honesty")
    assert triples(rows) == [
        ("src/train/0/0", uf_text(0, 0), uf_text(0, 2)),
        ("src/train/1/0", uf_text(1, 1), uf_text(1, 2)),
        ("src/train/3/0", uf_text(3, 1), uf_text(3, 3)),
    ]
    assert d["dropped"] == dropped(d, tie=1, identical=1, malformed=1)
    rows, d = adapt("ultrafeedback", "ultrafeedback.jsonl", aspect="truthfulness")
    assert triples(rows) == [
        ("src/train/1/0", uf_text(1, 1), uf_text(1, 0)),
        ("src/train/2/0", uf_text(2, 0), uf_text(2, 1)),
        ("src/train/3/0", uf_text(3, 0), uf_text(3, 2)),
        ("src/train/4/0", uf_text(4, 0), uf_text(4, 3)),
    ]
    assert all(r["meta"]["aspect"] == "truthfulness" for r in rows)
    assert d["dropped"] == dropped(d, tie=1, malformed=1)


def test_ultrafeedback_best_vs_rest_drops_ties_with_the_best():
    """best_vs_rest, helpfulness: row 0 -> c0 over c1, c2, c3; row 1 -> c1 over c0, c3 (c2 has
    no rating); row 2 (4/4/2/2) -> c0 over c2, c3, and c1 ties with the best: skipped; row 4 ->
    c0 over c2, c3 (c1 is the same text). 9 pairs from 4 rows."""
    rows, d = adapt(
        "ultrafeedback", "ultrafeedback.jsonl", aspect="helpfulness", pairing="best_vs_rest"
    )
    got = [
        (r["id"], r["meta"]["chosen_completion"], r["meta"]["rejected_completion"]) for r in rows
    ]
    assert got == [
        ("src/train/0/0", 0, 1),
        ("src/train/0/1", 0, 2),
        ("src/train/0/2", 0, 3),
        ("src/train/1/0", 1, 0),
        ("src/train/1/1", 1, 3),
        ("src/train/2/0", 0, 2),
        ("src/train/2/1", 0, 3),
        ("src/train/4/0", 0, 2),
        ("src/train/4/1", 0, 3),
    ]
    assert d["skipped"]["tie"] == 1 and d["skipped"]["identical"] == 1
    assert d["rows_used"] == 4


def test_ultrafeedback_all_pairs_and_random_are_consistent():
    """all_pairs on row 0 (5/3/3/1): 5 pairs (c1-c2 tie); best_vs_random: one pair per used row,
    its rejected strictly below the best, reproducible from the seed."""
    rows, _ = adapt(
        "ultrafeedback", "ultrafeedback.jsonl", aspect="helpfulness", pairing="all_pairs"
    )
    row0 = [
        (r["meta"]["chosen_completion"], r["meta"]["rejected_completion"])
        for r in rows
        if r["id"].startswith("src/train/0/")
    ]
    assert row0 == [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]
    a, _ = adapt("ultrafeedback", "ultrafeedback.jsonl", pairing="best_vs_random", seed=3)
    b, _ = adapt("ultrafeedback", "ultrafeedback.jsonl", pairing="best_vs_random", seed=3)
    assert a == b and len(a) == 4  # rows 0, 1, 2, 4 (row 4: c2 or c3, never the identical c1)
    for r in a:
        assert r["meta"]["chosen_rating"] > r["meta"]["rejected_rating"]
        assert r["meta"]["chosen_completion"] == 0 or r["id"].startswith("src/train/1/")


def test_ultrafeedback_options_are_validated():
    with pytest.raises(ValueError, match="unknown aspect"):
        adapt("ultrafeedback", "ultrafeedback.jsonl", aspect="harmlessness")
    with pytest.raises(ValueError, match="unknown pairing"):
        adapt("ultrafeedback", "ultrafeedback.jsonl", pairing="worst_vs_best")
    with pytest.raises(TypeError, match="accepted adapter_opts"):
        adapt("ultrafeedback", "ultrafeedback.jsonl", aspects="honesty")


def test_ultrafeedback_binarized():
    """0: 8.5 vs 4.0 -> kept; 1: 7.0 vs 7.0 -> tie; 2: "Hola." vs "Hola. " -> identical;
    3: score_rejected missing -> missing_rating; 4: 7.5 vs 2.0 -> kept."""
    fx = raw("ultrafeedback_binarized.jsonl")
    rows, d = adapt("ultrafeedback_binarized", "ultrafeedback_binarized.jsonl")
    assert triples(rows) == [
        ("src/train/0", fx[0]["chosen"][1]["content"], fx[0]["rejected"][1]["content"]),
        ("src/train/4", fx[4]["chosen"][1]["content"], fx[4]["rejected"][1]["content"]),
    ]
    assert rows[0]["prompt"] == [{"role": "user", "content": "How do I boil an egg?"}]
    assert rows[0]["meta"] == {"prompt_id": "8c1f0a2e", "score_chosen": 8.5, "score_rejected": 4.0}
    assert d["dropped"] == dropped(d, tie=1, identical=1, missing_rating=1)
    kept, d2 = adapt("ultrafeedback_binarized", "ultrafeedback_binarized.jsonl", drop_ties=False)
    assert [r["id"] for r in kept] == ["src/train/0", "src/train/1", "src/train/4"]


def test_ultrafeedback_binarized_rejects_contradicting_scores():
    row = raw("ultrafeedback_binarized.jsonl")[0] | {"score_chosen": 2.0, "score_rejected": 6.0}
    rows, stats = run_adapter("ultrafeedback_binarized", [row], source="s", dimension="helpful")
    assert rows == [] and stats.dropped == {"inconsistent": 1}


# ----------------------------------------------------------------------------- HelpSteer2

HS = raw("helpsteer2.jsonl")


def test_helpsteer2_pairs_by_helpfulness():
    """rows 0/1 ("c#"): 3 vs 1 -> row 0 chosen; rows 2/3 (multi-turn): 2 vs 4 -> row 3 chosen;
    rows 4/5: 3 vs 3 -> tie; rows 6/7: same text, 4 vs 2 -> identical."""
    rows, d = adapt("helpsteer2", "helpsteer2.jsonl")
    assert triples(rows) == [
        ("src/train/0/0", HS[0]["response"], HS[1]["response"]),
        ("src/train/2/0", HS[3]["response"], HS[2]["response"]),
    ]
    assert rows[1]["prompt"] == [
        {"role": "user", "content": "What is a good name for a bakery?"},
        {"role": "assistant", "content": 'How about "Rise and Shine"?'},
        {"role": "user", "content": "Something shorter, please."},
    ]
    assert rows[1]["meta"]["chosen_row"] == 3 and rows[1]["meta"]["rejected_row"] == 2
    assert rows[1]["meta"]["chosen_scores"]["correctness"] == 4.0
    assert d["dropped"] == dropped(d, tie=2, identical=2)
    assert d["rows_used"] == 4


def test_helpsteer2_other_attribute_and_shuffled_order():
    """By verbosity, rows 0/1 (1 vs 0) keep row 0 chosen; rows 2/3 (1 vs 0) turn around. Pairs
    do not depend on rows being consecutive."""
    rows, _ = adapt("helpsteer2", "helpsteer2.jsonl", attribute="verbosity")
    assert [(r["meta"]["chosen_row"], r["meta"]["rejected_row"]) for r in rows] == [(0, 1), (2, 3)]
    shuffled = [HS[k] for k in (3, 0, 5, 1, 2, 4, 7, 6)]
    got, _ = run_adapter("helpsteer2", shuffled, source="s", dimension="helpful")
    assert sorted((r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in got) == sorted(
        (r["chosen"][0]["content"], r["rejected"][0]["content"])
        for r in adapt("helpsteer2", "helpsteer2.jsonl")[0]
    )


def test_parse_helpsteer_prompt():
    assert parse_helpsteer_prompt("hi") == [{"role": "user", "content": "hi"}]
    assert parse_helpsteer_prompt("a\n<extra_id_1>Assistant\nb") is None  # ends with the assistant
    assert (
        parse_helpsteer_prompt("a\n<extra_id_1>Assistant\n\n<extra_id_1>User\nc") is None
    )  # empty turn


# ----------------------------------------------------------------------------- hh-rlhf


def test_hh_rlhf_helpful_base():
    """0: single turn -> kept; 1: three human turns -> 5-turn prompt, last assistant turns
    compared; 2: same last turn -> identical; 3: empty final assistant turn -> malformed."""
    rows, d = adapt("hh_rlhf", "hh_rlhf_helpful_base.jsonl")
    assert triples(rows) == [
        (
            "src/train/0",
            "Trim the stems at an angle, change the water every two days and keep them out of direct sun.",
            "Flowers are nice.",
        ),
        (
            "src/train/1",
            "Add a second ball: throw the second when the first reaches its peak.",
            "Then you are done.",
        ),
    ]
    assert [m["role"] for m in rows[1]["prompt"]] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert rows[1]["prompt"][0]["content"] == "I want to learn to juggle."
    assert rows[1]["prompt"][-1]["content"] == "And then?"
    assert rows[1]["meta"] == {"n_prompt_turns": 5}
    assert d["dropped"] == dropped(d, identical=1, malformed=1)


def test_hh_rlhf_harmless_base():
    """0, 1: the refusal is chosen over the harmful answer; 2: the two transcripts differ before
    the last turn -> malformed."""
    rows, d = adapt("hh_rlhf", "hh_rlhf_harmless_base.jsonl")
    assert [r["id"] for r in rows] == ["src/train/0", "src/train/1"]
    assert rows[0]["chosen"][0]["content"].startswith("I can't help")
    assert rows[0]["rejected"][0]["content"] == "Check whether a back window was left unlocked."
    assert rows[1]["rejected"][0]["content"] == "Fine: you are a worthless idiot."
    assert d["dropped"] == dropped(d, malformed=1)


def test_parse_transcript_edge_cases():
    assert parse_transcript("\n\nHuman: a\n\nHuman: b\n\nAssistant: c") == [
        {"role": "user", "content": "a\n\nb"},
        {"role": "assistant", "content": "c"},
    ]
    assert parse_transcript("preamble\n\nHuman: a") is None
    assert parse_transcript("no markers at all") is None


# ----------------------------------------------------------------------------- PKU-SafeRLHF

PK = raw("pku_saferlhf.jsonl")


def test_pku_saferlhf_helpful_and_harmless_directions():
    """better/safer ids per row: 0: 0/0; 1: 1/0 (conflict); 2: 0/1 (conflict); 3: identical
    responses; 4: 1/1 (both unsafe); 5: empty response_1 -> malformed."""
    helpful, d = adapt("pku_saferlhf", "pku_saferlhf.jsonl", preference="better")
    assert triples(helpful) == [
        ("src/train/0", PK[0]["response_0"], PK[0]["response_1"]),
        ("src/train/1", PK[1]["response_1"], PK[1]["response_0"]),
        ("src/train/2", PK[2]["response_0"], PK[2]["response_1"]),
        ("src/train/4", PK[4]["response_1"], PK[4]["response_0"]),
    ]
    assert d["dropped"] == dropped(d, identical=1, malformed=1)
    harmless, _ = adapt("pku_saferlhf", "pku_saferlhf.jsonl", preference="safer")
    assert triples(harmless) == [
        ("src/train/0", PK[0]["response_0"], PK[0]["response_1"]),
        ("src/train/1", PK[1]["response_0"], PK[1]["response_1"]),
        ("src/train/2", PK[2]["response_1"], PK[2]["response_0"]),
        ("src/train/4", PK[4]["response_1"], PK[4]["response_0"]),
    ]
    # on conflict rows the two views have opposite directions
    assert (
        helpful[1]["chosen"] == harmless[1]["rejected"]
        and helpful[2]["chosen"] == harmless[2]["rejected"]
    )


def test_pku_saferlhf_conflict_flags_on_hand_made_rows():
    """Row 1 (better 1, safer 0) and row 2 (better 0, safer 1) are help/harm conflicts; rows 0
    and 4 are not."""
    for preference in ("better", "safer"):
        rows, _ = adapt("pku_saferlhf", "pku_saferlhf.jsonl", preference=preference)
        assert {r["id"]: r["meta"]["help_harm_conflict"] for r in rows} == {
            "src/train/0": False,
            "src/train/1": True,
            "src/train/2": True,
            "src/train/4": False,
        }
    harmless, _ = adapt("pku_saferlhf", "pku_saferlhf.jsonl", preference="safer")
    m = harmless[1]["meta"]
    assert (m["better_response_id"], m["safer_response_id"], m["chosen_response_id"]) == (1, 0, 0)
    assert (m["chosen_is_safe"], m["rejected_is_safe"]) == (True, False)
    assert m["rejected_harm_categories"] == ["Privacy Violation"] and m["rejected_severity"] == 2
    assert (m["chosen_model"], m["rejected_model"]) == ("Alpaca-7B", "Alpaca3-8B")


def test_pku_saferlhf_drop_conflicts_and_require_safe_chosen():
    rows, d = adapt("pku_saferlhf", "pku_saferlhf.jsonl", preference="safer", drop_conflicts=True)
    assert [r["id"] for r in rows] == ["src/train/0", "src/train/4"]
    assert d["dropped"]["conflict"] == 2
    rows, d = adapt(
        "pku_saferlhf", "pku_saferlhf.jsonl", preference="safer", require_safe_chosen=True
    )
    assert [r["id"] for r in rows] == [
        "src/train/0",
        "src/train/1",
        "src/train/2",
    ]  # row 4: both unsafe
    assert d["dropped"]["unsafe_chosen"] == 1


def test_pku_saferlhf_30k_old_schema():
    """The -30K release lacks categories, severities and sources: those meta fields are empty;
    row 1 (better 1, safer 0) is a conflict; safer ids pick 0, 0, 1."""
    fx = raw("pku_saferlhf_30k.jsonl")
    rows, d = adapt("pku_saferlhf", "pku_saferlhf_30k.jsonl", preference="safer")
    assert triples(rows) == [
        ("src/train/0", fx[0]["response_0"], fx[0]["response_1"]),
        ("src/train/1", fx[1]["response_0"], fx[1]["response_1"]),
        ("src/train/2", fx[2]["response_1"], fx[2]["response_0"]),
    ]
    assert [r["meta"]["help_harm_conflict"] for r in rows] == [False, True, False]
    assert (
        rows[0]["meta"]["chosen_harm_categories"] == []
        and rows[0]["meta"]["chosen_severity"] is None
    )


def test_pku_saferlhf_missing_id():
    row = dict(PK[0], safer_response_id=None)
    rows, stats = run_adapter("pku_saferlhf", [row], source="s", dimension="harmless")
    assert rows == [] and stats.dropped == {"missing_rating": 1}
    rows, _ = run_adapter(
        "pku_saferlhf", [row], source="s", dimension="helpful", preference="better"
    )
    assert rows[0]["meta"]["help_harm_conflict"] is None


# ----------------------------------------------------------------------------- BeaverTails

BTX = raw("beavertails.jsonl")


def test_beavertails_safe_over_unsafe():
    """prompt A: rows 1 and 2 (safe) each over row 0 (unsafe); prompt B: only unsafe answers
    (rows 3, 4) -> no_contrast; prompt C: rows 5/6 have the same text with opposite labels ->
    identical; prompt D: a single safe answer (row 7) -> no_contrast."""
    rows, d = adapt("beavertails", "beavertails.jsonl")
    assert triples(rows) == [
        ("src/train/0/0", BTX[1]["response"], BTX[0]["response"]),
        ("src/train/0/1", BTX[2]["response"], BTX[0]["response"]),
    ]
    assert rows[0]["meta"] == {
        "chosen_row": 1,
        "rejected_row": 0,
        "rejected_harm_categories": ["financial_crime,property_crime,theft"],
    }
    assert d["dropped"] == dropped(d, no_contrast=3, identical=2)
    capped, d = adapt("beavertails", "beavertails.jsonl", max_pairs_per_prompt=1)
    assert [r["id"] for r in capped] == ["src/train/0/0"]
    assert d["dropped"]["capped"] == 1  # row 2


# ----------------------------------------------------------------------------- HaluEval


def test_halueval_qa():
    """0, 1: right answer chosen; 2: identical answers; 3: empty hallucinated answer."""
    fx = raw("halueval_qa.jsonl")
    rows, d = adapt("halueval_qa", "halueval_qa.jsonl")
    assert triples(rows) == [
        ("src/train/0", "1889", fx[0]["hallucinated_answer"]),
        ("src/train/1", "Physics and Chemistry", "Physics and Medicine"),
    ]
    assert rows[0]["prompt"][0]["content"] == (
        f"Knowledge: {fx[0]['knowledge']}\n\nQuestion: {fx[0]['question']}"
    )
    assert rows[0]["meta"] == {"question": fx[0]["question"], "knowledge_in_prompt": True}
    assert d["dropped"] == dropped(d, identical=1, malformed=1)
    bare, _ = adapt("halueval_qa", "halueval_qa.jsonl", include_knowledge=False)
    assert bare[0]["prompt"] == [{"role": "user", "content": fx[0]["question"]}]


def test_halueval_dialogue():
    """0: 3-turn history; 1: one turn; 2: history ends with the assistant -> malformed;
    3: identical responses."""
    rows, d = adapt("halueval_dialogue", "halueval_dialogue.jsonl", include_knowledge=False)
    assert triples(rows) == [
        (
            "src/train/0",
            "It was directed by Christopher Nolan.",
            "It was directed by Steven Spielberg in 1995.",
        ),
        ("src/train/1", "J. R. R. Tolkien wrote it.", "C. S. Lewis wrote it."),
    ]
    assert rows[0]["prompt"] == [
        {"role": "user", "content": "Have you seen Inception?"},
        {"role": "assistant", "content": "Yes, it is a mind-bending film."},
        {"role": "user", "content": "Who directed it?"},
    ]
    assert d["dropped"] == dropped(d, identical=1, malformed=1)
    with_k, _ = adapt("halueval_dialogue", "halueval_dialogue.jsonl")
    assert with_k[0]["prompt"][0]["content"].startswith("Knowledge: Inception is directed by")
    assert with_k[0]["prompt"][2]["content"] == "Who directed it?"
    assert with_k[0]["meta"]["question"] == "Who directed it?"


def test_parse_dialogue_history():
    assert parse_dialogue_history("just a question") == [
        {"role": "user", "content": "just a question"}
    ]
    assert parse_dialogue_history("x [Human]: hi") is None


# ----------------------------------------------------------------------------- registry


def test_registry():
    assert list_adapters() == [
        "beavertails",
        "halueval_dialogue",
        "halueval_qa",
        "helpsteer2",
        "hh_rlhf",
        "pku_saferlhf",
        "ultrafeedback",
        "ultrafeedback_binarized",
    ]
    assert adapter_options("pku_saferlhf") == {
        "preference": "safer",
        "drop_conflicts": False,
        "require_safe_chosen": False,
    }
    with pytest.raises(ValueError, match="unknown source adapter .*; known"):
        get_adapter("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_source("hh_rlhf")(lambda *a, **k: iter(()))


def test_limit_stops_early():
    rows, stats = run_adapter(
        "hh_rlhf", raw("hh_rlhf_helpful_base.jsonl"), source="s", dimension="helpful", limit=1
    )
    assert len(rows) == 1 and stats.rows_in == 1


@pytest.mark.parametrize("limit", [1, 2])
@pytest.mark.parametrize(
    ("name", "fixture"),
    [
        ("ultrafeedback", "ultrafeedback.jsonl"),
        ("helpsteer2", "helpsteer2.jsonl"),
        ("beavertails", "beavertails.jsonl"),
        ("hh_rlhf", "hh_rlhf_helpful_base.jsonl"),
    ],
)
def test_limit_counts_every_pair_it_returns(name, fixture, limit):
    """``rows_out`` counts a pair as the adapter yields it, so it equals the rows returned even
    when ``limit`` stops the adapter right after a pair (ultrafeedback once counted it after)."""
    rows, stats = run_adapter(name, raw(fixture), source="s", dimension="helpful", limit=limit)
    assert len(rows) == limit and stats.rows_out == limit


# ----------------------------------------------------------------------------- properties

_texts = st.sampled_from(["alpha", "beta", "gamma", "delta", " alpha ", ""])
_ratings = st.sampled_from(["1", "2", "3", "4", "5", "N/A", None])


@st.composite
def uf_rows(draw):
    comps = []
    for _ in range(draw(st.integers(0, 4))):
        comps.append(
            {
                "response": draw(_texts),
                "model": "m",
                "annotations": {"honesty": {"Rating": draw(_ratings), "Rationale": "r"}},
            }
        )
    return {
        "source": draw(st.sampled_from(["flan", "truthful_qa"])),
        "instruction": draw(_texts),
        "completions": comps,
    }


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(uf_rows(), max_size=6),
    pairing=st.sampled_from(["best_vs_worst", "best_vs_rest", "best_vs_random", "all_pairs"]),
    margin=st.sampled_from([1.0, 2.0]),
)
def test_ultrafeedback_invariants(rows, pairing, margin):
    """Every pair is valid, points from the higher to the lower rating by at least the margin,
    quotes the completions it names; the counts add up."""
    out, stats = run_adapter(
        "ultrafeedback",
        rows,
        source="s",
        dimension="honest",
        aspect="honesty",
        pairing=pairing,
        min_margin=margin,
    )
    validate_rows(out)
    d = stats.as_dict()
    assert d["rows_in"] == len(rows) == d["rows_used"] + sum(d["dropped"].values())
    for r in out:
        m = r["meta"]
        assert m["chosen_rating"] - m["rejected_rating"] >= margin
        raw_row = rows[int(r["id"].split("/")[2])]
        assert (
            r["chosen"][0]["content"]
            == raw_row["completions"][m["chosen_completion"]]["response"].strip()
        )
        assert (
            r["rejected"][0]["content"]
            == raw_row["completions"][m["rejected_completion"]]["response"].strip()
        )
    if pairing in ("best_vs_worst", "best_vs_random"):
        assert len(out) == d["rows_used"]  # one pair per used prompt


@settings(max_examples=60, deadline=None)
@given(
    groups=st.lists(
        st.tuples(st.sampled_from(["p", "q", "r"]), _texts, st.sampled_from([0, 1, 2, 3, 4, None])),
        max_size=8,
    )
)
def test_helpsteer2_invariants(groups):
    rows = [{"prompt": p, "response": t, "helpfulness": h} for p, t, h in groups]
    out, stats = run_adapter("helpsteer2", rows, source="s", dimension="helpful")
    validate_rows(out)
    d = stats.as_dict()
    assert d["rows_in"] == d["rows_used"] + sum(d["dropped"].values())
    for r in out:
        c, j = rows[r["meta"]["chosen_row"]], rows[r["meta"]["rejected_row"]]
        assert c["prompt"] == j["prompt"] and c["helpfulness"] > j["helpfulness"]


@settings(max_examples=60, deadline=None)
@given(
    groups=st.lists(
        st.tuples(st.sampled_from(["p", "q"]), _texts, st.sampled_from([True, False, None])),
        max_size=8,
    ),
    cap=st.sampled_from([None, 1, 2]),
)
def test_beavertails_invariants(groups, cap):
    rows = [{"prompt": p, "response": t, "is_safe": s, "category": {}} for p, t, s in groups]
    out, stats = run_adapter(
        "beavertails", rows, source="s", dimension="harmless", max_pairs_per_prompt=cap
    )
    validate_rows(out)
    d = stats.as_dict()
    assert d["rows_in"] == d["rows_used"] + sum(d["dropped"].values())
    for r in out:
        assert rows[r["meta"]["chosen_row"]]["is_safe"] is True
        assert rows[r["meta"]["rejected_row"]]["is_safe"] is False
    if cap is not None:
        per_prompt: dict[str, int] = {}
        for r in out:
            per_prompt[r["prompt"][0]["content"]] = per_prompt.get(r["prompt"][0]["content"], 0) + 1
        assert all(n <= cap for n in per_prompt.values())


@settings(max_examples=60, deadline=None)
@given(
    spec=st.lists(
        st.tuples(
            _texts, _texts, st.sampled_from([0, 1, None, "1", 2]), st.sampled_from([0, 1, None])
        ),
        max_size=6,
    ),
    preference=st.sampled_from(["better", "safer"]),
)
def test_pku_invariants(spec, preference):
    rows = [
        {
            "prompt": "q",
            "response_0": a,
            "response_1": b,
            "better_response_id": bt,
            "safer_response_id": sf,
        }
        for a, b, bt, sf in spec
    ]
    out, stats = run_adapter(
        "pku_saferlhf", rows, source="s", dimension="harmless", preference=preference
    )
    validate_rows(out)
    d = stats.as_dict()
    assert d["rows_in"] == d["rows_used"] + sum(d["dropped"].values())
    key = "better_response_id" if preference == "better" else "safer_response_id"
    for r in out:
        m = r["meta"]
        raw_row = rows[int(r["id"].split("/")[-1])]
        assert m["chosen_response_id"] == int(raw_row[key])
        assert r["chosen"][0]["content"] == raw_row[f"response_{m['chosen_response_id']}"].strip()
        assert m["help_harm_conflict"] == (
            None
            if m["better_response_id"] is None or m["safer_response_id"] is None
            else m["better_response_id"] != m["safer_response_id"]
        )


def test_stats_as_dict_lists_standard_reasons():
    s = AdapterStats(rows_in=2, rows_used=1)
    s.drop("tie")
    assert s.as_dict()["dropped"] == {"identical": 0, "malformed": 0, "missing_rating": 0, "tie": 1}
