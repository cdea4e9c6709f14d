"""The rehearsal's source fixtures (issue 12): every conf/source config reads a local raw-schema
file through its adapter; the six of data=paper_3h give each dimension enough pairs for a few
DPO steps and every mixing strategy of conf/mix; none shares a prompt with an evaluation set."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from conftest import CONF, REPO, compose
from hhh_bench.data.sources import (
    SourceConfigError,
    build_preference_splits,
    list_sources,
    load_source,
    load_source_config,
)
from hhh_bench.data.sources.local_paths import with_source_paths

ASSETS = REPO / "tests" / "assets"


def _paths() -> dict[str, str]:
    """rehearsal.source_paths of conf/rehearsal/small.yaml, resolved from the repository root."""
    node = OmegaConf.load(CONF / "rehearsal" / "small.yaml")
    node.rehearsal.fixtures = str(ASSETS)
    node.root = "unused"
    return OmegaConf.to_container(node.rehearsal.source_paths, resolve=True)


def _paper_3h() -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / "data" / "paper_3h.yaml"), resolve=False)


def test_every_source_config_has_a_fixture():
    assert sorted(_paths()) == list_sources()


@pytest.mark.parametrize("name", list_sources())
def test_every_source_loads_its_fixture_through_its_adapter(name, tmp_path):
    cfg = {**load_source_config(name), "path": _paths()[name]}
    rows, stats = load_source(cfg, tmp_path / "cache")
    assert stats["rows_in"] > 0 and rows, name
    assert stats["rows_in"] == stats["rows_used"] + sum(stats["dropped"].values())
    assert all(r["source"] == name and r["dimension"] == cfg["dimension"] for r in rows)


def test_paper_3h_dimensions_have_pairs_for_training_and_mixing(tmp_path):
    from hhh_bench.data.mixing import list_strategies, mix

    data = with_source_paths(_paper_3h(), _paths())
    data["cache_dir"] = str(tmp_path / "cache")
    # the sources of data=paper_3h, each on an enlarged fixture of >= 20 usable rows
    for entries in data["sources"].values():
        for entry in entries:
            assert "/rehearsal/sources/" in entry["path"], entry
    splits, manifest = build_preference_splits(data)
    for dim in ("helpful", "honest", "harmless"):
        # paper_3h's eval_fraction 0.05 of 44 pairs holds out whole prompt groups (>= 1 pair);
        # 40 training pairs = more than one optimizer step of the paper's 4 x 8 pairs
        assert len(splits["train"][dim]) >= 40, manifest["splits"]
        assert len(splits["validation"][dim]) >= 1, manifest["splits"]
    for entry in manifest["sources"].values():
        assert entry["rows_kept"] >= 20, entry
    # PKU's help/harm conflicts are there for conflict_aware and the harmless view
    conflicts = [
        r for r in splits["train"]["harmless"] if r.get("meta", {}).get("help_harm_conflict")
    ]
    assert len(conflicts) >= 3
    sets = splits["train"]
    sizes = {d: len(rows) for d, rows in sets.items()}
    for name in list_strategies():
        mcfg = OmegaConf.to_container(OmegaConf.load(CONF / "mix" / f"{name}.yaml"))
        params = {k: v for k, v in mcfg.items() if k not in ("name", "budget")}
        if "scorer" in params:  # the toy world's exact reward does not apply to real pairs
            params["scorer"] = lambda rows: [{"helpful": 1.0, "honest": -1.0, "harmless": 0.5}
                                             for _ in rows]  # fmt: skip
        result = mix(name, sets, budget=mcfg["budget"], seed=0, **params)
        # budget-matched by default: as many pairs as the specialists together
        assert mcfg["budget"] == "all_specialists", name
        assert sum(result.counts.values()) == sum(sizes.values()), name
        assert len(result.rows) == sum(result.counts.values()), name


def test_fixtures_share_no_prompt_with_the_rehearsals_evaluation_sets(tmp_path):
    """So a leakage guard that compares training prompts with the evaluation items passes on
    the rehearsal; the TruthfulQA-sourced UltraFeedback row is there for the TruthfulQA guard."""
    from hhh_bench.data.leakage import normalize_prompt

    eval_prompts = set()
    for path in (ASSETS / "eval").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            for key in ("prompt", "question"):
                if isinstance(row.get(key), str):
                    eval_prompts.add(normalize_prompt(row[key]))
    for path in (ASSETS / "rehearsal" / "eval").rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            for key in ("prompt", "question", "text"):
                if isinstance(row.get(key), str):
                    eval_prompts.add(normalize_prompt(row[key]))
    assert len(eval_prompts) > 30
    data = with_source_paths(_paper_3h(), _paths())
    seen = 0
    for entries in data["sources"].values():
        for entry in entries:
            cfg = {**load_source_config(entry["name"]), "path": entry["path"]}
            rows, _ = load_source(cfg, tmp_path / "cache")
            for r in rows:
                seen += 1
                texts = [m["content"] for m in r["prompt"]] + [r.get("meta", {}).get("question")]
                for text in texts:
                    assert not text or normalize_prompt(text) not in eval_prompts, (r["id"], text)
    assert seen >= 120
    sources = [json.loads(x) for x in (ASSETS / "rehearsal/sources/ultrafeedback.jsonl").open()]
    assert sum(r["source"] == "truthful_qa" for r in sources) == 1


def test_with_source_paths_errors_and_passthrough(tmp_path):
    data = _paper_3h()
    paths = _paths()
    with pytest.raises(SourceConfigError, match="rehearsal.source_paths.halueval_qa"):
        with_source_paths(data, {k: v for k, v in paths.items() if k != "halueval_qa"})
    with pytest.raises(SourceConfigError, match="does not exist"):
        with_source_paths(data, {**paths, "halueval_qa": str(tmp_path / "missing.jsonl")})
    # an entry that is local already keeps its file; other keys of an entry are kept
    data["sources"]["honest"] = [{"name": "halueval_qa", "path": "mine.jsonl", "max_rows": 3}]
    out = with_source_paths(data, paths)
    assert out["sources"]["honest"] == [
        {"name": "halueval_qa", "path": "mine.jsonl", "max_rows": 3}
    ]
    toy = compose(["data=toy3h"]).data
    assert with_source_paths(OmegaConf.to_container(toy), paths) == OmegaConf.to_container(toy)
