"""The load: streaming completions against one endpoint, timed chunk by chunk.

Every request is `POST {url}/completions` with `stream: true` and
`stream_options: {"include_usage": true}` (vLLM then ends the stream with a chunk carrying
`usage`), a prompt of P simple words (a remote tokenizer is out of reach: the server's own count
comes back in `usage.prompt_tokens`), and `max_tokens: T` with vLLM's `ignore_eos`, so every
request generates exactly T tokens and runs are comparable. Each prompt is a different shuffle
of the words, so vLLM's prefix cache cannot make later requests look faster than the first.

Timings (time.monotonic): TTFT is request sent -> first chunk carrying a choice; inter-token
latencies are the gaps between such chunks; end-to-end is sent -> stream finished. vLLM sends one
chunk per token while the client keeps up, and merges the tokens generated meanwhile into one
chunk when it does not (its output collector coalesces), so a chunk may carry several tokens:
the chunk count is checked against `usage`, and the time per output token (first -> last chunk
over the usage's tokens after the first) is exact either way. Nothing here raises for a failed request: it becomes a result with an
error kind (`http_<status>`, `timeout`, `connect`, `stream_broken`, `error_event`: an error object
inside a 200 stream, as vLLM and RunPod's worker send them) and a short message without the key.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from deployer.provider import REDACTED, Endpoint

WORDS = ("the quick brown fox jumps over a lazy dog how are you today one cold start is mostly moving "
         "weights onto it and then it runs on every request").split()
RETRY_COLD = ("connect", "http_502", "http_503")
"""Answers that mean "nothing is listening yet" while a cold start runs: the cold request is sent again."""


@dataclass(frozen=True)
class LoadSpec:
    """What to send: `requests` in all, at most `concurrency` at once, each with a prompt of
    `prompt_tokens` words asking for `max_tokens` tokens; one request may take `timeout_s`."""

    requests: int = 20
    concurrency: int = 4
    prompt_tokens: int = 128
    max_tokens: int = 64
    timeout_s: float = 300.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RequestResult:
    """One request's outcome. Times are seconds; `error` is None for a success."""

    index: int
    sent_at: float  # time.monotonic() when the request went out
    error: str | None = None
    detail: str | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    chunks: int = 0  # chunks carrying a choice (one token each, unless vLLM merged some)
    decode_s: float | None = None  # first -> last such chunk
    prompt_tokens: int | None = None  # from usage: the server's count
    completion_tokens: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first, from the usage's token count."""
        if self.decode_s is None or not self.completion_tokens or self.completion_tokens < 2:
            return None
        return self.decode_s / (self.completion_tokens - 1)


def prompt(index: int, words: int) -> str:
    """`words` simple words, shuffled differently for every request index (deterministic)."""
    rng = random.Random(index)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def body(endpoint: Endpoint, spec: LoadSpec, index: int) -> dict[str, Any]:
    """The JSON of request `index`."""
    return {"model": endpoint.model, "prompt": prompt(index, spec.prompt_tokens), "max_tokens": spec.max_tokens,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}


def client(endpoint: Endpoint, spec: LoadSpec) -> httpx.AsyncClient:
    """An async client for the endpoint with its key; pool sized for the concurrency."""
    headers = {"Authorization": f"Bearer {endpoint.api_key}", **endpoint.headers}
    timeout = httpx.Timeout(spec.timeout_s, connect=min(10.0, spec.timeout_s))
    limits = httpx.Limits(max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency)
    return httpx.AsyncClient(base_url=endpoint.url.rstrip("/") + "/", headers=headers, timeout=timeout, limits=limits)


async def one_request(http: httpx.AsyncClient, endpoint: Endpoint, spec: LoadSpec, index: int,
                      timeout_s: float | None = None) -> RequestResult:
    """Send request `index` and time it. Never raises (cancellation aside): failures are results."""
    result = RequestResult(index=index, sent_at=time.monotonic())
    try:
        async with asyncio.timeout(timeout_s or spec.timeout_s):
            await _stream(http, endpoint, spec, index, result)
    except TimeoutError:
        _fail(result, "timeout", f"no complete answer within {timeout_s or spec.timeout_s:g} s")
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        _fail(result, "connect", f"{exc.__class__.__name__}: {exc}")
    except httpx.TimeoutException as exc:
        _fail(result, "timeout", f"{exc.__class__.__name__}: {exc}")
    except httpx.TransportError as exc:
        _fail(result, "stream_broken", f"{exc.__class__.__name__}: {exc}")
    if result.error is None:
        result.e2e_s = time.monotonic() - result.sent_at
    return result


async def _stream(http: httpx.AsyncClient, endpoint: Endpoint, spec: LoadSpec, index: int,
                  result: RequestResult) -> None:
    async with http.stream("POST", "completions", json=body(endpoint, spec, index)) as response:
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            _fail(result, f"http_{response.status_code}", text)
            return
        last: float | None = None
        done = False
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            now = time.monotonic()
            try:
                chunk = json.loads(data)
            except ValueError:
                _fail(result, "stream_broken", f"a chunk that is not JSON: {data[:100]}")
                return
            if not isinstance(chunk, dict) or "error" in chunk:
                _fail(result, "error_event", json.dumps(chunk.get("error") if isinstance(chunk, dict) else chunk))
                return
            if chunk.get("choices"):
                if last is None:
                    result.ttft_s = now - result.sent_at
                else:
                    result.gaps_s.append(now - last)
                last = now
                result.chunks += 1
                result.decode_s = now - result.sent_at - result.ttft_s
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                result.prompt_tokens = usage.get("prompt_tokens")
                result.completion_tokens = usage.get("completion_tokens")
        if not done:
            _fail(result, "stream_broken", f"the stream ended without [DONE] after {result.chunks} token chunk(s)")
        elif result.chunks == 0:
            _fail(result, "stream_broken", "the stream finished without a single token")


def _fail(result: RequestResult, kind: str, detail: str) -> None:
    result.error = kind
    result.detail = " ".join(detail.split())[:300]


def scrub(text: str | None, endpoint: Endpoint) -> str | None:
    """`text` without the endpoint's key (an error body could echo a header)."""
    if text and endpoint.api_key:
        return text.replace(endpoint.api_key, REDACTED)
    return text


class LoadRun:
    """One closed-loop run: `spec.concurrency` workers send `spec.requests` requests between them,
    each sending its next request when the previous one finished.

    `results` fills as requests finish, so a run interrupted (Ctrl-C cancels `run`) still holds
    every finished request; `started`/`finished` bound the wall-clock duration."""

    def __init__(self, endpoint: Endpoint, spec: LoadSpec,
                 on_result: Callable[[RequestResult], None] | None = None) -> None:
        self.endpoint = endpoint
        self.spec = spec
        self.on_result = on_result
        self.results: list[RequestResult] = []
        self.started: float | None = None
        self.finished: float | None = None
        self._next = 0

    @property
    def duration_s(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started

    async def run(self) -> list[RequestResult]:
        """Send every request; returns the results (also in `results`). Never raises for a
        failed request."""
        self.started = time.monotonic()
        try:
            async with client(self.endpoint, self.spec) as http:
                workers = min(self.spec.concurrency, self.spec.requests)
                await asyncio.gather(*(self._worker(http) for _ in range(workers)))
        finally:
            self.finished = time.monotonic()
        return self.results

    async def _worker(self, http: httpx.AsyncClient) -> None:
        while self._next < self.spec.requests:
            index = self._next
            self._next += 1
            result = await one_request(http, self.endpoint, self.spec, index)
            result.detail = scrub(result.detail, self.endpoint)
            self.results.append(result)
            if self.on_result is not None:
                self.on_result(result)


async def first_token(endpoint: Endpoint, spec: LoadSpec, *, since: float, timeout_s: float,
                      retry_every: float = 0.25) -> tuple[RequestResult, int]:
    """The cold request: send one request (index -1) and, while the answer says nothing is
    listening yet (RETRY_COLD), send it again, until `since + timeout_s`. Returns the last
    result and how many were sent. Never raises for a failed request."""
    attempts = 0
    async with client(endpoint, spec) as http:
        while True:
            attempts += 1
            left = since + timeout_s - time.monotonic()
            result = await one_request(http, endpoint, spec, -1, timeout_s=max(left, 0.001))
            result.detail = scrub(result.detail, endpoint)
            if result.error not in RETRY_COLD or time.monotonic() + retry_every >= since + timeout_s:
                return result, attempts
            await asyncio.sleep(retry_every)
