"""Text as a reader sees it: the one normalisation that the leakage guard
(:mod:`hhh_bench.data.leakage`) and the preference schema's chosen == rejected check
(:func:`hhh_bench.core.schema.validate_row`) compare texts with.

:func:`normalize_text` makes two texts equal when a reader cannot tell them apart:

1. Unicode NFKC (full-width, ligature and compatibility forms: ``"ＡＢＣ"``, ``"ﬁ"``);
2. invisible code points removed: every format character (category ``Cf``: zero-width space and
   joiners, U+200E/U+200F marks, bidi embeddings and isolates, tag characters, soft hyphen, BOM)
   and the other default-ignorable code points of Unicode's DerivedCoreProperties.txt, which are
   not ``Cf`` and are listed one by one in :data:`INVISIBLE_RANGES` (U+034F combining grapheme
   joiner, variation selectors U+FE00-FE0F and U+E0100-E01EF, the Hangul fillers U+115F, U+1160,
   U+3164, U+FFA0, ...);
3. confusables folded: a non-ASCII character that the Unicode confusables data (UTS #39, as the
   ``confusable-homoglyphs`` package ships it in ``confusables.json``) gives an ASCII look-alike
   becomes that ASCII text: Cyrillic ``"а"`` -> ``"a"``, ``"Н"`` -> ``"H"``. The data names one
   ASCII look-alike per character: its UTS #39 prototype, or the ASCII member of the character's
   class when the character is itself a prototype. Case is kept where the class allows: an
   upper-case character whose prototype is lower-case maps to the class's upper-case ASCII letter
   when it has exactly one (Cyrillic ``"І"`` -> ``"I"``, not the prototype ``"l"``), and the
   reverse for a lower-case one. ASCII characters are left as they are (``"l"``, ``"I"`` and
   ``"1"`` stay distinct): two plain-ASCII copies of a text are equal already;
4. casefolded (after the fold, so that an upper-case look-alike whose lower case has none, like
   Cyrillic ``"Н"``/``"н"``, still folds);
5. punctuation (every category ``P*`` character) and white space collapsed: each punctuation
   character becomes a space, every run of white space (and U+2800 braille blank) one space, the
   ends trimmed.

Steps 1-4 repeat until the text no longer changes (casefolding can expose a character that folds,
and removing an invisible mark can make a pair NFKC composes), so the result is a fixed point:
``normalize_text(normalize_text(t)) == normalize_text(t)``. Plain-ASCII text takes a fast path with
the same result (lower case, punctuation to spaces, white space collapsed).

The fold map is built once per process, on first use (reading ``confusables.json``, ~0.1 s).
"""

from __future__ import annotations

import functools
import json
import string
import unicodedata
from importlib import resources
from typing import Any

INVISIBLE_RANGES: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD),  # soft hyphen (Cf)
    (0x034F, 0x034F),  # combining grapheme joiner (Mn)
    (0x061C, 0x061C),  # Arabic letter mark (Cf)
    (0x115F, 0x1160),  # Hangul choseong / jungseong fillers (Lo)
    (0x17B4, 0x17B5),  # Khmer inherent vowels (Mn)
    (0x180B, 0x180F),  # Mongolian free variation selectors (Mn), vowel separator (Cf)
    (0x200B, 0x200F),  # zero-width space, ZWNJ, ZWJ, LRM, RLM (Cf)
    (0x202A, 0x202E),  # bidi embeddings and overrides (Cf)
    (0x2060, 0x206F),  # word joiner, invisible operators, bidi isolates U+2066-2069 (Cf)
    (0x3164, 0x3164),  # Hangul filler (Lo)
    (0xFE00, 0xFE0F),  # variation selectors, U+FE0F the emoji one (Mn)
    (0xFEFF, 0xFEFF),  # zero-width no-break space / BOM (Cf)
    (0xFFA0, 0xFFA0),  # half-width Hangul filler (Lo)
    (0xFFF0, 0xFFF8),  # reserved default-ignorable (Cn)
    (0x1BCA0, 0x1BCA3),  # shorthand format controls (Cf)
    (0x1D173, 0x1D17A),  # musical symbol format controls (Cf)
    (0xE0000, 0xE0FFF),  # tag characters U+E0000-E007F (Cf), variation selectors supplement (Mn)
)
"""Unicode's default-ignorable code points (DerivedCoreProperties.txt,
``Default_Ignorable_Code_Point``): removed by :func:`normalize_text` together with every other
format (``Cf``) character."""

BLANKS = frozenset({0x2800})
"""Code points that render as blank space but are not Unicode white space: read as a space."""


def is_invisible(ch: str) -> bool:
    """Whether :func:`normalize_text` removes ``ch`` (a format character or a default-ignorable
    code point)."""
    cp = ord(ch)
    return unicodedata.category(ch) == "Cf" or any(lo <= cp <= hi for lo, hi in INVISIBLE_RANGES)


def _ascii_lookalike(ch: str, data: dict[str, list[dict[str, Any]]]) -> str | None:
    """The ASCII text the confusables data gives ``ch`` (a non-ASCII character), case kept where
    its class allows (module docstring, step 3); ``None`` when it has none."""
    found = [h["c"] for h in data.get(ch, ()) if h["c"].isascii() and h["c"].strip()]
    if not found:
        return None
    target = found[0]  # the data gives at most one ASCII look-alike per character
    if len(target) == 1 and target.isalpha() and (ch.isupper() != target.isupper()):
        want = str.isupper if ch.isupper() else str.islower
        same_case = [
            h["c"]
            for h in data.get(target, ())
            if len(h["c"]) == 1 and h["c"].isascii() and h["c"].isalpha() and want(h["c"])
        ]
        if len(same_case) == 1:
            target = same_case[0]
    return target


@functools.cache
def fold_table() -> dict[int, str]:
    """The confusables fold: non-ASCII code point -> its ASCII look-alike, lower-cased, with
    punctuation already turned into spaces (built once, from the package's data)."""
    path = resources.files("confusable_homoglyphs") / "confusables.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    table: dict[int, str] = {}
    for ch in data:
        if len(ch) != 1 or ch.isascii():
            continue
        target = _ascii_lookalike(ch, data)
        if target is not None:
            table[ord(ch)] = target.casefold().translate(_ASCII_PUNCT)
    return table


# string.punctuation is exactly the ASCII characters of Unicode category P* plus the ASCII symbols
# ($+<=>^`|~, category S*): keep the symbols, as the non-ASCII path does
_ASCII_PUNCT = str.maketrans(
    {c: " " for c in string.punctuation if unicodedata.category(c).startswith("P")}
)


class _Table(dict[int, Any]):
    """``str.translate``'s table: each code point's replacement (``None``: removed), computed on
    first sight and kept."""

    def __missing__(self, cp: int) -> Any:
        ch = chr(cp)
        if is_invisible(ch):
            value: Any = None
        elif cp in BLANKS:
            value = " "
        elif cp in fold_table():
            value = fold_table()[cp]
        elif unicodedata.category(ch).startswith("P"):
            value = " "
        else:
            value = cp
        self[cp] = value
        return value


_TABLE = _Table()
_MAX_ROUNDS = 8


def normalize_text(text: str) -> str:
    """``text`` as a reader sees it, for comparison (module docstring): NFKC, invisible code
    points removed, confusables folded to ASCII, casefolded, punctuation and white space collapsed
    to single spaces. ``"Ｃаn  pigs\\u200b fly?"`` (Cyrillic ``а``) -> ``"can pigs fly"``."""
    if text.isascii():
        return " ".join(text.lower().translate(_ASCII_PUNCT).split())
    for _ in range(_MAX_ROUNDS):
        new = unicodedata.normalize("NFKC", text).translate(_TABLE).casefold()
        if new == text:
            break
        text = new
    return " ".join(text.split())


def format_fields_problem(template: str, allowed: tuple[str, ...]) -> str | None:
    """Why ``template`` is not a ``str.format`` string whose every field is one of ``allowed``,
    bare (``{task}``: no index, attribute, conversion or format spec, which a name-checked
    ``format`` call would still fail on or blow up with, a width of 10**13 included); None when
    it is one. A literal brace is written ``{{`` or ``}}``."""
    import string

    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:  # an unbalanced brace
        return f"it is not a format string ({e})"
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if field not in allowed:
            return (
                f"its field {{{field}}} is not one of {', '.join('{' + a + '}' for a in allowed)}"
            )
        if spec or conversion:
            return f"its field {{{field}}} has a conversion or format spec; write {{{field}}}"
    return None
