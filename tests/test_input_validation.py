"""Issue 27, config values: refused when the config is composed (:func:`validate_run`), before any
stage runs, with a message naming the key, the value and what is allowed."""

from __future__ import annotations

import copy

import pytest
from omegaconf import OmegaConf

from conftest import compose, run_cli
from hhh_bench.validation import validate_run


def check(overrides: list[str]) -> dict:
    return validate_run(OmegaConf.to_container(compose(overrides), resolve=True))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.limit=0", r"eval.limit=0: give a positive integer .* a fraction in \(0, 1\)"),
        ("eval.limit=-5", r"eval.limit=-5: give a positive integer"),
        ("eval.limit=1.5", r"eval.limit=1.5: give a positive integer"),
        ("eval.limit=true", r"eval.limit"),
        (
            "eval.metric=accc",
            r"eval.metric='accc' is not a metric of task 'toy3h_known_qa_val' "
            r"\(helpful\); its metrics: acc, acc_norm, soft",
        ),  # fmt: skip
        (
            "+eval.metrics.unknown_qa=sfot",
            r"eval.metrics.unknown_qa='sfot' is not a metric of "
            r"task 'toy3h_unknown_qa_val'",
        ),  # fmt: skip
        ("model.device=cdua", r"model.device='cdua' is not a device: use cpu, cuda, cuda:N"),
        ("model.device=auto", r"model.device='auto' is not a device"),
        ("train.device=gpu", r"train.device='gpu' is not a device"),
        ("merge_engine.device=cuda1", r"merge_engine.device='cuda1' is not a device"),
        (
            "seeds=2",
            r"seeds=2 must be a list of integers: write seeds=\[2\] for the one seed 2, "
            r"or seeds=\[0, 1\] for 2 seeds",
        ),  # fmt: skip
        ("seeds=[0,x]", r"seeds=\[0, 'x'\]: \['x'\] not integer"),
        ("seeds=[1,1]", r"seeds=\[1, 1\] repeats \[1\]"),
        ("seeds=[0,1.5]", r"not integer"),
        ("+report.skip_invalids=true", r"report.skip_invalids"),
        ("report.interval=normal", r"report.interval must be 't' or 'bca', got 'normal'"),
        # the leakage guard's values, before any stage (were checked only when the data is built)
        ("data=paper_3h data.leakage.min_chars=0", r"data.leakage.min_chars must be a positive"),
        ("data=paper_3h data.leakage.max_overlap=-1", r"data.leakage.max_overlap must be a non"),
        (
            "data=paper_3h data.leakage.on_overlap=warn",
            r"on_overlap must be fail or drop, got 'warn'",
        ),
        ("data=paper_3h +data.leakage.min_char=5", r"unknown key\(s\) \['min_char'\]"),
        # checked by the toy world's and the merge engine's own rules (hhh_bench.validation,
        # hhh_bench.core.sizes), not by the schema's
        ("data.world.n_values=99", r"n_values must be in \[2, 8\], got 99"),
        ("merge_engine.max_shard_size=lots", r"merge_engine.max_shard_size 'lots' is not a size"),
        # λ beyond the compute dtype's range: refused up front (was: a float overflow traceback)
        (
            "merge.params.scaling=1e40",
            r"merge \(method 'resm'\): merge parameter 'scaling' = "
            r"1e\+40 is beyond the range of the compute dtype float32",
        ),
    ],
)
def test_a_bad_value_is_refused_naming_it(override, message):
    with pytest.raises(ValueError, match=message):
        check(override.split(" "))


def test_a_model_given_as_base_and_specialist_is_refused(tmp_path):
    """merge.base among merge.models (as written, or the same folder through a link and a
    trailing slash): its τ = 0 would merge as nothing (issue 27)."""
    (tmp_path / "base").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "base")
    with pytest.raises(ValueError, match=r"merge.models\[1\]='.*link/' is merge.base='.*base'"):
        check([f"merge.base={tmp_path}/base", f"merge.models=[{tmp_path}/a,{tmp_path}/link/]"])
    with pytest.raises(ValueError, match=r"merge.models\[0\]='org/m' is merge.base='org/m'"):
        check(["merge.base=org/m", "merge.models=[org/m]"])
    pinned = ["merge.base=org/m", "merge.models=[org/a,org/b]", "allow_unpinned=true"]
    assert check(pinned)["merge"].base == "org/m"  # allowed: hub ids unpinned (test_pins)


def test_the_toy_scorer_on_real_data_is_refused_before_training():
    """On real data the toy world's scorer gave every pair margin 0 (issue 29): a random
    selection with no error. Refused when the config is checked, for the pipeline's mixtures
    and for `mix`, and by the scorer itself on rows from elsewhere; the paper experiments
    score with a reward model (their rehearsal swaps in its stand-in)."""
    from hhh_bench.data.toy3h import Toy3HScorer

    with pytest.raises(ValueError, match=r"pipeline.mixtures\[0\] \(reward_select\) scores pairs "
                       r"with the toy world's reward \(scorer: toy3h\), but data='paper_3h'"):  # fmt: skip
        check(["data=paper_3h", "pipeline.mixtures=[{name: reward_select, scorer: toy3h}]"])
    with pytest.raises(ValueError, match=r"^mix \(conflict_aware\) scores pairs with the toy"):
        check(["data=paper_3h", "mix=conflict_aware", "mix.scorer=toy3h", "pipeline.mixtures=[]"])
    # their default scorer is learned from the sets' own pairs: real rows are fine
    check(["data=paper_3h", "pipeline.mixtures=[reward_select, conflict_aware]"])
    check(["data=paper_3h", "pipeline.mixtures=[uniform]"])  # no scorer: fine
    check(["data=paper_3h", "stage=train"])  # stage=train trains no pipeline mixture
    cfg = check(["experiment=paper_llama3", "model.device=cpu", "train.device=cpu",
                 "merge_engine.device=cpu"])  # fmt: skip
    scored = [e for e in cfg["pipeline"].mixtures if isinstance(e, dict)]
    assert {e["name"] for e in scored} == {"reward_select", "conflict_aware"}
    assert {e["scorer"] for e in scored} == {"reward_model"}
    real = {"prompt": "p", "chosen": "a", "rejected": "b", "dimension": "helpful",
            "source": "hh_rlhf_helpful", "id": "hh/1"}  # fmt: skip
    with pytest.raises(ValueError, match=r"toy3h scorer scores only the toy world's pairs, but "
                       r"1 of 1 rows come from elsewhere \(source 'hh_rlhf_helpful'"):  # fmt: skip
        Toy3HScorer()([real])


def test_a_phase_reference_with_lora_is_refused_before_training():
    """A sequential curriculum whose phases take the model at their start as the DPO reference
    needs full fine-tuning (issue 29); with LoRA it is named when the config is checked."""
    with pytest.raises(ValueError, match=r"pipeline.mixtures\[0\] \(sequential\) has reference: "
                       r"phase, which needs full fine-tuning, but train.method=lora"):  # fmt: skip
        check(["train=dpo_lora", "pipeline.mixtures=[{name: sequential, reference: phase}]"])
    check(["train=dpo_lora", "pipeline.mixtures=[sequential]"])
    check(["pipeline.mixtures=[{name: sequential, reference: phase}]"])  # full fine-tuning


@pytest.mark.parametrize(
    "override",
    ["eval.limit=10", "eval.limit=0.25", "eval.limit=null", "eval.metric=soft",
     "model.device=cuda:1", "model.device=mps", "seeds=[3]", "seeds=[0,1,2]", "seeds=null",
     "report.skip_invalid=true", "report.interval=bca"],
)  # fmt: skip
def test_the_documented_values_pass(override):
    check([override])


def test_the_harness_suite_keeps_its_own_metrics():
    """Tasks whose metrics the shipped YAMLs do not list (built-in harness tasks, judged
    generations) are left to the eval stage: eval=harness_3h with its win_rate, safe,
    prompt_level_strict_acc validates."""
    check(["eval=harness_3h"])


def test_cli_seeds_scalar_exits_2_before_any_stage(tmp_path):
    """``seeds=2`` used to give a TypeError after the data stage: now one line, exit 2, no
    traceback, and no stage output under the root."""
    out = run_cli("seeds=2", f"root={tmp_path}", "logger=none", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert out.stderr.splitlines()[0].startswith("hhh-bench: error: seeds=2 must be a list")
    assert {p.name for p in tmp_path.iterdir()} <= {"hydra"}  # Hydra's log folder only


@pytest.fixture(scope="module")
def wandb_run() -> dict:
    """A composed run that logs to W&B (its mode from $WANDB_MODE), no sweep cache."""
    return OmegaConf.to_container(
        compose(["logger=wandb", "merge_engine.cache_dir=null"]), resolve=True
    )


def groups_of(cfg: dict, **changes: dict) -> dict:
    """The typed groups of ``cfg`` with ``changes`` ({group: {key: value}}) applied."""
    cfg = copy.deepcopy(cfg)
    for group, values in changes.items():
        cfg[group].update(values)
    return validate_run(cfg)


def test_a_cache_or_wandb_folder_that_is_not_a_writable_folder_is_refused(
    tmp_path, monkeypatch, wandb_run
):
    """A cache_dir or $WANDB_DIR that is a regular file, lies under one, or cannot be written
    (W&B then wrote to a temporary folder, silently): refused naming it before any stage runs,
    nothing created."""
    import tempfile

    from hhh_bench.pipeline import run
    from hhh_bench.validation import preflight

    file = tmp_path / "file"
    file.write_text("x")
    out = tmp_path / "root" / "train" / "k1"  # a finished stage output (battery 12, F10)
    out.mkdir(parents=True)
    (out / "key.json").write_text("{}")
    for group, folder, message in [
        ("merge_engine", file, r"merge_engine.cache_dir='.*file' is a regular file"),
        ("data", file / "hf", r"data.cache_dir='.*file/hf' cannot be created: '.*file' is"),
        (
            "merge_engine",
            out,
            r"merge_engine.cache_dir='.*k1' lies inside '.*k1', a finished "
            r"stage output: its cache files would be written among",
        ),
        ("data", out / "hf", r"data.cache_dir='.*k1/hf' lies inside '.*k1', a finished"),
    ]:
        with pytest.raises(ValueError, match=message):
            preflight(groups_of(wandb_run, **{group: {"cache_dir": str(folder)}}))
    monkeypatch.setenv("WANDB_DIR", str(out / "wandb"))  # battery 12, F20
    with pytest.raises(ValueError, match=r"WANDB_DIR='.*k1/wandb' lies inside '.*k1', a finished"):
        preflight(groups_of(wandb_run))
    monkeypatch.setenv("WANDB_DIR", str(file))
    preflight(groups_of(wandb_run, logger={"name": "none"}))  # no W&B: its folder is not used
    with pytest.raises(ValueError, match=r"WANDB_DIR='.*file' is a regular file"):
        run(compose([f"root={tmp_path / 'r'}", "logger=wandb", "stage=data"]))
    assert not (tmp_path / "r").exists()  # before any stage
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "w" / "new"))
    preflight(groups_of(wandb_run))  # a folder to create is fine, and is not created yet
    assert not (tmp_path / "w").exists()

    def read_only(**kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)  # a read-only folder (root ignores modes)
    with pytest.raises(ValueError, match=r"WANDB_DIR='.*new' is not writable \(Permission denied"):
        preflight(groups_of(wandb_run))


def test_wandb_online_without_an_api_key_is_refused_and_the_key_never_shown(
    tmp_path, monkeypatch, wandb_run
):
    from hhh_bench.validation import preflight

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # absent: no `wandb login`
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(
        ValueError, match=r"^WANDB_MODE=online but W&B has no API key .*wandb login"
    ):
        preflight(groups_of(wandb_run))
    with pytest.raises(ValueError, match=r"^logger.mode=online but W&B has no API key"):
        preflight(groups_of(wandb_run, logger={"mode": "online"}))
    preflight(groups_of(wandb_run, logger={"mode": "offline"}))  # the config's mode wins
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password s3cr3t-key\n")
    preflight(groups_of(wandb_run))  # `wandb login` wrote a key: fine
    (tmp_path / "netrc").write_text("machine example.org login u password p\n")
    monkeypatch.setenv("WANDB_API_KEY", "s3cr3t-key")
    preflight(groups_of(wandb_run))
