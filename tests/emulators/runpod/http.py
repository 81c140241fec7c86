"""Minimal HTTP plumbing shared by the emulator's two planes (stdlib http.server, threaded).

A plane is a list of routes `(METHOD, regex, handler)`; a handler takes a `Call` and returns a
`Reply`. A Reply's body is JSON (dict/list), raw bytes, or an iterator of text chunks that is sent
with chunked transfer encoding (Server-Sent Events, streamed completions).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit


@dataclass
class Call:
    method: str
    path: str  # decoded
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode()

    @property
    def streaming(self) -> bool:
        return isinstance(self.body, Iterator)


Route = tuple[str, "re.Pattern[str]", Callable[[Call], Reply]]


def route(method: str, pattern: str, handler: Callable[[Call], Reply]) -> Route:
    """`pattern` uses {name} for one path segment and {name*} for the rest of the path."""
    regex = re.sub(r"\{(\w+)\*\}", r"(?P<\1>.+)", pattern)
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex)
    return (method, re.compile("^" + regex + "$"), handler)


class Plane:
    """Dispatches calls to routes; `around(call, dispatch)` wraps every call (auth, faults, checks)."""

    def __init__(self, routes: list[Route], around: Callable[[Call, Callable[[Call], Reply]], Reply],
                 not_found: Callable[[Call], Reply]) -> None:
        self.routes = routes
        self.around = around
        self.not_found = not_found

    def dispatch(self, call: Call) -> Reply:
        for method, regex, handler in self.routes:
            match = regex.match(call.path)
            if match and method == call.method:
                call.params = {k: unquote(v) for k, v in match.groupdict().items()}
                return handler(call)
        return self.not_found(call)

    def handle(self, call: Call) -> Reply:
        return self.around(call, self.dispatch)


class Server:
    """One plane on 127.0.0.1, served from a daemon thread. `after(call, reply, sent)` sees each
    exchange: before the response is written, or once a streamed one has ended."""

    def __init__(self, plane: Plane, after: Callable[[Call, Reply, bytes], None]) -> None:
        handler = _handler_class(plane, after)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def _handler_class(plane: Plane, after: Callable[[Call, Reply, bytes], None]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # no delayed-ACK stall between headers and body

        def log_message(self, fmt: str, *args: object) -> None:  # quiet
            pass

        def _call(self) -> Call:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            return Call(method=self.command, path=unquote(parts.path), raw_path=parts.path,
                        query=dict(parse_qsl(parts.query, keep_blank_values=True)),
                        headers={k: v for k, v in self.headers.items()}, body=body)

        def _serve(self) -> None:
            call = self._call()
            reply = plane.handle(call)
            if reply.streaming:
                sent = self._stream(reply)
                after(call, reply, sent)
            else:
                sent = reply.encoded()
                after(call, reply, sent)  # before the client sees it: tests may look right away
                try:
                    self.send_response(reply.status)
                    if sent:
                        self.send_header("Content-Type", reply.content_type)
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(sent)))
                    self.end_headers()
                    self.wfile.write(sent)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a slow-response fault)
                    self.close_connection = True

        def _stream(self, reply: Reply) -> bytes:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            sent = []
            try:
                for chunk in reply.body:
                    data = chunk.encode() if isinstance(chunk, str) else chunk
                    if not data:
                        continue
                    self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                    sent.append(data)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            finally:
                close = getattr(reply.body, "close", None)
                if close:
                    close()
            return b"".join(sent)

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve  # noqa: N815

    return Handler
