"""Pinned hub revisions (issue 34, part 5): every hub id of the shipped configs carries a
commit, an unpinned one is refused before any work unless ``allow_unpinned=true``, and
provenance records what a moving revision resolved to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONF, compose
from hhh_bench.core.hubref import (
    is_commit,
    is_hub_id,
    resolved_commit,
    resolved_revisions,
    split_ref,
    walk_revisions,
)
from hhh_bench.pins import check_pins, unpinned
from hhh_bench.stages.common import model_identity, to_dict

SHA = "8afb486c1db24fe5011ec46dfbe5b5dccdb575c2"

# The hub ids of the shipped configs that carry no commit, each with why: none could be read
# offline (docs/reproduce.md, "Pinned revisions"). A run on them is refused until they are pinned
# or allow_unpinned=true is given. The list must only shrink: an id pinned since fails below.
KNOWN_UNPINNED = {
    "PKU-Alignment/PKU-SafeRLHF-30K": "only the short head 334ad7d of its main branch was found",
    "Jinluan/3H_Merging_Llama3_Helpfulness": "no commit of the released specialists was found",
    "Jinluan/3H_Merging_Llama3_Honesty": "no commit of the released specialists was found",
    "Jinluan/3H_Merging_Llama3_Harmlessness": "no commit of the released specialists was found",
}


def shipped_yaml() -> list[Path]:
    return sorted(p for p in CONF.rglob("*.yaml") if "hydra" not in p.parts)


def test_every_hub_id_of_every_shipped_config_is_pinned():
    """Each YAML file of conf/ as written (a group option, an experiment, a source): every
    hub id beside a `revision`, every merge.base / merge.models hub id, is pinned to a commit,
    but for the known list; and that list is exact (an id pinned since is taken off it)."""
    seen = {}
    for path in shipped_yaml():
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        if not isinstance(node, dict):
            continue
        for where, ident, rev in unpinned(node):
            seen.setdefault(ident, []).append(f"{path.relative_to(CONF)}: {where} ({rev!r})")
    unknown = {i: w for i, w in seen.items() if i not in KNOWN_UNPINNED}
    assert not unknown, f"unpinned hub ids in the shipped configs: {unknown}"
    assert set(seen) == set(KNOWN_UNPINNED), set(KNOWN_UNPINNED) - set(seen)


def test_the_walk_sees_every_kind_of_hub_reference():
    """The file walk above finds what it must: the models, the judges, the scorer, the sources
    (a test of the test: an id written another way would slip through)."""
    found = set()
    for path in shipped_yaml():
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        if isinstance(node, dict):
            found |= {w[1] for w in walk_revisions(node)}
    assert {
        "meta-llama/Meta-Llama-3-8B-Instruct",
        "mistralai/Mistral-7B-Instruct-v0.2",
        "RLHFlow/ArmoRM-Llama3-8B-v0.1",
        "cais/HarmBench-Llama-2-13b-cls",
        "allenai/truthfulqa-info-judge-llama2-7B",
        "qylu4156/strongreject-15k-v1",
        "protectai/distilroberta-base-rejection-v1",
        "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2",
        "allenai/truthfulqa-truth-judge-llama2-7B",
        "Anthropic/hh-rlhf",
        "PKU-Alignment/PKU-SafeRLHF-30K",
    } <= found


@pytest.mark.parametrize("experiment", ["paper_llama3", "paper_mistral", "toy3h"])
def test_the_paper_experiments_compose_pinned(experiment):
    """Composed (interpolations resolved, the data sources read from conf/source): nothing
    left to pin, so the run is not refused."""
    cfg = to_dict(compose([f"experiment={experiment}"]))
    assert unpinned(cfg) == []
    check_pins(cfg)


def test_an_unpinned_run_is_refused_by_name_unless_allowed():
    cfg = to_dict(compose(["experiment=released_specialists"]))
    with pytest.raises(ValueError) as e:
        check_pins(cfg)
    msg = str(e.value)
    assert (
        "3 hub id(s) not pinned" in msg
        and "merge.models[0]: Jinluan/3H_Merging_Llama3_Helpfulness" in msg
    )
    assert "allow_unpinned=true" in msg and "\n" not in msg
    check_pins({**cfg, "allow_unpinned": True})
    # a mistyped relative folder reads as a hub id: the message says no such folder exists
    # too (battery 12, F1)
    with pytest.raises(ValueError, match=r"merge.base: myruns/base at revision None \(.*; read "
                       r"as a hub id: no folder 'myruns/base' exists under .*, if a local folder "
                       r"was meant\)"):  # fmt: skip
        check_pins({**cfg, "merge": {**cfg["merge"], "base": "myruns/base"}})
    with pytest.raises(ValueError, match="allow_unpinned='yes' must be true or false"):
        check_pins({**cfg, "allow_unpinned": "yes"})


def test_validate_run_refuses_a_moving_model_revision():
    from hhh_bench.validation import validate_run

    cfg = to_dict(compose(["experiment=paper_llama3", "model.revision=main"]))
    with pytest.raises(
        ValueError, match=r"model: meta-llama/Meta-Llama-3-8B-Instruct at revision 'main'"
    ):
        validate_run(cfg)
    judges = to_dict(compose(["experiment=paper_llama3", "eval.judges.safety.revision=null"]))
    with pytest.raises(
        ValueError, match=r"eval.judges.safety: cais/HarmBench-Llama-2-13b-cls at revision None"
    ):
        validate_run(judges)
    source = to_dict(
        compose(["experiment=paper_llama3", "data.sources.harmless=[pku_saferlhf30k_harmless]"])
    )
    with pytest.raises(
        ValueError, match=r"huggingface.co/datasets/PKU-Alignment/PKU-SafeRLHF-30K/commits"
    ):
        validate_run(source)


def test_a_local_folder_or_a_source_read_from_its_copy_needs_no_pin(tmp_path):
    folder = tmp_path / "org" / "model"
    folder.mkdir(parents=True)
    assert not is_hub_id(str(folder)) and not is_hub_id("./org/model") and not is_hub_id("~/m")
    assert is_hub_id("org/model") and not is_hub_id("model") and not is_hub_id("a/b/c")
    node = {"model": {"kind": "hub", "path": str(folder), "revision": None},
            "src": {"hub_id": "org/data", "revision": "main", "path": "/data/copy.jsonl"}}  # fmt: skip
    assert unpinned(node) == []
    assert unpinned({"src": {"hub_id": "org/data", "revision": "main", "path": None}}) == [
        ("src", "org/data", "main")
    ]


def test_a_merge_input_is_pinned_as_id_at_commit():
    assert split_ref(f"org/model@{SHA}") == ("org/model", SHA)
    assert split_ref("org/model") == ("org/model", None)
    assert split_ref("/data/x@y") == ("/data/x@y", None)  # a path keeps its '@'
    assert is_commit(SHA) and not is_commit(SHA[:12]) and not is_commit("main")
    assert not is_commit(SHA.upper())
    merge = {
        "merge": {"base": f"org/base@{SHA}", "models": [f"org/a@{SHA}", "org/b@main", "org/c"]}
    }
    assert unpinned(merge) == [
        ("merge.models[1]", "org/b", "main"),
        ("merge.models[2]", "org/c", None),
    ]
    assert model_identity(f"org/a@{SHA}") == f"hub:org/a@{SHA}"
    assert model_identity("org/a") == "hub:org/a@main"


def test_provenance_records_what_a_moving_revision_resolved_to(tmp_path, monkeypatch):
    """allow_unpinned=true: each stage's provenance.json names the commit the HF cache's ref
    resolved (a ref the cache lacks: null); a pinned id is its own record."""
    from huggingface_hub import constants

    from hhh_bench.core.provenance import write_provenance

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    refs = tmp_path / "hub" / "models--org--model" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(SHA + "\n")
    dataset_refs = tmp_path / "hub" / "datasets--org--data" / "refs"
    dataset_refs.mkdir(parents=True)
    (dataset_refs / "v1").write_text("c" * 40)
    assert resolved_commit("org/model", None) == SHA
    assert resolved_commit("org/data", "v1", "dataset") == "c" * 40
    assert resolved_commit("org/other", "main") is None
    config = {"model": {"path": "org/model", "revision": "main"},
              "judge": {"model": "org/other", "revision": None},
              "source": {"hub_id": "org/data", "revision": "v1", "path": None},
              "pinned": {"model": "org/pinned", "revision": SHA}}  # fmt: skip
    assert resolved_revisions(config) == {
        "org/model@main": SHA, "org/other@main": None, "org/data@v1": "c" * 40
    }  # fmt: skip
    out = write_provenance(tmp_path / "out", config, seed=0, stage="base")
    assert json.loads(out.read_text())["resolved_revisions"]["org/model@main"] == SHA
    plain = write_provenance(tmp_path / "plain", {"pinned": config["pinned"]}, seed=0)
    assert "resolved_revisions" not in json.loads(plain.read_text())


def test_an_offline_run_names_a_judge_missing_from_the_cache_before_any_work(tmp_path, monkeypatch):
    """A compute node without network (issue 34): a judge the HF cache lacks is named up front,
    with its revision and the command that fetches it; in the cache at its pinned commit, or a
    local folder, it passes."""
    from huggingface_hub import constants

    from hhh_bench.evaluation.judged_eval import check_judges_offline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    judge = {"kind": "classifier", "model": "org/judge", "revision": SHA, "template": "response",
             "positive_label": "REJECTION", "threshold": 0.5}  # fmt: skip
    with pytest.raises(ValueError, match=rf"eval.judges.refusal: org/judge \(revision {SHA}\) is "
                       rf"not in the HF cache .* `hf download org/judge --revision {SHA}`"):  # fmt: skip
        check_judges_offline({"judges": {"refusal": judge}})
    snap = tmp_path / "hub" / "models--org--judge" / "snapshots" / SHA
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    check_judges_offline({"judges": {"refusal": judge}})
    local = tmp_path / "local_judge"
    local.mkdir()
    check_judges_offline({"judges": {"refusal": {**judge, "model": str(local)}}})
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # online: the stage downloads it
    check_judges_offline({"judges": {"refusal": {**judge, "model": "org/other"}}})


def test_a_hub_model_the_machine_cannot_reach_is_named_before_any_work(tmp_path, monkeypatch):
    """Issue 27's open item: a hub id, not cached, with HF_HUB_OFFLINE unset and no network gave
    transformers' own error from inside the base stage; now preflight names it, with the error
    and what to do; offline it names the fetch command; cached at its pin, it passes."""
    import huggingface_hub
    from huggingface_hub import constants

    from hhh_bench.validation import check_hub_model

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked = []

    def unreachable(self, repo_id, revision=None, timeout=None):
        asked.append((repo_id, revision, timeout))
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    with pytest.raises(ValueError, match=r"model.path='org/model@" + SHA + r"' is not a local folder, "
                       r"not in the HF cache, and the hub did not answer for it \(ConnectionError: "
                       r"Failed to resolve.*HF_HUB_OFFLINE=1"):  # fmt: skip
        check_hub_model(f"org/model@{SHA}", None)
    assert asked == [("org/model", SHA, 10.0)]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=rf"`hf download org/model --revision {SHA}`"):
        check_hub_model("org/model", SHA)
    snap = tmp_path / "hub" / "models--org--model" / "snapshots" / SHA
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    check_hub_model("org/model", SHA)
    assert len(asked) == 1  # offline or cached: the hub is never asked


def test_battery9_a_given_hub_model_is_pinned_like_every_other():
    """Battery 9 (U6): `stage=eval +eval.model=<owner/name>` was not asked for a commit
    before work. Refused by name unless pinned (<id>@<sha>) or allowed; a local folder never."""
    cfg = to_dict(compose(["stage=eval", "+eval.model=someone/their-model"]))
    assert unpinned(cfg) == [("eval.model", "someone/their-model", None)]
    with pytest.raises(ValueError, match=r"eval.model: someone/their-model at revision None"):
        check_pins(cfg)
    check_pins({**cfg, "allow_unpinned": True})
    pinned = to_dict(compose(["stage=eval", f"+eval.model=someone/their-model@{'a' * 40}"]))
    assert unpinned(pinned) == []
    assert unpinned(to_dict(compose(["stage=eval", f"+eval.model={CONF}"]))) == []  # a folder
