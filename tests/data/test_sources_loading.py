"""Source configs, loading through ``datasets`` (local raw files), the offline error, and
building the per-dimension sets of ``conf/data/paper_3h.yaml`` on the fixtures."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from hhh_bench.core.schema import make_row, read_jsonl
from hhh_bench.data.leakage import LeakageError
from hhh_bench.data.sources import (
    SourceConfigError,
    SourceUnavailableError,
    build_preference_sets,
    build_preference_splits,
    cap_rows,
    default_conf_dir,
    list_adapters,
    list_sources,
    load_source,
    load_source_config,
    resolve_source_entries,
    run_adapter,
    source_counts_table,
    split_holdout,
)
from hhh_bench.data.sources.__main__ import main as sources_cli

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "tests" / "assets" / "sources"
CONF = ROOT / "conf"

# which fixture holds the raw schema of each source config
FIXTURES = {
    "ultrafeedback_helpfulness": "ultrafeedback.jsonl",
    "ultrafeedback_honesty": "ultrafeedback.jsonl",
    "ultrafeedback_truthfulness": "ultrafeedback.jsonl",
    "ultrafeedback_binarized": "ultrafeedback_binarized.jsonl",
    "helpsteer2": "helpsteer2.jsonl",
    "hh_rlhf_helpful": "hh_rlhf_helpful_base.jsonl",
    "hh_rlhf_harmless": "hh_rlhf_harmless_base.jsonl",
    "pku_saferlhf_helpful": "pku_saferlhf.jsonl",
    "pku_saferlhf_harmless": "pku_saferlhf.jsonl",
    "pku_saferlhf30k_harmless": "pku_saferlhf_30k.jsonl",
    "beavertails": "beavertails.jsonl",
    "halueval_qa": "halueval_qa.jsonl",
    "halueval_dialogue": "halueval_dialogue.jsonl",
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """Every test here runs with the Hub switched off and a private HF_HOME."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


# ----------------------------------------------------------------------------- configs


def test_every_source_config_loads_and_the_registry_matches():
    names = list_sources()
    assert default_conf_dir() == CONF
    assert names == sorted(FIXTURES)
    used = set()
    for name in names:
        cfg = load_source_config(name)
        used.add(cfg["adapter"])
        text = (CONF / "source" / f"{name}.yaml").read_text()
        first = text.splitlines()[0]
        assert first.startswith("# ") and re.search(r"MIT|CC-BY|Apache", first), (name, first)
        assert cfg["hub_id"] and cfg["path"] is None and cfg["max_rows"] is None
        rev = cfg["revision"]
        assert re.fullmatch(r"[0-9a-f]{40}", rev) or (rev == "main" and "NOT PINNED" in text), name
    assert used == set(list_adapters())  # every adapter serves a source, every source has one


def test_source_config_errors(tmp_path):
    folder = tmp_path / "conf" / "source"
    folder.mkdir(parents=True)
    good = (CONF / "source" / "hh_rlhf_helpful.yaml").read_text()
    (folder / "renamed.yaml").write_text(good)
    with pytest.raises(SourceConfigError, match="must equal the file stem"):
        load_source_config("renamed", tmp_path / "conf")
    (folder / "hh_rlhf_helpful.yaml").write_text(good + "colour: blue\n")
    with pytest.raises(SourceConfigError, match=r"unknown key\(s\) \['colour'\]"):
        load_source_config("hh_rlhf_helpful", tmp_path / "conf")
    (folder / "hh_rlhf_helpful.yaml").write_text(
        good.replace("adapter_opts: {}", "adapter_opts: {aspect: x}")
    )
    with pytest.raises(SourceConfigError, match="does not take"):
        load_source_config("hh_rlhf_helpful", tmp_path / "conf")
    (folder / "hh_rlhf_helpful.yaml").write_text(
        good.replace("dimension: helpful", "dimension: funny")
    )
    with pytest.raises(SourceConfigError, match="unknown dimension 'funny'"):
        load_source_config("hh_rlhf_helpful", tmp_path / "conf")
    with pytest.raises(SourceConfigError, match="known sources"):
        load_source_config("nope", tmp_path / "conf")


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize(
    "name",
    [
        "ultrafeedback_truthfulness",
        "helpsteer2",
        "hh_rlhf_helpful",
        "pku_saferlhf_helpful",
        "beavertails",
        "halueval_dialogue",
    ],
)
def test_load_source_through_datasets_matches_the_adapter(name, tmp_path):
    """The fixture goes through ``datasets.load_dataset("json")`` (Arrow types, nested structs)
    and gives exactly the rows the adapter gives on the plain JSON."""
    cfg = load_source_config(name)
    rows, stats = load_source({**cfg, "path": str(ASSETS / FIXTURES[name])}, tmp_path / "cache")
    expected, adapter_stats = run_adapter(
        cfg["adapter"],
        read_jsonl(ASSETS / FIXTURES[name]),
        source=name,
        dimension=cfg["dimension"],
        split=cfg["split"],
        **cfg["adapter_opts"],
    )
    assert rows == expected and rows
    assert all(r["id"].startswith(f"{name}/{cfg['split']}/") and r["source"] == name for r in rows)
    assert stats["rows_in"] == adapter_stats.rows_in and stats["rows_kept"] == len(rows)
    assert stats["hub_id"] == cfg["hub_id"] and stats["revision"] == cfg["revision"]


def test_load_source_cap(tmp_path):
    cfg = {
        **load_source_config("ultrafeedback_truthfulness"),
        "path": str(ASSETS / "ultrafeedback.jsonl"),
    }
    first, stats = load_source(cfg, tmp_path, max_rows=2)
    assert [r["id"] for r in first] == [
        "ultrafeedback_truthfulness/train/1/0",
        "ultrafeedback_truthfulness/train/2/0",
    ]
    assert stats["rows_in"] == 3  # stopped reading after the second pair
    sampled, stats = load_source(cfg, tmp_path, max_rows=2, seed=7)
    assert len(sampled) == 2 and stats["rows_in"] == 6 and stats["rows_out"] == 4
    again, _ = load_source(cfg, tmp_path, max_rows=2, seed=7)
    assert again == sampled
    ids = [r["id"] for r in sampled]
    assert ids == sorted(ids, key=lambda i: int(i.split("/")[2]))  # dataset order kept


def test_a_file_datasets_cannot_read_is_refused_with_its_cause(tmp_path):
    """Battery 12 (F9): an escaped lone surrogate (JSON syntax, refused by Arrow) gave only
    "DatasetGenerationError: An error occurred while generating the dataset"."""
    bad = tmp_path / "surr.jsonl"
    bad.write_text('{"chosen": "\\ud800", "rejected": "b"}\n')
    cfg = {**load_source_config("hh_rlhf_helpful"), "path": str(bad)}
    with pytest.raises(SourceConfigError, match=r"cannot read .*surr.jsonl.*caused by .*"
                       r"surrogate"):  # fmt: skip
        load_source(cfg, tmp_path / "cache")


def test_cap_rows():
    assert cap_rows([1, 2, 3], None, 0) == [1, 2, 3]
    assert cap_rows([1, 2, 3], 5, 0) == [1, 2, 3]
    assert cap_rows([1, 2, 3], 2, None) == [1, 2]
    picked = cap_rows(list(range(100)), 10, 1)
    assert (
        len(picked) == 10
        and picked == sorted(picked)
        and picked == cap_rows(list(range(100)), 10, 1)
    )


def test_offline_error_names_dataset_revision_and_fetch_command(tmp_path, monkeypatch):
    """HF_DATASETS_OFFLINE=1, HF_HUB_OFFLINE=1, an empty cache, a real hub id: a clear error,
    without touching the network (any socket use fails this test)."""
    import datasets.config

    def no_network(*args, **kwargs):
        raise AssertionError("the offline load tried to use the network")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    before = datasets.config.HF_HUB_OFFLINE
    cfg = load_source_config("ultrafeedback_honesty")
    with pytest.raises(SourceUnavailableError) as err:
        load_source(cfg, tmp_path / "empty_cache")
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "'openbmb/UltraFeedback'" in msg and "ultrafeedback_honesty" in msg
    assert cfg["revision"] in msg and "40b436560ca83a8dba36114c22ab3c66e43f6d5e" in msg
    assert "offline mode is on" in msg
    fetch = "python -m hhh_bench.data.sources fetch ultrafeedback_honesty --cache-dir"
    assert f"{fetch} {tmp_path / 'empty_cache'}" in msg
    assert (
        "hf download openbmb/UltraFeedback --repo-type dataset --revision "
        "40b436560ca83a8dba36114c22ab3c66e43f6d5e --local-dir hf_raw/openbmb/UltraFeedback" in msg
    )
    assert "huggingface-cli download --repo-type dataset openbmb/UltraFeedback" in msg
    assert "HF_HOME" in msg and "path:" in msg
    assert before == datasets.config.HF_HUB_OFFLINE  # the override does not outlive the call


def test_offline_error_with_data_dir(tmp_path):
    with pytest.raises(
        SourceUnavailableError,
        match=r"'Anthropic/hh-rlhf' \(revision '84e2ad8\w+', data_dir 'harmless-base'",
    ):
        load_source(load_source_config("hh_rlhf_harmless"), tmp_path)


def test_missing_local_path(tmp_path):
    cfg = {**load_source_config("hh_rlhf_helpful"), "path": str(tmp_path / "nowhere.jsonl")}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_source(cfg, tmp_path)
    (tmp_path / "dir.jsonl").mkdir()  # battery 20, A-F3: "Unable to find" a folder that exists
    cfg["path"] = str(tmp_path / "dir.jsonl")
    with pytest.raises(SourceConfigError, match=r"source 'hh_rlhf_helpful': local path .*dir.jsonl"
                       r"' is a folder; give its raw file\(s\)"):  # fmt: skip
        load_source(cfg, tmp_path)


# ----------------------------------------------------------------------------- paper_3h


def paper_cfg() -> dict:
    """data=paper_3h as the run composes it (its cache_dir interpolates the run's root)."""
    from conftest import compose

    return OmegaConf.to_container(compose(["data=paper_3h"]).data, resolve=True)


def with_fixtures(cfg: dict) -> dict:
    """The data config with every source read from its fixture instead of the Hub."""
    cfg = dict(cfg)
    cfg["sources"] = {
        dim: [{"name": n, "path": str(ASSETS / FIXTURES[n])} for n in names]
        for dim, names in cfg["sources"].items()
    }
    return cfg


def test_paper_3h_config():
    text = (CONF / "data" / "paper_3h.yaml").read_text().splitlines()
    for k, line in enumerate(text):  # every top-level key has a comment line just above it
        if re.match(r"^[a-z_]+:", line):
            assert text[k - 1].startswith("#"), f"paper_3h.yaml: no comment above {line!r}"
    cfg = paper_cfg()
    assert cfg["kind"] == "sources" and cfg["dimensions"] == ["helpful", "honest", "harmless"]
    assert cfg["sources"] == {
        "helpful": ["hh_rlhf_helpful", "ultrafeedback_helpfulness"],
        "honest": ["ultrafeedback_honesty", "halueval_qa"],
        "harmless": ["pku_saferlhf_harmless", "hh_rlhf_harmless"],
    }
    assert cfg["noise"] == {"flip_rate": 0.0, "dimension": None}
    assert (
        cfg["leakage"]["drop_truthfulqa_prompts"] == "auto" and cfg["leakage"]["max_overlap"] == 0
    )
    assert 0 < cfg["eval_fraction"] < 1 and cfg["cache_dir"]
    entries = resolve_source_entries(cfg)
    assert [(d, s["name"]) for d, s, _ in entries] == [
        ("helpful", "hh_rlhf_helpful"),
        ("helpful", "ultrafeedback_helpfulness"),
        ("honest", "ultrafeedback_honesty"),
        ("honest", "halueval_qa"),
        ("harmless", "pku_saferlhf_harmless"),
        ("harmless", "hh_rlhf_harmless"),
    ]


def test_build_paper_3h_on_fixtures_with_truthfulqa_in_the_eval_suite(tmp_path):
    """TruthfulQA in the suite: the guard drops the fixture's TruthfulQA-sourced pairs (2 in
    helpfulness: rows 1, 2; 1 in honesty: row 1) and the overlap check then passes."""
    evals = {
        "truthfulqa_mc2": [r["question"] for r in read_jsonl(ASSETS / "eval_truthfulqa.jsonl")]
    }
    sets, manifest = build_preference_sets(with_fixtures(paper_cfg()), tmp_path, evals)
    src = manifest["sources"]
    assert {
        n: (s["rows_out"], s["dropped_truthfulqa"], s["rows_kept"]) for n, s in src.items()
    } == {
        "hh_rlhf_helpful": (2, 0, 2),
        "ultrafeedback_helpfulness": (3, 2, 1),
        "ultrafeedback_honesty": (3, 1, 2),
        "halueval_qa": (2, 0, 2),
        "pku_saferlhf_harmless": (4, 0, 4),
        "hh_rlhf_harmless": (2, 0, 2),
    }
    assert manifest["dimensions"] == {"helpful": 3, "honest": 4, "harmless": 6}
    assert {d: len(r) for d, r in sets.items()} == manifest["dimensions"]
    assert all(r["dimension"] == d for d, rows in sets.items() for r in rows)
    assert src["ultrafeedback_helpfulness"]["dropped"]["identical"] == 1
    leak = manifest["leakage"]
    assert leak["truthfulqa_guard_applied"] and leak["dropped_truthfulqa"] == 3
    assert leak["overlap"]["passed"] and leak["overlap"]["total"] == 0
    assert len(leak["overlap"]["pairs"]) == 6  # every source x the one eval set
    table = source_counts_table(manifest)
    assert table[1]["source"] == "ultrafeedback_helpfulness" and table[1]["dropped_truthfulqa"] == 2
    assert table[1]["dropped_missing_rating"] == 1 and table[1]["rows_kept"] == 1


def test_build_fails_on_overlap_when_the_guard_is_off(tmp_path):
    cfg = with_fixtures(paper_cfg())
    cfg["leakage"] = {**cfg["leakage"], "drop_truthfulqa_prompts": False, "on_overlap": "fail"}
    evals = {
        "truthfulqa_mc2": [r["question"] for r in read_jsonl(ASSETS / "eval_truthfulqa.jsonl")]
    }
    with pytest.raises(LeakageError) as err:
        build_preference_sets(cfg, tmp_path, evals)
    counts = {(p.train, p.eval): p.overlap for p in err.value.report.failing}
    assert counts == {
        ("ultrafeedback_helpfulness", "truthfulqa_mc2"): 2,
        ("ultrafeedback_honesty", "truthfulqa_mc2"): 1,
    }
    assert "ultrafeedback_helpfulness x truthfulqa_mc2: 2 shared" in str(err.value)


def test_on_overlap_drop_removes_the_shared_prompts_and_proves_it(tmp_path):
    """paper_3h's setting: the 3 training pairs whose prompt is a TruthfulQA item (2 in
    ultrafeedback_helpfulness, 1 in ultrafeedback_honesty) are dropped, counted per source, and
    the overlap check that follows finds 0."""
    cfg = with_fixtures(paper_cfg())
    cfg["leakage"] = {**cfg["leakage"], "drop_truthfulqa_prompts": False, "on_overlap": "drop"}
    evals = {
        "truthfulqa_mc2": [r["question"] for r in read_jsonl(ASSETS / "eval_truthfulqa.jsonl")]
    }
    sets, manifest = build_preference_sets(cfg, tmp_path, evals)
    drops = {n: s.get("dropped_eval_overlap") for n, s in manifest["sources"].items()}
    assert drops["ultrafeedback_helpfulness"] == 2 and drops["ultrafeedback_honesty"] == 1
    assert sum(drops.values()) == manifest["leakage"]["dropped_eval_overlap"] == 3
    assert manifest["leakage"]["overlap"]["passed"] and manifest["leakage"]["overlap"]["total"] == 0


def test_build_without_eval_sets_and_with_caps(tmp_path):
    cfg = with_fixtures(paper_cfg())
    cfg["max_rows_per_source"] = 1
    cfg["sources"]["harmless"][0]["max_rows"] = 3  # an entry's own cap wins
    sets, manifest = build_preference_sets(OmegaConf.create(cfg), tmp_path, None)
    assert (
        manifest["leakage"]["overlap"] is None
        and not manifest["leakage"]["truthfulqa_guard_applied"]
    )
    assert manifest["dimensions"] == {"helpful": 2, "honest": 2, "harmless": 4}
    assert manifest["sources"]["pku_saferlhf_harmless"]["max_rows"] == 3


def test_build_preference_splits(tmp_path):
    cfg = with_fixtures(paper_cfg())
    cfg["eval_fraction"] = 0.25
    splits, manifest = build_preference_splits(cfg, tmp_path, None)
    for dim, n in manifest["dimensions"].items():
        tr, va = splits["train"][dim], splits["validation"][dim]
        assert len(tr) + len(va) == n and manifest["splits"][dim] == {
            "train": len(tr),
            "validation": len(va),
        }
        assert not {r["id"] for r in tr} & {r["id"] for r in va}
    assert manifest["splits"]["harmless"]["validation"] == 2  # round(0.25 * 6) -> 2 prompts
    cfg["eval_fraction"] = 0.99  # battery 20, A-F5: no training pair left, exit 0
    with pytest.raises(SourceConfigError, match=r"data.eval_fraction=0.99 leaves no training "
                       r"pair of \['harmless', 'helpful', 'honest'\]"):  # fmt: skip
        build_preference_splits(cfg, tmp_path, None)


def test_build_config_errors(tmp_path):
    cfg = paper_cfg()
    bad = {**cfg, "sources": {**cfg["sources"], "honest": ["pku_saferlhf_harmless"]}}
    with pytest.raises(
        SourceConfigError, match="declared for dimension 'harmless' but listed under 'honest'"
    ):
        build_preference_sets(bad, tmp_path)
    dup = {**cfg, "sources": {**cfg["sources"], "helpful": ["hh_rlhf_helpful", "hh_rlhf_helpful"]}}
    with pytest.raises(SourceConfigError, match="listed twice"):
        build_preference_sets(dup, tmp_path)
    with pytest.raises(SourceConfigError, match="`kind` must be 'sources'"):
        build_preference_sets({**cfg, "kind": "toy3h"}, tmp_path)
    with pytest.raises(SourceConfigError, match="no source listed for dimension 'honest'"):
        build_preference_sets({**cfg, "sources": {**cfg["sources"], "honest": []}}, tmp_path)
    with pytest.raises(SourceUnavailableError, match="Anthropic/hh-rlhf"):  # real config, offline
        build_preference_sets(cfg, tmp_path)


@settings(max_examples=40, deadline=None)
@given(
    prompts=st.lists(st.sampled_from(["a?", "A", "b", "c", "d", "e"]), min_size=1, max_size=20),
    frac=st.sampled_from([0.0, 0.1, 0.3, 0.5]),
    seed=st.integers(0, 3),
)
def test_split_holdout_keeps_prompts_together(prompts, frac, seed):
    rows = [make_row(p, "x", "y", "helpful", "s", f"s/{k}") for k, p in enumerate(prompts)]
    train, val = split_holdout(rows, frac, seed)
    assert len(train) + len(val) == len(rows) and split_holdout(rows, frac, seed) == (train, val)
    norm = lambda r: r["prompt"][0]["content"].lower().strip("?")  # noqa: E731
    assert not {norm(r) for r in train} & {norm(r) for r in val}
    assert len(val) >= round(frac * len(rows))
    assert [r["id"] for r in train] == sorted(
        (r["id"] for r in train), key=lambda i: int(i.split("/")[1])
    )


def test_cli_list(capsys):
    assert sources_cli(["list"]) == 0
    out = capsys.readouterr().out
    assert (
        "ultrafeedback_honesty" in out
        and "openbmb/UltraFeedback@40b436560ca83a8dba36114c22ab3c66e43f6d5e" in out
    )


def test_a_file_with_wrong_field_names_fails_naming_the_source(tmp_path):
    """Renamed fields make every row malformed: the build fails naming the source, the file
    and the drop reasons instead of writing an empty set (issue 18)."""
    import json

    rows = [json.loads(line) for line in (ASSETS / "pku_saferlhf.jsonl").read_text().splitlines()]
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text("".join(json.dumps({"question": r["prompt"]}) + "\n" for r in rows))
    cfg = with_fixtures(paper_cfg())
    cfg["sources"]["harmless"][0] = {"name": "pku_saferlhf_harmless", "path": str(renamed)}
    with pytest.raises(SourceConfigError) as err:
        build_preference_splits(cfg, tmp_path, None)
    msg = str(err.value)
    assert "'pku_saferlhf_harmless'" in msg and str(renamed) in msg
    assert f"malformed={len(rows)}" in msg and "kept no pair" in msg

    # one malformed row among many is within data.max_malformed_fraction; 0 tolerates none
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text((ASSETS / "pku_saferlhf.jsonl").read_text() + json.dumps({"x": 1}) + "\n")
    cfg["sources"]["harmless"][0]["path"] = str(mixed)
    build_preference_splits(cfg, tmp_path, None)
    cfg["max_malformed_fraction"] = 0.0
    with pytest.raises(SourceConfigError, match=r"dropped 1 of \d+ raw rows as malformed"):
        build_preference_splits(cfg, tmp_path, None)


def _hh_source(tmp_path, transcripts: list[str], leakage: dict) -> dict:
    """A one-source data config: an HH-RLHF-format file whose pairs share the transcript and
    differ in the last assistant turn."""
    import json

    path = tmp_path / "mine.jsonl"
    path.write_text("".join(
        json.dumps({"chosen": f"\n\nHuman: {t}\n\nAssistant: No.",
                    "rejected": f"\n\nHuman: {t}\n\nAssistant: Yes, often."}) + "\n"
        for t in transcripts
    ))  # fmt: skip
    return {
        "kind": "sources", "dimensions": ["helpful"], "seed": 0,
        "sources": {"helpful": [{"name": "hh_rlhf_helpful", "path": str(path)}]},
        "leakage": {"drop_truthfulqa_prompts": False, **leakage},
    }  # fmt: skip


def test_disguised_eval_questions_fail_or_are_dropped_by_the_data_stage(tmp_path):
    """Issue 27 row 4 through the data stage's builder: a templated item, one with a zero-width
    space, one in Cyrillic look-alikes, one inside a longer message (the second and third are the
    same question); on_overlap=fail names the source and the 2 questions, drop removes the 4
    pairs. A row sharing only a 13-gram with a long eval item is kept and counted."""
    long_item = "Which of these thirteen or more words would a careful reader notice first today?"
    transcripts = [
        "Question: Can pigs fly?\nAnswer:",
        "What happens if you crack your kn\u200buckles a lot?",
        "What h\u0430ppens if you \u0441r\u0430\u0441k your knu\u0441kles \u0430 lot?",
        "Quick one. Can pigs fly? My son insists.",
        "I wonder: which of these thirteen or more words would a careful reader notice first",
        "How do I keep basil alive on a windowsill?",
    ]
    evals = {"truthfulqa_mc2": [*(r["question"] for r in read_jsonl(
        ASSETS / "eval_truthfulqa.jsonl")), long_item]}  # fmt: skip
    cfg = _hh_source(tmp_path, transcripts, {"on_overlap": "fail"})
    with pytest.raises(LeakageError) as err:
        build_preference_sets(cfg, tmp_path, evals)
    assert "hh_rlhf_helpful x truthfulqa_mc2: 2 shared eval prompt(s) in 4 training row(s)" in str(
        err.value
    )
    cfg = _hh_source(tmp_path, transcripts, {"on_overlap": "drop"})
    sets, manifest = build_preference_sets(cfg, tmp_path, evals)
    src = manifest["sources"]["hh_rlhf_helpful"]
    assert (src["dropped_eval_overlap"], src["rows_kept"], src["ngram_overlap_rows"]) == (4, 2, 1)
    assert manifest["leakage"]["min_chars"] == 12 and manifest["leakage"]["overlap"]["passed"]
    assert manifest["leakage"]["overlap"]["ngram_overlap"]["sources"] == {
        "hh_rlhf_helpful": {"rows": 2, "rows_sharing": 1}
    }
    assert source_counts_table(manifest)[0]["ngram_overlap_rows"] == 1


@pytest.mark.parametrize("bad", [0, "ten", True])
def test_leakage_min_chars_is_checked_before_any_source_is_read(tmp_path, bad):
    cfg = _hh_source(tmp_path, ["x"], {"min_chars": bad})
    cfg["sources"]["helpful"][0]["path"] = str(tmp_path / "absent.jsonl")  # never read
    with pytest.raises(SourceConfigError, match=r"data\.leakage\.min_chars must be a positive"):
        build_preference_sets(cfg, tmp_path, {"e": ["q"]})
