"""Modal's web-endpoint front door for one web function: the function's web URL.

Like Modal's proxy, it routes a request only to a container whose start-up (including the
snapshot lifecycle of a class) has finished; until then it holds the request, and answers 503
when none becomes ready within `hold_seconds` (Modal queues for longer; the emulator's clock is
faster). A stopped app's URL answers 404. Everything else is forwarded to the engine unchanged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length", "upgrade"}


class WebProxy:
    def __init__(self, port: int, upstream: Callable[[], str | None], *, hold_seconds: float = 3.0) -> None:
        self.port = port
        self.upstream = upstream  # the ready container's engine base URL, or None
        self.hold_seconds = hold_seconds
        self.stopped = False
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

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
                proxy.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.stopped:
                    return self._answer(404, b"modal-http: app for invoked web endpoint is stopped")
                deadline = time.monotonic() + proxy.hold_seconds
                base = proxy.upstream()
                while base is None and time.monotonic() < deadline and not proxy.stopped:
                    time.sleep(0.1)
                    base = proxy.upstream()
                if base is None:
                    return self._answer(503, b"modal-http: no container is ready to serve this request yet")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                try:
                    answer = httpx.request(self.command, base + self.path, headers=headers, content=body, timeout=120)
                except httpx.HTTPError as exc:
                    return self._answer(502, f"modal-http: the container did not answer: {exc}".encode())
                out = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
                self._answer(answer.status_code, answer.content, out)

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
