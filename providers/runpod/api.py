"""RunPod REST v2 (control plane) and the serverless data plane, over httpx.

Every call goes through `deployer.http.ApiClient`: 5xx and timeouts are retried with backoff,
429 waits for Retry-After, and failures come back as `RunPodError` phrased in RunPod's terms
(problem+json `title`/`detail`/`errors` are shown). Endpoint creation is never blindly retried:
after a lost or failed response the endpoint is looked up by name first, so one deploy never
makes two endpoints.

Why not the `runpod` SDK: it speaks GraphQL (retiring in early 2027), has no delete, scale or
settings update, puts env values into query text unescaped, ignores RUNPOD_API_KEY and costs
about 1.5 s to import. Nothing here needs it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx

from deployer.errors import MissingCredentialsError, ProviderError
from deployer.http import ApiClient, retry_after_seconds
from deployer.settings import blank_variables

from .settings import RunPodSettings

PROVIDER = "runpod"
USER_AGENT = "deployer (+https://github.com/deployer; runpod rest v2)"
KEY_HINT = "set RUNPOD_API_KEY, or put [default] api_key = \"...\" in ~/.runpod/config.toml " \
           "(keys: RunPod console > Settings > API Keys)"


class RunPodError(ProviderError):
    """A RunPod API refusal. `retry_after` is set on 429s; `problem` holds the problem+json body."""

    def __init__(self, message: str, *, status: int | None, hint: str | None = None,
                 retry_after: float | None = None, problem: dict[str, Any] | None = None) -> None:
        super().__init__(PROVIDER, message, status=status, hint=hint)
        self.retry_after = retry_after
        self.problem = problem or {}


def missing_key_error() -> MissingCredentialsError:
    return MissingCredentialsError(PROVIDER, "RunPod API key found",
                                   blank=blank_variables("RUNPOD_API_KEY", "DEPLOYER_RUNPOD_API_KEY"), hint=KEY_HINT)


def problem_of(response: httpx.Response) -> dict[str, Any]:
    """The RFC 9457 body of an error response ({} when there is none)."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return {"detail": text[:300]} if text else {}
    return body if isinstance(body, dict) else {"detail": str(body)[:300]}


class RunPodApi:
    """One RunPod account. Methods block (through retries) and raise RunPodError/ProviderError."""

    def __init__(self, settings: RunPodSettings) -> None:
        if settings.api_key is None:
            raise missing_key_error()
        self.settings = settings
        self._key = settings.api_key.get_secret_value()
        self._origin = settings.key_origin or "the environment"
        headers = {"Authorization": f"Bearer {self._key}", "User-Agent": USER_AGENT, "Accept": "application/json"}
        common: dict[str, Any] = dict(headers=headers, describe=self.describe, timeout=settings.timeout,
                                      backoff=settings.backoff)
        self.control = ApiClient(PROVIDER, settings.api_url, retries=settings.retries, **common)
        self._once = ApiClient(PROVIDER, settings.api_url, retries=0, **common)
        self.data = ApiClient(PROVIDER, settings.endpoint_url, retries=settings.retries, **common)
        self._headers = headers

    def close(self) -> None:
        for client in (self.control, self._once, self.data):
            client.close()

    def __enter__(self) -> RunPodApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- errors -----------------------------------------------------------------------------

    def describe(self, response: httpx.Response) -> RunPodError:
        """A failed response in RunPod's terms, naming the credential when it is the problem."""
        status = response.status_code
        where = f"{response.request.method} {response.request.url.path}"
        problem = problem_of(response)
        title = problem.get("title") or response.reason_phrase
        detail = problem.get("detail") or problem.get("error") or ""
        said = f"{status} {title}" + (f": {detail}" if detail else "")
        errors = problem.get("errors") or []
        if errors:
            said += " (" + "; ".join(str(e) for e in errors) + ")"
        retry_after = retry_after_seconds(response, 1.0) if status == 429 else None
        if status == 401:
            return RunPodError(f"RunPod rejected the API key from {self._origin} ({said})", status=status,
                               hint="the key is wrong, expired or revoked: " + KEY_HINT, problem=problem)
        if status == 403:
            return RunPodError(f"the RunPod API key from {self._origin} is not allowed to {where} ({said})",
                               status=status, problem=problem,
                               hint="give the key read/write access to Serverless (RunPod console > Settings > "
                                    "API Keys), or use another key")
        if status == 429:
            return RunPodError(f"{where}: RunPod's rate limit was hit ({said})", status=status, problem=problem,
                               retry_after=retry_after, hint="wait a minute and run the command again")
        if status >= 500:
            return RunPodError(f"{where}: RunPod failed ({said})", status=status, problem=problem,
                               hint="RunPod's API is having trouble; run the same command again shortly")
        return RunPodError(f"RunPod refused {where} ({said})", status=status, problem=problem)

    # -- endpoints --------------------------------------------------------------------------

    def list_endpoints(self) -> list[dict[str, Any]]:
        return self.control.request("GET", "/serverless").json()["endpoints"]

    def find_endpoints(self, name: str) -> list[dict[str, Any]]:
        """Endpoints called exactly `name` (RunPod does not keep names unique)."""
        return [e for e in self.list_endpoints() if e.get("name") == name]

    def get_endpoint(self, endpoint_id: str) -> dict[str, Any] | None:
        """The endpoint, or None when RunPod says 404."""
        response = self.control.request("GET", f"/serverless/{endpoint_id}", ok=(200, 404))
        return None if response.status_code == 404 else response.json()

    def create_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /v2/serverless, at most once per attempt. After a timeout or a 5xx the endpoint
        may exist anyway, so the name is looked up before the next attempt. Returns the Endpoint."""
        delay = self.settings.backoff
        failure: ProviderError | None = None
        for attempt in range(self.settings.retries + 1):
            if attempt:
                found = self.find_endpoints(body["name"])
                if found:
                    return found[0]
            try:
                return self._once.request("POST", "/serverless", json=body, ok=(201,), idempotent=False).json()
            except RunPodError as exc:
                if exc.status == 429:  # refused before acting: wait as told
                    failure = exc
                    time.sleep(exc.retry_after if exc.retry_after is not None else delay)
                    continue
                if exc.status is not None and exc.status < 500:
                    raise
                failure = exc
            except ProviderError as exc:  # timeout or connection trouble: RunPod may have acted
                failure = exc
            time.sleep(delay)
            delay = min(delay * 2, 20.0)
        assert failure is not None
        raise failure

    def update_endpoint(self, endpoint_id: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        """PATCH the endpoint (idempotent: the same body twice is the same state). None on 404."""
        response = self.control.request("PATCH", f"/serverless/{endpoint_id}", json=patch, ok=(200, 404),
                                        idempotent=True)
        return None if response.status_code == 404 else response.json()

    def delete_endpoint(self, endpoint_id: str) -> bool:
        """DELETE the endpoint; False when it was already gone (404)."""
        response = self.control.request("DELETE", f"/serverless/{endpoint_id}", ok=(204, 404))
        return response.status_code == 204

    def workers(self, endpoint_id: str) -> dict[str, Any] | None:
        """{"workers": [...], "summary": {running, idle, initializing, throttled, unhealthy, total}}; None on 404."""
        response = self.control.request("GET", f"/serverless/{endpoint_id}/workers", ok=(200, 404))
        return None if response.status_code == 404 else response.json()

    def worker_log(self, endpoint_id: str, worker_id: str, *, tail: int = 200, follow: bool = False,
                   idle: float = 2.0) -> Iterator[dict[str, Any]]:
        """Log events ({"ts", "source", "line"}) of one worker, from its SSE stream.

        The stream stays open for live lines; without `follow` it is read until `idle` seconds
        pass without a line (or 5 x `idle` in all, for a worker that never stops talking). A worker
        that is gone (404) yields nothing."""
        url = f"{self.control.base_url}/serverless/{endpoint_id}/workers/{worker_id}/logs"
        read = None if follow else idle
        timeout = httpx.Timeout(self.settings.timeout, read=read)
        with httpx.Client(headers={**self._headers, "Accept": "text/event-stream"}, timeout=timeout) as http:
            try:
                with http.stream("GET", url, params={"tail": tail}) as response:
                    if response.status_code == 404:
                        return
                    if response.status_code != 200:
                        response.read()
                        raise self.describe(response)
                    stop_at = None if follow else time.monotonic() + 5 * idle
                    for event in _sse_events(response.iter_lines()):
                        yield event
                        if stop_at is not None and time.monotonic() > stop_at:
                            return
            except httpx.ReadTimeout:
                return
            except httpx.TransportError as exc:
                raise ProviderError(PROVIDER, f"the log stream of worker {worker_id} broke ({exc.__class__.__name__})") from None

    # -- catalog and templates --------------------------------------------------------------

    def gpu_types(self) -> list[dict[str, Any]]:
        """GET /v2/catalog/gpus: every GPU type with its serverless `pool` and `price.serverless` ($/GPU/h)."""
        return self.control.request("GET", "/catalog/gpus").json()["gpus"]

    def templates(self) -> list[dict[str, Any]]:
        return self.control.request("GET", "/templates").json()["templates"]

    def delete_template(self, template_id: str) -> bool:
        response = self.control.request("DELETE", f"/templates/{template_id}", ok=(204, 404))
        return response.status_code == 204

    # -- data plane -------------------------------------------------------------------------

    def health(self, endpoint_id: str) -> dict[str, Any] | None:
        """GET /v2/{id}/health: {"jobs": {...}, "workers": {...}}; None when the endpoint is unknown."""
        response = self.data.request("GET", f"/{endpoint_id}/health", ok=(200, 404))
        return None if response.status_code == 404 else response.json()

    def purge_queue(self, endpoint_id: str) -> int | None:
        """POST /v2/{id}/purge-queue: drop queued jobs (running ones go on). Returns how many."""
        response = self.data.request("POST", f"/{endpoint_id}/purge-queue", ok=(200, 404), idempotent=True)
        if response.status_code == 404:
            return None
        return (response.json() or {}).get("removed")


def _sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON `data:` payloads of a Server-Sent Events stream."""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield _event("\n".join(data))
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    if data:
        yield _event("\n".join(data))


def _event(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"line": text}
    return value if isinstance(value, dict) else {"line": str(value)}
