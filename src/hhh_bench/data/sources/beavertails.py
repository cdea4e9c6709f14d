"""PKU-Alignment/BeaverTails: safe vs unsafe answers to the same prompt."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from hhh_bench.core.schema import PreferenceRow
from hhh_bench.data.sources.base import (
    IDENTICAL,
    MISSING_RATING,
    RawRows,
    SourceRun,
    register_source,
    same_text,
)


@register_source("beavertails")
def adapt_beavertails(
    raw_rows: RawRows, run: SourceRun, *, max_pairs_per_prompt: int | None = None
) -> Iterator[PreferenceRow]:
    """Pair BeaverTails answers judged safe against answers judged unsafe, per prompt (harmless).

    Dataset card: https://huggingface.co/datasets/PKU-Alignment/BeaverTails. Raw columns:
    ``prompt``, ``response``, ``category`` (14 harm-category booleans) and ``is_safe`` (the
    QA pair's safety label); splits ``330k_train``, ``330k_test``, ``30k_train``, ``30k_test``.
    The set is a classification set, so it has no pairs of its own: they are made here.

    Judgment calls: rows are grouped by exact prompt text over the whole split; each safe answer
    is paired with each unsafe answer of the same prompt (chosen = safe), in row order (safe
    rows outer, unsafe rows inner); ``max_pairs_per_prompt`` caps that (``None``: no cap). The
    group's first row index is the ``<row index>`` of the id.

    Drop reasons (raw rows): ``missing_rating`` (no boolean ``is_safe``), ``no_contrast`` (the
    prompt has only safe or only unsafe answers), ``identical`` (the row's every partner has the
    same text), ``capped`` (left out by ``max_pairs_per_prompt``), ``malformed`` (empty prompt or
    response).

    ``meta``: ``chosen_row``, ``rejected_row``, ``rejected_harm_categories``.
    """
    if max_pairs_per_prompt is not None and max_pairs_per_prompt < 1:
        raise ValueError(
            f"beavertails: max_pairs_per_prompt must be >= 1 or None, got {max_pairs_per_prompt}"
        )
    for prompt, members in run.group_by_prompt(raw_rows).items():
        safe = [(i, r) for i, r in members if r.get("is_safe") is True]
        unsafe = [(i, r) for i, r in members if r.get("is_safe") is False]
        run.drop(MISSING_RATING, len(members) - len(safe) - len(unsafe))
        if not safe or not unsafe:
            run.drop("no_contrast", len(safe) + len(unsafe))
            continue
        used: set[int] = set()
        cut: set[int] = set()  # rows with a valid partner that the cap left out
        k = 0
        for s_i, s in safe:
            for u_i, u in unsafe:
                chosen, rejected = s["response"].strip(), u["response"].strip()
                if same_text(chosen, rejected):
                    run.skip(IDENTICAL)
                    continue
                if max_pairs_per_prompt is not None and k >= max_pairs_per_prompt:
                    run.skip("capped")
                    cut.update((s_i, u_i))
                    continue
                used.update((s_i, u_i))
                category = u.get("category")
                meta = {
                    "chosen_row": s_i,
                    "rejected_row": u_i,
                    "rejected_harm_categories": sorted(
                        str(c) for c, v in category.items() if v is True
                    )
                    if isinstance(category, Mapping)
                    else [],
                }
                yield run.emit(prompt, chosen, rejected, members[0][0], meta, pair=k)
                k += 1
        run.settle((i for i, _ in safe + unsafe), used, IDENTICAL, got_past=cut, then="capped")
