"""JSON lines read as bytes, line by line: the one reader of the results store and of the data
sources' raw files, so that both name a bad line the same way (its number, and why)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JsonLine:
    """One non-blank line: its number (from 1), its parsed value, or why it did not parse
    (``error``; ``utf8``: the line is not UTF-8, else not valid JSON) and its text."""

    number: int
    value: Any = None
    error: str | None = None
    utf8: bool = True
    text: str = ""


def json_lines(data: bytes, start: int = 1) -> Iterator[JsonLine]:
    """The non-blank lines of ``data``, in order, each parsed (lazily: a caller may stop at the
    first bad one); ``start``: the number of ``data``'s first line (the tail of a file whose
    earlier lines were read before)."""
    for i, raw in enumerate(data.split(b"\n"), start=start):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            why = f"not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})"
            yield JsonLine(i, error=why, utf8=False)
            continue
        try:
            yield JsonLine(i, json.loads(text), text=text)
        except ValueError as e:
            yield JsonLine(i, error=f"not valid JSON ({e})", text=text)
