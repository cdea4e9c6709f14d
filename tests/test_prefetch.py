"""``hhh-bench prefetch`` (issue 34, part 4): what a run reads from the network, listed and
checked offline, and fetched at the pinned revisions. The network itself is never reached
here: the downloaders are recorded (their real call signatures), and the rehearsal runs with
the network made unreachable (tests/test_rehearsal_pipeline.py: no download attempt)."""

from __future__ import annotations

# nltk binds its downloader's error stream (a default argument: sys.stderr) when first
# imported: imported inside a test, that is the test's capsys stream, closed after it, and a
# later test whose lm-eval task calls nltk.download (IFEval, offline) fails writing to it.
# Imported here, at collection, it binds the session's stream.
import nltk
import pytest

from hhh_bench.cli import SUBCOMMANDS

SHA = "8afb486c1db24fe5011ec46dfbe5b5dccdb575c2"
PAPER = ["experiment=paper_llama3", "data.leakage.check_overlap=false"]


def test_check_lists_every_remote_resource_of_the_paper_run_at_its_pin(
    tmp_path, capsys, monkeypatch
):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    # nltk read $NLTK_DATA once, at import (above): this test's folder is never in the path
    # monkeypatch restores
    monkeypatch.setattr("nltk.data.path", [str(tmp_path / "nltk")])
    monkeypatch.setenv("NLTK_DATA", str(tmp_path / "nltk"))
    # the base model in the hub cache at its pinned commit: present
    snap = tmp_path / "hub" / "models--meta-llama--Meta-Llama-3-8B-Instruct" / "snapshots" / SHA
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    assert SUBCOMMANDS["prefetch"]([*PAPER, f"root={tmp_path}", "--check"]) == 1
    out = capsys.readouterr().out
    assert f"present  model meta-llama/Meta-Llama-3-8B-Instruct@{SHA} (model.path)" in out
    for line in (
        "missing  model cais/HarmBench-Llama-2-13b-cls@bda705349d1144fa618770bea64d99ce54e3835b (eval.judges.safety)",
        "missing  model allenai/truthfulqa-info-judge-llama2-7B@72601eff294cbf7e8d7188ae82397e19cb9bb9bd (eval.judges.info)",
        "missing  model RLHFlow/ArmoRM-Llama3-8B-v0.1@eb2676d20da2f2d41082289d23c59b9f7427f955 (pipeline.mixtures[4].scorer_args)",
        "missing  dataset Anthropic/hh-rlhf@84e2ad8be2e662e521db649a03bf3a99c0bbd44e (data.sources.helpful: hh_rlhf_helpful)",
        "missing  nltk punkt_tab (eval: ifeval)",
        "missing  lm-eval task ifeval (eval: ifeval)",
        "missing  file data/eval/alpaca_eval.jsonl (eval.data_files.helpful_prompts)",
        "missing  file data/eval/mtbench_question.jsonl (eval.data_files.mtbench)",
        "missing  file data/eval/orbench_hard.jsonl (eval.data_files.orbench_hard)",
    ):  # fmt: skip
        assert line in out, line
    assert "26 of 27 missing: on a machine with network, run `hhh-bench prefetch" in out
    assert not (tmp_path / "nltk").exists()  # checking downloads nothing (IFEval not imported)


def test_fetch_takes_each_model_at_its_pin_in_safetensors_and_names_what_it_cannot(
    tmp_path, capsys, monkeypatch
):  # fmt: skip
    import huggingface_hub

    from hhh_bench import prefetching
    from hhh_bench.data.sources import loader

    calls: list[tuple] = []
    monkeypatch.setattr(prefetching, "present", lambda r: False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, **kw: calls.append(("model", repo, kw)))  # fmt: skip
    monkeypatch.setattr(
        loader,
        "load_raw",
        lambda cfg, cache: calls.append(("dataset", cfg["hub_id"], cfg["revision"])),
    )
    monkeypatch.setattr(nltk, "download", lambda p, **kw: calls.append(("nltk", p)) or True)
    monkeypatch.setattr(
        "lm_eval.tasks.get_task_dict", lambda names, tm: calls.append(("task", *names))
    )
    monkeypatch.setattr("lm_eval.tasks.TaskManager", lambda: None)
    assert SUBCOMMANDS["prefetch"]([*PAPER, f"root={tmp_path}"]) == 2
    out, err = capsys.readouterr()
    models = {c[1]: c[2] for c in calls if c[0] == "model"}
    assert len(models) == 8 and all(len(kw["revision"]) == 40 for kw in models.values())
    for repo, kw in models.items():
        assert "*.safetensors" in kw["allow_patterns"]
        assert not {"*.bin", "*.pt", "*.pth", "*.pkl"} & set(kw["allow_patterns"]), repo
        assert ("*.py" in kw["allow_patterns"]) == (repo == "RLHFlow/ArmoRM-Llama3-8B-v0.1")
    datasets = {c[1]: c[2] for c in calls if c[0] == "dataset"}
    assert datasets["openbmb/UltraFeedback"] == "40b436560ca83a8dba36114c22ab3c66e43f6d5e"
    assert ("nltk", "punkt_tab") in calls and ("task", "ifeval") in calls
    assert calls.index(("nltk", "punkt_tab")) < calls.index(("task", "ifeval"))
    assert "FAILED   file data/eval/xstest.jsonl (eval.data_files.xstest): OSError" in out
    assert "10 of 27 could not be fetched" in err  # the eval files: export them


def test_a_local_run_has_nothing_to_fetch(capsys, tmp_path):
    assert SUBCOMMANDS["prefetch"]([f"root={tmp_path}", "--check"]) == 0
    assert "0 resource(s) in place" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [(["+data.nope=1"], "data.nope"),
                                               (["model.revision=main", "model=llama3_8b_instruct"], "not pinned")])  # fmt: skip
def test_bad_prefetch_arguments_are_refused_by_name(argv, message, capsys):
    assert SUBCOMMANDS["prefetch"](argv) == 2
    assert message in capsys.readouterr().err
