"""nvidia/HelpSteer2: two rated responses per prompt, paired by one attribute."""

from __future__ import annotations

import re
from collections.abc import Iterator

from hhh_bench.core.schema import Message, PreferenceRow
from hhh_bench.data.sources.base import (
    IDENTICAL,
    MALFORMED,
    MISSING_RATING,
    TIE,
    RawRows,
    SourceRun,
    as_rating,
    clean_text,
    merge_turns,
    register_source,
    same_text,
)

ATTRIBUTES: tuple[str, ...] = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
_TURN = re.compile(r"\s*<extra_id_1>(User|Assistant)[ \t]*\n?")


def parse_helpsteer_prompt(text: str) -> list[Message] | None:
    """Turns of a HelpSteer2 prompt; ``None`` if they do not end with a non-empty user turn.

    Multi-turn prompts (about 29% of HelpSteer2) hold the earlier turns inline, as the card says::

        {user turn 1}
        <extra_id_1>Assistant
        {assistant turn 1}
        <extra_id_1>User
        {user turn 2}
    """
    parts = _TURN.split(text)
    turns: list[tuple[str, str]] = [("user", parts[0])]
    for k in range(1, len(parts) - 1, 2):
        turns.append((parts[k].lower(), parts[k + 1]))
    if any(clean_text(t) is None for _, t in turns):
        return None
    msgs = merge_turns([(role, t.strip()) for role, t in turns])
    return msgs if msgs[-1]["role"] == "user" else None


@register_source("helpsteer2")
def adapt_helpsteer2(
    raw_rows: RawRows,
    run: SourceRun,
    *,
    attribute: str = "helpfulness",
    min_margin: float = 1.0,
) -> Iterator[PreferenceRow]:
    """Pair ``nvidia/HelpSteer2`` responses to the same prompt by one attribute (0-4 scale).

    Dataset card: https://huggingface.co/datasets/nvidia/HelpSteer2. Raw columns: ``prompt``,
    ``response``, ``helpfulness``, ``correctness``, ``coherence``, ``complexity``,
    ``verbosity``. The card: "consecutive samples (e.g. sample 1 with 2, 3 with 4 ...) share the
    same prompt so this can be used for preference pairs based on the helpfulness score".

    Judgment calls: rows are grouped by their exact prompt text over the whole split (not only
    consecutive rows, so a shuffled copy gives the same pairs); within a group every two responses
    whose ``attribute`` differs by at least ``min_margin`` make a pair, the higher one chosen (with
    HelpSteer2's two responses per prompt: at most one pair). The group's first row index is the
    ``<row index>`` of the id. Multi-turn prompts become several turns
    (:func:`parse_helpsteer_prompt`).

    Drop reasons (raw rows): ``missing_rating`` (no ``attribute`` value, or the only partner has
    none), ``unpaired`` (the prompt has a single response), ``tie`` (gap below ``min_margin``),
    ``identical``, ``malformed`` (empty prompt or response; turns not ending with the user).

    ``meta``: ``attribute``, ``chosen_rating``, ``rejected_rating``, ``chosen_row``,
    ``rejected_row``, ``chosen_scores`` and ``rejected_scores`` (all five attributes).
    """
    if attribute not in ATTRIBUTES:
        raise ValueError(
            f"helpsteer2: unknown attribute {attribute!r}; expected one of {ATTRIBUTES}"
        )
    if min_margin <= 0:
        raise ValueError(f"helpsteer2: min_margin must be > 0, got {min_margin}")
    for text, members in run.group_by_prompt(raw_rows).items():
        prompt = parse_helpsteer_prompt(text)
        if prompt is None:
            run.drop(MALFORMED, len(members))
            continue
        rated = [(i, r, as_rating(r.get(attribute))) for i, r in members]
        unrated = [m for m in rated if m[2] is None]
        rated = [m for m in rated if m[2] is not None]
        run.drop(MISSING_RATING, len(unrated))
        if len(rated) < 2:
            run.drop(MISSING_RATING if unrated else "unpaired", len(rated))
            continue
        used: set[int] = set()
        had_margin: set[int] = set()  # rows with a partner at least min_margin away
        k = 0
        for a_pos, a in enumerate(rated):
            for b in rated[a_pos + 1 :]:
                hi, lo = (a, b) if a[2] >= b[2] else (b, a)  # type: ignore[operator]
                if hi[2] - lo[2] < min_margin:  # type: ignore[operator]
                    run.skip(TIE)
                    continue
                had_margin.update((hi[0], lo[0]))
                chosen, rejected = hi[1]["response"].strip(), lo[1]["response"].strip()
                if same_text(chosen, rejected):
                    run.skip(IDENTICAL)
                    continue
                used.update((hi[0], lo[0]))
                meta = {
                    "attribute": attribute,
                    "chosen_rating": hi[2],
                    "rejected_rating": lo[2],
                    "chosen_row": hi[0],
                    "rejected_row": lo[0],
                    "chosen_scores": {a_: as_rating(hi[1].get(a_)) for a_ in ATTRIBUTES},
                    "rejected_scores": {a_: as_rating(lo[1].get(a_)) for a_ in ATTRIBUTES},
                }
                yield run.emit(prompt, chosen, rejected, members[0][0], meta, pair=k)
                k += 1
        run.settle((i for i, _, _ in rated), used, TIE, got_past=had_margin, then=IDENTICAL)
