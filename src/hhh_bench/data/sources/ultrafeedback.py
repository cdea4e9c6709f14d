"""UltraFeedback, raw (per-aspect binarization) and as HuggingFaceH4's binarized release."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

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
    register_source,
    same_text,
)

ASPECTS: tuple[str, ...] = ("helpfulness", "honesty", "truthfulness", "instruction_following")
PAIRINGS: tuple[str, ...] = ("best_vs_worst", "best_vs_rest", "best_vs_random", "all_pairs")


class _Completion(NamedTuple):
    index: int
    rating: float
    text: str
    model: str | None


def _aspect_rating(completion: Mapping[str, Any], aspect: str) -> float | None:
    annotations = completion.get("annotations")
    if not isinstance(annotations, Mapping):
        return None
    ann = annotations.get(aspect)
    if isinstance(ann, list):  # some re-exports wrap each annotation in a one-element list
        ann = ann[0] if ann else None
    if not isinstance(ann, Mapping):
        return None
    return as_rating(ann.get("Rating"))


def _candidates(
    usable: list[_Completion], pairing: str, min_margin: float, rng: random.Random
) -> list[tuple[_Completion, _Completion]]:
    """Candidate (chosen, rejected) pairs of one prompt, before the tie/identical checks."""
    best = max(usable, key=lambda c: (c.rating, -c.index))  # highest; first on ties
    if pairing == "best_vs_worst":
        worst = min(usable, key=lambda c: (c.rating, c.index))  # lowest; first on ties
        return [(best, worst)] if worst is not best else []
    if pairing == "best_vs_rest":
        return [(best, c) for c in usable if c is not best]
    if pairing == "best_vs_random":
        lower = [
            c
            for c in usable
            if c is not best
            and best.rating - c.rating >= min_margin
            and not same_text(best.text, c.text)
        ]
        if lower:
            return [(best, rng.choice(lower))]
        return [(best, c) for c in usable if c is not best]  # all fail below: counted there
    # all_pairs: every pair, higher rating first (equal ratings stay and count as ties)
    out = []
    for a_pos, a in enumerate(usable):
        for b in usable[a_pos + 1 :]:
            out.append((a, b) if a.rating >= b.rating else (b, a))
    return out


@register_source("ultrafeedback")
def adapt_ultrafeedback(
    raw_rows: RawRows,
    run: SourceRun,
    *,
    aspect: str = "helpfulness",
    pairing: str = "best_vs_worst",
    min_margin: float = 1.0,
    seed: int = 0,
) -> Iterator[PreferenceRow]:
    """Binarize ``openbmb/UltraFeedback`` on one annotation aspect.

    Dataset card: https://huggingface.co/datasets/openbmb/UltraFeedback (raw format documented at
    https://github.com/OpenBMB/UltraFeedback#dataset-format). Each raw row has ``source`` (the
    prompt's origin: ``evol_instruct``, ``false_qa``, ``flan``, ``sharegpt``, ``truthful_qa``,
    ``ultrachat``), ``instruction`` and four ``completions``, each with ``response``, ``model``
    and ``annotations.<aspect>.Rating`` -- a *string* ``"1"``..``"5"``, or ``"N/A"`` when GPT-4
    gave no rating.

    Judgment calls (each an option):

    * ``pairing``: how the four completions become pairs. ``best_vs_worst`` (default: one pair per
      prompt, the largest rating gap, so every prompt weighs the same and the signal is the
      clearest), ``best_vs_rest`` (the best against each strictly lower one), ``best_vs_random``
      (the best against one lower completion drawn with ``random.Random(f"{seed}/{row}")``, as in
      HuggingFaceH4's ``ultrafeedback_binarized``), ``all_pairs`` (every pair with a gap).
      On equal best (or worst) ratings the earlier completion is taken.
    * ``min_margin``: the smallest rating gap kept (default 1: any strict difference); a smaller
      gap counts as ``tie``.
    * The completion's ``custom_system_prompt`` (its sampled principle) is *not* put in the
      prompt: it differs between the two completions of a pair.
    * Completions with ``"N/A"`` or no rating, or an empty response, are left out (``skipped``).

    Drop reasons (raw rows): ``missing_rating`` (fewer than two rated completions because some
    lack a rating), ``malformed`` (no instruction, or fewer than two completions with text),
    ``tie`` (no candidate pair reaches ``min_margin``), ``identical`` (every candidate pair that
    does has the same text on both sides).

    ``meta``: ``aspect``, ``prompt_source`` (the raw ``source``: what
    :func:`hhh_bench.data.leakage.drop_truthfulqa_prompts` reads), ``chosen_rating``,
    ``rejected_rating``, ``chosen_model``, ``rejected_model``, ``chosen_completion``,
    ``rejected_completion`` (indices into ``completions``).
    """
    if aspect not in ASPECTS:
        raise ValueError(f"ultrafeedback: unknown aspect {aspect!r}; expected one of {ASPECTS}")
    if pairing not in PAIRINGS:
        raise ValueError(f"ultrafeedback: unknown pairing {pairing!r}; expected one of {PAIRINGS}")
    if min_margin <= 0:
        raise ValueError(
            f"ultrafeedback: min_margin must be > 0 (ties never make a pair), got {min_margin}"
        )
    for i, raw in run.rows(raw_rows):
        instruction = clean_text(raw.get("instruction"))
        completions = raw.get("completions")
        if instruction is None or not isinstance(completions, list):
            run.drop(MALFORMED)
            continue
        usable: list[_Completion] = []
        n_missing = 0
        for j, comp in enumerate(completions):
            if not isinstance(comp, Mapping) or clean_text(comp.get("response")) is None:
                run.skip("empty_response")
                continue
            rating = _aspect_rating(comp, aspect)
            if rating is None:
                run.skip(MISSING_RATING)
                n_missing += 1
                continue
            usable.append(_Completion(j, rating, comp["response"].strip(), comp.get("model")))
        if len(usable) < 2:
            run.drop(MISSING_RATING if n_missing else MALFORMED)
            continue
        rng = random.Random(f"{seed}/{i}")
        emitted = 0
        any_margin = False
        for chosen, rejected in _candidates(usable, pairing, min_margin, rng):
            if chosen.rating - rejected.rating < min_margin:
                run.skip(TIE)
                continue
            any_margin = True
            if same_text(chosen.text, rejected.text):
                run.skip(IDENTICAL)
                continue
            meta = {
                "aspect": aspect,
                "prompt_source": raw.get("source"),
                "chosen_rating": chosen.rating,
                "rejected_rating": rejected.rating,
                "chosen_model": chosen.model,
                "rejected_model": rejected.model,
                "chosen_completion": chosen.index,
                "rejected_completion": rejected.index,
            }
            yield run.emit(instruction, chosen.text, rejected.text, i, meta, pair=emitted)
            emitted += 1
        if emitted:
            run.stats.rows_used += 1
        else:
            run.drop(IDENTICAL if any_margin else TIE)


def _messages(value: Any) -> list[Message] | None:
    if not isinstance(value, list) or not value:
        return None
    out: list[Message] = []
    for m in value:
        if not isinstance(m, Mapping) or clean_text(m.get("content")) is None:
            return None
        out.append({"role": str(m.get("role")), "content": m["content"].strip()})
    return out


@register_source("ultrafeedback_binarized")
def adapt_ultrafeedback_binarized(
    raw_rows: RawRows, run: SourceRun, *, drop_ties: bool = True
) -> Iterator[PreferenceRow]:
    """Map ``HuggingFaceH4/ultrafeedback_binarized`` (``*_prefs`` splits) to canonical rows.

    Dataset card: https://huggingface.co/datasets/HuggingFaceH4/ultrafeedback_binarized. Raw
    columns: ``prompt``, ``prompt_id``, ``chosen`` and ``rejected`` (each the whole conversation
    as ``[{"role": "user", ...}, {"role": "assistant", ...}]``), ``messages``, ``score_chosen``,
    ``score_rejected`` (UltraFeedback's ``overall_score``). Since its revision of January 2024 the
    set already excludes TruthfulQA prompts (see its ``create_dataset.py``).

    The prompt is ``chosen[:-1]`` (which must equal ``rejected[:-1]``; an empty one falls back
    to the ``prompt`` column); chosen/rejected are the last assistant turns.

    Drop reasons: ``missing_rating`` (a score is missing), ``tie`` (equal scores, when
    ``drop_ties``), ``inconsistent`` (``score_chosen < score_rejected``: the label contradicts
    the scores), ``identical``, ``malformed`` (missing turns, different prompts on both sides, a
    last turn that is not the assistant's).

    ``meta``: ``prompt_id``, ``score_chosen``, ``score_rejected``.
    """
    for i, raw in run.rows(raw_rows):
        chosen_conv, rejected_conv = _messages(raw.get("chosen")), _messages(raw.get("rejected"))
        if (
            chosen_conv is None
            or rejected_conv is None
            or chosen_conv[-1]["role"] != "assistant"
            or rejected_conv[-1]["role"] != "assistant"
            or chosen_conv[:-1] != rejected_conv[:-1]
        ):
            run.drop(MALFORMED)
            continue
        prompt = chosen_conv[:-1]
        if not prompt:
            text = clean_text(raw.get("prompt"))
            if text is None:
                run.drop(MALFORMED)
                continue
            prompt = [{"role": "user", "content": text}]
        if prompt[-1]["role"] != "user":
            run.drop(MALFORMED)
            continue
        score_c, score_r = as_rating(raw.get("score_chosen")), as_rating(raw.get("score_rejected"))
        if score_c is None or score_r is None:
            run.drop(MISSING_RATING)
            continue
        if score_c == score_r and drop_ties:
            run.drop(TIE)
            continue
        if score_c < score_r:
            run.drop("inconsistent")
            continue
        chosen, rejected = chosen_conv[-1]["content"], rejected_conv[-1]["content"]
        if same_text(chosen, rejected):
            run.drop(IDENTICAL)
            continue
        meta = {
            "prompt_id": raw.get("prompt_id"),
            "score_chosen": score_c,
            "score_rejected": score_r,
        }
        yield run.emit(prompt, chosen, rejected, i, meta)
