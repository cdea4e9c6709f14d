"""Leakage guards between training preference sets and evaluation prompts.

Two guards:

* :func:`drop_truthfulqa_prompts`: UltraFeedback draws 811 of its prompts from TruthfulQA
  (its ``source`` field is ``truthful_qa``); a model trained on them and evaluated on TruthfulQA
  has seen the test questions. HuggingFaceH4 drop them for the same reason in
  ``ultrafeedback_binarized``. The guard runs when a TruthfulQA task is in the evaluation suite
  (:func:`wants_truthfulqa_guard`).
* :func:`check_overlap`: every training set against every evaluation set, by a hash of the
  normalized prompt text (:func:`normalize_prompt`); above ``max_overlap`` shared prompts for a
  (train, eval) pair it raises :class:`LeakageError`, whose report gives the counts.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hhh_bench.core.schema import PreferenceRow

TRUTHFUL_QA_SOURCE = "truthful_qa"  # UltraFeedback's `source` value, kept in meta.prompt_source


def normalize_prompt(text: str) -> str:
    """Lowercase, Unicode NFKC, every punctuation character replaced by a space, whitespace
    collapsed, ends stripped: ``"What's  the CAPITAL of France?"`` -> ``"what s the capital of
    france"``."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(text.split())


def prompt_hash(text: str) -> str:
    """A 128-bit hex digest of :func:`normalize_prompt` of ``text``."""
    return hashlib.blake2b(normalize_prompt(text).encode("utf-8"), digest_size=16).hexdigest()


def prompt_keys(row: Mapping[str, Any]) -> set[str]:
    """The hashes under which a training row counts as containing an evaluation prompt.

    One per user turn of ``row["prompt"]`` (an eval question asked in any turn of a training
    conversation has been seen), plus ``meta["question"]`` when an adapter stored the bare
    question of a prompt it decorated (HaluEval with its knowledge passage). Texts that
    normalize to nothing give no key.
    """
    texts = [
        m.get("content", "")
        for m in row.get("prompt", [])
        if isinstance(m, Mapping) and m.get("role") == "user"
    ]
    meta = row.get("meta") or {}
    if isinstance(meta.get("question"), str):
        texts.append(meta["question"])
    return {prompt_hash(t) for t in texts if isinstance(t, str) and normalize_prompt(t)}


@dataclass
class OverlapPair:
    """Overlap of one training set with one evaluation set."""

    train: str
    eval: str
    overlap: int  # distinct evaluation prompts found in the training set
    train_rows: int  # training rows that contain one of them
    examples: list[str] = field(default_factory=list)  # a few of the shared eval prompts


@dataclass
class OverlapReport:
    """Result of :func:`check_overlap` (``as_dict`` goes into the stage manifest)."""

    max_overlap: int
    pairs: list[OverlapPair]

    @property
    def total(self) -> int:
        """Sum of the per-pair overlaps."""
        return sum(p.overlap for p in self.pairs)

    @property
    def failing(self) -> list[OverlapPair]:
        """The pairs above the threshold."""
        return [p for p in self.pairs if p.overlap > self.max_overlap]

    @property
    def passed(self) -> bool:
        """Whether no pair is above the threshold."""
        return not self.failing

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "max_overlap": self.max_overlap,
            "total": self.total,
            "passed": self.passed,
            "pairs": [asdict(p) for p in self.pairs],
        }


class LeakageError(ValueError):
    """Training and evaluation prompts overlap above the threshold; ``.report`` has the counts."""

    def __init__(self, report: OverlapReport) -> None:
        self.report = report
        lines = [
            f"prompt overlap between training and evaluation sets is above max_overlap="
            f"{report.max_overlap} for {len(report.failing)} (train, eval) pair(s):"
        ]
        for p in report.failing:
            ex = "; ".join(repr(e[:80]) for e in p.examples)
            lines.append(
                f"  {p.train} x {p.eval}: {p.overlap} shared eval prompt(s) in {p.train_rows} "
                f"training row(s), e.g. {ex}"
            )
        lines.append(
            "Fix: remove those prompts from the training source (for UltraFeedback, "
            "leakage.drop_truthfulqa_prompts: true), drop the source or the evaluation task, or "
            "raise leakage.max_overlap if the overlap is intended."
        )
        super().__init__("\n".join(lines))


def check_overlap(
    train: Mapping[str, Iterable[Mapping[str, Any]]],
    eval: Mapping[str, Sequence[str]],
    max_overlap: int = 0,
    *,
    n_examples: int = 3,
) -> OverlapReport:
    """Count prompts shared by every training set and every evaluation set.

    Args:
        train: training set name -> preference rows (:func:`prompt_keys` of each row).
        eval: evaluation set name -> its prompts (plain strings).
        max_overlap: the most distinct shared prompts allowed per (train, eval) pair.
        n_examples: how many shared eval prompts each pair's report quotes.

    Returns:
        The report (every pair, even those with 0 overlap).

    Raises:
        LeakageError: a pair shares more than ``max_overlap`` prompts; ``err.report`` is the
            report.
        TypeError: an evaluation prompt is not a string.
    """
    if max_overlap < 0:
        raise ValueError(f"max_overlap must be >= 0, got {max_overlap}")
    eval_index: dict[str, dict[str, str]] = {}
    for name, prompts in eval.items():
        index: dict[str, str] = {}
        for k, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(
                    f"evaluation set {name!r}: item {k} is {type(p).__name__}, expected the prompt "
                    "text (str)"
                )
            if normalize_prompt(p):
                index.setdefault(prompt_hash(p), p)
        eval_index[name] = index
    pairs: list[OverlapPair] = []
    for train_name, rows in train.items():
        keys_per_row = [prompt_keys(r) for r in rows]
        for eval_name, index in eval_index.items():
            found: dict[str, None] = {}  # ordered set of shared eval hashes
            hit_rows = 0
            for keys in keys_per_row:
                shared = [h for h in keys if h in index]
                if shared:
                    hit_rows += 1
                    for h in sorted(shared):
                        found.setdefault(h, None)
            pairs.append(
                OverlapPair(
                    train=train_name,
                    eval=eval_name,
                    overlap=len(found),
                    train_rows=hit_rows,
                    examples=[index[h] for h in list(found)[:n_examples]],
                )
            )
    report = OverlapReport(max_overlap=max_overlap, pairs=pairs)
    if not report.passed:
        raise LeakageError(report)
    return report


def drop_truthfulqa_prompts(
    rows: Iterable[PreferenceRow],
) -> tuple[list[PreferenceRow], int]:
    """Remove rows whose prompt came from TruthfulQA (``meta.prompt_source == "truthful_qa"``,
    set by the UltraFeedback adapter from the raw ``source`` field).

    Returns:
        ``(kept rows, number dropped)``; rows without that meta field are kept.
    """
    kept: list[PreferenceRow] = []
    dropped = 0
    for row in rows:
        if (row.get("meta") or {}).get("prompt_source") == TRUTHFUL_QA_SOURCE:
            dropped += 1
        else:
            kept.append(row)
    return kept, dropped


def _is_truthfulqa_name(name: str) -> bool:
    return "truthfulqa" in re.sub(r"[^a-z0-9]", "", name.lower())


def wants_truthfulqa_guard(setting: bool | str, eval_sets: Iterable[str] | None) -> bool:
    """Resolve ``leakage.drop_truthfulqa_prompts``: ``true``/``false`` as given; ``auto``: true
    when an evaluation set's name contains "truthfulqa" (case, ``_`` and ``-`` ignored, so
    ``truthfulqa_mc2`` and ``TruthfulQA-gen`` both count); with no evaluation sets known, false.
    """
    if isinstance(setting, bool):
        return setting
    if isinstance(setting, str) and setting.lower() in ("true", "false"):
        return setting.lower() == "true"
    if setting != "auto":
        raise ValueError(
            f"leakage.drop_truthfulqa_prompts must be true, false or 'auto', got {setting!r}"
        )
    return any(_is_truthfulqa_name(n) for n in (eval_sets or ()))
