"""Leakage guards between training preference sets and evaluation prompts.

Two guards:

* :func:`drop_truthfulqa_prompts`: UltraFeedback draws 811 of its prompts from TruthfulQA
  (its ``source`` field is ``truthful_qa``); a model trained on them and evaluated on TruthfulQA
  has seen the test questions. HuggingFaceH4 drop them for the same reason in
  ``ultrafeedback_binarized``. The guard runs when a TruthfulQA task is in the evaluation suite
  (:func:`wants_truthfulqa_guard`).
* :func:`check_overlap`: every training set against every evaluation set. Both sides are
  normalised first (:func:`hhh_bench.core.text.normalize_text`: NFKC, invisible characters
  removed, confusables folded to ASCII, casefolded, punctuation and white space collapsed), so a
  zero-width space, Cyrillic look-alikes or a changed case do not hide a question. An evaluation
  question is *found* in a training row (:meth:`EvalIndex.matches`) when its normalised form is a
  whole turn of the row, or, for a question of at least ``min_chars`` normalised characters,
  when it appears inside any turn, on word boundaries: the system turn, a user turn, an earlier
  assistant turn, chosen or rejected, and ``meta.question`` -- which covers templated forms such
  as ``"Question: <q>\nAnswer:"`` and a question inside a longer message. The search runs one
  Aho-Corasick automaton (``pyahocorasick``) over every question at once. Above ``max_overlap``
  shared questions for a (train, eval) pair it raises :class:`LeakageError`, whose report gives
  the counts.

The report also gives the *n-gram overlap*, as lm-eval's decontamination measures it (word
13-grams of the normalised text, ``lm_eval/decontamination``; an item shorter than 13 words has
none): per training set, the number of rows that share at least one 13-gram with an evaluation
item. It is reported, never a reason to fail (a 13-gram such as a quoted proverb can be shared
by unrelated texts).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hhh_bench.core.schema import PreferenceRow
from hhh_bench.core.text import normalize_text

TRUTHFUL_QA_SOURCE = "truthful_qa"  # UltraFeedback's `source` value, kept in meta.prompt_source

MIN_CHARS = 12
"""Default of ``data.leakage.min_chars``: the shortest normalised question (letters, digits and
single spaces) searched for *inside* a training turn. 12 keeps TruthfulQA's shortest questions
("Can pigs fly?" -> ``can pigs fly``, 12) and leaves out strings such as "What is it?" (10) that
ordinary text holds by accident; a shorter question still counts as a whole turn."""

NGRAM_N = 13
"""The n of the n-gram overlap (lm-eval's decontamination uses word 13-grams)."""


def normalize_prompt(text: str) -> str:
    """:func:`hhh_bench.core.text.normalize_text`: ``"What's  the CAPITAL of France?"`` ->
    ``"what s the capital of france"``."""
    return normalize_text(text)


def prompt_hash(text: str) -> str:
    """A 128-bit hex digest of :func:`normalize_prompt` of ``text``."""
    return hashlib.blake2b(normalize_prompt(text).encode("utf-8"), digest_size=16).hexdigest()


def row_texts(row: Mapping[str, Any]) -> list[str]:
    """The normalised texts of a training row that the guard searches: every turn of
    ``prompt`` (system, user, assistant), ``chosen`` and ``rejected``, and ``meta["question"]``
    when an adapter stored the bare question of a prompt it decorated (HaluEval with its knowledge
    passage). Texts that normalise to nothing are left out."""
    texts = [
        m.get("content")
        for key in ("prompt", "chosen", "rejected")
        for m in (row.get(key) or [])
        if isinstance(m, Mapping)
    ]
    meta = row.get("meta") or {}
    texts.append(meta.get("question") if isinstance(meta, Mapping) else None)
    out = [normalize_text(t) for t in texts if isinstance(t, str)]
    return [t for t in out if t]


def _ngrams(text: str, n: int) -> Iterable[str]:
    """Word n-grams of a normalised text, as lm-eval's ``janitor.word_ngrams`` forms them (a text
    of fewer than ``n`` words has none)."""
    words = text.split()
    return (" ".join(words[i : i + n]) for i in range(len(words) - n + 1))


class EvalIndex:
    """Every evaluation question, normalised, indexed for the search of training rows.

    Args:
        eval_sets: evaluation set name -> its prompts (plain strings).
        min_chars: the shortest normalised question searched for inside a turn (shorter ones
            count only as a whole turn).
        n: the n of the n-gram overlap.

    Raises:
        TypeError: an evaluation prompt is not a string.
        ValueError: ``min_chars`` or ``n`` is not a positive integer.
    """

    def __init__(
        self, eval_sets: Mapping[str, Sequence[str]], min_chars: int = MIN_CHARS, n: int = NGRAM_N
    ) -> None:
        import ahocorasick

        for what, v in (("min_chars", min_chars), ("n", n)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"leakage {what} must be a positive integer, got {v!r}")
        self.names = list(eval_sets)
        self.min_chars, self.n = min_chars, n
        self.examples: dict[str, dict[str, str]] = {}  # eval -> normalised -> first original
        self.owners: dict[str, set[str]] = {}  # normalised question -> eval sets holding it
        self.gram_owners: dict[str, int] = {}  # n-gram -> bit mask of the eval sets holding it
        for bit, (name, prompts) in enumerate(eval_sets.items()):
            index: dict[str, str] = {}
            for k, p in enumerate(prompts):
                if not isinstance(p, str):
                    raise TypeError(
                        f"evaluation set {name!r}: item {k} is {type(p).__name__}, expected the "
                        "prompt text (str)"
                    )
                norm = normalize_text(p)
                if norm and norm not in index:
                    index[norm] = p
                    self.owners.setdefault(norm, set()).add(name)
                    for gram in _ngrams(norm, n):
                        self.gram_owners[gram] = self.gram_owners.get(gram, 0) | (1 << bit)
            self.examples[name] = index
        self._automaton: Any = None
        long = [q for q in self.owners if len(q) >= min_chars]
        if long:
            self._automaton = ahocorasick.Automaton()
            for q in long:
                self._automaton.add_word(f" {q} ", q)
            self._automaton.make_automaton()

    def matches(self, texts: Sequence[str]) -> dict[str, set[str]]:
        """Eval set -> the normalised questions found in ``texts`` (:func:`row_texts` of a row):
        a question that is a whole text, or one of ``min_chars`` or more inside a text, on word
        boundaries. Eval sets with none are left out."""
        found = {t for t in texts if t in self.owners}
        if self._automaton is not None:
            for t in texts:
                found.update(q for _, q in self._automaton.iter(f" {t} "))
        out: dict[str, set[str]] = {}
        for q in found:
            for name in self.owners[q]:
                out.setdefault(name, set()).add(q)
        return out

    def ngram_sets(self, texts: Sequence[str]) -> set[str]:
        """The eval sets that share at least one word n-gram with ``texts`` (each text on its
        own: an n-gram does not span two turns)."""
        mask = 0
        if self.gram_owners:
            for t in texts:
                for gram in _ngrams(t, self.n):
                    mask |= self.gram_owners.get(gram, 0)
        return {name for bit, name in enumerate(self.names) if mask >> bit & 1}


@dataclass
class OverlapPair:
    """Overlap of one training set with one evaluation set."""

    train: str
    eval: str
    overlap: int  # distinct evaluation prompts found in the training set
    train_rows: int  # training rows that contain one of them
    examples: list[str] = field(default_factory=list)  # a few of the shared eval prompts
    ngram_rows: int = 0  # training rows sharing at least one word n-gram with the eval set


@dataclass
class OverlapReport:
    """Result of :func:`check_overlap` (``as_dict`` goes into the stage manifest)."""

    max_overlap: int
    pairs: list[OverlapPair]
    min_chars: int = MIN_CHARS
    ngram_n: int = NGRAM_N
    rows: dict[str, int] = field(default_factory=dict)  # training set -> rows
    ngram_rows: dict[str, int] = field(default_factory=dict)  # ... -> rows sharing an n-gram

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
        """Plain-JSON form; ``ngram_overlap.sources[name]`` = ``{"rows", "rows_sharing"}``: the
        training set's rows, and how many share at least one word n-gram with any evaluation
        item."""
        return {
            "max_overlap": self.max_overlap,
            "min_chars": self.min_chars,
            "total": self.total,
            "passed": self.passed,
            "pairs": [asdict(p) for p in self.pairs],
            "ngram_overlap": {
                "n": self.ngram_n,
                "sources": {
                    name: {"rows": n, "rows_sharing": self.ngram_rows.get(name, 0)}
                    for name, n in self.rows.items()
                },
            },
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
            "leakage.drop_truthfulqa_prompts: true), drop the source or the evaluation task, "
            "set leakage.on_overlap: drop, or raise leakage.max_overlap if the overlap is "
            f"intended (a question of {report.min_chars}+ characters counts wherever it appears "
            "in a turn; leakage.min_chars sets that length)."
        )
        super().__init__("\n".join(lines))


def check_overlap(
    train: Mapping[str, Iterable[Mapping[str, Any]]],
    eval: Mapping[str, Sequence[str]],
    max_overlap: int = 0,
    *,
    n_examples: int = 3,
    min_chars: int = MIN_CHARS,
    index: EvalIndex | None = None,
) -> OverlapReport:
    """Count the evaluation questions found in every training set (module docstring).

    Args:
        train: training set name -> preference rows (:func:`row_texts` of each row).
        eval: evaluation set name -> its prompts (plain strings).
        max_overlap: the most distinct shared prompts allowed per (train, eval) pair.
        n_examples: how many shared eval prompts each pair's report quotes.
        min_chars: the shortest normalised question searched for inside a turn.
        index: ``EvalIndex(eval, min_chars)`` when the caller built it already.

    Returns:
        The report (every pair, even those with 0 overlap; the n-gram overlap per training set).

    Raises:
        LeakageError: a pair shares more than ``max_overlap`` prompts; ``err.report`` is the
            report.
        TypeError: an evaluation prompt is not a string.
    """
    if max_overlap < 0:
        raise ValueError(f"max_overlap must be >= 0, got {max_overlap}")
    index = index if index is not None else EvalIndex(eval, min_chars)
    pairs: list[OverlapPair] = []
    rows_n: dict[str, int] = {}
    ngram_n: dict[str, int] = {}
    for train_name, rows in train.items():
        found: dict[str, dict[str, None]] = {e: {} for e in index.names}  # ordered sets
        hit_rows = dict.fromkeys(index.names, 0)
        gram_rows = dict.fromkeys(index.names, 0)
        n_rows = n_gram_any = 0
        for row in rows:
            texts = row_texts(row)
            n_rows += 1
            for name, qs in index.matches(texts).items():
                hit_rows[name] += 1
                for q in sorted(qs):
                    found[name].setdefault(q, None)
            shared = index.ngram_sets(texts)
            n_gram_any += bool(shared)
            for name in shared:
                gram_rows[name] += 1
        rows_n[train_name], ngram_n[train_name] = n_rows, n_gram_any
        for name in index.names:
            pairs.append(
                OverlapPair(
                    train=train_name,
                    eval=name,
                    overlap=len(found[name]),
                    train_rows=hit_rows[name],
                    examples=[index.examples[name][q] for q in list(found[name])[:n_examples]],
                    ngram_rows=gram_rows[name],
                )
            )
    report = OverlapReport(
        max_overlap=max_overlap, pairs=pairs, min_chars=index.min_chars, ngram_n=index.n,
        rows=rows_n, ngram_rows=ngram_n,
    )  # fmt: skip
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
