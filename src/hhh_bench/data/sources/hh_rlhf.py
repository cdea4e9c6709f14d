"""Anthropic/hh-rlhf: whole transcripts, split at the last assistant turn."""

from __future__ import annotations

import re
from collections.abc import Iterator

from hhh_bench.core.schema import Message, PreferenceRow
from hhh_bench.data.sources.base import (
    IDENTICAL,
    MALFORMED,
    RawRows,
    SourceRun,
    merge_turns,
    register_source,
    same_text,
    speaker_turns,
)

_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


def parse_transcript(text: str) -> list[Message] | None:
    """Turns of an hh-rlhf transcript (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``).

    Returns ``None`` when there is text before the first speaker marker or no marker at all.
    Consecutive turns of one speaker are joined (:func:`~.base.merge_turns`); empty turns are
    kept as empty strings so the caller can decide.
    """
    if not isinstance(text, str):
        return None
    turns = speaker_turns(_MARKER, text)
    if not turns:
        return None
    return merge_turns(turns)


@register_source("hh_rlhf")
def adapt_hh_rlhf(raw_rows: RawRows, run: SourceRun) -> Iterator[PreferenceRow]:
    """Map ``Anthropic/hh-rlhf`` rows (``helpful-base``, ``harmless-base``, ...) to canonical rows.

    Dataset card: https://huggingface.co/datasets/Anthropic/hh-rlhf. Each raw row has ``chosen``
    and ``rejected``: two whole transcripts (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) that
    share every turn but the last assistant one. The shared part becomes the (possibly
    multi-turn) prompt; the two last assistant turns become chosen and rejected.

    Drop reasons: ``identical`` (the two last turns have the same text), ``malformed`` (no
    speaker markers, a transcript not ending with an assistant turn, an empty turn, the two
    transcripts differing before their last turn, a prompt not starting and ending with the
    human).

    ``meta``: ``n_prompt_turns``.
    """
    for i, raw in run.rows(raw_rows):
        chosen_t, rejected_t = (
            parse_transcript(raw.get("chosen")),
            parse_transcript(raw.get("rejected")),
        )
        if (
            not chosen_t
            or not rejected_t
            or chosen_t[-1]["role"] != "assistant"
            or rejected_t[-1]["role"] != "assistant"
            or chosen_t[:-1] != rejected_t[:-1]
            or len(chosen_t) < 2
            or chosen_t[0]["role"] != "user"
            or chosen_t[-2]["role"] != "user"
            or any(not m["content"] for m in chosen_t + rejected_t[-1:])
        ):
            run.drop(MALFORMED)
            continue
        chosen, rejected = chosen_t[-1]["content"], rejected_t[-1]["content"]
        if same_text(chosen, rejected):
            run.drop(IDENTICAL)
            continue
        prompt = chosen_t[:-1]
        yield run.emit(prompt, chosen, rejected, i, {"n_prompt_turns": len(prompt)})
