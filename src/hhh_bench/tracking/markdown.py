"""Text from a results store made safe to put into a Markdown report (issue 27).

A model, task or experiment name is the user's text: ``x\\n## Verdict: merging wins`` must not
start a heading, ``<img onerror=...>`` must not become raw HTML, and ``a|b`` must not split a
table cell. :func:`md_text` keeps such text one literal line of a table cell or a heading.

:func:`number_ranges` writes a list of numbers short (``1–3,5``): the store's skipped lines, the
Pareto figure's shared labels.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_MARKUP = re.compile(r"([\\`*\[\]|~])")  # emphasis, code, links and images, cells, strikeout
_EDGE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def md_text(value: Any) -> str:
    """``value`` as literal inline Markdown: line breaks become spaces, control characters go,
    ``& < >`` become HTML entities, and the characters that open Markdown markup (``\\ ` * [ ]
    | ~``, and ``_`` except inside a word, where it cannot emphasise: ``dpo_helpful`` stays as
    it is) are backslash-escaped."""
    text = _CONTROL.sub("", _LINE_BREAKS.sub(" ", str(value)))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _EDGE_UNDERSCORE.sub(r"\\_", _MARKUP.sub(r"\\\1", text))


_CONSOLE_ESCAPES = re.compile(r"\\([\\`*\[\]~_])")


def console_text(markdown: str) -> str:
    """Markdown written by :func:`md_text` as the console shows it: the backslash escapes of
    ``\\ ` * [ ] ~ _`` and the entities of ``& < >`` undone (a terminal renders no Markdown:
    ``base \\[2\\]`` read as such, battery 11); a cell's ``\\|`` is kept, so a table stays
    one."""
    text = _CONSOLE_ESCAPES.sub(r"\1", markdown)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def number_ranges(nums: Sequence[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"1–3,5"``."""
    out: list[str] = []
    for n in nums:
        if out and out[-1].split("–")[-1] == str(n - 1):
            out[-1] = out[-1].split("–")[0] + f"–{n}"
        else:
            out.append(str(n))
    return ",".join(out)
