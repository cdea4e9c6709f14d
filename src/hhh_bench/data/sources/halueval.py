"""HaluEval ``qa`` and ``dialogue``: the right answer against the hallucinated one (honest)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from hhh_bench.core.schema import Message, PreferenceRow
from hhh_bench.data.sources.base import (
    IDENTICAL,
    MALFORMED,
    RawRows,
    SourceRun,
    clean_text,
    merge_turns,
    register_source,
    same_text,
    speaker_turns,
)

_SPEAKER = re.compile(r"\[(Human|Assistant)\]:\s*")


def parse_dialogue_history(text: str) -> list[Message] | None:
    """Turns of a HaluEval ``dialogue_history`` (``"[Human]: ... [Assistant]: ... [Human]: ..."``).

    Text without any speaker tag is one user turn. ``None`` when there is text before the first
    tag, an empty turn, or the history does not end with the human.
    """
    turns = speaker_turns(_SPEAKER, text)
    if turns == []:
        turns = [("user", text.strip())]
    if turns is None or any(not t for _, t in turns):
        return None
    msgs = merge_turns(turns)
    if msgs[0]["role"] != "user" or msgs[-1]["role"] != "user":
        return None
    return msgs


def _adapt_halueval(
    raw_rows: RawRows,
    run: SourceRun,
    turns_of: Callable[[Mapping[str, Any]], list[Message] | None],
    right_key: str,
    wrong_key: str,
    *,
    include_knowledge: bool,
    lead: str = "",
) -> Iterator[PreferenceRow]:
    """What both HaluEval tasks share: the prompt is ``turns_of(raw)`` (``None``: malformed),
    chosen ``raw[right_key]``, rejected ``raw[wrong_key]``; with ``include_knowledge`` the first
    user turn becomes ``"Knowledge: <knowledge>\\n\\n<lead><turn>"``; ``meta.question`` is the
    last (user) turn as it was."""
    for i, raw in run.rows(raw_rows):
        turns = turns_of(raw)
        right, wrong = clean_text(raw.get(right_key)), clean_text(raw.get(wrong_key))
        if turns is None or right is None or wrong is None:
            run.drop(MALFORMED)
            continue
        if same_text(right, wrong):
            run.drop(IDENTICAL)
            continue
        question = turns[-1]["content"]
        knowledge = clean_text(raw.get("knowledge")) if include_knowledge else None
        if knowledge:
            first = f"Knowledge: {knowledge}\n\n{lead}{turns[0]['content']}"
            turns[0] = {"role": "user", "content": first}
        meta = {"question": question, "knowledge_in_prompt": bool(knowledge)}
        yield run.emit(turns, right, wrong, i, meta)


def _question(raw: Mapping[str, Any]) -> list[Message] | None:
    question = clean_text(raw.get("question"))
    return None if question is None else [{"role": "user", "content": question}]


def _dialogue(raw: Mapping[str, Any]) -> list[Message] | None:
    history = clean_text(raw.get("dialogue_history"))
    return parse_dialogue_history(history) if history else None


@register_source("halueval_qa")
def adapt_halueval_qa(
    raw_rows: RawRows, run: SourceRun, *, include_knowledge: bool = True
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

    return _adapt_halueval(
        raw_rows,
        run,
        _question,
        "right_answer",
        "hallucinated_answer",
        include_knowledge=include_knowledge,
        lead="Question: ",
    )


@register_source("halueval_dialogue")
def adapt_halueval_dialogue(
    raw_rows: RawRows, run: SourceRun, *, include_knowledge: bool = True
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

    return _adapt_halueval(
        raw_rows,
        run,
        _dialogue,
        "right_response",
        "hallucinated_response",
        include_knowledge=include_knowledge,
    )
