"""``eval.backend=server`` against a real server process: ``transformers serve`` (transformers'
serving extra, installed from the lock) serving tiny policies on CPU, on the real suite's judged
generation tasks (local stand-in prompts and judges, as in test_eval_judged_stage.py).

What is checked: the answers through the server are the in-process backend's, item by item
(greedy decoding; the tolerance on the scores is therefore 0, see docs/evaluation.md); the
log-likelihood tasks are refused by name, since ``transformers serve`` returns no prompt
log-probabilities; a server killed mid-run is an error naming it, with no row stored; a started
server never outlives the evaluation (an error, Ctrl-C); a guard judge asked through a server
gives the in-process verdicts. The Ctrl-C test runs in `make rehearse` (CI runs both targets),
the rest in `make test`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_eval_judged_stage import _overrides, judged_config, judged_fixtures

from hhh_bench.core.items import read_jsonl
from hhh_bench.evaluation.serving import ServerError, ServerSpec, free_port

pytestmark = pytest.mark.e2e

GENERATION = ("alpaca_lc", "harmful_gen", "truthfulqa_gen_judged", "halueval_qa_gen")
LOGLIKELIHOOD = ("halueval_qa_mc", "pku_saferlhf_mc", "pku_saferlhf_refusal")
GEN_ONLY = [  # the suite's likelihood diagnostics, XSTest and the win rate against θ0 left out
    *(f"~eval.columns.{col}" for col in ("halueval_qa_mc", "pku_saferlhf_mc", "pku_refusal_mc")),
    "~eval.dimensions.harmless.xstest_gen",
    "~eval.metrics.xstest_gen",
    "~eval.columns.over_refusal",
    "~eval.columns.win_vs_base",
    # StrongREJECT's columns (their judges' paths are the judged-stage tests'): the suite's
    # 5-minute budget
    "~eval.columns.strongreject",
    "~eval.columns.strongreject_rubric",
]


def _servers_of(folder: Path) -> list[int]:
    """Processes whose command line names ``folder`` and ``serve`` (a server left running)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in cmd and any(str(folder).encode() in c for c in cmd):
                pids.append(int(proc.name))
    return pids


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from hhh_bench.stages.eval import run_eval

    tmp = tmp_path_factory.mktemp("served")
    judges, policies, data = judged_fixtures(tmp)
    hf = judged_config(tmp / "runs", judges, GEN_ONLY)  # no win rate: no base to evaluate first
    model = {"path": str(policies[1]), "key": "p1", "kind": "merge", "name": "ties",
             "method": "ties"}  # fmt: skip
    in_process = run_eval(hf, model, data)
    served_cfg = judged_config(tmp / "runs", judges, [*GEN_ONLY, "eval.backend=server"])
    served = run_eval(served_cfg, {**model, "name": "ties served"}, data)
    return {"tmp": tmp, "judges": judges, "policies": policies, "data": data, "model": model,
            "hf": in_process, "served": served}  # fmt: skip


def test_answers_and_scores_through_the_server_are_the_in_process_ones(world):
    hf, served = world["hf"], world["served"]
    assert not served["cached"] and served["key"] != hf["key"]  # another backend, another key
    gen_hf = read_jsonl(Path(hf["dir"]) / "generations.jsonl")
    gen_srv = read_jsonl(Path(served["dir"]) / "generations.jsonl")
    for task in GENERATION:
        assert len(gen_srv[task]) == len(gen_hf[task]) > 0, task
        for a, b in zip(gen_hf[task], gen_srv[task], strict=True):
            assert (a["doc_id"], a["prompt"]) == (b["doc_id"], b["prompt"]), task
            assert a["response"] == b["response"], (task, a["doc_id"])
    for task in GENERATION:
        assert served["metrics"][task] == pytest.approx(hf["metrics"][task], abs=0), task
    for col in ("helpful", "honest", "harmless", "average"):
        assert served["row"][col] == pytest.approx(hf["row"][col], abs=0), col
    saved = json.loads((Path(served["dir"]) / "results.json").read_text())
    server = saved["harness"]["server"]
    assert server["server"] == "transformers" and server["url"].startswith("http://127.0.0.1:")
    # asked, not assumed: transformers serve ignores echo/logprobs and (WordPiece) stop strings
    assert server["abilities"] == {
        "prompt_logprobs": False, "token_prompts": False, "stop_strings": False
    }  # fmt: skip
    logs = list((world["tmp"] / "runs" / "logs" / "servers").glob("*/server.log"))
    assert any("Uvicorn running" in p.read_text() for p in logs)  # kept beside the stage output
    assert _servers_of(world["policies"][1]) == []  # stopped after the evaluation


def test_loglikelihood_tasks_are_refused_by_name_and_the_server_stopped(world):
    from hhh_bench.stages.eval import results_path, run_eval

    cfg = judged_config(world["tmp"] / "runs", world["judges"],
                        ["eval.backend=server", "~eval.columns.win_vs_base"])  # fmt: skip
    rows = results_path(cfg).read_text()
    model = {**world["model"], "name": "ties ll"}
    with pytest.raises(ServerError) as err:
        run_eval(cfg, model, world["data"])
    message = str(err.value)
    assert "does not return prompt log-probabilities" in message
    for task in LOGLIKELIHOOD:
        assert task in message
    assert "eval.backend=hf" in message and "transformers server started for" in message
    assert results_path(cfg).read_text() == rows  # no row
    assert _servers_of(world["policies"][1]) == []


def test_a_server_killed_mid_run_is_named_and_no_row_is_stored(world, tmp_path):
    """A server the user runs (eval.server.url), killed after its first generation request."""
    from hhh_bench.evaluation.serving import Server, check_serves, wait_healthy
    from hhh_bench.stages.eval import results_path, run_eval

    policy = str(world["policies"][1])
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "transformers.cli.transformers", "serve", policy,
             "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    wait_healthy(Server(url=url, model=policy, process=proc, log_path=log), 120)
    # it serves policy 1: asked to evaluate policy 0 it is refused (its answers would be stored
    # under policy 0's row)
    check_serves(Server(url=url, model=policy))
    with pytest.raises(ServerError, match=r"serves .* not the model being evaluated"):
        check_serves(Server(url=url, model=str(world["policies"][0])))

    def kill_after_first_item():
        while proc.poll() is None:
            if (
                log.read_text(errors="replace").count("POST /v1/completions") >= 5
            ):  # 4 probes, 1 item
                os.killpg(proc.pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    import threading

    killer = threading.Thread(target=kill_after_first_item, daemon=True)
    killer.start()
    cfg = judged_config(world["tmp"] / "runs", world["judges"],
               [*GEN_ONLY, "eval.backend=server", f"eval.server.url={url}",
                "eval.server.max_retries=2", "eval.server.request_timeout_s=20",
                "eval.server.max_concurrency=2"])  # lm-eval's asyncio path  # fmt: skip
    rows = results_path(cfg).read_text()
    try:
        with pytest.raises(ServerError) as err:
            run_eval(cfg, {**world["model"], "name": "ties killed"}, world["data"])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    killer.join(timeout=5)
    assert f"the inference server at {url} stopped answering" in str(err.value)
    assert proc.returncode == -signal.SIGKILL  # it was killed mid-run, not before
    assert results_path(cfg).read_text() == rows  # no partial row
    evals = Path(world["tmp"]) / "runs" / "eval"
    assert not [p for p in evals.iterdir() if p.name.startswith(".") and "tmp" in p.name]


@pytest.mark.rehearse  # `make rehearse` (CI): a CLI run of its own, ~25 s
def test_ctrl_c_stops_the_server_the_stage_started(world, tmp_path):
    """SIGINT to `hhh-bench stage=eval` while its server answers: exit 130, no server left."""
    policy = world["policies"][1]
    # longer answers than the other tests' 8 tokens: the generation outlasts the signal's trip
    overrides = [*_overrides(tmp_path / "runs", world["judges"]), *GEN_ONLY,
                 "eval.backend=server", "stage=eval", f"+eval.model={policy}",
                 "eval.gen_kwargs={max_gen_toks: 64}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    env.pop("HHH_VERBOSE", None)
    cli = subprocess.Popen([sys.executable, "-m", "hhh_bench", *overrides], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,  # SIGINT as a
                           # terminal gives it (a background CI job's is ignored, and inherited)
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 300
    while not _servers_of(policy) and time.monotonic() < deadline and cli.poll() is None:
        time.sleep(0.1)
    pids = _servers_of(policy)
    assert pids, cli.communicate()[0].decode(errors="replace")[-2000:]
    logs = list((tmp_path / "runs").rglob("server.log"))
    while time.monotonic() < deadline and sum(  # the probe's request, then the evaluation's
        p.read_text(errors="replace").count("POST /v1/completions") for p in logs
    ) < 2:  # fmt: skip
        time.sleep(0.1)
        logs = list((tmp_path / "runs").rglob("server.log"))
    running = cli.poll() is None
    cli.send_signal(signal.SIGINT)
    out = cli.communicate(timeout=120)[0].decode(errors="replace")
    assert running, "the run ended before the signal: " + out[-2000:]
    # interrupted: exit 130, or ended by the SIGINT itself (-2; a shell reports both as 130),
    # seen once in CI after the "interrupted" line (a second KeyboardInterrupt while the
    # interpreter shut down, not yet explained): the message, no server, no row either way
    assert cli.returncode in (130, -signal.SIGINT), out[-2000:]
    assert "hhh-bench: interrupted" in out, out[-2000:]
    assert _servers_of(policy) == [], out[-2000:]
    assert not (tmp_path / "runs" / "results.jsonl").exists()


def test_server_settings_are_checked_before_any_work():
    cases = [
        ({"launch": "ollama"}, r"eval.server.launch must be one of"),
        ({"url": "localhost:8000"}, r"eval.server.url must be an http\(s\) URL"),
        ({"max_concurrency": 0}, r"eval.server.max_concurrency must be an integer >= 1"),
        ({"request_timeout_s": "nan"}, r"eval.server.request_timeout_s must be a positive"),
        ({"data_parallel_size": 2}, r"transformers serve has no data parallelism"),
        ({"python": "/nowhere/bin/python"}, r"make serve-env"),
        ({"urll": "http://x"}, r"unknown key\(s\) \['urll'\]"),
    ]
    for server, message in cases:
        with pytest.raises(ValueError, match=message):
            ServerSpec.from_config(server)
    key = ServerSpec.from_config({"url": "http://h:1/v1", "max_concurrency": 9}).key()
    assert key == ServerSpec.from_config({"url": "http://other:2/v1/"}).key()  # not numbers
    assert key != ServerSpec.from_config({"launch": "vllm"}).key()


def test_a_guard_judge_asked_through_a_server_gives_the_in_process_verdicts(world):
    """eval.judges.safety.server: the safety guard is asked through its own transformers serve
    process; its verdicts (a new judge fingerprint: asked again, not read from the cache) are the
    in-process judge's, and its server is gone afterwards."""
    from hhh_bench.stages.eval import run_eval

    cfg = judged_config(world["tmp"] / "runs", world["judges"],
               [*GEN_ONLY, "+eval.judges.safety.server={launch: transformers}"])  # fmt: skip
    res = run_eval(cfg, {**world["model"], "name": "ties served judge"}, world["data"])
    saved = json.loads((Path(res["dir"]) / "results.json").read_text())
    assert saved["judge_counts"]["harmful_gen"]["judged"] > 0  # asked, not from the cache
    assert saved["judges"]["harmful_gen"]["server"] == {"server": "transformers", "args": []}
    assert res["metrics"]["harmful_gen"] == pytest.approx(
        world["hf"]["metrics"]["harmful_gen"], abs=0
    )
    items = read_jsonl(Path(res["dir"]) / "items.jsonl")["harmful_gen"]
    before = read_jsonl(Path(world["hf"]["dir"]) / "items.jsonl")["harmful_gen"]
    assert [i["judge_answer"] for i in items] == [i["judge_answer"] for i in before]
    assert _servers_of(world["judges"]["safety"]) == []


def test_only_generating_guards_take_a_server():
    from hhh_bench.evaluation.judges import JudgeSpec

    with pytest.raises(ValueError, match=r"eval.judges.reward.server: only a guard judge"):
        JudgeSpec.from_config("reward", {"kind": "reward", "model": "m", "server": {}})
    with pytest.raises(ValueError, match=r"eval.judges.safety.server.launch must be one of"):
        JudgeSpec.from_config("safety", {"kind": "guard", "model": "m", "on_unparsed": "positive",
                                         "server": {"launch": "ollama"}})  # fmt: skip
