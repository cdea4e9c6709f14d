"""The data stage on public-set configs, run offline on the raw-schema fixtures."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import REPO, compose
from hhh_bench.core.schema import load_preferences

ASSETS = REPO / "tests" / "assets" / "sources"


def test_paper_3h_data_stage_on_fixtures(tmp_path):
    from hhh_bench.stages.data import run_data

    cfg = compose(
        [
            f"root={tmp_path}",
            "data=paper_3h",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.eval_fraction=0.0",
            f"data.sources.helpful=[{{name: hh_rlhf_helpful, path: {ASSETS / 'hh_rlhf_helpful_base.jsonl'}}}]",
            f"data.sources.honest=[{{name: halueval_qa, path: {ASSETS / 'halueval_qa.jsonl'}}}]",
            f"data.sources.harmless=[{{name: pku_saferlhf_harmless, path: {ASSETS / 'pku_saferlhf.jsonl'}}}]",
        ]
    )
    out = run_data(cfg)
    d = Path(out["dir"])
    manifest = json.loads((d / "manifest.json").read_text())
    for dim in ("helpful", "honest", "harmless"):
        rows = load_preferences(d / "prefs" / f"{dim}_train.jsonl")
        assert rows and all(r["dimension"] == dim for r in rows)
        assert manifest["counts"]["prefs"][dim]["train"] == len(rows)
    # per-source counts after filtering are in the manifest
    names = {rec["source"] for rec in manifest["source_table"]}
    assert names == {"hh_rlhf_helpful", "halueval_qa", "pku_saferlhf_harmless"}
    assert (d / "provenance.json").is_file()
