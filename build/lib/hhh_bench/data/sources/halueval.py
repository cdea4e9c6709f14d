"""HaluEval ``qa`` and ``dialogue``: the right answer against the hallucinated one (honest)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from hhh_bench.data.schema import Message, PreferenceRow
from hhh_bench.data.sources.base import (
    IDENTICAL,
    MALFORMED,
    AdapterStats,
    clean_text,
    merge_turns,
    pair_row,
    register_source,
    row_id,
    same_text,
)

_SPEAKER = re.compile(r"\[(Human|Assistant)\]:\s*")


def parse_dialogue_history(text: str) -> list[Message] | None:
    """Turns of a HaluEval ``dialogue_history`` (``"[Human]: ... [Assistant]: ... [Human]: ..."``).

    Text without any speaker tag is one user turn. ``None`` when there is text before the first
    tag, an empty turn, or the history does not end with the human.
    """
    parts = _SPEAKER.split(text)
    if len(parts) == 1:
        turns = [("user", text.strip())]
    else:
        if parts[0].strip():
            return None
        turns = [
            ("user" if parts[k] == "Human" else "assistant", parts[k + 1].strip())
            for k in range(1, len(parts) - 1, 2)
        ]
    if any(not t for _, t in turns):
        return None
    msgs = merge_turns(turns)
    if msgs[0]["role"] != "user" or msgs[-1]["role"] != "user":
        return None
    return msgs


def _with_knowledge(knowledge: str | None, text: str, include: bool) -> str:
    return f"Knowledge: {knowledge}\n\n{text}" if include and knowledge else text


@register_source("halueval_qa")
def adapt_halueval_qa(
    raw_rows: Iterable[Mapping[str, Any]],
    *,
    source: str,
    dimension: str,
    split: str = "data",
    stats: AdapterStats | None = None,
    include_knowledge: bool = True,
) -> Iterator[PreferenceRow]:
    """Map HaluEval ``qa`` rows: chosen = ``right_answer``, rejected = ``hallucinated_answer``.

    Dataset: https://huggingface.co/datasets/pminervini/HaluEval (config ``qa``, split ``data``),
    a copy of https://github.com/RUCAIBox/HaluEval (``data/qa_data.json``). Raw columns:
    ``knowledge``, ``question``, ``right_answer``, ``hallucinated_answer``.

    Judgment call: ``include_knowledge`` (default on) puts the knowledge passage before the
    question (``"Knowledge: ...\\n\\nQuestion: ..."``), since HaluEval's hallucinated answers are
    written to contradict or go beyond that passage: the pair then teaches faithfulness to the
    context. Off: the prompt is the bare question (a closed-book factuality pair). The knowledge
    goes into the user turn, not a system turn, because some chat templates (Mistral's) refuse
    system turns. ``meta.question`` keeps the bare question for the leakage check.

    Drop reasons: ``identical``, ``malformed`` (empty question or answer).
    """
    stats = stats if stats is not None else AdapterStats()
    for i, raw in enumerate(raw_rows):
        stats.rows_in += 1
        question = clean_text(raw.get("question"))
        right, wrong = (
            clean_text(raw.get("right_answer")),
            clean_text(raw.get("hallucinated_answer")),
        )
        if question is None or right is None or wrong is None:
            stats.drop(MALFORMED)
            continue
        if same_text(right, wrong):
            stats.drop(IDENTICAL)
            continue
        knowledge = clean_text(raw.get("knowledge"))
        with_knowledge = bool(include_knowledge and knowledge)
        text = (
            _with_knowledge(knowledge, f"Question: {question}", True)
            if with_knowledge
            else question
        )
        stats.rows_used += 1
        stats.rows_out += 1
        yield pair_row(
            [{"role": "user", "content": text}],
            right,
            wrong,
            dimension=dimension,
            source=source,
            id=row_id(source, split, i),
            meta={"question": question, "knowledge_in_prompt": with_knowledge},
        )


@register_source("halueval_dialogue")
def adapt_halueval_dialogue(
    raw_rows: Iterable[Mapping[str, Any]],
    *,
    source: str,
    dimension: str,
    split: str = "data",
    stats: AdapterStats | None = None,
    include_knowledge: bool = True,
) -> Iterator[PreferenceRow]:
    """Map HaluEval ``dialogue`` rows: chosen = ``right_response``, rejected =
    ``hallucinated_response``; the ``dialogue_history`` becomes a multi-turn prompt.

    Dataset: https://huggingface.co/datasets/pminervini/HaluEval (config ``dialogue``, split
    ``data``), from https://github.com/RUCAIBox/HaluEval (``data/dialogue_data.json``). Raw
    columns: ``knowledge``, ``dialogue_history`` (``"[Human]: ... [Assistant]: ... [Human]:
    ..."``), ``right_response``, ``hallucinated_response``.

    Judgment call: as for ``qa``, ``include_knowledge`` prefixes the first user turn with
    ``"Knowledge: ...\\n\\n"``. ``meta.question`` is the last user turn (the leakage check's key).

    Drop reasons: ``identical``, ``malformed`` (empty fields; a history not parsed by
    :func:`parse_dialogue_history`).
    """
    stats = stats if stats is not None else AdapterStats()
    for i, raw in enumerate(raw_rows):
        stats.rows_in += 1
        history = clean_text(raw.get("dialogue_history"))
        right = clean_text(raw.get("right_response"))
        wrong = clean_text(raw.get("hallucinated_response"))
        turns = parse_dialogue_history(history) if history else None
        if turns is None or right is None or wrong is None:
            stats.drop(MALFORMED)
            continue
        if same_text(right, wrong):
            stats.drop(IDENTICAL)
            continue
        knowledge = clean_text(raw.get("knowledge"))
        question = turns[-1]["content"]
        turns[0] = {
            "role": "user",
            "content": _with_knowledge(knowledge, turns[0]["content"], include_knowledge),
        }
        stats.rows_used += 1
        stats.rows_out += 1
        yield pair_row(
            turns,
            right,
            wrong,
            dimension=dimension,
            source=source,
            id=row_id(source, split, i),
            meta={
                "question": question,
                "knowledge_in_prompt": bool(include_knowledge and knowledge),
            },
        )
