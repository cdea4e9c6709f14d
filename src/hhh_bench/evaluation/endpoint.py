"""A guard judge asked through an OpenAI-compatible chat completions API
(``eval.judges.<name>.endpoint``): a model you do not hold (an API model, as AlpacaEval's and
StrongREJECT's published GPT-4 annotators) or one served elsewhere (``vllm serve``).

The rendered judge prompt (the judge's format-string ``template``) is sent as the one user
message of ``POST <url>/chat/completions`` (after its ``system`` turn in ``parse`` mode), at
temperature 0:

* ``mode: generate``: ``max_new_tokens`` tokens; the answer's first word is read against the
  labels as in process (:meth:`hhh_bench.evaluation.judges.Judge._read`).
* ``mode: parse``: ``max_new_tokens`` tokens; the judge's parser reads its score (MT-Bench's
  ``[[rating]]``, StrongREJECT's rubric), as in process.
* ``mode: logprob``: one token with ``logprobs`` and ``top_logprobs``; each label's probability
  is the summed probability of the returned top tokens that are that label once stripped of
  white space (case matters: AlpacaEval's ``weighted_alpaca_eval_gpt4_turbo`` annotator reads
  ``m`` against ``M``); ``p`` = P(positive) / (P(positive) + P(negative)), or with
  ``label_values`` the expected value over the labels found. When no label is among the top
  tokens the answer is unparsed: its verdict has no ``p``, ``on_unparsed`` decides its flag
  (which then stands for the score: a StrongREJECT score of 1 for ``positive``), and the task
  counts it (:func:`hhh_bench.evaluation.judges.is_unparsed`).

The key is read from the environment variable ``api_key_env`` names, sent as a bearer token and
never written anywhere (the results row records only that the judge is an endpoint and its
model name). A request that fails with a rate limit (429), a server error (5xx) or a broken
connection is retried ``max_retries`` times with exponential backoff; then the run stops with
an error naming the judge and the URL.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

# eval.judges.<name>.endpoint keys: (type check, default, what it is)
ENDPOINT_KEYS: dict[str, tuple[str, Any]] = {
    "url": (
        "an http(s) base URL ending before /chat/completions, e.g. https://api.openai.com/v1",
        None,
    ),
    "api_key_env": ("the environment variable holding the API key (null: no key)", None),
    "request_timeout_s": ("seconds a request may take", 120.0),
    "max_retries": ("retries of a rate-limited, failed or dropped request", 5),
    "top_logprobs": ("logprob mode: top tokens asked for (OpenAI allows up to 20)", 5),
}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_endpoint_spec(where: str, spec: Any) -> None:
    """Validate ``spec.endpoint`` (a mapping of :data:`ENDPOINT_KEYS`) and what an endpoint
    judge may be.

    Raises:
        ValueError: naming ``<where>.endpoint.<key>`` and what is wrong.
    """
    ep = spec.endpoint
    if not isinstance(ep, Mapping):
        raise ValueError(
            f"{where}.endpoint must be a mapping of {sorted(ENDPOINT_KEYS)}, got {ep!r}"
        )
    unknown = sorted(set(ep) - set(ENDPOINT_KEYS))
    if unknown:
        raise ValueError(
            f"{where}.endpoint: unknown key(s) {unknown}; known: {sorted(ENDPOINT_KEYS)}"
        )
    url = ep.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(
            f"{where}.endpoint.url must be an http(s) base URL such as "
            f"https://api.openai.com/v1 (the API's /chat/completions is appended), got {url!r}"
        )
    env = ep.get("api_key_env")
    if env is not None and (not isinstance(env, str) or not _ENV_NAME.match(env)):
        raise ValueError(
            f"{where}.endpoint.api_key_env must name an environment variable (e.g. "
            f"OPENAI_API_KEY), not hold the key, got a {type(env).__name__}"
        )
    for name, low in (("max_retries", 0), ("top_logprobs", 1)):
        v = ep.get(name, ENDPOINT_KEYS[name][1])
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{where}.endpoint.{name} must be an integer >= {low}, got {v!r}")
    v = ep.get("request_timeout_s", ENDPOINT_KEYS["request_timeout_s"][1])
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
        raise ValueError(
            f"{where}.endpoint.request_timeout_s must be a positive number of seconds, got {v!r}"
        )
    if spec.kind != "guard":
        raise ValueError(
            f"{where}.endpoint: only a guard judge (one that answers with a label) is asked "
            f"through an endpoint; this one is a {spec.kind!r} judge"
        )
    if spec.server is not None:
        raise ValueError(f"{where}: set endpoint or server, not both")
    if spec.template in ("chat", "response"):
        raise ValueError(
            f"{where}.template: an endpoint judge's prompt is a format string with {{prompt}} and "
            "{response} (or {output_1} and {output_2}), sent as the user message; the API "
            f"applies its own chat template, so {spec.template!r} is not possible"
        )
    if spec.revision is not None:
        raise ValueError(
            f"{where}.revision: an endpoint's model has no hub revision; name a dated model "
            f"(e.g. gpt-4-turbo-2024-04-09) as {where}.model instead"
        )
    if spec.trust_remote_code:
        raise ValueError(f"{where}.trust_remote_code means nothing for an endpoint judge")


def api_key(where: str, spec: Any) -> str | None:
    """The endpoint's key from the environment, or None when it needs none.

    Raises:
        ValueError: ``api_key_env`` names a variable that is unset or empty (before any work).
    """
    env = (spec.endpoint or {}).get("api_key_env")
    if env is None:
        return None
    key = os.environ.get(env, "")
    if not key.strip():
        raise ValueError(
            f"{where}.endpoint.api_key_env: the environment variable {env} is not set (or "
            f"empty); export it with the key of {spec.endpoint.get('url')}, or set "
            f"{where}.endpoint.api_key_env=null for an endpoint that needs none"
        )
    return key


class EndpointError(RuntimeError):
    """The endpoint did not answer (after its retries) or answered out of format."""


class ChatClient:
    """POST ``<url>/chat/completions`` with retries (module docstring); the transport of
    :class:`hhh_bench.evaluation.judges.EndpointJudge`."""

    def __init__(self, spec: Any) -> None:
        import requests

        ep = dict(spec.endpoint)
        self.name = str(spec.model)
        self.url = str(ep["url"]).rstrip("/") + "/chat/completions"
        self.timeout = float(ep.get("request_timeout_s", ENDPOINT_KEYS["request_timeout_s"][1]))
        self.retries = int(ep.get("max_retries", ENDPOINT_KEYS["max_retries"][1]))
        self.top = int(ep.get("top_logprobs", ENDPOINT_KEYS["top_logprobs"][1]))
        self.session = requests.Session()
        self.session.headers["Content-Type"] = "application/json"
        key = api_key(f"judge {spec.model!r}", spec)
        if key is not None:
            self.session.headers["Authorization"] = f"Bearer {key}"

    def ask(
        self, messages: Sequence[Mapping[str, str]], *, max_tokens: int, logprobs: bool
    ) -> Mapping[str, Any]:
        """The API's answer to ``messages`` (the user turn, after a system turn for a judge in
        ``parse`` mode), at temperature 0."""
        import requests

        body: dict[str, Any] = {
            "model": self.name,
            "messages": list(messages),
            "temperature": 0,
            "max_tokens": max_tokens,
        }
        if logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = self.top
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(30.0, 0.5 * 2 ** (attempt - 1)))
            try:
                resp = self.session.post(self.url, json=body, timeout=self.timeout)
            except requests.RequestException as err:
                last = f"{type(err).__name__}: {err}"
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                last = f"HTTP {resp.status_code}"
                continue
            if resp.status_code >= 400:  # a bad request or key: asking again will not help
                raise EndpointError(
                    f"judge {self.name!r} at {self.url}: HTTP {resp.status_code}: {resp.text[:300]}"
                )
            try:
                reply = resp.json()
                reply["choices"][0]["message"]
            except (ValueError, KeyError, IndexError, TypeError) as err:
                raise EndpointError(
                    f"judge {self.name!r} at {self.url}: not a chat completions answer "
                    f"({type(err).__name__}: {err}): {resp.text[:300]!r}"
                ) from None
            return reply
        raise EndpointError(
            f"judge {self.name!r} at {self.url} did not answer after {self.retries + 1} "
            f"tries (last: {last})"
        )

    def label_mass(self, reply: Mapping[str, Any], labels: Sequence[str]) -> list[float]:
        """Per label, the summed probability of the first token's top tokens that are that
        label once stripped of white space (case kept)."""
        try:
            first = reply["choices"][0]["logprobs"]["content"][0]
            top = first.get("top_logprobs") or [first]
            pairs = [(str(t["token"]).strip(), float(t["logprob"])) for t in top]
        except (KeyError, IndexError, TypeError, ValueError):
            raise EndpointError(
                f"judge {self.name!r} at {self.url}: the answer has no logprobs of its first "
                "token (logprob mode needs an API that returns top_logprobs; use mode generate "
                "otherwise)"
            ) from None
        return [sum(math.exp(lp) for tok, lp in pairs if tok == x.strip()) for x in labels]

    def close(self) -> None:
        self.session.close()


def content(reply: Mapping[str, Any]) -> str:
    """The text of a chat completions answer."""
    return str(reply["choices"][0]["message"].get("content") or "")
