"""A control-plane HTTP client shared by the cloud backends (httpx).

It retries what is safe to retry: connection errors, timeouts and 5xx with exponential backoff,
and 429 after the server's Retry-After. It paces requests through an optional `RateLimiter` so
a provider's documented limits are never hit. Errors come back as `ProviderError` built by the
backend's `describe` function, in the provider's own terms.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from .errors import ProviderError

Describe = Callable[[httpx.Response], ProviderError]


class RateLimiter:
    """At most one call per `interval` seconds for each named bucket; thread-safe. Blocks."""

    def __init__(self, **intervals: float) -> None:
        self._intervals = intervals
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, bucket: str) -> None:
        interval = self._intervals.get(bucket)
        if not interval:
            return
        with self._lock:
            now = time.monotonic()
            at = max(now, self._next.get(bucket, 0.0))
            self._next[bucket] = at + interval
        if at > now:
            time.sleep(at - now)


def retry_after_seconds(response: httpx.Response, default: float) -> float:
    """Seconds the server asked us to wait (Retry-After as seconds or HTTP date), else `default`."""
    value = response.headers.get("Retry-After")
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return default


class ApiClient:
    """Calls one provider's API. `request` blocks through retries and returns the final response.

    `retries` bounds attempts after the first for retryable failures; `backoff` is the first
    delay (doubled each time, with jitter, capped at `max_backoff`). Non-idempotent calls
    (`idempotent=False`) are not retried after a timeout, since the provider may have acted: the
    caller must look the resource up by name instead.
    """

    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        headers: Mapping[str, str],
        describe: Describe,
        limiter: RateLimiter | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self._describe = describe
        self._limiter = limiter
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._http = httpx.Client(headers=dict(headers), timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def url(self, path: str) -> str:
        return self.base_url + path

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        ok: tuple[int, ...] = (200, 201, 202, 204),
        bucket: str = "default",
        idempotent: bool | None = None,
    ) -> httpx.Response:
        """Send and return the response whose status is in `ok`; raise ProviderError otherwise."""
        idempotent = method.upper() in ("GET", "PUT", "DELETE", "HEAD") if idempotent is None else idempotent
        delay = self._backoff
        for attempt in range(self._retries + 1):
            last = attempt == self._retries
            if self._limiter:
                self._limiter.wait("default")
                if bucket != "default":
                    self._limiter.wait(bucket)
            try:
                response = self._http.request(method, self.url(path), json=json, params=params)
            except httpx.TimeoutException as exc:
                if last or not idempotent:
                    raise ProviderError(
                        self.provider, f"{method} {path} timed out ({exc.__class__.__name__})",
                        hint="the provider may have acted; deploy and destroy look resources up by name",
                    ) from None
            except httpx.TransportError as exc:
                if last:
                    raise ProviderError(
                        self.provider, f"cannot reach {self.base_url} ({exc.__class__.__name__})",
                        hint="check the network and the base URL setting",
                    ) from None
            else:
                if response.status_code in ok:
                    return response
                if response.status_code == 429 and not last:
                    time.sleep(retry_after_seconds(response, delay))
                    delay = min(delay * 2, self._max_backoff)
                    continue
                if response.status_code < 500 or last or not idempotent:
                    raise self._describe(response)  # a 5xx on a create may hide a success: never resend it
            time.sleep(delay * (1 + random.random() * 0.25))
            delay = min(delay * 2, self._max_backoff)
        raise AssertionError("unreachable")
