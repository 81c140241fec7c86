"""The gateway's HTTP side: an OpenAI-compatible ASGI app (Starlette) in front of the backends.

Routes: GET /v1/models (the routes' model names), POST /v1/chat/completions, /v1/completions and
/v1/embeddings (proxied), GET /metrics (Prometheus text), GET /health (open: says only that the
gateway is up). Every route but /health requires `Authorization: Bearer <gateway key>`; the
backends' keys never leave this process except in the Authorization header sent to the backend
they belong to.

One request: its body's `model` picks the route, the route's policy orders the backends, and
the request goes to the first. Until the first byte of a backend's answer body has arrived the
request may move to the next backend (refused connection, broken connection, 5xx, 408, 429,
401/403 from the backend, timeout); the answer is committed to the client only with that first
byte, and is then relayed chunk by chunk as it arrives (no buffering, streams stay streams).
After that nothing is retried: a backend that fails mid-stream ends the stream with an
OpenAI-style error event (server-sent events) or a cut connection (any other body).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as HttpRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from . import policy
from .backends import Backend
from .metrics import CONTENT_TYPE, AttemptMetrics, GatewayMetrics
from .routes import GatewayConfig, Route
from .upstream import Upstream, UpstreamError, UpstreamResponse
from .usage import UsageLedger

log = logging.getLogger("deployer.gateway")

PROXIED = {"/v1/chat/completions": "chat/completions", "/v1/completions": "completions", "/v1/embeddings": "embeddings"}
RETRYABLE_STATUS = frozenset({401, 403, 408, 429, 500, 502, 503, 504})
"""Backend answers that move the request to the next backend: server errors, a backend saying
it is full or timed out, and a backend refusing the gateway's key (its key is misconfigured,
not the client's). Any other status (e.g. 400 for a bad request) is the answer."""
PASSED_HEADERS = ("content-type", "content-length", "content-encoding", "cache-control", "x-request-id")
BACKEND_HEADER = "x-deployer-backend"


@dataclass
class Failure:
    backend: str
    kind: str  # one of metrics.ERROR_KINDS
    detail: str


class Gateway:
    """The running gateway: its routes, backends, metrics, traffic ledger and backend client."""

    def __init__(self, config: GatewayConfig, backends: dict[str, Backend], client_key: str,
                 ledger: UsageLedger | None = None) -> None:
        self.config = config
        self.backends = backends
        self.metrics = GatewayMetrics()
        self.ledger = ledger
        self._key = client_key.encode()
        self.upstream = Upstream(connect_timeout=config.timeouts.connect, read_timeout=config.timeouts.first_byte)
        self.started = time.time()
        for backend in backends.values():
            self.backend_changed(backend, None)

    def __repr__(self) -> str:
        return f"Gateway({self.config.name!r}, backends={sorted(self.backends)})"

    def secrets(self) -> list[str]:
        """Every key this gateway holds, for scrubbing log lines."""
        return [self._key.decode(), *(b.endpoint.api_key for b in self.backends.values())]

    def authorized(self, header: bytes | None) -> bool:
        return header is not None and header.startswith(b"Bearer ") and hmac.compare_digest(header[7:], self._key)

    def backend_changed(self, backend: Backend, old_provider: str | None) -> None:
        self.metrics.backend(backend.name, backend.provider, backend.limit, backend.healthy, old_provider)

    async def open(self) -> None:
        """Open the backend connection pool (inside the running event loop). Idempotent."""
        await self.upstream.open()

    async def aclose(self) -> None:
        await self.upstream.close()

    # -- one request --------------------------------------------------------------------------

    async def forward(self, path: str, body: dict[str, Any], route: Route) -> Response:
        """Send `body` along `route` and return the first committed answer, or an OpenAI-style
        error (502/503/504) naming every backend tried. Never raises for a backend's failure."""
        candidates, in_rotation = policy.order(route, self.backends)
        failures: list[Failure] = []
        for backend in candidates:
            outcome = await self._attempt(backend, route.model, PROXIED[path], body)
            if isinstance(outcome, Response):
                self.metrics.answered(route.model, outcome.status_code)
                return outcome
            failures.append(outcome)
        return self.error_after(route.model, failures, in_rotation)

    async def _attempt(self, backend: Backend, model: str, suffix: str, body: dict[str, Any]) -> Response | Failure:
        endpoint = backend.endpoint
        labels = (model, backend.name, backend.provider)
        series = self.metrics.of(*labels)
        backend.in_flight += 1
        series.in_flight.inc()
        series.requests.inc()
        start = time.perf_counter()
        done = _Once(lambda error: self._finished(backend, series, start, error))
        response: UpstreamResponse | None = None
        try:
            response = await self.upstream.post(
                f"{endpoint.url.rstrip('/')}/{suffix}", json.dumps({**body, "model": endpoint.model}).encode(),
                {**endpoint.headers, "Authorization": f"Bearer {endpoint.api_key}",
                 "Content-Type": "application/json", "Accept-Encoding": "identity"})
            if response.status in RETRYABLE_STATUS:
                text = (await response.read(300)).decode(errors="replace")
                return self._failed(backend, labels, done, "status", f"answered {response.status}",
                                    detail=_error_text(text))
            first = await response.next_chunk()  # the answer is committed with its first byte, not before
        except UpstreamError as exc:
            return self._failed(backend, labels, done, exc.kind, str(exc))
        except BaseException:  # cancelled (the client went away) or a bug: release, then re-raise
            done(True)
            raise
        finally:
            if response is not None and done.called:
                response.close()
        series.first_byte.observe(time.perf_counter() - start)
        if backend.failures:
            backend.failures = 0
        headers = {name: response.headers[name] for name in PASSED_HEADERS if name in response.headers}
        headers[BACKEND_HEADER] = backend.name
        length = headers.get("content-length")
        if first is None or (length is not None and length.isdigit() and len(first) == int(length)):
            # the whole answer arrived with its first byte (a non-streaming answer): send it as one
            response.close()
            done(False)
            return Response(first or b"", status_code=response.status, headers=headers)
        sse = headers.get("content-type", "").startswith("text/event-stream")
        return RelayResponse(self._relay(first, response, backend, labels, done, sse),
                             status_code=response.status, headers=headers)

    async def _relay(self, first: bytes | None, response: UpstreamResponse, backend: Backend,
                     labels: tuple[str, str, str], done: _Once, sse: bool) -> AsyncIterator[bytes]:
        """The committed answer, chunk by chunk as it arrives. Runs `done` exactly once (a
        client that goes away is not the backend's error)."""
        error = False
        try:
            chunk = first
            while chunk is not None:
                yield chunk
                chunk = await response.next_chunk()
        except UpstreamError as exc:
            error = True
            self.metrics.errors.labels(*labels, "stream").inc()
            log.warning("backend %s failed after the answer started (not retried): %s", backend.name, exc)
            if not sse:
                raise  # the server cuts the connection: the client sees an incomplete body
            event = {"error": {"message": f"backend {backend.name} failed mid-stream: {exc}",
                               "type": "backend_error", "param": None, "code": 502}}
            yield f"data: {json.dumps(event)}\n\n".encode()
        finally:
            response.close()
            done(error)

    def _failed(self, backend: Backend, labels: tuple[str, str, str], done: _Once, kind: str, what: str,
                detail: str = "") -> Failure:
        self.metrics.errors.labels(*labels, kind).inc()
        done(True)
        problem = what + (f": {detail}" if detail else "")
        if kind == "connect":  # nothing listens: out at once, the probe brings it back
            if backend.mark_out(problem):
                log.warning("backend %s (%s) is out of rotation: %s", backend.name, backend.provider, problem)
                self.backend_changed(backend, None)
        elif kind != "status" or not what.endswith(("408", "429")):  # full or slow is not sick
            backend.failures += 1
            if backend.failures >= self.config.health.failures and backend.mark_out(
                    f"{backend.failures} failed requests in a row, the last {problem}"):
                log.warning("backend %s (%s) is out of rotation after %d failed requests: %s",
                            backend.name, backend.provider, backend.failures, problem)
                self.backend_changed(backend, None)
        log.info("backend %s %s; trying the next", backend.name, problem)
        return Failure(backend.name, kind, problem)

    def _finished(self, backend: Backend, series: AttemptMetrics, start: float, error: bool) -> None:
        seconds = time.perf_counter() - start
        backend.in_flight -= 1
        series.in_flight.dec()
        series.latency.observe(seconds)
        if self.ledger is not None:
            self.ledger.add(backend.name, backend.provider, seconds, error=error)

    def error_after(self, model: str, failures: list[Failure], in_rotation: bool) -> Response:
        """The answer when every backend failed: 504 when all timed out, 503 when none was in
        rotation or all refused, else 502; the message names each backend and what it did."""
        kinds = {f.kind for f in failures}
        if kinds == {"timeout"}:
            status, code = 504, "backend_timeout"
        elif not in_rotation or kinds <= {"connect"} or all(f.detail.startswith(("answered 429", "answered 503"))
                                                             for f in failures):
            status, code = 503, "backend_unavailable"
        else:
            status, code = 502, "backend_error"
        tried = "; ".join(f"{f.backend}: {f.detail}" for f in failures)
        prefix = "no backend is in rotation; tried anyway: " if not in_rotation else "every backend failed: "
        self.metrics.answered(model, status)
        return error_response(status, f"model {model!r}: {prefix}{tried}", "backend_error", code)


class _Once:
    """Call `fn(error)` the first time only (the relay's end and the response's close both report)."""

    __slots__ = ("fn", "called")

    def __init__(self, fn: Any) -> None:
        self.fn, self.called = fn, False

    def __call__(self, error: bool) -> None:
        if not self.called:
            self.called = True
            self.fn(error)


class RelayResponse(StreamingResponse):
    """A streaming response that always finishes its body iterator, even when the client went
    away mid-stream, so the backend connection is closed and the in-flight count released."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


def _error_text(body: str) -> str:
    """The message of an OpenAI-style or plain error body, shortened."""
    try:
        data = json.loads(body)
        message = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(message, dict):
            message = message.get("message") or message
        return str(message)[:200]
    except ValueError:
        return body.strip()[:200]


def error_response(status: int, message: str, kind: str, code: str | int | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """An OpenAI-style error body."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                        status_code=status, headers=headers)


# -- the ASGI app ------------------------------------------------------------------------------


class RequireKey:
    """Pure ASGI middleware: every HTTP request but GET /health needs the gateway key."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app, self.gateway = app, gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not (scope["path"] == "/health" and scope["method"] in ("GET", "HEAD")):
            header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
            if not self.gateway.authorized(header):
                response = error_response(401, "a valid gateway key is required: Authorization: Bearer <key>",
                                          "invalid_request_error", "invalid_api_key",
                                          headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(gateway: Gateway, lifespan: Any = None) -> Starlette:
    """The gateway's ASGI app. `lifespan` (an async context manager factory) runs the
    background tasks; without one the app serves but probes nothing."""

    async def proxied(request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            return error_response(400, "the request body must be JSON", "invalid_request_error")
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str):
            return error_response(400, "the request body must be a JSON object with a `model`",
                                  "invalid_request_error")
        route = gateway.config.route(model)
        if route is None:
            known = ", ".join(r.model for r in gateway.config.routes)
            gateway.metrics.answered("(unknown)", 404)
            return error_response(404, f"The model `{model}` does not exist on this gateway; it routes: {known}",
                                  "invalid_request_error", "model_not_found")
        return await gateway.forward(request.url.path, body, route)

    async def models(request: Request) -> Response:
        created = int(gateway.started)
        return JSONResponse({"object": "list", "data": [
            {"id": r.model, "object": "model", "created": created, "owned_by": "deployer-gateway"}
            for r in gateway.config.routes]})

    async def metrics(request: Request) -> Response:
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return error_response(status, message.get(status, "error"), "invalid_request_error")

    app = Starlette(
        routes=[
            HttpRoute("/v1/models", models, methods=["GET"]),
            *(HttpRoute(path, proxied, methods=["POST"]) for path in PROXIED),
            HttpRoute("/metrics", metrics, methods=["GET"]),
            HttpRoute("/health", health, methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: not_found},
        lifespan=lifespan,
    )
    app.add_middleware(RequireKey, gateway=gateway)
    return app
