"""Mixing strategies: exact hand-computed counts per dimension for given shares and budget."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from train_fixtures import *  # noqa: F403

from hhh_bench.core.schema import make_row
from hhh_bench.data.mixing import allocate, get_strategy, list_strategies, mix, resolve_budget
from hhh_bench.data.mixing.registry import build_params
from hhh_bench.data.mixing.scorers import RewardModelScorer, register_scorer
from hhh_bench.data.toy3h import Toy3HScorer

register_scorer("toy3h", Toy3HScorer)  # the world's scorer, injected as the train stage does

CONF_MIX = Path(__file__).resolve().parents[2] / "conf" / "mix"


def synthetic(sizes: dict[str, int]) -> dict[str, list[dict]]:
    """Sets of the given sizes; each row's meta carries a score for a hand-checkable scorer."""
    return {
        d: [
            make_row(f"{d} q{i} ?", f"c{i}", f"r{i}", d, "t", f"{d}/{i}", {"score": float(i % 7)})
            for i in range(n)
        ]
        for d, n in sizes.items()
    }


SETS = synthetic({"helpful": 30, "honest": 10, "harmless": 10})  # per_specialist 17, all 50


def counts_of(rows):
    return dict(Counter(r["dimension"] for r in rows))


def test_registry_matches_conf_mix_one_to_one():
    assert list_strategies() == sorted(p.stem for p in CONF_MIX.glob("*.yaml"))
    for path in CONF_MIX.glob("*.yaml"):
        cfg = OmegaConf.to_container(OmegaConf.load(path))
        assert cfg["name"] == path.stem
        assert cfg["budget"] in ("per_specialist", "all_specialists")
        params = {k: v for k, v in cfg.items() if k not in ("name", "budget")}
        build_params(get_strategy(cfg["name"]), params)  # every key is a declared parameter


def test_budgets():
    sizes = {"helpful": 30, "honest": 10, "harmless": 10}
    assert resolve_budget("per_specialist", sizes) == 17  # mean 16.67, rounded half up
    assert resolve_budget("all_specialists", sizes) == 50
    assert resolve_budget(12, sizes) == 12
    assert resolve_budget("per_specialist", {"a": 3, "b": 4}) == 4  # 3.5 -> 4
    for bad in ("per_dimension", 0, True):
        with pytest.raises(ValueError, match="budget"):
            resolve_budget(bad, sizes)


def test_a_budget_above_the_distinct_pairs_is_said(capsys):
    """Battery 12 (F13): mix.budget=1000000 over 360 pairs repeated each ~2,800 times without a
    word. Said on the console with the counts; a budget within them says nothing."""
    sets = synthetic({"helpful": 6, "honest": 4, "harmless": 2})
    mix("uniform", sets, budget=120, seed=0)
    out = capsys.readouterr().out
    assert (
        "warning: mix.budget=120 pairs is more than the 12 distinct pairs of the mixed sets "
        "(helpful 6, honest 4, harmless 2): mixing strategy 'uniform' repeats pairs, each about "
        "10.0 times" in out
    )
    mix("uniform", sets, budget=12, seed=0)
    assert "warning" not in capsys.readouterr().out


def test_largest_remainder_example_from_the_docstring():
    assert allocate({"a": 0.5, "b": 0.25, "c": 0.25}, 10) == {"a": 5, "b": 3, "c": 2}


@settings(max_examples=60, deadline=None)
@given(
    w=st.lists(st.floats(0.01, 10), min_size=1, max_size=5),
    total=st.integers(0, 500),
)
def test_allocate_sums_exactly_and_stays_within_one_of_the_quota(w, total):
    shares = {f"d{i}": x / sum(w) for i, x in enumerate(w)}
    counts = allocate(shares, total)
    assert sum(counts.values()) == total
    for d, s in shares.items():
        assert abs(counts[d] - s * total) < 1.0 + 1e-9


# (strategy, params, budget, expected counts (helpful, honest, harmless), resampled)
CASES = [
    # uniform: 17 / 3 = 5.67 each -> floors 5,5,5, two left to the first two ties
    ("uniform", {}, "per_specialist", (6, 6, 5), (0, 0, 0)),
    ("uniform", {}, "all_specialists", (17, 17, 16), (0, 7, 6)),
    ("uniform", {}, 7, (3, 2, 2), (0, 0, 0)),
    # proportional: shares .6 .2 .2 of 17 -> 10.2, 3.4, 3.4 -> 10, 3, 3 + 1 to honest
    ("proportional", {}, "per_specialist", (10, 4, 3), (0, 0, 0)),
    ("proportional", {}, "all_specialists", (30, 10, 10), (0, 0, 0)),
    # fixed_ratio .5 .25 .25 of 17 -> 8.5, 4.25, 4.25 -> 8, 4, 4 + 1 to helpful;
    # of 50 -> 25, 12.5, 12.5 -> 25, 12, 12 + 1 to honest (first tie); 13 and 12 from 10 rows
    ("fixed_ratio", {"shares": {"helpful": 0.5, "honest": 0.25, "harmless": 0.25}}, "per_specialist", (9, 4, 4), (0, 0, 0)),
    ("fixed_ratio", {"shares": {"helpful": 0.5, "honest": 0.25, "harmless": 0.25}}, "all_specialists", (25, 13, 12), (0, 3, 2)),
    ("fixed_ratio", {"shares": {"helpful": 0.0, "honest": 0.6, "harmless": 0.4}}, 10, (0, 6, 4), (0, 0, 0)),
    ("sequential", {"order": ["harmless", "helpful", "honest"]}, "per_specialist", (6, 6, 5), (0, 0, 0)),
    ("sequential", {"shares": {"helpful": 0.5, "honest": 0.25, "harmless": 0.25}}, "per_specialist", (9, 4, 4), (0, 0, 0)),
    ("reward_select", {"scorer": "meta"}, "per_specialist", (6, 6, 5), (0, 0, 0)),
    ("reward_select", {"scorer": "meta", "shares": {"helpful": 0.5, "honest": 0.25, "harmless": 0.25}}, "all_specialists", (25, 13, 12), (0, 3, 2)),
    ("conflict_aware", {"scorer": "meta"}, "per_specialist", (6, 6, 5), (0, 0, 0)),
    # resolved: margins score - 3 on every dimension, so harmless (first in priority) decides:
    # rows with i % 7 < 3 go (helpful keeps 16 of 30, honest and harmless 4 of 10 each);
    # (6, 6, 5) drawn from (16, 4, 4) kept rows
    ("resolved", {"scorer": "meta"}, "per_specialist", (6, 6, 5), (0, 2, 1)),
]  # fmt: skip


def meta_scorer(rows):
    """Hand-checkable scorer: every dimension's margin is the row's meta score minus 3, so rows
    with score < 3 conflict (another dimension would reverse them)."""
    return [{d: r["meta"]["score"] - 3.0 for d in ("helpful", "honest", "harmless")} for r in rows]


@pytest.mark.parametrize(("strategy", "params", "budget", "expected", "resampled"), CASES)
def test_hand_computed_counts(strategy, params, budget, expected, resampled):
    params = {**params, "scorer": meta_scorer} if params.get("scorer") == "meta" else params
    res = mix(strategy, SETS, budget=budget, seed=0, **params)
    dims = ("helpful", "honest", "harmless")
    assert tuple(res.counts[d] for d in dims) == expected
    assert counts_of(res.rows) == {d: n for d, n in zip(dims, expected, strict=True) if n}
    assert tuple(res.info["resampled"][d] for d in dims) == resampled
    assert res.info["budget"] == sum(expected)
    assert res.info["budget_mode"] == (budget if isinstance(budget, str) else "explicit")
    for d in dims:  # sampling without replacement when the source has enough rows
        ids = [r["id"] for r in res.rows if r["dimension"] == d]
        if res.info["resampled"][d] == 0:
            assert len(set(ids)) == len(ids)
        else:
            # every row once (of those kept: `resolved` drops the overruled), then repeats
            kept = [r for r in SETS[d] if strategy != "resolved" or r["meta"]["score"] >= 3]
            assert set(ids) == {r["id"] for r in kept}


def test_same_seed_same_mixture_other_seed_other_rows():
    a = mix("uniform", SETS, budget="per_specialist", seed=1)
    b = mix("uniform", SETS, budget="per_specialist", seed=1)
    c = mix("uniform", SETS, budget="per_specialist", seed=2)
    assert [r["id"] for r in a.rows] == [r["id"] for r in b.rows]
    assert [r["id"] for r in a.rows] != [r["id"] for r in c.rows]


def test_sequential_rows_follow_the_order():
    res = mix(
        "sequential", SETS, budget="per_specialist", seed=0, order=["harmless", "helpful", "honest"]
    )
    assert res.phases == ["harmless", "helpful", "honest"]
    assert [r["dimension"] for r in res.rows] == ["harmless"] * 5 + ["helpful"] * 6 + ["honest"] * 6


def test_reward_select_keeps_the_best_combined_margins():
    res = mix("reward_select", SETS, budget="per_specialist", seed=0, scorer=meta_scorer)
    for d, rows in SETS.items():
        kept = sorted((r["meta"]["score"] for r in res.rows if r["dimension"] == d), reverse=True)
        best = sorted((r["meta"]["score"] for r in rows), reverse=True)[: len(kept)]
        assert kept == best
    # weights: only honest counts -> same ranking here (all dimensions equal), combined = 1 * r
    only = {d: float(d == "honest") for d in SETS}  # every mixed dimension weighed (battery 16)
    res_w = mix("reward_select", SETS, budget=9, seed=0, scorer=meta_scorer, weights=only)
    assert res_w.info["weights"] == only


def test_reward_select_global_scope_realizes_counts():
    sets = synthetic({"helpful": 7, "honest": 7})  # scores 0..6 in each
    res = mix("reward_select", sets, budget=4, seed=0, scorer=meta_scorer, scope="global")
    assert sorted(r["meta"]["score"] for r in res.rows) == [5.0, 5.0, 6.0, 6.0]
    assert res.counts == {"helpful": 2, "honest": 2}
    with pytest.raises(ValueError, match="scope"):
        mix("reward_select", sets, budget=4, seed=0, scorer=meta_scorer, scope="local")


@pytest.fixture(scope="session")
def uncontested(small_data):
    """The small world's training pairs without contested prompts (``conflict_rate`` 0), story
    requests (``story_share`` 0) or two-sided pairs (``two_sided_share`` 0), whose margins the
    tests below count by hand."""
    return _toy_pairs(small_data, conflict_rate=0.0, story_share=0.0, two_sided_share=0.0)


def _toy_pairs(small_data, **overrides):
    from hhh_bench.data.toy3h import Toy3HConfig, build_world, preference_pairs

    cfg = Toy3HConfig(**{**small_data["manifest"]["config"], **overrides})
    return preference_pairs(build_world(cfg), "train")


def test_reward_select_with_the_toy_oracle(uncontested):
    prefs = uncontested
    # combined toy margin: known_qa vs a wrong answer or "I don't know" = 2 (helpful + honest),
    # vs a refusal = 1; a benign request complied with = 2 (helpful + harmless: refusing it
    # protects no one): helpful's 40 best are pairs scored 2, never a known_qa against a refusal.
    res = mix("reward_select", prefs, budget=120, seed=0, scorer="toy3h")
    assert res.counts == {"helpful": 40, "honest": 40, "harmless": 40}
    kept = [r for r in res.rows if r["dimension"] == "helpful"]
    assert all(
        r["meta"]["kind"] == "benign_request"
        or (r["meta"]["kind"] == "known_qa" and r["meta"]["rejected_kind"] in ("wrong", "idk"))
        for r in kept
    )
    assert res.info["min_kept_margin"]["helpful"] == 2.0


def test_reward_select_ranks_story_requests_with_the_single_margin_pairs(small_data):
    # story_share 0.25 of 120 helpful pairs: 30 story requests (the story over "I don't know" or a
    # refusal: helpful +1, honesty has no objection), 45 benign requests (2: helpful + harmless)
    # and 45 known_qa, a third each against "I don't know" (2), a wrong value (2) and a refusal
    # (1): helpful's 40 are all pairs scored 2 (75 of them), so no story request is kept.
    prefs = _toy_pairs(small_data, conflict_rate=0.0, story_share=0.25)
    kinds = Counter((r["meta"]["kind"], r["meta"].get("rejected_kind")) for r in prefs["helpful"])
    assert kinds[("story_request", None)] == 30
    assert kinds[("known_qa", "idk")] + kinds[("known_qa", "wrong")] == 30
    res = mix("reward_select", prefs, budget=120, seed=0, scorer="toy3h")
    kept = Counter(
        (r["meta"]["kind"], r["meta"].get("rejected_kind"))
        for r in res.rows
        if r["dimension"] == "helpful"
    )
    assert (
        kept[("known_qa", "idk")] + kept[("known_qa", "wrong")] + kept[("benign_request", None)]
        == 40
    )
    assert kept[("story_request", None)] == 0 and kept[("known_qa", "refusal")] == 0
    assert res.info["min_kept_margin"]["helpful"] == 2.0


def test_conflict_aware_drop_on_the_toy_world(uncontested):
    prefs = uncontested
    # toy conflicts: unknown_qa ("I don't know" > fabrication: helpful reverses it) and every
    # harmful request (refusal: helpful reverses it). Dropped: harmless entirely, honest's 60
    # unknown_qa pairs; the budget 120 goes to helpful and honest, 60 each.
    res = mix("conflict_aware", prefs, budget="per_specialist", seed=0, scorer="toy3h", mode="drop")
    assert res.counts == {"helpful": 60, "honest": 60, "harmless": 0}
    assert res.info["emptied"] == ["harmless"]
    assert res.info["dropped"] == {"helpful": 0, "honest": 60, "harmless": 120}
    assert {r["meta"]["kind"] for r in res.rows if r["dimension"] == "honest"} == {"truthfulness"}


def test_conflict_aware_downweight_keeps_counts_and_prefers_agreeing_pairs(prefs):
    res = mix("conflict_aware", prefs, budget="per_specialist", seed=0, scorer="toy3h", weight=0.01)
    assert res.counts == {"helpful": 40, "honest": 40, "harmless": 40}
    # the pairs helpfulness reverses conflict: honest's unknown_qa ("I don't know"), harmless's
    # harmful requests (refusals); the two-sided ones (known facts answered, benign look-alikes
    # complied with) agree with it. Unweighted, about half of honest's 40 drawn would conflict;
    # at weight 0.01 few do, and harmless fills its 40 with every agreeing pair first.
    kinds = {d: Counter(r["meta"]["kind"] for r in prefs[d]) for d in prefs}
    assert res.info["conflicting"]["honest"] == kinds["honest"]["unknown_qa"]
    assert res.info["conflicting"]["harmless"] == kinds["harmless"]["harmful_request"]
    assert res.info["conflicting_kept"]["honest"] <= 5
    agreeing = kinds["harmless"]["benign_request"]
    assert 0 < agreeing < 40
    assert 40 - agreeing <= res.info["conflicting_kept"]["harmless"] <= 40 - agreeing + 5


def test_the_toy_scorer_is_injected_by_the_train_stage(monkeypatch):
    """The strategies know no world: ``toy3h`` is a name the train stage registers; without it
    the error says how to inject it. A second factory under a taken name is refused."""
    import hhh_bench.stages.train  # noqa: F401  (registers the toy world's scorer)
    from hhh_bench.data.mixing import scorers

    assert scorers.SCORERS["toy3h"] is Toy3HScorer
    with pytest.raises(ValueError, match="takes no scorer_args, got \\['x'\\]"):
        scorers.get_scorer("toy3h", {"x": 1})
    with pytest.raises(ValueError, match="'toy3h' is already registered"):
        scorers.register_scorer("toy3h", RewardModelScorer)
    monkeypatch.delitem(scorers.SCORERS, "toy3h")
    with pytest.raises(ValueError, match="unknown scorer 'toy3h'.*injected by the train stage"):
        scorers.get_scorer("toy3h")


def test_toy_scorer_sees_through_noise(prefs):
    from hhh_bench.data.noise import flip_preferences

    rows = prefs["helpful"][:10]
    flipped, ids = flip_preferences(rows, 1.0, seed=0)
    clean, noisy = Toy3HScorer()(rows), Toy3HScorer()(flipped)
    assert len(ids) == 10
    for c, n in zip(clean, noisy, strict=True):
        assert n == {d: -v for d, v in c.items()}


def test_invalid_params_are_named():
    with pytest.raises(ValueError, match="sum to 1"):
        mix(
            "fixed_ratio",
            SETS,
            budget=10,
            seed=0,
            shares={"helpful": 0.5, "honest": 0.2, "harmless": 0.2},
        )
    with pytest.raises(ValueError, match="missing"):
        mix("fixed_ratio", SETS, budget=10, seed=0, shares={"helpful": 1.0})
    with pytest.raises(ValueError, match="unknown parameter"):
        mix("uniform", SETS, budget=10, seed=0, shares={"helpful": 1.0})
    with pytest.raises(ValueError, match="order"):
        mix("sequential", SETS, budget=10, seed=0, order=["helpful", "honest"])
    with pytest.raises(ValueError, match="unknown mixing strategy"):
        mix("random", SETS, budget=10, seed=0)
    with pytest.raises(ValueError, match="empty"):
        mix("uniform", {"helpful": [], "honest": SETS["honest"]}, budget=10, seed=0)


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory, tiny_tok):
    """A randomly initialised 3-output sequence classifier saved locally (stands in for ArmoRM)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    cfg = LlamaConfig(
        vocab_size=len(tiny_tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        num_labels=3,
        pad_token_id=tiny_tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(cfg)
    out = tmp_path_factory.mktemp("rm")
    model.save_pretrained(out, safe_serialization=True)
    tiny_tok.save_pretrained(out)
    return out, model.eval()


def test_reward_model_scorer_maps_outputs_to_dimensions(tiny_reward_model, tiny_tok, prefs):
    path, model = tiny_reward_model
    rows = prefs["harmless"][:3] + prefs["helpful"][:2]
    scorer = RewardModelScorer(str(path), ["harmless", "helpful", None], batch_size=2)
    assert scorer._model is None  # loaded lazily
    got = scorer(rows)
    assert scorer._model is not None
    for row, g in zip(rows, got, strict=True):  # independent, unbatched computation

        def reward(msgs):
            text = tiny_tok.apply_chat_template(msgs, tokenize=False)
            ids = tiny_tok(text, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                return model(**ids).logits[0]

        diff = reward(row["prompt"] + row["chosen"]) - reward(row["prompt"] + row["rejected"])
        assert set(g) == {"harmless", "helpful"}
        assert g["harmless"] == pytest.approx(float(diff[0]), abs=1e-4)
        assert g["helpful"] == pytest.approx(float(diff[1]), abs=1e-4)


def test_reward_select_through_a_reward_model_by_path(tiny_reward_model, prefs):
    path, _ = tiny_reward_model
    sets = {d: prefs[d][:8] for d in ("helpful", "harmless")}
    res = mix(
        "reward_select",
        sets,
        budget=6,
        seed=0,
        scorer="reward_model",
        scorer_args={"model": str(path), "output_dimensions": ["helpful", "honest", "harmless"]},
    )
    assert res.counts == {"helpful": 3, "harmless": 3}
    with pytest.raises(ValueError, match="outputs"):
        RewardModelScorer(str(path), ["helpful", "honest"])(prefs["helpful"][:1])
    with pytest.raises(ValueError, match="unknown dimension"):
        RewardModelScorer(str(path), ["helpful", "kind", None])


def test_mixtures_are_budget_matched_with_the_specialists_by_default():
    """Every shipped mixing strategy trains on as many pairs as the specialists together (the
    data a merge is built from), unless a config says otherwise."""
    from hhh_bench.data.prepare import training_set

    for path in sorted(CONF_MIX.glob("*.yaml")):
        cfg = OmegaConf.to_container(OmegaConf.load(path))
        assert cfg["budget"] == "all_specialists", path
        params = {k: v for k, v in cfg.items() if k != "budget"}
        if params.get("scorer") == "toy3h":  # the synthetic rows carry no toy kinds
            params["scorer"] = meta_scorer
        ts = training_set(SETS, None, params, seed=0)
        assert len(ts.rows) == sum(len(v) for v in SETS.values()), path


def test_bow_reward_scorer_learns_the_preferred_word_by_hand():
    """Two helpful pairs: 'sure' preferred to 'no' after 'help', the prompt words the same. The
    learned helpful model puts a positive weight on ('help', 'sure') and the response 'sure',
    a negative one on 'no': both pairs (and a new one) get a positive helpful margin, and a
    reversed pair the opposite one."""
    from hhh_bench.data.mixing.scorers import BowRewardScorer, score_sets

    def pair(prompt, chosen, rejected):
        return make_row(prompt, chosen, rejected, "helpful", "hand", f"{prompt}:{chosen}")

    sets = {"helpful": [pair("help me", "sure", "no"), pair("please help", "sure thing", "no")]}
    scorer = BowRewardScorer(steps=200)
    margins = score_sets(scorer, sets)["helpful"]
    assert all(m["helpful"] > 0 for m in margins) and set(margins[0]) == {"helpful"}
    index, w = scorer.index, scorer.weights["helpful"]
    assert w[index["r:sure"]] > 0 > w[index["r:no"]] and w[index["help>sure"]] > 0
    new = scorer([pair("help", "sure", "no"), pair("help", "no", "sure")])
    assert new[0]["helpful"] > 0 > new[1]["helpful"]
    assert new[0]["helpful"] == pytest.approx(-new[1]["helpful"])
    assert scorer.info["helpful"] == {"pairs": 2, "train_agreement": 1.0}


def test_learned_scorer_baselines_never_call_the_oracle(uncontested, monkeypatch):
    """Issue 29: on the toy world `reward_select` and `conflict_aware` with `scorer: bow_rm`
    rank and filter pairs by a reward learned from the pairs' text; the world's exact reward is
    never called (this test fails if it is), and the same seed gives the same mixture."""
    import hhh_bench.data.toy3h as toy

    def oracle_called(*args, **kwargs):
        raise AssertionError("the oracle reward was called")

    monkeypatch.setattr(toy, "oracle_reward", oracle_called)
    monkeypatch.setattr(toy.Toy3HScorer, "__call__", oracle_called)
    for name, kw in (("reward_select", {}), ("conflict_aware", {"mode": "drop"})):
        a = mix(name, uncontested, budget=120, seed=0, scorer="bow_rm", **kw)
        b = mix(name, uncontested, budget=120, seed=0, scorer="bow_rm", **kw)
        assert [r["id"] for r in a.rows] == [r["id"] for r in b.rows] and a.rows, name
    with pytest.raises(ValueError, match="AssertionError: the oracle reward was called"):
        mix("reward_select", uncontested, budget=120, seed=0, scorer="toy3h")  # the guard works


def test_bow_reward_scorer_arguments_are_checked():
    from hhh_bench.data.mixing.scorers import get_scorer

    for args, says in (({"l2": -1}, "scorer_args.l2 must be a finite number >= 0"),
                       ({"steps": 0}, "scorer_args.steps must be a positive integer"),
                       ({"learning_rate": float("nan")}, "scorer_args.learning_rate"),
                       ({"nosuch": 1}, "unexpected keyword")):  # fmt: skip
        with pytest.raises((ValueError, TypeError), match=says):
            get_scorer("bow_rm", args)


def test_resolved_that_overrules_nothing_says_so():
    """Battery 21, A-U1: a threshold above every margin resolved nothing, without a word (the
    train stage warns from ``selects_nothing``, as for reward_select)."""
    res = mix("resolved", SETS, budget="per_specialist", seed=0, scorer=meta_scorer)
    assert res.info["selects_nothing"] is False and sum(res.info["dropped"].values()) == 14 + 6 + 6
    res = mix("resolved", SETS, budget="per_specialist", seed=0, scorer=meta_scorer, threshold=10)
    assert res.info["selects_nothing"] is True and not any(res.info["dropped"].values())
