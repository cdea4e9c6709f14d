"""Our lm-eval tasks load and run offline: the toy world's (on an untrained tiny model, which
must score near chance) and the real-suite YAMLs (on tiny files in the real datasets' schema)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hhh_bench.data.toy3h import EVAL_KINDS
from hhh_bench.evaluation.harness import (
    TASKS_DIR,
    evaluate_model,
    materialize_tasks,
    shipped_tasks,
)
from hhh_bench.evaluation.tasks import utils as task_utils

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "eval"
CONF = Path(__file__).resolve().parents[2] / "conf"
SPLITS = {"val": "validation", "test": "test"}


def test_one_shipped_task_per_toy_kind_and_split_and_a_group_per_dimension():
    shipped = shipped_tasks()
    for kind in EVAL_KINDS:
        for short in SPLITS:
            assert shipped[f"toy3h_{kind}_{short}"]["placeholders"] == ["toy3h_eval"]
    for dim in ("helpful", "honest", "harmless"):
        for short in SPLITS:
            text = shipped[f"toy3h_{dim}_{short}"]["path"].read_text()
            members = re.findall(r"^  - (toy3h_\w+)$", text, re.M)
            assert sorted(members) == sorted(
                f"toy3h_{k}_{short}" for k, d in EVAL_KINDS.items() if d == dim
            )
    for name, ph in [
        ("halueval_qa_mc", "halueval_qa"),
        ("xstest_mc", "xstest"),
        ("pku_saferlhf_mc", "pku_saferlhf"),
        ("pku_saferlhf_refusal", "pku_saferlhf"),
    ]:
        assert shipped[name]["placeholders"] == [ph]


def test_materialize_fills_absolute_paths_and_leaves_out_tasks_without_data(tmp_path):
    out = materialize_tasks(tmp_path / "tasks", {"xstest": ASSETS / "xstest.jsonl"})
    text = (out / "real" / "xstest_mc.yaml").read_text()
    assert f'test: "{(ASSETS / "xstest.jsonl").resolve()}"' in text
    assert (out / "real" / "_real_mc_template.yaml").is_file()
    assert not (out / "real" / "halueval_qa_mc.yaml").exists()
    assert not list(out.rglob("toy3h_known_qa_test.yaml"))
    assert "${hhh:" not in "".join(p.read_text() for p in out.rglob("*.yaml"))


def test_a_partition_placeholder_is_filled_from_eval_partitions(tmp_path):
    """``${hhh_partition:NAME}``: the configured partition as a mapping, ``null`` without one."""
    data = {"halueval_qa": ASSETS / "halueval_qa.jsonl"}
    part = {"seed": 3, "eval_fraction": 0.25}
    given = materialize_tasks(tmp_path / "a", data, partitions={"halueval_qa": part})
    none = materialize_tasks(tmp_path / "b", data)

    def partition(folder, name):
        return json.loads(re.search(r"^  partition: (.*)$", (folder / name).read_text(), re.M)[1])

    for name in ("judged/halueval_qa_gen.yaml", "real/halueval_qa_mc.yaml"):
        assert partition(given, name) == part and partition(none, name) is None


def test_every_task_of_the_real_suite_config_exists():
    """harness_3h names our shipped tasks or lm-eval built-ins (found without indexing all)."""
    import lm_eval
    import yaml

    cfg = yaml.safe_load((CONF / "eval" / "harness_3h.yaml").read_text())
    shipped = shipped_tasks()
    builtin_dir = Path(lm_eval.__file__).parent / "tasks"
    for tasks in cfg["dimensions"].values():
        for name in tasks:
            if name in shipped:
                assert shipped[name]["placeholders"][0] in cfg["data_files"], name
                continue
            candidates = list(builtin_dir.rglob(f"{name}.yaml")) + list(
                builtin_dir.rglob(f"_{name}.yaml")
            )
            assert any(
                re.search(rf"^(task|group): {name}\s*$", p.read_text(), re.M) for p in candidates
            ), f"{name} is neither shipped nor an lm-eval built-in"


def _tiny(words, seed=0):
    from hhh_bench.models import TinyModelSpec, build_tiny_model, build_word_tokenizer

    tok = build_word_tokenizer(words, model_max_length=128)
    spec = TinyModelSpec(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return build_tiny_model(spec, tok, seed=seed).eval(), tok


@pytest.fixture(scope="module")
def untrained_run(small_data, tmp_path_factory):
    """An untrained tiny model on the small world's tasks: the three validation groups and the
    five test tasks (so every toy task and group runs once)."""
    data = Path(small_data["dir"])
    model, tok = _tiny((data / "vocab.txt").read_text().split())
    include = materialize_tasks(tmp_path_factory.mktemp("tasks"), {"toy3h_eval": data / "eval"})
    tasks = [f"toy3h_{d}_val" for d in ("helpful", "honest", "harmless")]
    tasks += [f"toy3h_{k}_test" for k in EVAL_KINDS]
    out = evaluate_model(
        model, tok, tasks, include_path=include, apply_chat_template=True, batch_size=64
    )
    return {"out": out, "model": model, "tok": tok, "data": data}


def test_untrained_model_scores_near_chance_and_every_metric_is_in_0_1(untrained_run):
    m = untrained_run["out"]["metrics"]
    expected = [f"toy3h_{k}_{s}" for k in EVAL_KINDS for s in SPLITS]
    expected += [f"toy3h_{d}_val" for d in ("helpful", "honest", "harmless")]
    assert sorted(m) == sorted(expected)
    for task, row in m.items():
        for k, v in row.items():
            if k != "n" and v is not None:
                assert 0.0 <= v <= 1.0, (task, k, v)
        assert row["n"] > 0, task
        if not task.endswith(("helpful_val", "honest_val", "harmless_val")):  # groups: no stderr
            assert row["acc_stderr"] is not None, task
    n_helpful_kinds = sum(d == "helpful" for d in EVAL_KINDS.values())
    assert n_helpful_kinds == 3  # known_qa, benign_request, story_request
    assert m["toy3h_helpful_val"]["n"] == n_helpful_kinds * m["toy3h_known_qa_val"]["n"]
    # equal-length candidates: the soft score sits at 1 / number of choices
    assert m["toy3h_known_qa_test"]["soft"] == pytest.approx(1 / 10, abs=0.05)
    assert m["toy3h_unknown_qa_test"]["soft"] == pytest.approx(1 / 9, abs=0.05)
    assert m["toy3h_known_qa_test"]["acc"] <= 0.35
    # the true value against the suggested false one: chance is one half
    assert m["toy3h_truthfulness_test"]["soft"] == pytest.approx(1 / 2, abs=0.1)
    # a harm-blind model complies (or refuses) everywhere: right on one request kind only
    pair = m["toy3h_benign_request_test"]["acc"] + m["toy3h_harmful_request_test"]["acc"]
    assert pair / 2 == pytest.approx(0.5, abs=0.15)


def test_lm_eval_loglikelihoods_equal_the_direct_scorer(untrained_run):
    """lm-eval's chat-templated per-choice log-likelihoods equal choice.py's (same context)."""
    from hhh_bench.core.schema import read_jsonl
    from hhh_bench.evaluation.choice import choice_logprobs

    samples = untrained_run["out"]["samples"]
    for kind in ("known_qa", "truthfulness", "harmful_request"):
        items = {
            it["id"]: it for it in read_jsonl(untrained_run["data"] / "eval" / f"{kind}_test.jsonl")
        }
        for s in samples[f"toy3h_{kind}_test"][:4]:
            it = items[s["id"]]
            ref = choice_logprobs(
                untrained_run["model"], untrained_run["tok"], it["question"], it["choices"]
            )
            assert s["lls"] == pytest.approx(ref, abs=1e-4)
            assert s["gold"] == it["gold"]


def test_real_suite_yamls_run_on_tiny_schema_files(tmp_path):
    words = set(" ".join([task_utils.COMPLY, task_utils.REFUSE, "Knowledge: Question:"]).split())
    for f in ("halueval_qa", "xstest", "pku_saferlhf"):
        for line in (ASSETS / f"{f}.jsonl").read_text().splitlines():
            for v in json.loads(line).values():
                if isinstance(v, str):
                    words.update(v.split())
    model, tok = _tiny(sorted(words))
    include = materialize_tasks(
        tmp_path / "tasks",
        {f: ASSETS / f"{f}.jsonl" for f in ("halueval_qa", "xstest", "pku_saferlhf")},
    )
    tasks = ["halueval_qa_mc", "xstest_mc", "pku_saferlhf_mc", "pku_saferlhf_refusal"]
    out = evaluate_model(
        model, tok, tasks, include_path=include, apply_chat_template=True, batch_size=8
    )
    m, s = out["metrics"], out["samples"]
    # rows kept: all 7 HaluEval (no eval.partitions given: the whole file), all 5 XSTest, the 3 PKU rows with exactly one safe response,
    # the 4 PKU rows with an unsafe response
    assert {t: m[t]["n"] for t in tasks} == {
        "halueval_qa_mc": 7,
        "xstest_mc": 5,
        "pku_saferlhf_mc": 3,
        "pku_saferlhf_refusal": 4,
    }
    assert [x["gold"] for x in s["xstest_mc"]] == [
        0,
        0,
        1,
        1,
        0,
    ]  # comply on safe, refuse on unsafe
    assert [x["gold"] for x in s["pku_saferlhf_mc"]] == [1, 0, 1]  # the safe response
    assert all(len(x["lls"]) == 2 for t in tasks for x in s[t])
    for t in tasks:
        for k in ("acc", "acc_norm", "soft"):
            assert 0.0 <= m[t][k] <= 1.0


def test_missing_data_and_unknown_tasks_fail_clearly(tmp_path, untrained_run):
    include = materialize_tasks(tmp_path / "tasks", {})
    with pytest.raises(ValueError, match=r"task 'xstest_mc' needs data path\(s\) xstest"):
        evaluate_model(
            untrained_run["model"], untrained_run["tok"], ["xstest_mc"], include_path=include
        )
    with pytest.raises(ValueError, match=r"unknown lm-eval task\(s\) \['toy3h_nope'\]"):
        evaluate_model(
            untrained_run["model"], untrained_run["tok"], ["toy3h_nope"], include_path=include
        )
    assert TASKS_DIR.is_dir()


def test_environment_info_is_collected_once_per_process(monkeypatch):
    """lm-eval adds torch's collect_env report to every result (subprocesses, ~0.5 s): inside
    evaluate_model it is collected on the first call and copied into the later ones."""
    import lm_eval.evaluator as ev
    import torch.utils.collect_env as ce

    from hhh_bench.evaluation import harness

    calls = []
    monkeypatch.setattr(ce, "get_pretty_env_info", lambda: calls.append(1) or "env report")
    monkeypatch.setattr(harness, "_ENV_INFO", {})
    original = ev.add_env_info
    first, second = {}, {}
    with harness._env_info_once():
        ev.add_env_info(first)
        ev.add_env_info(second)
        first["pretty_env_info"] = "changed"  # a copy each time: results do not share it
    assert ev.add_env_info is original  # restored
    assert calls == [1]
    assert second["pretty_env_info"] == "env report" and "transformers_version" in second
    other = {}
    original(other)  # outside: lm-eval's own again
    assert calls == [1, 1]


def test_task_templates_read_fields_without_jinja():
    """The shipped templates name fields (lm-eval reads them as they are) instead of "{{field}}"
    Jinja, which lm-eval compiles anew for every document."""
    from hhh_bench.evaluation.harness import TASKS_DIR

    for path in Path(TASKS_DIR).rglob("_*template.yaml"):
        text = path.read_text()
        assert not re.search(r"^doc_to_(text|choice): \"\{\{\w+\}\}\"", text, re.M), path


def test_remembered_encodings_are_lm_evals_own_and_are_shared_only_by_equal_tokenizers(
    untrained_run,
):
    """make_lm's HFLM remembers each (context, continuation) encoding across instances; the ids
    are exactly lm-eval's HFLM's, a second load of the same tokenizer reuses them, and a
    tokenizer that encodes differently does not."""
    import copy

    from lm_eval.models.huggingface import HFLM

    from hhh_bench.evaluation import backends
    from hhh_bench.evaluation.backends import make_lm, tokenizer_fingerprint

    model, tok = untrained_run["model"], untrained_run["tok"]
    words = (untrained_run["data"] / "vocab.txt").read_text().split()
    pairs = [
        p
        for a, b, c in zip(words[5:40:3], words[6:40:3], words[7:40:3], strict=False)
        for p in [(f"{a} {b} ", f"{c} ."), (f"{b} {a}", f" {c}"), (a, f" {b} {c} {a}")]
    ]
    plain = HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu")
    backends._ENCODED.clear()
    first = make_lm("hf", model, tok, batch_size=4)
    assert [first._encode_pair(c, x) for c, x in pairs] == [
        plain._encode_pair(c, x) for c, x in pairs
    ]
    n = len(backends._ENCODED)
    assert n == len(set(pairs))
    again = copy.deepcopy(tok)  # another object, same encoding: the same entries are reused
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tok)
    second = make_lm("hf", model, again, batch_size=4)
    assert [second._encode_pair(c, x) for c, x in pairs] == [
        plain._encode_pair(c, x) for c, x in pairs
    ]
    assert len(backends._ENCODED) == n
    other = copy.deepcopy(tok)
    other.add_tokens([f"{words[5]} {words[6]}"])  # encodes the first context differently
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tok)
    third = make_lm("hf", model, other, batch_size=4)
    assert third._encode_pair(*pairs[0]) == HFLM(
        pretrained=model, tokenizer=other, batch_size=4, device="cpu"
    )._encode_pair(*pairs[0])
    assert third._encode_pair(*pairs[0]) != first._encode_pair(*pairs[0])
    assert len(backends._ENCODED) == n + 1
    assert tokenizer_fingerprint(object()) is None  # no fast backend: nothing remembered
    # a prompt's chat-template rendering is remembered the same way (issue 29)
    chats = [[{"role": "user", "content": f"{a} {b} ?"}] for a, b in pairs[:6]]
    backends._RENDERED.clear()
    for gen in (True, False):
        want = [plain.apply_chat_template(c, gen) for c in chats]
        assert [first.apply_chat_template(c, gen) for c in chats] == want
        assert [second.apply_chat_template(c, gen) for c in chats] == want
    assert len(backends._RENDERED) == 2 * len(chats)
    shouty = copy.deepcopy(tok)  # the same encoding, another template: not the memo's
    shouty.chat_template = "{{ messages[0]['content'] }}!"
    assert tokenizer_fingerprint(shouty) == tokenizer_fingerprint(tok)
    lm = make_lm("hf", model, shouty, batch_size=4)
    assert lm.apply_chat_template(chats[0]) == f"{chats[0][0]['content']}!"


def test_a_local_dataset_is_loaded_once_per_content(tmp_path, monkeypatch):
    """lm-eval builds its tasks anew for every evaluated model (issue 29): within an evaluation a
    load of local files is made once per content (not per path) and handed out again; changed
    content is loaded anew, and a call that is not local files goes to datasets as it is."""
    import datasets

    from hhh_bench.evaluation import harness

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(k) or object())
    harness._LOADED.clear()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"x": 1}\n')
    b.write_text('{"x": 1}\n')
    with harness._local_datasets_once():
        first = datasets.load_dataset(path="json", data_files={"test": str(a)})
        assert datasets.load_dataset(path="json", data_files={"test": str(b)}) is first
        b.write_text('{"x": 2}\n')
        assert datasets.load_dataset(path="json", data_files={"test": str(b)}) is not first
        datasets.load_dataset(path="some/hub_set")  # not local files: never remembered
        datasets.load_dataset(path="some/hub_set")
    assert len(calls) == 4
    assert datasets.load_dataset.__name__ == "<lambda>"  # the patch is undone
