"""Modal's web-endpoint front door for one web function: the function's web URL.

Like Modal's proxy, it routes a request only to a container whose start-up (including the
snapshot lifecycle of a class) has finished; until then it holds the request, and answers 503
when none becomes ready within `hold_seconds` (Modal queues for longer; the emulator's clock is
faster). When no container runs, `demand()` may start one (a cold start, when the emulator scales
to zero): the request is then held until it is ready, up to COLD_HOLD_S, as Modal holds requests
during a cold start. A stopped app's URL answers 404. Everything else is forwarded to the engine
unchanged, and its answer relayed as it arrives. `active` and `idle_since` tell the emulator's
scale-down when the function was last busy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length", "upgrade"}
COLD_HOLD_S = 120.0


class WebProxy:
    def __init__(self, port: int, upstream: Callable[[], str | None], *, hold_seconds: float = 3.0,
                 demand: Callable[[], bool] | None = None) -> None:
        self.port = port
        self.upstream = upstream  # the ready container's engine base URL, or None
        self.demand = demand  # start a container if none runs; True while one is starting
        self.hold_seconds = hold_seconds
        self.stopped = False
        self.requests = 0
        self.active = 0  # requests being served now
        self.idle_since = time.monotonic()
        self._count = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no delayed-ACK stall between headers and body

            def log_message(self, fmt: str, *args: object) -> None:
                pass

            def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {"Content-Type": "text/plain"}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self) -> None:
                with proxy._count:
                    proxy.requests += 1
                    proxy.active += 1
                try:
                    self._serve()
                finally:
                    with proxy._count:
                        proxy.active -= 1
                        proxy.idle_since = time.monotonic()

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.stopped:
                    return self._answer(404, b"modal-http: app for invoked web endpoint is stopped")
                deadline = time.monotonic() + proxy.hold_seconds
                base = proxy.upstream()
                while base is None and time.monotonic() < deadline and not proxy.stopped:
                    if proxy.demand is not None and proxy.demand():
                        deadline = max(deadline, time.monotonic() + COLD_HOLD_S)
                    time.sleep(0.1)
                    base = proxy.upstream()
                if base is None:
                    return self._answer(503, b"modal-http: no container is ready to serve this request yet")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                request = httpx.Request(self.command, base + self.path, headers=headers, content=body)
                with httpx.Client(timeout=120) as client:
                    try:
                        answer = client.send(request, stream=True)
                    except httpx.HTTPError as exc:
                        return self._answer(502, f"modal-http: the container did not answer: {exc}".encode())
                    try:
                        self._relay(answer)
                    finally:
                        answer.close()

            def _relay(self, answer: httpx.Response) -> None:
                """The container's answer as it comes (Modal streams web responses: SSE arrives
                event by event), chunked when the container sent no length. A container that
                fails mid-answer cuts the connection."""
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                length = answer.headers.get("content-length")
                self.send_header(*(("Content-Length", length) if length else ("Transfer-Encoding", "chunked")))
                self.end_headers()
                try:
                    for chunk in filter(None, answer.iter_raw()):  # an empty chunk would end the body
                        self.wfile.write(chunk if length else b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    if not length:
                        self.wfile.write(b"0\r\n\r\n")
                except httpx.HTTPError:
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"modal-web-{port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
