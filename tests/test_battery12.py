"""Battery 12's findings that have no better home: each a check on what the user gave."""

from __future__ import annotations

import pytest


def test_a_model_of_another_toy_world_is_refused_by_eval_model(tmp_path):
    """F12: the seed-1 world's θ0 evaluated on this world scored above this world's own θ0,
    its tokenizer missing 64 of the world's words; refused naming eval.model and the words."""
    from hhh_bench.models import build_word_tokenizer
    from hhh_bench.pipeline import _check_world_words

    data = tmp_path / "data"
    data.mkdir()
    (data / "vocab.txt").write_text("alpha\nbeta\ngamma\ndelta\n")
    mine, other = tmp_path / "mine", tmp_path / "other"
    build_word_tokenizer(["alpha", "beta", "gamma", "delta"]).save_pretrained(mine)
    build_word_tokenizer(["alpha", "beta", "zeta"]).save_pretrained(other)
    _check_world_words(str(mine), {"dir": str(data)})
    with pytest.raises(ValueError, match=r"eval.model=.*other: its tokenizer has no token for 2 "
                       r"of the 4 words of this run's toy world \(e.g. \['gamma', 'delta'\]\)"):  # fmt: skip
        _check_world_words(str(other), {"dir": str(data)})
    _check_world_words(str(other), {"dir": str(tmp_path / "real")})  # no vocab.txt: real data
