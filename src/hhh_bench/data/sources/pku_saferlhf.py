"""PKU-Alignment/PKU-SafeRLHF (and -30K): decoupled helpfulness and harmlessness preferences."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from hhh_bench.core.schema import PreferenceRow
from hhh_bench.data.sources.base import (
    IDENTICAL,
    MALFORMED,
    MISSING_RATING,
    RawRows,
    SourceRun,
    clean_text,
    register_source,
    same_text,
)

PREFERENCES: dict[str, str] = {"better": "better_response_id", "safer": "safer_response_id"}


def _response_id(value: Any) -> int | None:
    """0 or 1 from an int (or ``"0"``/``"1"``); anything else is ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    return None


def _harm_categories(value: Any) -> list[str]:
    if not isinstance(value, Mapping):
        return []
    return sorted(str(k) for k, v in value.items() if v is True)


def _severity(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _safe(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


@register_source("pku_saferlhf")
def adapt_pku_saferlhf(
    raw_rows: RawRows,
    run: SourceRun,
    *,
    preference: str = "safer",
    drop_conflicts: bool = False,
    require_safe_chosen: bool = False,
) -> Iterator[PreferenceRow]:
    """Map PKU-SafeRLHF rows to helpful (``preference: better``) or harmless (``safer``) pairs.

    Dataset cards: https://huggingface.co/datasets/PKU-Alignment/PKU-SafeRLHF and
    https://huggingface.co/datasets/PKU-Alignment/PKU-SafeRLHF-30K. Raw columns used:
    ``prompt``, ``response_0``, ``response_1``, ``better_response_id`` (the more helpful one),
    ``safer_response_id`` (the more harmless one), ``is_response_{0,1}_safe``; when present
    (PKU-SafeRLHF since 2024, not -30K) also ``prompt_source``, ``response_{0,1}_source``,
    ``response_{0,1}_harm_category`` (19 booleans) and ``response_{0,1}_severity_level`` (0-3).

    A row whose two ids differ is a **help/harm conflict** (the more helpful answer is the less
    safe one): ``meta.help_harm_conflict`` is ``True`` on it (``None`` when an id is missing), in
    both the helpful and the harmless view, so a study can select or drop those rows.

    Options: ``preference`` (``better`` or ``safer``: which id picks the chosen response),
    ``drop_conflicts`` (drop conflict rows; reason ``conflict``), ``require_safe_chosen`` (keep
    only pairs whose chosen response is labelled safe; reason ``unsafe_chosen``; off by default:
    the safer of two unsafe answers is still the harmless preference the card gives).

    Drop reasons: ``missing_rating`` (the chosen-side id is missing or not 0/1), ``identical``,
    ``malformed`` (empty prompt or response), ``conflict``, ``unsafe_chosen``.

    ``meta``: ``preference``, ``help_harm_conflict``, ``better_response_id``,
    ``safer_response_id``, ``chosen_response_id``, ``chosen_is_safe``, ``rejected_is_safe``,
    ``chosen_severity``, ``rejected_severity``, ``chosen_harm_categories``,
    ``rejected_harm_categories``, ``prompt_source``, ``chosen_model``, ``rejected_model``.
    """
    if preference not in PREFERENCES:
        raise ValueError(
            f"pku_saferlhf: unknown preference {preference!r}; "
            f"expected one of {sorted(PREFERENCES)}"
        )
    for i, raw in run.rows(raw_rows):
        prompt = clean_text(raw.get("prompt"))
        responses = (clean_text(raw.get("response_0")), clean_text(raw.get("response_1")))
        if prompt is None or responses[0] is None or responses[1] is None:
            run.drop(MALFORMED)
            continue
        better = _response_id(raw.get("better_response_id"))
        safer = _response_id(raw.get("safer_response_id"))
        key = better if preference == "better" else safer
        if key is None:
            run.drop(MISSING_RATING)
            continue
        other = 1 - key
        chosen, rejected = responses[key], responses[other]
        if same_text(chosen, rejected):
            run.drop(IDENTICAL)
            continue
        conflict = None if better is None or safer is None else better != safer
        if drop_conflicts and conflict:
            run.drop("conflict")
            continue
        chosen_safe = _safe(raw.get(f"is_response_{key}_safe"))
        if require_safe_chosen and chosen_safe is not True:
            run.drop("unsafe_chosen")
            continue
        yield run.emit(
            prompt,
            chosen,
            rejected,
            i,
            {
                "preference": preference,
                "help_harm_conflict": conflict,
                "better_response_id": better,
                "safer_response_id": safer,
                "chosen_response_id": key,
                "chosen_is_safe": chosen_safe,
                "rejected_is_safe": _safe(raw.get(f"is_response_{other}_safe")),
                "chosen_severity": _severity(raw.get(f"response_{key}_severity_level")),
                "rejected_severity": _severity(raw.get(f"response_{other}_severity_level")),
                "chosen_harm_categories": _harm_categories(
                    raw.get(f"response_{key}_harm_category")
                ),
                "rejected_harm_categories": _harm_categories(
                    raw.get(f"response_{other}_harm_category")
                ),
                "prompt_source": raw.get("prompt_source"),
                "chosen_model": raw.get(f"response_{key}_source"),
                "rejected_model": raw.get(f"response_{other}_source"),
            },
        )
