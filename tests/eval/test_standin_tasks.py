"""Offline stand-ins of lm-eval's built-in tasks (issue 12): the installed lm-eval's own task
definitions with only the data location swapped for small files in the real schemas, run
through lm-eval on a stand-in model, producing lm-eval's own metric keys."""

from __future__ import annotations

import json

import pytest

from conftest import REPO
from hhh_bench.evaluation.standin_tasks import (
    MMLU_SUBJECTS,
    STANDIN_NAMES,
    STANDINS,
    lm_eval_tasks_dir,
    materialize_standin_tasks,
    standin_builtins,
)

DATA = REPO / "tests" / "assets" / "rehearsal" / "eval"
LOCATION = ("dataset_path", "dataset_name", "dataset_kwargs")
# the lm-eval built-ins of the real 3H suite
SUITE = ["truthfulqa_mc2", "mmlu", "arc_challenge", "ifeval", "toxigen"]


def test_every_builtin_of_the_real_suite_has_a_standin():
    import yaml

    harness = yaml.safe_load((REPO / "conf" / "eval" / "harness_3h.yaml").read_text())
    names = [t for dim in harness["dimensions"].values() for t in dim]
    names += [c["task"] for c in (harness.get("columns") or {}).values()]  # extra report columns
    from hhh_bench.evaluation.harness import shipped_tasks

    builtins = [t for t in names if t not in shipped_tasks()]  # ours: tasks/real, tasks/judged
    assert builtins and set(builtins) <= set(SUITE)  # every built-in of the suite has a stand-in
    assert standin_builtins(names) == [t for t in names if t in SUITE]
    assert all(STANDIN_NAMES[t] == t for t in SUITE)  # names kept: scoring keys unchanged


def test_standins_keep_lm_evals_definitions(tmp_path):
    """Each written YAML, resolved as lm-eval resolves it, equals the installed definition
    except for where the data comes from."""
    from lm_eval.tasks._yaml_loader import load_yaml

    out = materialize_standin_tasks(tmp_path / "tasks", DATA)
    written = sorted(p.stem for p in out.include_path.glob("*.yaml"))
    expected = sorted(
        {t.name for tasks in STANDINS.values() for t in tasks}
        | {"mmlu", "mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities"}
    )
    assert written == expected
    src = lm_eval_tasks_dir()
    for tasks in STANDINS.values():
        for task in tasks:
            ours = load_yaml(out.include_path / f"{task.name}.yaml", resolve_func=False)
            real = load_yaml(src / task.yaml, resolve_func=False)
            assert {k: v for k, v in ours.items() if k not in LOCATION} == {
                k: v for k, v in real.items() if k not in LOCATION
            }, task.name
            assert ours["dataset_path"] == "json" and ours["dataset_name"] is None
            files = ours["dataset_kwargs"]["data_files"]
            assert set(files) == set(task.files)
            assert all(str(DATA) in f for f in files.values())
    mmlu = load_yaml(out.include_path / "mmlu.yaml", resolve_func=False)
    assert mmlu == load_yaml(src / "mmlu/default/_mmlu.yaml", resolve_func=False)


def test_fingerprint_follows_the_data(tmp_path):
    a = materialize_standin_tasks(tmp_path / "a", DATA, ["arc_challenge"])
    b = materialize_standin_tasks(tmp_path / "b", DATA, ["arc_challenge"])
    assert (b.fingerprint, b.names) == (a.fingerprint, {"arc_challenge": "arc_challenge"})
    data = tmp_path / "data"
    data.mkdir()
    for name in ("arc_challenge_train.jsonl", "arc_challenge_test.jsonl"):
        (data / name).write_text((DATA / name).read_text())
    same = materialize_standin_tasks(tmp_path / "c", data, ["arc_challenge"])
    assert same.fingerprint == a.fingerprint  # content, not location
    rows = (data / "arc_challenge_test.jsonl").read_text().splitlines()
    (data / "arc_challenge_test.jsonl").write_text(rows[0] + "\n")
    assert materialize_standin_tasks(tmp_path / "d", data, ["arc_challenge"]).fingerprint != (
        a.fingerprint
    )


def test_bad_inputs_name_what_is_wrong(tmp_path):
    with pytest.raises(
        ValueError, match=r"no offline stand-in for lm-eval task\(s\) \['hellaswag'\]"
    ):
        materialize_standin_tasks(tmp_path / "t", DATA, ["hellaswag"])
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(FileNotFoundError, match="truthfulqa_mc.jsonl.*'validation'"):
        materialize_standin_tasks(tmp_path / "t", data, ["truthfulqa_mc2"])
    (data / "truthfulqa_mc.jsonl").write_text(json.dumps({"question": "q?"}) + "\n")
    with pytest.raises(
        ValueError, match=r"row 0 lacks column\(s\) \['mc1_targets', 'mc2_targets'\]"
    ):
        materialize_standin_tasks(tmp_path / "t", data, ["truthfulqa_mc2"])


def test_ifeval_rows_avoid_instructions_that_need_nltk_data():
    """lm-eval's ifeval downloads nltk's punkt at import (no network here: it fails and goes on)
    and needs it only for these two instructions; the stand-in rows leave them out."""
    needs_punkt = {"length_constraints:number_sentences", "change_case:capital_word_frequency"}
    rows = [json.loads(line) for line in (DATA / "ifeval.jsonl").read_text().splitlines()]
    assert len(rows) >= 5
    for row in rows:
        assert not needs_punkt & set(row["instruction_id_list"]), row["key"]
        assert len(row["kwargs"]) == len(row["instruction_id_list"])


@pytest.fixture(scope="module")
def standin_lm(tmp_path_factory):
    """HFLM around the Llama-3 stand-in model object, and the stand-in tasks' TaskManager."""
    import os

    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from hhh_bench.models import load_causal_lm, load_tokenizer
    from hhh_bench.models.standin import ensure_standin

    torch.set_num_threads(int(os.environ.get("HHH_TEST_THREADS", 1)))
    root = tmp_path_factory.mktemp("standin_tasks")
    folder = ensure_standin("llama3_8b_instruct", root / "llama3")
    model = load_causal_lm(folder, dtype="float32")
    tok = load_tokenizer(folder)
    tasks = materialize_standin_tasks(root / "tasks", DATA, SUITE)
    tm = TaskManager(include_path=str(tasks.include_path), include_defaults=False)
    return HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu"), tm


def _evaluate(standin_lm, tasks):
    from lm_eval import simple_evaluate

    lm, tm = standin_lm
    return simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=tm,
        limit=2,
        bootstrap_iters=0,
        apply_chat_template=True,
        log_samples=False,
    )


@pytest.fixture(scope="module")
def suite_results(standin_lm):
    """The suite's log-likelihood built-ins through lm-eval, two documents per task."""
    return _evaluate(standin_lm, [t for t in SUITE if t != "ifeval"])


@pytest.mark.parametrize(
    "task, keys",
    [
        ("truthfulqa_mc2", {"acc,none"}),
        ("arc_challenge", {"acc,none", "acc_norm,none"}),
        ("toxigen", {"acc,none", "acc_norm,none"}),
        ("mmlu", {"acc,none"}),
    ],
)
def test_standin_runs_through_lm_eval_with_its_own_metrics(suite_results, task, keys):
    res = suite_results["results"][task]
    metrics = {k for k in res if "," in k and not k.split(",")[0].endswith("_stderr")}
    assert metrics == keys
    for k in keys:
        assert 0.0 <= float(res[k]) <= 1.0


def test_ifeval_standin_generates_and_scores_with_lm_evals_checks(standin_lm):
    """ifeval is a generation task (up to 1280 new tokens) scored by lm-eval's instruction
    checkers, which import langdetect and immutabledict (lm-eval's `ifeval` extra)."""
    try:
        import immutabledict  # noqa: F401
        import langdetect  # noqa: F401
    except ImportError as e:
        pytest.fail(
            f"lm-eval's ifeval task cannot run here: {e}. pyproject.toml asks for "
            "lm-eval[ifeval]; reinstall the project (pip install -e '.[dev]')"
        )
    res = _evaluate(standin_lm, ["ifeval"])["results"]["ifeval"]
    metrics = {k for k in res if "," in k and not k.split(",")[0].endswith("_stderr")}
    assert metrics == {
        "prompt_level_strict_acc,none",
        "inst_level_strict_acc,none",
        "prompt_level_loose_acc,none",
        "inst_level_loose_acc,none",
    }
    assert res["sample_len"] == 2


def test_mmlu_standin_keeps_lm_evals_group_tree(suite_results):
    tree = suite_results["group_subtasks"]
    assert tree["mmlu"] == ["mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities"]
    for subject, category in MMLU_SUBJECTS.items():
        assert tree[f"mmlu_{category}"] == [f"mmlu_{subject}"]
    # the group's acc is lm-eval's size-weighted mean of its subjects
    res = suite_results["results"]
    n = {s: suite_results["n-samples"][f"mmlu_{s}"]["effective"] for s in MMLU_SUBJECTS}
    mean = sum(res[f"mmlu_{s}"]["acc,none"] * n[s] for s in MMLU_SUBJECTS) / sum(n.values())
    assert res["mmlu"]["acc,none"] == pytest.approx(mean)
    # what a row says the group is over: its subjects' items (lm-eval lists the top group first,
    # before the categories that hold the subjects; issue 32: a group cell said n=0)
    from hhh_bench.evaluation.harness import parse_results

    metrics, _ = parse_results(suite_results)
    assert metrics["mmlu"]["n"] == sum(n.values()) > 0
    for subject, category in MMLU_SUBJECTS.items():
        assert metrics[f"mmlu_{category}"]["n"] == n[subject]
