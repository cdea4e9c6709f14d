"""Battery 14's findings (an independent battery on c4252c4) that have no better home."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def test_a_copy_of_theta0s_model_files_is_that_theta0(tmp_path, small_base, small_specialists):
    """F1: θ0's weights, config and tokenizer copied without the stage output's records were
    refused as "a folder hhh-bench cannot match" without a word of what differed. A copy of
    the files a loader reads is that θ0 now; a copy that differs is refused naming the file."""
    from hhh_bench.stages.merge import MODEL_FILE_PATTERNS, check_same_base

    theta0 = Path(small_base["path"])
    models = sorted(str(p) for p in small_specialists)
    copy = tmp_path / "theta0-copy"
    copy.mkdir()
    for pattern in MODEL_FILE_PATTERNS:
        for f in theta0.glob(pattern):
            shutil.copy2(f, copy / f.name)
    assert not (copy / "key.json").exists() and not (copy / "base_info.json").exists()
    check_same_base(str(copy), models)  # the same weights, config and tokenizer: accepted
    (copy / "tokenizer.json").unlink()
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("}", " }"))
    with pytest.raises(ValueError, match=r"is not a copy of its model files: its config\.json "
                       r"differs; it lacks tokenizer\.json"):  # fmt: skip
        check_same_base(str(copy), models)
