"""evaluation/serving.py without a model: the commands each server is started with, a server
that cannot start or never answers (named, with its log; its process ended), the refusal of
log-likelihood tasks a server cannot score, the judge spec's server key. The real server
process is tests/eval/test_eval_server.py's."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from hhh_bench.evaluation.serving import (
    Abilities,
    Server,
    ServerError,
    ServerSpec,
    check_abilities,
    server_command,
    serving,
)


def test_each_server_is_started_with_its_own_flags():
    vllm = ServerSpec.from_config({"launch": "vllm", "python": sys.executable,
                                   "data_parallel_size": 4, "args": ["--max-model-len", 4096]})  # fmt: skip
    assert server_command(vllm, "/m", 9000, dtype="bfloat16", device="cuda",
                          trust_remote_code=True) == [  # fmt: skip
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", "/m",
        "--host", "127.0.0.1", "--port", "9000", "--dtype", "bfloat16",
        "--data-parallel-size", "4", "--trust-remote-code", "--max-model-len", "4096",
    ]  # fmt: skip
    sglang = ServerSpec.from_config({"launch": "sglang", "data_parallel_size": 2})
    assert server_command(sglang, "org/m", 1, dtype=None, device="cuda",
                          trust_remote_code=False) == [  # fmt: skip
        sys.executable, "-m", "sglang.launch_server", "--model-path", "org/m",
        "--host", "127.0.0.1", "--port", "1", "--dtype", "auto", "--dp-size", "2",
    ]  # fmt: skip
    hf = ServerSpec.from_config({})
    assert server_command(hf, "/m", 2, dtype="auto", device="cpu", trust_remote_code=False)[1:5] == [
        "-m", "transformers.cli.transformers", "serve", "/m",
    ]  # fmt: skip


def _processes_running(marker: str) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.encode() in (proc / "cmdline").read_bytes():
                    out.append(int(proc.name))
            except OSError:
                continue
    return out


def test_a_server_that_cannot_start_is_named_with_its_log(tmp_path):
    """launch=vllm on an interpreter without vLLM: it exits at once; the error names the
    command, its exit status and the last lines of its log (the missing module)."""
    spec = ServerSpec.from_config({"launch": "vllm", "python": sys.executable,
                                   "startup_timeout_s": 60})  # fmt: skip
    with pytest.raises(ServerError) as err, serving(spec, str(tmp_path / "m"), tmp_path):
        pass
    message = str(err.value)
    assert "the inference server did not start: `" in message and "vllm.entrypoints" in message
    assert "it exited with status 1" in message and "No module named" in message
    assert (tmp_path / "server.log").is_file()


def test_a_server_that_never_answers_times_out_and_is_stopped(tmp_path):
    """A process that never answers /health: ServerError after startup_timeout_s naming the
    setting, and its process group ended."""
    fake = tmp_path / "fakepython"
    marker = f"never-answers-{os.getpid()}"
    fake.write_text(
        f"#!/bin/sh\nexec {sys.executable} -c 'import time; time.sleep(120)' {marker}\n"
    )
    fake.chmod(0o755)
    spec = ServerSpec.from_config({"launch": "sglang", "python": str(fake),
                                   "startup_timeout_s": 1.5})  # fmt: skip
    timeout = r"did not answer /health within 1.5 s \(eval.server.startup_timeout_s\)"
    with pytest.raises(ServerError, match=timeout), serving(spec, "m", tmp_path):
        pass
    assert _processes_running(marker) == []


def test_loglikelihood_tasks_need_prompt_logprobs_and_token_prompts():
    server = Server(url="http://h:1/v1", model="/m")
    check_abilities(server, Abilities(False, False, False), [])  # generation only: fine
    with pytest.raises(ServerError, match=r"does not return prompt log-probabilities .* "
                       r"\['mc'\]"):  # fmt: skip
        check_abilities(server, Abilities(False, True, True), ["mc"])
    with pytest.raises(ServerError, match=r"does not take token-id prompts: .* \['mc'\] would "
                       r"be re-tokenized"):  # fmt: skip
        check_abilities(server, Abilities(True, False, True), ["mc"])
    check_abilities(server, Abilities(True, True, False), ["mc"])


def test_a_judge_through_a_server_is_another_judge():
    """The server kind (not where it listens) is in a judge's description and fingerprint, so
    verdicts from the in-process judge are not taken for the served one's."""
    from hhh_bench.evaluation.judges import JudgeSpec, judge_fingerprint, make_judge

    base = {"kind": "guard", "model": "org/guard", "on_unparsed": "positive"}
    local = JudgeSpec.from_config("safety", base)
    served = JudgeSpec.from_config("safety", {**base, "server": {"url": "http://a:1/v1"}})
    moved = JudgeSpec.from_config("safety", {**base, "server": {"url": "http://b:2/v1"}})
    assert "server" not in local.describe()
    assert served.describe()["server"] == {"server": "url", "args": []}
    assert judge_fingerprint(served) == judge_fingerprint(moved) != judge_fingerprint(local)
    revision = JudgeSpec.from_config("safety", {**base, "revision": "abc", "server": {}})
    with pytest.raises(ValueError, match=r"transformers serve takes no revision"):
        make_judge(revision)


def test_server_settings_without_the_server_backend_are_refused():
    """eval.server.url set with the default eval.backend=hf would evaluate in process, unsaid."""
    from conftest import compose
    from hhh_bench.stages.common import to_dict
    from hhh_bench.validation import validate_run

    with pytest.raises(ValueError, match=r"eval.server.url is set but eval.backend=hf: .* add "
                       r"eval.backend=server"):  # fmt: skip
        validate_run(to_dict(compose(["eval.server.url=http://127.0.0.1:8000/v1"])))
    with pytest.raises(ValueError, match=r"eval.server.launch is set but eval.backend=hf"):
        validate_run(to_dict(compose(["eval.server.launch=vllm"])))
    validate_run(to_dict(compose(["eval.server.max_concurrency=8"])))  # no server named: fine
