"""The one preference-row schema every stage speaks.

Rows follow TRL's *explicit-prompt conversational* format, so ``DPOTrainer`` takes them as they are::

    {"prompt":   [{"role": "user", "content": "..."}],
     "chosen":   [{"role": "assistant", "content": "..."}],
     "rejected": [{"role": "assistant", "content": "..."}],
     "dimension": "helpful" | "honest" | "harmless",
     "source": "toy3h", "id": "toy3h/helpful/train/00042"}

``prompt`` may hold several turns (system?, user, assistant, user, ...) but must end with a user turn;
``chosen`` and ``rejected`` are one assistant turn each.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypedDict

from hhh_bench.core.text import normalize_text

DIMENSIONS: tuple[str, ...] = ("helpful", "honest", "harmless")

REQUIRED_FIELDS: tuple[str, ...] = ("prompt", "chosen", "rejected", "dimension", "source", "id")


class Message(TypedDict):
    role: str
    content: str


class PreferenceRow(TypedDict, total=False):
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    dimension: str
    source: str
    id: str
    meta: dict[str, Any]


PreferenceSets = dict[str, list[PreferenceRow]]
"""Preference rows by dimension, ``{dimension: rows}`` (what mixing strategies take)."""


class SchemaError(ValueError):
    """A preference row (or file) does not follow the schema; the message names the row."""


def _where(index: int, row: Mapping[str, Any], origin: str | None) -> str:
    rid = row.get("id") if isinstance(row, Mapping) else None
    loc = f"{origin}: " if origin else ""
    return f"{loc}row {index}" + (f" (id={rid!r})" if rid is not None else "")


def _check_messages(value: Any, field: str, where: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise SchemaError(f"{where}: field {field!r} must be a non-empty list of messages")
    for j, m in enumerate(value):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise SchemaError(
                f"{where}: {field}[{j}] must be a message {{'role': ..., 'content': ...}}"
            )
        if not isinstance(m["content"], str) or not m["content"].strip():
            raise SchemaError(f"{where}: {field}[{j}] has empty text")
        if m["role"] not in ("system", "user", "assistant"):
            raise SchemaError(f"{where}: {field}[{j}] has unknown role {m['role']!r}")
    return value  # type: ignore[return-value]


def validate_row(row: Mapping[str, Any], index: int = 0, origin: str | None = None) -> None:
    """Check one row; raise :class:`SchemaError` naming the row and the reason.

    Checks: every field present; messages non-empty with text; the prompt's roles
    (optional system first, then user/assistant alternating, ending with user); chosen and
    rejected each a single assistant turn; chosen differs from rejected as a reader sees them
    (:func:`hhh_bench.core.text.normalize_text`); dimension known.
    """
    where = _where(index, row, origin)
    if not isinstance(row, Mapping):
        raise SchemaError(f"{where}: expected an object, got {type(row).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in row or row[f] is None]
    if missing:
        raise SchemaError(f"{where}: missing field(s) {', '.join(missing)}")
    prompt = _check_messages(row["prompt"], "prompt", where)
    chosen = _check_messages(row["chosen"], "chosen", where)
    rejected = _check_messages(row["rejected"], "rejected", where)
    roles = [m["role"] for m in prompt]
    if roles and roles[0] == "system":
        roles = roles[1:]
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(roles))]
    if not roles or roles != expected or roles[-1] != "user":
        raise SchemaError(
            f"{where}: wrong role sequence in prompt {[m['role'] for m in prompt]}; expected "
            "[system?] user (assistant user)* ending with a user turn"
        )
    for field, msgs in (("chosen", chosen), ("rejected", rejected)):
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise SchemaError(
                f"{where}: wrong role sequence in {field} {[m['role'] for m in msgs]}; "
                "expected exactly one assistant turn"
            )
    if normalize_text(chosen[0]["content"]) == normalize_text(rejected[0]["content"]):
        raise SchemaError(
            f"{where}: chosen is identical to rejected (up to Unicode normalisation, case, "
            "look-alike characters, punctuation, white space and invisible characters: "
            "hhh_bench.core.text.normalize_text)"
        )
    if row["dimension"] not in DIMENSIONS:
        raise SchemaError(
            f"{where}: unknown dimension {row['dimension']!r}; expected one of {list(DIMENSIONS)}"
        )
    for field in ("source", "id"):
        if not isinstance(row[field], str) or not row[field]:
            raise SchemaError(f"{where}: field {field!r} must be a non-empty string")


def validate_rows(rows: Iterable[Mapping[str, Any]], origin: str | None = None) -> int:
    """Validate every row (and that ids are unique); return the number of rows."""
    seen: dict[str, int] = {}
    n = 0
    for i, row in enumerate(rows):
        validate_row(row, i, origin)
        if row["id"] in seen:
            raise SchemaError(
                f"{_where(i, row, origin)}: duplicate id (first seen at row {seen[row['id']]})"
            )
        seen[row["id"]] = i
        n += 1
    return n


def make_row(
    prompt: str | list[Message],
    chosen: str,
    rejected: str,
    dimension: str,
    source: str,
    id: str,
    meta: dict[str, Any] | None = None,
) -> PreferenceRow:
    """Build a row from plain strings (a string prompt becomes one user turn)."""
    msgs: list[Message] = (
        [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    )
    row: PreferenceRow = {
        "prompt": msgs,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "dimension": dimension,
        "source": source,
        "id": id,
    }
    if meta:
        row["meta"] = meta
    return row


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file; a line that is not JSON raises :class:`SchemaError` naming file and line."""
    path = Path(path)
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SchemaError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return rows


def load_preferences(path: str | Path) -> list[PreferenceRow]:
    """Read and validate a preference JSONL file."""
    rows = read_jsonl(path)
    validate_rows(rows, origin=str(path))
    return rows  # type: ignore[return-value]


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write rows as JSONL (sorted keys, UTF-8) atomically; return the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n = 0
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
                n += 1
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves no partial file behind
    return n
