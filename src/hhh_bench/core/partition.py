"""Seeded partitions of a public set into a training part and an evaluation part, by item text.

HaluEval QA ships one split of 10,000 items; the suite evaluates on it (``halueval_qa_gen``,
``halueval_qa_mc``) and the honest training data draws pairs from it (source ``halueval_qa``).
Both sides put each item in the same part by the same function of its question, so neither needs
the other's file, its row order or its copy (the hub's JSON or an export of it):

    u = blake2b-64(f"{seed}\\0{normalize_text(question)}") / 2**64,  eval iff u < eval_fraction

(:func:`hhh_bench.core.text.normalize_text`: a case, white-space or look-alike change of a
question does not move it). Each item is in the evaluation part with probability
``eval_fraction``, independently; the realised share varies by about
``sqrt(f (1 - f) / N)`` (0.003 for f = 0.1 of 10,000). ``eval.partitions.<name>`` configures one
(``{seed, eval_fraction}``), the evaluation tasks read only its evaluation part and the data stage
drops the evaluation part from every source of that set and records it
(:func:`partition_record`) in the data manifest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hhh_bench.core.text import normalize_text


@dataclass(frozen=True)
class Partition:
    """One seeded partition (``eval.partitions.<name>``).

    Attributes:
        seed: the draw; another seed gives an independent partition.
        eval_fraction: the probability that an item is in the evaluation part, in (0, 1).
    """

    seed: int
    eval_fraction: float

    @classmethod
    def from_config(cls, name: str, cfg: Any) -> Partition:
        """Build and check ``eval.partitions.<name>`` (``{seed, eval_fraction}``).

        Raises:
            ValueError: other keys, a seed that is not an integer, a fraction outside (0, 1).
        """
        where = f"eval.partitions.{name}"
        if not isinstance(cfg, Mapping) or set(cfg) != {"seed", "eval_fraction"}:
            raise ValueError(
                f"{where} must be {{seed: <int>, eval_fraction: <(0, 1)>}}, got {cfg!r}"
            )
        seed, frac = cfg["seed"], cfg["eval_fraction"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"{where}.seed must be an integer, got {seed!r}")
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1:
            raise ValueError(f"{where}.eval_fraction must be a number in (0, 1), got {frac!r}")
        return cls(seed=seed, eval_fraction=float(frac))

    def as_dict(self) -> dict[str, Any]:
        """``{"seed", "eval_fraction"}``, as configured."""
        return {"seed": self.seed, "eval_fraction": self.eval_fraction}

    def draw(self, text: str) -> float:
        """The item's uniform draw in [0, 1) (module docstring)."""
        key = f"{self.seed}\0{normalize_text(text)}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2**64

    def is_eval(self, text: str) -> bool:
        """Whether the item whose question is ``text`` is in the evaluation part."""
        return self.draw(text) < self.eval_fraction


def questions_digest(texts: Iterable[str]) -> str:
    """sha256 of the distinct normalised texts, sorted and joined by newlines: the same set of
    questions gives the same digest whatever their order, case or spacing."""
    norm = sorted({normalize_text(t) for t in texts} - {""})
    return hashlib.sha256("\n".join(norm).encode("utf-8")).hexdigest()


def partition_record(partition: Partition, questions: Iterable[str]) -> dict[str, Any]:
    """What a manifest records of a partition applied to ``questions`` (one per item): its seed
    and fraction, the counts of distinct questions in each part, and the digest
    (:func:`questions_digest`) of those in the evaluation part."""
    norm = {normalize_text(q) for q in questions} - {""}
    held = [q for q in norm if partition.is_eval(q)]
    return {
        **partition.as_dict(),
        "n_questions": len(norm),
        "n_eval": len(held),
        "n_train": len(norm) - len(held),
        "eval_questions_sha256": questions_digest(held),
    }
