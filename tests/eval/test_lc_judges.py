"""The length-controlled win rate's judge (issue 32): a reward model by default, or a pairwise
annotator (AlpacaEval's: both answers in one prompt, labels ``m`` / ``M`` for the first / the
second) asked in process or through an OpenAI-compatible chat completions endpoint. The endpoint
here is a real HTTP server on the loopback speaking the API's JSON, with a rule judge behind it,
so every byte the real path sends and reads is exercised."""

from __future__ import annotations

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hhh_bench.evaluation.endpoint import EndpointError
from hhh_bench.evaluation.judged import judge_generations, model_first
from hhh_bench.evaluation.judges import JudgeSpec, judge_fingerprint, specs_from_config
from hhh_bench.pins import unpinned

PAIR = "Instruction: {prompt}\nOutput (m): {output_1}\nOutput (M): {output_2}\nBetter output:"
KEY = "sk-test-not-a-real-key"


class RuleJudge(BaseHTTPRequestHandler):
    """POST /v1/chat/completions: prefers the output with more 'detail' words, P = 0.9; answers
    'maybe' when both have as many; 'fail_first' requests fail once with HTTP 503."""

    calls: list[dict] = []
    fail_next = 0
    template = PAIR  # the prompt it reads the two outputs from

    @classmethod
    def outputs(cls, text: str) -> tuple[str, str]:
        pattern = re.escape(cls.template)
        for field in ("prompt", "output_1", "output_2"):
            pattern = pattern.replace(re.escape("{" + field + "}"), "(.*?)")
        return re.fullmatch(pattern, text, re.S).groups()[1:]

    def log_message(self, *a):  # quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                 "body": body})  # fmt: skip
        if type(self).fail_next:
            type(self).fail_next -= 1
            self.send_response(503)
            self.end_headers()
            return
        if body["messages"][0]["role"] == "system":  # a grader: "Rating: [[n]]", n = 'detail's
            answer = body["messages"][-1]["content"].split("Assistant's Answer]")[1]
            n = answer.count("detail")
            return self._send({"choices": [{"index": 0, "message": {
                "role": "assistant", "content": f"Fine. Rating: [[{n}]]"}}]})  # fmt: skip
        text = body["messages"][0]["content"]
        a, b = (x.count("detail") for x in type(self).outputs(text))
        token = "maybe" if a == b else ("m" if a > b else "M")
        p = 0.9
        top = [{"token": "m", "logprob": math.log(p if a > b else 1 - p)},
               {"token": "M", "logprob": math.log(1 - p if a > b else p)}]  # fmt: skip
        if a == b:
            top = [{"token": "maybe", "logprob": -0.01}, {"token": "perhaps", "logprob": -5.0}]
        reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": token},
                              "logprobs": {"content": [{"token": token, "logprob": -0.1,
                                                        "top_logprobs": top}]}}]}  # fmt: skip
        self._send(reply)

    def _send(self, reply):
        out = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture(scope="module")
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), RuleJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def lc_judge(url, mode="logprob", **extra):
    return {"kind": "guard", "model": "rule-judge-2026-12-07", "template": PAIR,
            "labels": ["m", "M"], "mode": mode, "max_new_tokens": 2, "on_unparsed": "negative",
            "endpoint": {"url": url, "api_key_env": "HHH_TEST_JUDGE_KEY", "max_retries": 1},
            **extra}  # fmt: skip


def gens(answers):
    return {"alpaca_lc": [
        {"doc_id": i, "prompt": f"instruction number {i}", "response": a,
         "doc": {"output": "a detail reference answer"}}
        for i, a in enumerate(answers)]}  # fmt: skip


def run(judges, answers):
    return judge_generations(gens(answers), {"alpaca_lc": "lc_win"}, specs_from_config(judges))


def test_a_pairwise_endpoint_judge_gives_the_preference_whatever_the_order(endpoint, monkeypatch):
    """Each answer has more 'detail' words than the reference, so the rule judge prefers it with
    P = 0.9 wherever it is shown: the preference is 0.9 on every item, first or second."""
    monkeypatch.setenv("HHH_TEST_JUDGE_KEY", KEY)
    RuleJudge.calls.clear()
    answers = [f"detail {i} with more detail" for i in range(8)]
    out = run({"lc": lc_judge(endpoint)}, answers)
    items = out["items"]["alpaca_lc"]
    assert {it["model_first"] for it in items} == {True, False}  # both orders were shown
    assert [it["preference"] for it in items] == pytest.approx([0.9] * 8)
    assert [it["model_first"] for it in items] == [model_first(f"instruction number {i}")
                                                   for i in range(8)]  # fmt: skip
    for it, call in zip(items, RuleJudge.calls, strict=True):  # each prompt shows both answers
        text = call["body"]["messages"][0]["content"]
        shown = text.index(answers[it["doc_id"]]) < text.index("a detail reference answer")
        assert shown == it["model_first"]
    row = out["metrics"]["alpaca_lc"]
    assert row["raw_win_rate"] == pytest.approx(0.9) and row["n_unparsed"] == 0
    # the key went in the header and nowhere else
    assert {c["auth"] for c in RuleJudge.calls} == {f"Bearer {KEY}"}
    assert {c["path"] for c in RuleJudge.calls} == {"/v1/chat/completions"}
    assert RuleJudge.calls[0]["body"]["logprobs"] is True
    assert KEY not in json.dumps(out, default=str)
    assert out["judges"]["alpaca_lc"]["judge"] == "lc"
    assert out["judges"]["alpaca_lc"]["endpoint"] == {"api": "openai-chat-completions",
                                                      "url": endpoint}  # fmt: skip


def test_generate_mode_reads_the_label_and_counts_an_unparsed_answer(endpoint, monkeypatch):
    """Generate mode: 'm' / 'M' by position; an answer with as many 'detail' words as the
    reference gets 'maybe': counted unparsed and scored by on_unparsed (negative: a loss)."""
    monkeypatch.setenv("HHH_TEST_JUDGE_KEY", KEY)
    answers = ["detail, detail", "no such word", "detail", ""]  # 2, 0, 1 'detail' vs 1
    out = run({"lc": lc_judge(endpoint, mode="generate")}, answers)
    items, row = out["items"]["alpaca_lc"], out["metrics"]["alpaca_lc"]
    assert [it["preference"] for it in items] == [1.0, 0.0, 0.0, 0.0]
    assert [it["unparsed"] for it in items] == [False, False, True, False]
    assert [it["empty"] for it in items] == [False, False, False, True]
    assert items[2]["judge_answer"] == "maybe" and items[3]["judge_answer"] is None
    assert (row["n"], row["n_empty"], row["n_unparsed"]) == (4, 1, 1)


def test_logprob_mode_without_a_label_in_the_top_tokens_is_unparsed(endpoint, monkeypatch):
    monkeypatch.setenv("HHH_TEST_JUDGE_KEY", KEY)
    out = run({"lc": lc_judge(endpoint, on_unparsed="positive")}, ["one detail"])
    it = out["items"]["alpaca_lc"][0]
    assert it["unparsed"] and it["preference"] == 1.0  # positive: counted as the model's win
    assert out["metrics"]["alpaca_lc"]["n_unparsed"] == 1


def test_a_failing_endpoint_is_retried_then_named(endpoint, monkeypatch):
    monkeypatch.setenv("HHH_TEST_JUDGE_KEY", KEY)
    RuleJudge.fail_next = 1  # one 503, then an answer: max_retries 1 is enough
    out = run({"lc": lc_judge(endpoint)}, ["detail detail"])
    assert out["items"]["alpaca_lc"][0]["preference"] == pytest.approx(0.9)
    RuleJudge.fail_next = 2  # two 503s: more than one retry
    with pytest.raises(
        EndpointError,
        match=r"rule-judge-2026-12-07.*did not answer after 2 tries \(last: HTTP 503\)",
    ):
        run({"lc": lc_judge(endpoint)}, ["detail detail again"])
    RuleJudge.fail_next = 0
    closed = {**lc_judge(endpoint), "endpoint": {"url": "http://127.0.0.1:9/v1", "max_retries": 0}}
    with pytest.raises(EndpointError, match=r"127.0.0.1:9/v1/chat/completions did not answer"):
        run({"lc": closed}, ["detail"])  # a closed port: named, no traceback


def test_a_missing_key_is_named_before_any_work(endpoint, monkeypatch, tmp_path):
    from hhh_bench.evaluation.judged_eval import check_judges_early

    monkeypatch.delenv("HHH_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match=r"eval.judges.lc.endpoint.api_key_env: the "
                       r"environment variable HHH_TEST_JUDGE_KEY is not set"):  # fmt: skip
        check_judges_early({"judges": {"lc": lc_judge(endpoint)}}, tmp_path)
    monkeypatch.setenv("HHH_TEST_JUDGE_KEY", KEY)
    check_judges_early({"judges": {"lc": lc_judge(endpoint)}}, tmp_path)


def test_the_pairwise_and_endpoint_settings_are_checked_up_front(endpoint):
    def spec(**kw):
        return JudgeSpec.from_config("lc", {**lc_judge(endpoint), **kw})

    spec()  # a pairwise judge's m / M differ by case: read with case
    spec(mode="generate")
    with pytest.raises(ValueError, match="labels must be two distinct"):
        spec(labels=["m", "m."])
    with pytest.raises(ValueError, match="labels must be two distinct"):  # not pairwise: a typo
        spec(template="{prompt} {response}", labels=["yes", "Yes"])
    with pytest.raises(ValueError, match=r"both answers, \{output_1\} and \{output_2\}"):
        spec(template="{prompt} {output_1} {response}")
    with pytest.raises(ValueError, match="pairwise template needs a guard"):
        spec(kind="reward", endpoint=None)
    with pytest.raises(ValueError, match="cannot be filled"):
        spec(template='{"a": 1} {output_1} {output_2}')
    with pytest.raises(ValueError, match="endpoint's model has no hub revision"):
        spec(revision="abc")
    with pytest.raises(ValueError, match="format string"):
        spec(template="chat", labels=["1", "2"])
    with pytest.raises(ValueError, match=r"endpoint.url must be an http\(s\) base URL"):
        spec(endpoint={"url": "api.openai.com"})
    with pytest.raises(ValueError, match="must name an environment variable"):
        spec(endpoint={"url": endpoint, "api_key_env": "sk-abc def"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['key'\]"):
        spec(endpoint={"url": endpoint, "key": "x"})
    # a pairwise judge for a one-answer role, a one-answer guard for the LC role
    judges = {"lc": lc_judge(endpoint), "safety": lc_judge(endpoint)}
    with pytest.raises(ValueError, match="judges one answer at a time"):
        judge_generations({"harmful_gen": gens(["x"])["alpaca_lc"]}, {"harmful_gen": "harm"},
                          specs_from_config(judges))  # fmt: skip
    one = {**lc_judge(endpoint), "template": "{prompt} {response}", "labels": ["yes", "no"]}
    with pytest.raises(ValueError, match="compares the answer with the reference"):
        run({"lc": one}, ["x"])


def test_an_endpoint_judge_is_named_by_its_api_model_and_url_never_its_key(endpoint):
    """Two judges served under one generic name at two URLs are two judges (their verdicts are
    never shared); the key's variable and the retry settings change no verdict."""
    a = JudgeSpec.from_config("lc", lc_judge(endpoint))
    b = JudgeSpec.from_config("lc", lc_judge("https://elsewhere.example/v1"))
    c = JudgeSpec.from_config("lc", {**lc_judge(endpoint), "model": "rule-judge-2027-01-01"})
    d = JudgeSpec.from_config("lc", {**lc_judge(endpoint), "endpoint": {
        "url": endpoint + "/", "api_key_env": "OTHER_KEY", "max_retries": 3}})  # fmt: skip
    assert len({judge_fingerprint(x) for x in (a, b, c)}) == 3
    assert judge_fingerprint(d) == judge_fingerprint(a)
    # nothing to pin or download: its model is the API's name, not a hub id
    node = {"eval": {"judges": {"lc": {**lc_judge(endpoint), "model": "org/served-judge",
                                       "revision": None}}}}  # fmt: skip
    assert unpinned(node) == []
    from hhh_bench.prefetching import resources

    assert not [r for r in resources(node) if r.ident == "org/served-judge"]


def test_the_shipped_pairwise_endpoint_judge_runs_as_configured(endpoint, monkeypatch):
    """conf/eval/judges/pairwise_endpoint.yaml, composed into the paper experiment, pointed at the
    stand-in endpoint: its template, labels and logprob mode give the preference."""
    from conftest import compose
    from hhh_bench.stages.common import to_dict

    cfg = to_dict(compose(["experiment=paper_llama3",
                           "+eval/judges@eval.judges.lc=pairwise_endpoint",
                           f"eval.judges.lc.endpoint.url={endpoint}"]))  # fmt: skip
    lc = cfg["eval"]["judges"]["lc"]
    assert lc["endpoint"]["api_key_env"] == "OPENAI_API_KEY" and lc["labels"] == ["m", "M"]
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setattr(RuleJudge, "template", lc["template"])
    out = run(cfg["eval"]["judges"], ["detail detail", "nothing", "detail detail detail"])
    assert [it["preference"] for it in out["items"]["alpaca_lc"]] == pytest.approx([0.9, 0.1, 0.9])
    assert out["judges"]["alpaca_lc"]["model"] == "gpt-4-turbo-2024-04-09"


def test_a_grader_in_parse_mode_is_asked_through_an_endpoint(endpoint, monkeypatch):
    """MT-Bench's single-answer grading through the API: the system turn and the grading prompt
    are sent as messages, the written answer is read by the same parser as in process; a
    rating out of range (0 'detail' words: [[0]]) is unparsed and scored by on_unparsed."""
    from conftest import compose
    from hhh_bench.stages.common import to_dict

    rating = to_dict(compose(["experiment=paper_llama3"]))["eval"]["judges"]["rating"]
    rating = {**rating, "model": "rule-grader", "revision": None,
              "endpoint": {"url": endpoint, "max_retries": 0}}  # fmt: skip
    RuleJudge.calls.clear()
    gens = {"mtbench_single": [
        {"doc_id": i, "prompt": "q", "response": a, "doc": {"category": "writing"}}
        for i, a in enumerate(["detail " * 7, "detail detail", "none"])]}  # fmt: skip
    out = judge_generations(
        gens, {"mtbench_single": "rating"}, specs_from_config({"rating": rating})
    )
    items = out["items"]["mtbench_single"]
    assert [it["mt_score"] for it in items] == [7.0, 2.0, 1.0]
    assert [it["unparsed"] for it in items] == [False, False, True]
    assert RuleJudge.calls[0]["body"]["messages"][0] == {
        "role": "system",
        "content": rating["system"],
    }
    assert "logprobs" not in RuleJudge.calls[0]["body"]
