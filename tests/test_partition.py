"""The seeded partition of a public set by question (core/partition.py): a function of the
normalised question, the seed and the fraction, nothing else."""

from __future__ import annotations

import pytest

from hhh_bench.core.partition import Partition, partition_record, questions_digest

QUESTIONS = [f"What is the capital of country number {i}?" for i in range(2000)]


def test_the_part_is_a_function_of_the_normalised_question_and_the_seed():
    part = Partition(seed=0, eval_fraction=0.1)
    q = "Which composer wrote the Moonlight Sonata?"
    assert part.is_eval(q) == part.is_eval("  which COMPOSER wrote the moonlight sonata ") is True
    held = [x for x in QUESTIONS if part.is_eval(x)]
    # 2000 independent draws at 0.1: 200 expected, sd sqrt(2000 * 0.1 * 0.9) = 13.4
    assert 150 < len(held) < 250
    assert held == [x for x in QUESTIONS if Partition(0, 0.1).is_eval(x)]  # deterministic
    other = {x for x in QUESTIONS if Partition(1, 0.1).is_eval(x)}
    assert len(other & set(held)) < 60  # another seed: an independent draw (20 expected)
    # a larger fraction holds out a superset: the draw is the item's, the fraction a threshold
    assert set(held) <= {x for x in QUESTIONS if Partition(0, 0.3).is_eval(x)}


def test_the_record_counts_the_parts_and_digests_the_held_out_questions():
    part = Partition(seed=0, eval_fraction=0.1)
    rec = partition_record(part, QUESTIONS + QUESTIONS[:5])  # repeats count once
    held = [x for x in QUESTIONS if part.is_eval(x)]
    assert rec["n_questions"] == 2000 and rec["n_eval"] == len(held)
    assert rec["n_train"] == 2000 - len(held)
    assert rec["eval_questions_sha256"] == questions_digest(reversed(held))  # order-free
    assert rec["seed"] == 0 and rec["eval_fraction"] == 0.1


@pytest.mark.parametrize("cfg, message", [
    ({"seed": 0}, r"must be \{seed"),
    ({"seed": "0", "eval_fraction": 0.1}, "seed must be an integer"),
    ({"seed": 0, "eval_fraction": 1.0}, r"eval_fraction must be a number in \(0, 1\)"),
    ({"seed": 0, "eval_fraction": 0}, r"eval_fraction must be a number in \(0, 1\)"),
])  # fmt: skip
def test_a_bad_partition_config_is_named(cfg, message):
    with pytest.raises(ValueError, match=f"eval.partitions.halueval_qa.*{message}|{message}"):
        Partition.from_config("halueval_qa", cfg)
