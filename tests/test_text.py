"""The one text normalisation (core/text.py): invisible code points, confusables, case,
punctuation; and the chosen == rejected check that uses it (issue 27, row 5)."""

from __future__ import annotations

import json
import unicodedata
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hhh_bench.core.schema import SchemaError, make_row, validate_row
from hhh_bench.core.text import normalize_text

# issue 27 row 5: characters that made chosen and rejected differ invisibly
ROW_5 = {
    "U+200E left-to-right mark": "\u200e",
    "U+200F right-to-left mark": "\u200f",
    "U+2066 left-to-right isolate": "\u2066",
    "U+2067 right-to-left isolate": "\u2067",
    "U+2068 first strong isolate": "\u2068",
    "U+2069 pop directional isolate": "\u2069",
    "U+034F combining grapheme joiner (Mn)": "\u034f",
    "U+FE0F variation selector-16 (Mn)": "\ufe0f",
    "U+E0001 language tag": "\U000e0001",
    "U+E0041 tag latin capital A": "\U000e0041",
    "U+E007F cancel tag": "\U000e007f",
    "U+3164 Hangul filler (Lo)": "\u3164",
    # the other default-ignorable code points that are not format characters
    "U+115F Hangul choseong filler (Lo)": "\u115f",
    "U+FFA0 half-width Hangul filler (Lo)": "\uffa0",
    "U+180B Mongolian free variation selector (Mn)": "\u180b",
    "U+17B4 Khmer inherent vowel (Mn)": "\u17b4",
    "U+E0100 variation selector-17 (Mn)": "\U000e0100",
    "U+00AD soft hyphen": "\u00ad",
}


def _pair(chosen: str, rejected: str) -> dict:
    return make_row("Capital of France?", chosen, rejected, "helpful", "t", "t/1")


@pytest.mark.parametrize("name", sorted(ROW_5))
def test_a_pair_that_differs_by_an_invisible_character_is_refused(name):
    ch = ROW_5[name]
    text = "Paris is the capital."
    for rejected in (f"Par{ch}is is the capital.", f"{ch}{text}", f"{text}{ch}"):
        with pytest.raises(SchemaError, match="identical to rejected"):
            validate_row(_pair(text, rejected))
    validate_row(_pair(text, f"Lyon{ch} is the capital."))  # a real difference still passes


@pytest.mark.parametrize(
    "rejected",
    [
        "PARIS is the capital!",  # case and punctuation
        "Paris is the c\u0430pit\u0430l.",  # CYRILLIC SMALL LETTER A
        "\u0420aris is the capital.",  # CYRILLIC CAPITAL LETTER ER
        "Ｐａｒｉｓ is the capital.",  # full width (NFKC)
    ],
)
def test_a_pair_that_reads_the_same_is_refused(rejected):
    with pytest.raises(SchemaError, match="identical to rejected"):
        validate_row(_pair("Paris is the capital.", rejected))


def test_confusables_fold_to_their_ascii_lookalike():
    look = unicodedata.lookup
    assert normalize_text(look("CYRILLIC CAPITAL LETTER EN") + "ow") == "how"  # its lower case
    # (CYRILLIC SMALL LETTER EN) looks like no ASCII letter: the fold comes before casefolding
    assert normalize_text(look("CYRILLIC CAPITAL LETTER BYELORUSSIAN-UKRAINIAN I") + "s") == "is"
    assert normalize_text(look("GREEK CAPITAL LETTER OMICRON") + "K") == "ok"
    assert normalize_text("l I 1 |") == "l i 1 |"  # ASCII is left as it is


def test_the_fold_follows_the_package_data():
    """Every lower-case non-ASCII letter whose one look-alike in confusables.json is a lower-case
    ASCII letter normalises to that letter (read here from the data, not from our table)."""
    path = resources.files("confusable_homoglyphs") / "confusables.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    checked = 0
    for ch, homoglyphs in data.items():
        targets = [h["c"] for h in homoglyphs]
        if (len(ch) == 1 and not ch.isascii() and unicodedata.category(ch) == "Ll"
                and unicodedata.normalize("NFKC", ch) == ch and len(targets) == 1
                and len(targets[0]) == 1 and targets[0] in "abcdefghijklmnopqrstuvwxyz"):  # fmt: skip
            assert normalize_text(ch) == targets[0], (ch, hex(ord(ch)))
            checked += 1
    assert checked >= 50  # the data holds about a hundred such letters


def test_white_space_and_punctuation_collapse():
    assert normalize_text("  What's\tthe\u00a0CAPITAL\u2800of France?!\n") == (
        "what s the capital of france"
    )
    assert normalize_text("$5 + 3 = 8") == "$5 + 3 = 8"  # symbols are kept


_texts = st.text(
    st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(["\u200b", "\u0430", "\u0406", "\u3164", "\ufe0f", "\u0301", "\u0130"]),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(_texts)
def test_normalisation_is_a_fixed_point(text):
    n = normalize_text(text)
    assert normalize_text(n) == n and n == n.strip() and "  " not in n


@settings(max_examples=80, deadline=None)
@given(st.text(st.characters(max_codepoint=127), max_size=40))
def test_the_ascii_fast_path_agrees_with_the_full_path(text):
    """An invisible character sends the same ASCII text down the full path."""
    assert normalize_text(text) == normalize_text(text + "\u200b")
