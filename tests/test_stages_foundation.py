"""The data and base stages: outputs, provenance, caching, and a base that knows its facts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import SMALL_WORLD


def test_data_stage_writes_manifest_and_is_cached(small_cfg, small_data):
    from hhh_bench.stages.data import run_data

    d = Path(small_data["dir"])
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["counts"]["prefs"]["helpful"]["train"] == 120
    prov = json.loads((d / "provenance.json").read_text())
    assert prov["stage"] == "data" and "torch" in prov["versions"] and prov["config"]["world"]
    again = run_data(small_cfg)
    assert again["cached"] and again["dir"] == small_data["dir"]


def test_base_knows_its_facts(small_base):
    """After the base stage θ0 answers most known-fact test questions (see
    ``conftest.KNOWN_FACTS_BAR``), while the untrained model is near chance (1 correct of 10)."""
    from conftest import KNOWN_FACTS_BAR

    assert small_base["known_qa_test_before"]["acc"] <= 0.3, small_base
    assert small_base["known_qa_test_after"]["acc"] >= KNOWN_FACTS_BAR, small_base
    path = Path(small_base["path"])
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    prov = json.loads((path / "provenance.json").read_text())
    assert prov["stage"] == "base" and prov["seed"] == 0


def test_base_stage_is_cached(small_cfg, small_data, small_base):
    from hhh_bench.stages.base import run_base

    again = run_base(small_cfg, small_data)
    assert again["cached"] and again["path"] == small_base["path"]


def test_cli_data_stage(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "hhh_bench", "stage=data", f"root={tmp_path}", "logger=none",
           *SMALL_WORLD]  # fmt: skip
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pairs helpful" in out.stdout and "train=120" in out.stdout
    manifests = list(tmp_path.glob("data/*/manifest.json"))
    assert len(manifests) == 1
    assert not list(tmp_path.glob("data/.*tmp*"))
