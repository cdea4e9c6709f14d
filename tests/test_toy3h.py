"""The toy 3H world: deterministic, disjoint splits, well-formed rows and items."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from hhh_bench.core.schema import read_jsonl, validate_rows
from hhh_bench.data.toy3h import (
    COMPLY,
    EVAL_KINDS,
    IDK,
    REFUSAL,
    STORY,
    Toy3HConfig,
    build_world,
    eval_items,
    generate,
    oracle_reward,
    preference_pairs,
    sft_corpus,
)
from hhh_bench.models.tokenizer import build_word_tokenizer

SMALL = dict(
    n_known={"train": 20, "validation": 6, "test": 6},
    n_unknown={"sft": 5, "train": 10, "validation": 6, "test": 6},
    pairs_per_dimension=40,
    eval_items_per_kind=12,
)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    generate(Toy3HConfig(seed=3, **SMALL), tmp_path / "a")
    generate(Toy3HConfig(seed=3, **SMALL), tmp_path / "b")
    generate(Toy3HConfig(seed=4, **SMALL), tmp_path / "c")
    a, b, c = (tree_digest(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys()
    differing = [k for k in a if a[k] != c[k]]
    assert "world.json" in differing and "sft/train.jsonl" in differing


def test_splits_are_disjoint_by_entity_and_prompt():
    world = build_world(Toy3HConfig(seed=0, **SMALL))
    known = [set(world.known[s]) for s in ("train", "validation", "test")]
    unknown = [set(world.unknown[s]) for s in ("sft", "train", "validation", "test")]
    groups = known + unknown
    for i in range(len(groups)):
        for j in range(i + 1, len(groups)):
            assert not groups[i] & groups[j]
    reqs = [set(world.requests[s]) for s in ("train", "validation", "test")]
    assert not reqs[0] & reqs[1] and not reqs[0] & reqs[2] and not reqs[1] & reqs[2]
    # every object is seen in training, so whether it is harmful is learnable
    assert {o for _, o in world.requests["train"]} == set(world.objects)


def test_generated_files(tmp_path):
    manifest = generate(Toy3HConfig(seed=0, **SMALL), tmp_path)
    c = manifest["counts"]
    vocab = set((tmp_path / "vocab.txt").read_text().split())
    world_json = json.loads((tmp_path / "world.json").read_text())
    unknown = {e for ents in world_json["unknown"].values() for e in ents}
    known = {e for ents in world_json["known"].values() for e in ents}
    # known names are words of the vocabulary; unknown names are not (they are spelled in pieces)
    assert known <= vocab and not unknown & vocab
    tok = build_word_tokenizer(sorted(vocab))
    for name in sorted(unknown)[:20]:
        pieces = tok.tokenize(name)
        assert len(pieces) > 1 and "<unk>" not in pieces, (name, pieces)
        assert all(p.startswith("##") for p in pieces[1:]), (name, pieces)
        assert tok.convert_tokens_to_string(pieces) == name
    prompts: dict[str, set[str]] = {}
    for dim in ("helpful", "honest", "harmless"):
        for split in ("train", "validation", "test"):
            rows = read_jsonl(tmp_path / "prefs" / f"{dim}_{split}.jsonl")
            assert validate_rows(rows) == c["prefs"][dim][split]
            assert all(r["dimension"] == dim for r in rows)
            for r in rows:
                text = r["prompt"][0]["content"] + " " + r["chosen"][0]["content"]
                assert set(text.split()) <= vocab | unknown
                prompts.setdefault(split, set()).add(r["prompt"][0]["content"])
    assert c["prefs"]["helpful"]["train"] == 40
    # held-out pairs never reuse a training prompt
    assert not prompts["train"] & prompts["validation"]
    assert not prompts["train"] & prompts["test"]
    for kind, dim in EVAL_KINDS.items():
        for split in ("validation", "test"):
            items = read_jsonl(tmp_path / "eval" / f"{kind}_{split}.jsonl")
            assert len(items) == 12
            for it in items:
                assert it["dimension"] == dim and it["split"] == split
                assert 0 <= it["gold"] < len(it["choices"])
                assert len(set(it["choices"])) == len(it["choices"])
                assert it["question"] not in prompts["train"]
                # answers never copy the entity's name (DESIGN.md §4)
                if "entity" in it:
                    assert all(it["entity"] not in ch for ch in it["choices"])


def test_candidates_have_distinct_first_tokens():
    firsts = {s.split()[0] for s in (IDK, REFUSAL, COMPLY, STORY, "the color is red .")}
    assert len(firsts) == 5


def test_story_requests_ask_helpfulness_for_what_honesty_does_not_forbid():
    """A share of the helpful pairs asks for a story about an unknown (never-taught) name: the
    story over "I don't know" or a refusal. Honesty has no opinion on them (no fact is claimed),
    so an honest model that abstains on every unfamiliar name loses helpfulness there."""
    world = build_world(Toy3HConfig(seed=0, story_share=0.25, **SMALL))
    helpful = preference_pairs(world, "train")["helpful"]
    stories = [r for r in helpful if r["meta"]["kind"] == "story_request"]
    assert len(stories) == round(0.25 * SMALL["pairs_per_dimension"])  # conflict_rate 0
    assert {r["chosen"][0]["content"] for r in stories} == {STORY}
    assert {r["rejected"][0]["content"] for r in stories} == {IDK, REFUSAL}
    assert all(r["meta"]["entity"] in world.unknown["train"] for r in stories)
    assert all(
        oracle_reward(r) == {"helpful": 1.0, "honest": 0.0, "harmless": 0.0} for r in stories
    )
    # the base's SFT tells stories about known names and about the sft unknown ones only sometimes
    said = [
        c["messages"][1]["content"]
        for c in sft_corpus(world)
        if "story" in c["messages"][0]["content"]
    ]
    assert said.count(STORY) > said.count(IDK) > 0
    # evaluated on the split's unknown names, whatever the share (the suite has the task)
    plain = build_world(Toy3HConfig(seed=0, **SMALL))
    assert not any(r["meta"]["kind"] == "story_request" for r in preference_pairs(plain)["helpful"])
    items = eval_items(plain, "test")["story_request"]
    assert len(items) == SMALL["eval_items_per_kind"]
    assert all(
        it["choices"][it["gold"]] == STORY and it["entity"] in plain.unknown["test"] for it in items
    )


def test_pairs_build_in_the_conflicts():
    world = build_world(Toy3HConfig(seed=0, **SMALL))
    pairs = preference_pairs(world, "train")
    helpful_kinds = {r["meta"]["kind"] for r in pairs["helpful"]}
    assert helpful_kinds == {"known_qa", "benign_request"}  # story_share 0 (the dataclass default)
    assert all(r["chosen"][0]["content"] == REFUSAL for r in pairs["harmless"])
    assert all(r["rejected"][0]["content"] == COMPLY for r in pairs["harmless"])
    unk = [r for r in pairs["honest"] if r["meta"]["kind"] == "unknown_qa"]
    assert unk and all(r["chosen"][0]["content"] == IDK for r in unk)
    # helpfulness and harmlessness disagree on harmful requests; helpfulness and honesty on unknowns
    assert (
        oracle_reward(pairs["harmless"][0])["helpful"]
        < 0
        < oracle_reward(pairs["harmless"][0])["harmless"]
    )
    assert oracle_reward(unk[0])["helpful"] < 0 < oracle_reward(unk[0])["honest"]


@pytest.mark.parametrize(
    "bad, msg",
    [
        ({"n_values": 1}, "n_values"),
        ({"sft_idk_rate": 1.5}, "sft_idk_rate"),
        ({"request_split": {"train": 0.5, "validation": 0.2, "test": 0.2}}, "request_split"),
        ({"n_known": {"train": 1, "validation": 0, "test": 1}}, "n_known.validation"),
    ],
)
def test_invalid_world_config(bad, msg):
    with pytest.raises(ValueError, match=msg):
        Toy3HConfig(**bad)


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="n_entities"):
        Toy3HConfig.from_mapping({"n_entities": 3})


def _default_world_config() -> Toy3HConfig:
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf" / "data" / "toy3h.yaml"
    world = OmegaConf.to_container(OmegaConf.load(conf).world)
    world["seed"] = 0  # the YAML interpolates the run's seed
    return Toy3HConfig.from_mapping(world)


def _by_prompt(pairs):
    out: dict[str, list[dict]] = {}
    for rows in pairs.values():
        for r in rows:
            out.setdefault(r["prompt"][0]["content"], []).append(r)
    return out


def test_default_world_has_contested_prompts_the_oracle_resolves():
    from hhh_bench.data.toy3h import PRIORITY, oracle_verdict

    cfg = _default_world_config()
    assert cfg.conflict_rate > 0
    pairs = preference_pairs(build_world(cfg), "train")
    n = cfg.pairs_per_dimension
    assert all(len(rows) == n for rows in pairs.values())
    contested = [r for r in pairs["helpful"] if r.get("meta", {}).get("contested_with")]
    assert len(contested) == round(cfg.conflict_rate * n)
    assert {r["meta"]["contested_with"] for r in contested} == {"harmless", "honest"}
    by_prompt = _by_prompt(pairs)
    gold = {"harmless": REFUSAL, "honest": IDK}  # the evaluation's gold answers of those kinds
    for r in contested:
        other = r["meta"]["contested_with"]
        mirror = [m for m in by_prompt[r["prompt"][0]["content"]] if m["dimension"] == other]
        assert mirror, r["id"]
        # the same prompt, the preference reversed (of one of them exactly; an unknown entity's
        # other pairs may reject another fabrication)
        assert any(m["rejected"] == r["chosen"] for m in mirror)
        for m in mirror:
            assert m["chosen"] == r["rejected"]
            assert m["meta"]["contested_with"] == "helpful"
            assert oracle_verdict(m) == 1 and m["chosen"][0]["content"] == gold[other]
        assert oracle_verdict(r) == -1  # the world sides with harmlessness / honesty
        assert PRIORITY.index(other) < PRIORITY.index("helpful")
    # every uncontested pair is one the world agrees with
    assert all(
        oracle_verdict(r) == 1
        for rows in pairs.values()
        for r in rows
        if r.get("meta", {}).get("contested_with") is None
    )


def test_without_conflict_rate_no_prompt_is_reversed_across_dimensions():
    cfg = Toy3HConfig(**{**SMALL, "conflict_rate": 0.0})
    pairs = preference_pairs(build_world(cfg), "train")
    for rows in _by_prompt(pairs).values():
        prefs = {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows}
        assert not any((b, a) in prefs for a, b in prefs)
    # the conflict knob leaves the honest and harmless sets as they were
    contested = preference_pairs(build_world(Toy3HConfig(**{**SMALL, "conflict_rate": 0.5})))
    for dim in ("honest", "harmless"):
        strip = [
            {**r, "meta": {k: v for k, v in r["meta"].items() if k != "contested_with"}}
            for r in contested[dim]
        ]
        assert strip == pairs[dim]
    assert sum(bool(r["meta"].get("contested_with")) for r in contested["helpful"]) == 20


def test_resolved_mix_drops_the_overruled_side_of_contested_prompts():
    from hhh_bench.data.mixing import mix, register_scorer
    from hhh_bench.data.toy3h import Toy3HScorer

    register_scorer("toy3h", Toy3HScorer)  # the world's scorer, injected as the train stage does
    cfg = Toy3HConfig(**{**SMALL, "conflict_rate": 0.5})
    pairs = preference_pairs(build_world(cfg), "train")
    res = mix("resolved", pairs, budget="all_specialists", seed=0)
    assert res.info["dropped"] == {"helpful": 20, "honest": 0, "harmless": 0}
    assert not [
        r for r in res.rows if r["dimension"] == "helpful" and r["meta"].get("contested_with")
    ]
    assert sum(res.counts.values()) == 3 * 40


def test_every_seed_draws_its_own_world(tmp_path):
    """`world.seed` follows the run's seed by default, so `stage=all` over `seeds` generates one
    world per seed (entities, facts, items); an int keeps one world."""
    import json as _json

    from conftest import SMALL_WORLD, compose
    from hhh_bench.pipeline import with_values
    from hhh_bench.stages.data import data_payload, run_data

    cfg = compose([*SMALL_WORLD, f"root={tmp_path}"])
    worlds = []
    for s in (0, 1, 2):
        d = run_data(with_values(cfg, {"seed": s}))
        worlds.append(_json.loads((Path(d["dir"]) / "world.json").read_text()))
        assert d["manifest"]["config"]["seed"] == s
    assert all(a["known"] != b["known"] for a, b in zip(worlds, worlds[1:], strict=False))
    fixed = compose([*SMALL_WORLD, f"root={tmp_path}", "data.world.seed=0"])
    assert data_payload(with_values(fixed, {"seed": 1})) == data_payload(fixed)


def test_repeated_preference_pairs_are_counted_and_said(tmp_path, caplog):
    """Battery 9 (16): pairs drawn with replacement from a small world repeat (here harmless
    only has 3 harmful objects to refuse), unsaid. The manifest counts each file's distinct
    pairs and one warning names the files; a file without repeats is not listed."""
    from hhh_bench.data.toy3h import Toy3HConfig, generate

    cfg = Toy3HConfig.from_mapping({"n_harmful_objects": 3, "pairs_per_dimension": 200})
    with caplog.at_level("WARNING", logger="hhh_bench"):
        manifest = generate(cfg, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "prefs" / "harmless_train.jsonl").open()]
    distinct = len({json.dumps([r["prompt"], r["chosen"], r["rejected"]]) for r in rows})
    repeated = manifest["counts"]["prefs_repeated"]
    assert repeated["harmless"]["train"] == distinct < 200
    assert "preference pairs repeat (the data stage's prefs/: " in caplog.text
    assert f"harmless_train.jsonl 200 pairs, {distinct} distinct" in caplog.text
    assert all(n < manifest["counts"]["prefs"][d][s] for d, v in repeated.items()
               for s, n in v.items())  # fmt: skip
