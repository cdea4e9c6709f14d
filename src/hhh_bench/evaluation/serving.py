"""Evaluation through an OpenAI-compatible inference server (``eval.backend=server``).

lm-eval's ``local-completions`` model sends every request over HTTP to ``/v1/completions``. The
server is either given (``eval.server.url``: one the user runs, e.g. ``vllm serve PATH``) or
started by the eval stage for each evaluated model and stopped after it (``eval.server.launch``):

``transformers``
    ``transformers serve PATH`` (transformers' serving extra; in the project's environment).
    Generation only: it ignores ``echo``/``logprobs``, so the log-likelihood tasks are refused.
``vllm`` / ``sglang``
    ``python -m vllm.entrypoints.openai.api_server`` / ``python -m sglang.launch_server``, from
    the interpreter of their own environment (``eval.server.python``; ``make serve-env`` builds
    ``.venv-serve`` from ``serve/requirements-<server>.lock``): their pins never meet the
    project's. Both return prompt log-probabilities, so the log-likelihood tasks run too.

What a server can do is asked, not assumed (:func:`probe`): prompt log-probabilities
(``echo`` + ``logprobs``), token-id prompts, stop strings. A suite with log-likelihood tasks on a
server without prompt log-probabilities is refused before any item is sent, rather than scored
another way. A server that cannot take stop strings (``transformers serve`` with a WordPiece
tokenizer, the toy world's) generates up to ``max_gen_toks`` and the answers are cut at the
task's stop strings here, as the server would have: greedy answers are the same.

A launched server listens on a free loopback port, writes its log to ``server.log`` in the
stage's folder, and is waited for on ``/health`` (its exit or ``startup_timeout_s`` is an error
with the log's last lines). It runs in its own process group, which is ended (SIGTERM, then
SIGKILL) when the evaluation finishes, fails or is interrupted; on Linux the kernel also ends it
if the stage's process dies without cleaning up (``PR_SET_PDEATHSIG``). A server that stops
answering mid-run is an error naming it (:class:`ServerError`): the stage then writes no row.

Requests: ``max_concurrency`` in flight, each retried ``max_retries`` times with exponential
backoff (lm-eval's), each bounded by ``request_timeout_s``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAUNCHERS = ("transformers", "vllm", "sglang")
GIVEN_SERVER_WAIT_S = 30.0
"""How long a server given by URL is waited for (it should be up already)."""
LOGLIKELIHOOD_TYPES = ("loglikelihood", "loglikelihood_rolling", "multiple_choice")


class ServerError(RuntimeError):
    """An inference server could not be started, or stopped answering."""


@dataclass(frozen=True)
class ServerSpec:
    """``eval.server``: where the server is, or how to start one (docs/evaluation.md)."""

    url: str | None = None
    launch: str = "transformers"
    python: str | None = None
    port: int = 0
    args: tuple[str, ...] = ()
    startup_timeout_s: float = 600.0
    request_timeout_s: float = 300.0
    max_concurrency: int = 1
    max_retries: int = 3
    data_parallel_size: int = 1
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, server: Mapping[str, Any] | None) -> ServerSpec:
        """Validate ``eval.server`` (a clear error naming the key)."""
        s = dict(server or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(s) - known)
        if unknown:
            raise ValueError(f"eval.server has unknown key(s) {unknown}; known: {sorted(known)}")
        url = s.get("url")
        if url is not None and (
            not isinstance(url, str) or not url.startswith(("http://", "https://"))
        ):
            raise ValueError(
                f"eval.server.url must be an http(s) URL such as http://host:8000/v1, got {url!r}"
            )
        launch = s.get("launch", "transformers")
        if launch not in LAUNCHERS:
            raise ValueError(f"eval.server.launch must be one of {list(LAUNCHERS)}, got {launch!r}")
        for name, low in (
            ("port", 0),
            ("max_concurrency", 1),
            ("max_retries", 1),
            ("data_parallel_size", 1),
        ):
            v = s.get(name, getattr(cls, name))
            if (
                isinstance(v, bool)
                or not isinstance(v, int)
                or v < low
                or (name == "port" and v > 65535)
            ):
                raise ValueError(f"eval.server.{name} must be an integer >= {low}, got {v!r}")
        for name in ("startup_timeout_s", "request_timeout_s"):
            v = s.get(name, getattr(cls, name))
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
                raise ValueError(
                    f"eval.server.{name} must be a positive number of seconds, got {v!r}"
                )
        args = s.get("args") or ()
        if isinstance(args, str) or not all(isinstance(a, (str, int, float)) for a in args):
            raise ValueError(
                f"eval.server.args must be a list of command-line arguments, got {args!r}"
            )
        dp = s.get("data_parallel_size", 1)
        if dp > 1 and (url is not None or launch == "transformers"):
            raise ValueError(
                f"eval.server.data_parallel_size={dp}: "
                + ("a server given by url is set up by whoever runs it" if url is not None
                   else "transformers serve has no data parallelism; use launch=vllm or sglang")
            )  # fmt: skip
        python = s.get("python")
        if python is not None and url is None and not Path(python).is_file():
            raise ValueError(
                f"eval.server.python={python!r} does not exist: build the server's environment "
                "with `make serve-env` (docs/evaluation.md) or point at its interpreter"
            )
        return cls(
            url=url.rstrip("/") if url else None,
            launch=launch,
            python=python,
            port=int(s.get("port", 0)),
            args=tuple(str(a) for a in args),
            startup_timeout_s=float(s.get("startup_timeout_s", cls.startup_timeout_s)),
            request_timeout_s=float(s.get("request_timeout_s", cls.request_timeout_s)),
            max_concurrency=int(s.get("max_concurrency", cls.max_concurrency)),
            max_retries=int(s.get("max_retries", cls.max_retries)),
            data_parallel_size=dp,
            env={str(k): str(v) for k, v in (s.get("env") or {}).items()},
        )

    def key(self) -> dict[str, Any]:
        """What of the server can change a number (the eval cache key): which server software
        and its arguments; not where it listens, nor timeouts and concurrency."""
        return {"server": "url" if self.url else self.launch, "args": list(self.args)}


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(spec: ServerSpec, model: str, port: int, *, dtype: str | None, device: str,
                   trust_remote_code: bool) -> list[str]:  # fmt: skip
    """The command that starts ``spec.launch`` serving ``model`` on 127.0.0.1:``port``."""
    python = spec.python or sys.executable
    dtype = dtype or "auto"
    if spec.launch == "transformers":
        cmd = [python, "-m", "transformers.cli.transformers", "serve", model,
               "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype, "--device", device]  # fmt: skip
        trust = "--trust-remote-code"
    elif spec.launch == "vllm":
        cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype,
               "--data-parallel-size", str(spec.data_parallel_size)]  # fmt: skip
        trust = "--trust-remote-code"
    else:
        cmd = [python, "-m", "sglang.launch_server", "--model-path", model,
               "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype,
               "--dp-size", str(spec.data_parallel_size)]  # fmt: skip
        trust = "--trust-remote-code"
    return [*cmd, *([trust] if trust_remote_code else []), *spec.args]


def _die_with_parent() -> None:
    """In the server's process, before it runs: its own process group, and (Linux) SIGKILL when
    the stage's process dies, so that no server outlives the run that started it."""
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Server:
    """A server this process talks to: its ``/v1`` base URL, the model id it serves under, and
    (launched) its process and log."""

    url: str
    model: str
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    command: list[str] | None = None
    kind: str = "url"

    def describe(self) -> str:
        """How an error names the server."""
        if self.process is None:
            return f"the inference server at {self.url}"
        return (
            f"the {self.kind} server started for {self.model} (pid {self.process.pid}, {self.url})"
        )

    def exit_note(self) -> str:
        """Whether a launched server has exited, with the last lines of its log."""
        if self.process is None or self.process.poll() is None:
            return ""
        return f"; it exited with status {self.process.returncode}{_log_tail(self.log_path)}"


def _log_tail(path: Path | None, lines: int = 8) -> str:
    if path is None or not path.is_file():
        return ""
    tail = path.read_text(errors="replace").splitlines()[-lines:]
    return f"; last lines of its log {path}:\n  " + "\n  ".join(tail) if tail else f" (log {path})"


def _get(url: str, timeout: float) -> Any:
    import requests

    return requests.get(url, timeout=timeout)


def _post(url: str, body: Mapping[str, Any], timeout: float) -> Any:
    import requests

    return requests.post(url, json=dict(body), timeout=timeout)


def wait_healthy(server: Server, timeout_s: float, poll_s: float = 0.25) -> None:
    """Wait until ``GET <root>/health`` answers 200; a launched server's exit, or ``timeout_s``,
    is a :class:`ServerError`."""
    import requests

    root = server.url.removesuffix("/v1")
    deadline = time.monotonic() + timeout_s
    while True:
        if server.process is not None and server.process.poll() is not None:
            raise ServerError(
                f"the inference server did not start: `{' '.join(server.command or [])}`"
                + server.exit_note()
            )
        with contextlib.suppress(requests.RequestException):
            if _get(root + "/health", timeout=min(5.0, timeout_s)).status_code == 200:
                return
        if time.monotonic() > deadline:
            why = ("eval.server.startup_timeout_s" if server.process is not None else
                   "a given server is waited for at most that long: is it running, at that URL "
                   "(its /v1 base, e.g. http://host:8000/v1)?")  # fmt: skip
            raise ServerError(
                f"{server.describe()} did not answer /health within {timeout_s:g} s "
                f"({why}){_log_tail(server.log_path)}"
            )
        time.sleep(poll_s)


@contextlib.contextmanager
def serving(spec: ServerSpec, model: str, folder: Path, *, dtype: str | None = "auto",
            device: str = "cpu", trust_remote_code: bool = False) -> Iterator[Server]:  # fmt: skip
    """The server for one evaluated ``model`` (its folder or hub id): the given one, checked to
    serve that model, or one started here and stopped on leaving (however that happens)."""
    if spec.url is not None:
        server = Server(url=spec.url, model=model)
        wait_healthy(server, min(spec.startup_timeout_s, GIVEN_SERVER_WAIT_S))
        check_serves(server)
        yield server
        return
    port = spec.port or free_port()
    cmd = server_command(spec, model, port, dtype=dtype, device=device,
                         trust_remote_code=trust_remote_code)  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "server.log"
    # unbuffered: server.log shows each request as it is served (tail it; a crash's last lines
    # are in it), not in blocks at exit; eval.server.env may say otherwise
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **spec.env}
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)  # fmt: skip
    server = Server(url=f"http://127.0.0.1:{port}/v1", model=model, process=proc,
                    log_path=log_path, command=cmd, kind=spec.launch)  # fmt: skip
    try:
        wait_healthy(server, spec.startup_timeout_s)
        check_serves(server)
        yield server
    finally:
        stop(server)


def stop(server: Server, grace_s: float = 10.0) -> None:
    """End a launched server's process group: SIGTERM, then SIGKILL after ``grace_s``."""
    proc = server.process
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # what the server itself started


def check_serves(server: Server) -> None:
    """The server must serve the model being evaluated under its path or hub id: a server
    serving another model would give that model's numbers to this row."""
    import requests

    try:
        resp = _get(server.url + "/models", timeout=30.0)
        resp.raise_for_status()
        served = [m.get("id") for m in resp.json().get("data", [])]
    except (requests.RequestException, ValueError, AttributeError) as err:
        raise ServerError(
            f"{server.describe()} did not list its models (GET /v1/models): {err}"
        ) from err
    if server.process is None and server.model not in served:
        raise ServerError(
            f"{server.describe()} serves {served}, not the model being evaluated "
            f"({server.model}): serve it under that name (e.g. `vllm serve {server.model}`), or "
            "leave eval.server.url unset and let the stage start a server"
        )


@dataclass(frozen=True)
class Abilities:
    """What a server answered to :func:`probe`."""

    prompt_logprobs: bool
    token_prompts: bool
    stop_strings: bool


def probe(server: Server, tokenizer: Any, timeout_s: float = 60.0) -> Abilities:
    """Ask the server, with one-token requests, whether it returns prompt log-probabilities
    (``echo`` + ``logprobs``), takes token-id prompts, and takes stop strings."""
    import requests

    url = server.url + "/completions"
    base = {"model": server.model, "max_tokens": 1, "temperature": 0}

    def ok(body: Mapping[str, Any]) -> dict[str, Any] | None:
        try:
            resp = _post(url, {**base, **body}, timeout=timeout_s)
        except requests.RequestException as err:
            raise ServerError(
                f"{server.describe()} did not answer a probe: {err}{server.exit_note()}"
            ) from err
        if resp.status_code >= 500:
            raise ServerError(
                f"{server.describe()} failed a one-token request ({resp.status_code}): {resp.text[:300]}"
            )
        return resp.json() if resp.ok else None

    if ok({"prompt": "Hello"}) is None:
        raise ServerError(
            f"{server.describe()} refused a one-token completion of model {server.model}"
        )
    echoed = ok({"prompt": "Hello world", "echo": True, "logprobs": 1})
    lp = ((echoed or {}).get("choices") or [{}])[0].get("logprobs") or {}
    prompt_logprobs = isinstance(lp.get("token_logprobs"), list) and len(lp["token_logprobs"]) >= 2
    ids = tokenizer("Hello world", add_special_tokens=False)["input_ids"][:4] or [0]
    token_prompts = ok({"prompt": list(ids)}) is not None
    stop_strings = ok({"prompt": "Hello", "stop": ["\n"]}) is not None
    return Abilities(prompt_logprobs, token_prompts, stop_strings)


def loglikelihood_tasks(task_manager: Any, tasks: Sequence[str]) -> list[str]:
    """The leaf tasks of ``tasks`` scored by log-likelihood (multiple choice included)."""
    out = []
    for name, task in task_manager.load(list(tasks))["tasks"].items():
        if getattr(task, "OUTPUT_TYPE", None) in LOGLIKELIHOOD_TYPES:
            out.append(name)
    return sorted(out)


def check_abilities(server: Server, abilities: Abilities, ll_tasks: Sequence[str]) -> None:
    """Refuse log-likelihood tasks the server cannot score exactly (before any item is sent)."""
    if not ll_tasks:
        return
    if not abilities.prompt_logprobs:
        raise ServerError(
            f"{server.describe()} does not return prompt log-probabilities (echo + logprobs), "
            f"which the log-likelihood task(s) {list(ll_tasks)} need: evaluate them with "
            "eval.backend=hf, or serve the model with vLLM or SGLang (eval.server.launch)"
        )
    if not abilities.token_prompts:
        raise ServerError(
            f"{server.describe()} does not take token-id prompts: the log-likelihood task(s) "
            f"{list(ll_tasks)} would be re-tokenized from decoded text, which can move the "
            "boundary between context and answer; evaluate them with eval.backend=hf"
        )


def make_server_lm(server: Server, spec: ServerSpec, tokenizer: Any, abilities: Abilities, *,
                   tokenizer_path: str, max_length: int, trust_remote_code: bool = False) -> Any:  # fmt: skip
    """lm-eval's ``local-completions`` model on ``server`` (one request per item,
    ``max_concurrency`` at a time), prompts rendered here with the model's own tokenizer."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    class ServerCompletions(LocalCompletionsAPI):
        """``local-completions`` with the chat template rendered locally (as lm-eval's HF model
        does) and, for a server without stop strings, the answers cut here."""

        def apply_chat_template(self, chat_history, add_generation_prompt=True):  # noqa: ANN001, ANN201
            return self.tokenizer.apply_chat_template(
                chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                continue_final_message=not add_generation_prompt,
            )  # fmt: skip

        def _create_payload(self, messages, generate=False, gen_kwargs=None, seed=1234, eos=None,
                            **kwargs):  # noqa: ANN001, ANN201  # fmt: skip
            payload = super()._create_payload(messages, generate=generate, gen_kwargs=gen_kwargs,
                                              seed=seed, eos=eos, **kwargs)  # fmt: skip
            if generate and not abilities.stop_strings:
                payload.pop("stop", None)
            return payload

        @staticmethod
        def parse_logprobs(outputs, tokens=None, ctxlens=None, **kwargs):  # noqa: ANN001, ANN205
            """lm-eval's reading, after checking that the server returned one log-probability
            per prompt token (echo) and one for the generated token: a server returning fewer
            would have the sums taken over a cut-off answer (a fake server scored 1.0)."""
            for out in outputs if isinstance(outputs, list) else [outputs]:
                for choice, toks in zip(out["choices"], tokens or [], strict=False):
                    got = len(((choice.get("logprobs") or {}).get("token_logprobs")) or [])
                    if got != len(toks) + 1:
                        raise ServerError(
                            f"{server.describe()} returned {got} prompt log-probabilities for a "
                            f"{len(toks)}-token prompt (expected {len(toks) + 1}: the prompt "
                            "echoed and one generated token): its log-likelihoods cannot be read"
                        )
            return LocalCompletionsAPI.parse_logprobs(
                outputs, tokens=tokens, ctxlens=ctxlens, **kwargs
            )

        def generate_until(self, requests, disable_tqdm=False):  # noqa: ANN001, ANN201
            from lm_eval.models.utils import handle_stop_sequences, postprocess_generated_text

            out = super().generate_until(requests, disable_tqdm=disable_tqdm)
            if abilities.stop_strings:
                return out
            return [
                postprocess_generated_text(text, handle_stop_sequences(
                    req.args[1].get("until"), self.eos_string), None)
                for text, req in zip(out, requests, strict=True)
            ]  # fmt: skip

    return ServerCompletions(
        model=server.model,
        base_url=server.url + "/completions",
        tokenizer=tokenizer_path,
        tokenizer_backend="huggingface",
        tokenized_requests=abilities.token_prompts,
        num_concurrent=spec.max_concurrency,
        max_retries=spec.max_retries,
        timeout=int(spec.request_timeout_s),
        batch_size=1,
        max_length=max_length,
        trust_remote_code=trust_remote_code,
    )


@contextlib.contextmanager
def served_lm(server_cfg: Mapping[str, Any] | None, model: str, tokenizer: Any,
              task_manager: Any, tasks: Sequence[str], folder: Path, *, dtype: str | None,
              device: str, trust_remote_code: bool = False) -> Iterator[tuple[Any, dict[str, Any]]]:  # fmt: skip
    """lm-eval's model for one evaluation through a server (started here unless given), with
    what the harness records about it; a server that stops answering inside the block is a
    :class:`ServerError` naming it."""
    import asyncio

    import requests

    spec = ServerSpec.from_config(server_cfg)
    with serving(spec, model, folder, dtype=dtype, device=device,
                 trust_remote_code=trust_remote_code) as server:  # fmt: skip
        abilities = probe(server, tokenizer, timeout_s=spec.request_timeout_s)
        check_abilities(server, abilities, loglikelihood_tasks(task_manager, tasks))
        lm = make_server_lm(server, spec, tokenizer, abilities, tokenizer_path=model,
                            max_length=_max_length(model, tokenizer, trust_remote_code),
                            trust_remote_code=trust_remote_code)  # fmt: skip
        info = {"server": spec.url is None and spec.launch or "url", "url": server.url,
                "abilities": abilities.__dict__, "max_concurrency": spec.max_concurrency}  # fmt: skip
        failures: tuple[type[BaseException], ...] = (
            requests.RequestException, ConnectionError, TimeoutError, asyncio.TimeoutError,
            *_client_errors(),
        )  # fmt: skip
        try:
            yield lm, info
        except failures as err:
            _collect_failed_requests()
            raise ServerError(
                f"{server.describe()} stopped answering during the evaluation "
                f"({type(err).__name__}: {err}){server.exit_note()}"
            ) from err


def _collect_failed_requests() -> None:
    """Finalize now the requests lm-eval's concurrent path left failed and unretrieved.

    When one request fails for good, ``asyncio.gather`` raises and the other requests' tasks
    keep their exceptions. Garbage-collected later, each logs "Task exception was never
    retrieved" with a traceback, whose formatting parses source (``ast``); on Python 3.11 a
    collection that happens inside another ``ast.parse`` (pytest's, a Jinja template's) leaves
    the parser's depth counter wrong, and every later parse in the process fails with
    ``SystemError: AST constructor recursion depth mismatch``. Collected here, with asyncio's
    log of them silenced (the error raised next says what failed), they cannot."""
    import gc

    logger = logging.getLogger("asyncio")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        gc.collect()
    finally:
        logger.setLevel(level)


def _client_errors() -> tuple[type[BaseException], ...]:
    """aiohttp's and tenacity's errors (lm-eval's concurrent path), where they are installed."""
    out: list[type[BaseException]] = []
    with contextlib.suppress(ImportError):
        import aiohttp

        out.append(aiohttp.ClientError)
    with contextlib.suppress(ImportError):
        import tenacity

        out.append(tenacity.RetryError)
    return tuple(out)


def _max_length(model: str, tokenizer: Any, trust_remote_code: bool) -> int:
    """The model's context length (its config), else the tokenizer's, else 2048."""
    from transformers import AutoConfig

    with contextlib.suppress(Exception):  # a config without the field: the tokenizer's
        n = AutoConfig.from_pretrained(
            model, trust_remote_code=trust_remote_code
        ).max_position_embeddings
        if isinstance(n, int) and n > 0:
            return n
    n = getattr(tokenizer, "model_max_length", None)
    return int(n) if isinstance(n, int) and 0 < n < 10**7 else 2048
