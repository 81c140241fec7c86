"""The shared endpoint client: readiness, smoke check and status for any OpenAI-compatible endpoint.

Readiness is proven the way a user would prove it: `GET /v1/models` with the key lists the
served model, then a one-token completion succeeds. `/health` is not enough (RunPod's shows no
workers while idle; vLLM's is unauthenticated and answers before the model can serve).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from .errors import NotReadyError
from .provider import Endpoint

POLL_MIN = 0.25
POLL_MAX = 0.5  # readiness is noticed within a second of the server answering, even on a busy machine


@dataclass
class SmokeResult:
    models: list[str]
    completion: str
    latency_s: float


class EndpointClient:
    """Talks to one endpoint with its key. Every method blocks for at most `timeout` per call."""

    def __init__(self, endpoint: Endpoint, *, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        headers = {"Authorization": f"Bearer {endpoint.api_key}", **endpoint.headers}
        self._http = httpx.Client(base_url=endpoint.url.rstrip("/") + "/", headers=headers, timeout=timeout)

    def __enter__(self) -> EndpointClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def models(self) -> list[str]:
        """Model ids served. Raises httpx.HTTPStatusError on a non-2xx answer, NotReadyError on a
        2xx answer that is not an OpenAI model list."""
        response = self._http.get("models")
        response.raise_for_status()
        try:
            return [m["id"] for m in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise NotReadyError(f"GET /models answered {response.status_code} without a model list: "
                                f"{_short(response)}") from None

    def complete_one_token(self) -> str:
        """A one-token completion of the served model; returns its text. Raises like `models`."""
        response = self._http.post(
            "completions", json={"model": self.endpoint.model, "prompt": "Hello", "max_tokens": 1}
        )
        response.raise_for_status()
        try:
            return response.json()["choices"][0]["text"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise NotReadyError(f"a one-token completion answered {response.status_code} without a choice: "
                                f"{_short(response)}") from None

    def smoke(self) -> SmokeResult:
        """`/models` must list the served model, then one token must come back.

        Raises NotReadyError saying which step failed."""
        start = time.monotonic()
        try:
            models = self.models()
        except httpx.HTTPStatusError as exc:
            raise NotReadyError(f"GET /models answered {exc.response.status_code}: {_short(exc.response)}") from None
        if self.endpoint.model not in models:
            raise NotReadyError(f"the endpoint serves {models}, not {self.endpoint.model!r}")
        try:
            text = self.complete_one_token()
        except httpx.HTTPStatusError as exc:
            raise NotReadyError(f"a one-token completion answered {exc.response.status_code}: {_short(exc.response)}") from None
        return SmokeResult(models=models, completion=text, latency_s=time.monotonic() - start)


def _short(response: httpx.Response) -> str:
    return response.text[:200].replace("\n", " ")


def wait_ready(
    endpoint: Endpoint,
    *,
    timeout: float,
    probe: Callable[[], str | None] | None = None,
    on_wait: Callable[[str], None] | None = None,
    request_timeout: float = 30.0,
) -> SmokeResult:
    """Block until the endpoint passes `smoke`, then return its result.

    Polls with backoff from POLL_MIN to POLL_MAX seconds. Between attempts `probe()` is asked
    whether what serves the endpoint is still alive; a reason string ends the wait at once.
    `on_wait(last_problem)` is called after each failed attempt (for a progress line).
    Raises NotReadyError on a dead probe or when `timeout` seconds pass.
    """
    deadline = time.monotonic() + timeout
    delay = POLL_MIN
    problem = "no answer yet"
    with EndpointClient(endpoint, timeout=request_timeout) as client:
        while True:
            try:
                return client.smoke()
            except NotReadyError as exc:
                problem = exc.message
            except httpx.HTTPError as exc:
                problem = f"{exc.__class__.__name__}: {str(exc)[:120] or 'no answer'}"
            if probe is not None:
                dead = probe()
                if dead:
                    raise NotReadyError(f"gave up waiting: {dead}", hint="see `deployer logs NAME`")
            if time.monotonic() >= deadline:
                raise NotReadyError(
                    f"not ready after {timeout:.0f}s; last problem: {problem}",
                    hint="raise startup.readiness_timeout, or see `deployer logs NAME`",
                )
            if on_wait:
                on_wait(problem)
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, POLL_MAX)
