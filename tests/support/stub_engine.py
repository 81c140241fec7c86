"""A fast stand-in for vLLM's OpenAI server, for tests that do not need real inference.

    python -m tests.support.stub_engine MODEL [vllm serve flags...]

It is strict where vLLM is: every flag must exist in the installed vLLM's parser (table from
tests.support.engine.vllm_flag_table), choices are checked, the model directory must hold a
config.json, `model` in a request must be the served name, and /v1 routes need the key when
--api-key is given. As in vLLM, routes outside /v1 need none: /health, /version, the dev-mode
/sleep and /wake_up, and POST /invocations (SageMaker's route, serving completions and chats).
Unknown flags exit with code 2, as argparse does in vLLM.

`--middleware a.b.Class` (repeatable) is honoured as vLLM's app does: the class is imported by
its dotted path (from the PYTHONPATH the engine was given), wraps the app (the last one
outermost), and every request runs through the chain as an ASGI call before the stub serves it;
whatever a middleware answers instead is what the client gets. A middleware that fails to
import or to build stops the server at start (exit 1), as it stops vLLM's.

Generation: `max_tokens` tokens (at most 64) of "stub", `usage` counting the prompt's words as
its tokens. `"stream": true` answers as vLLM does: server-sent events, one chunk per token,
a last chunk with `usage` when `stream_options.include_usage` is set, then `data: [DONE]`.
POST /v1/embeddings answers a small vector per input.

Environment knobs: STUB_ENGINE_STARTUP_S (delay before listening, default 0.2),
STUB_ENGINE_EXIT_CODE (exit with it instead of serving: a crash loop), STUB_ENGINE_TOKEN_S
(seconds per generated token, default 0: a streaming client sees tokens arrive apart).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import sys
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from tests.support.engine import vllm_flag_table


def parse(argv: list[str]) -> dict:
    table = vllm_flag_table()
    opts: dict = {"model": None, "flags": {}, "middleware": []}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            if opts["model"] is not None:
                raise SystemExit(f"stub-vllm: unexpected positional argument {arg!r}")
            opts["model"] = arg
            i += 1
            continue
        name, _, inline = arg.partition("=")
        spec = table.get(name)
        if spec is None:
            print(f"vllm: error: unrecognized arguments: {arg}", file=sys.stderr)
            raise SystemExit(2)
        if spec["takes_value"]:
            if inline:
                value = inline
            else:
                if i + 1 >= len(argv):
                    print(f"vllm: error: argument {name}: expected one argument", file=sys.stderr)
                    raise SystemExit(2)
                value, i = argv[i + 1], i + 1
            if spec["choices"] and value not in spec["choices"]:
                print(f"vllm: error: argument {name}: invalid choice: {value!r}", file=sys.stderr)
                raise SystemExit(2)
            opts["flags"][name] = value
            if name == "--middleware":  # vLLM's parser appends
                opts["middleware"].append(value)
        else:
            opts["flags"][name] = True
        i += 1
    opts["model"] = opts["model"] or opts["flags"].get("--model")
    if not opts["model"]:
        print("vllm: error: no model given", file=sys.stderr)
        raise SystemExit(2)
    return opts


class MiddlewareChain:
    """The ASGI middleware classes named by --middleware around an app that only notes that a
    request got through: `run` says whether one did, or what the chain answered instead."""

    PASSED = "stub.passed"

    def __init__(self, paths: list[str]) -> None:
        async def app(scope: dict, receive: Any, send: Any) -> None:
            await send({"type": self.PASSED})

        self.app: Any = app
        for path in paths:  # Starlette's add_middleware: each one added goes outside the others
            module, _, name = path.rpartition(".")
            imported = getattr(importlib.import_module(module), name)
            if not inspect.isclass(imported):
                raise SystemExit(f"stub-vllm: --middleware {path}: the stub runs ASGI classes only")
            self.app = imported(self.app)

    def run(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes,
            client: tuple[str, int], server: tuple[str, int]) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """None when the request reached the app; else (status, headers, body) the chain answered."""
        path, _, query = target.partition("?")
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": unquote(path), "raw_path": path.encode(), "query_string": query.encode(),
                 "root_path": "", "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
                 "client": client, "server": server}
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        asyncio.run(self.app(scope, receive, send))
        if any(m["type"] == self.PASSED for m in sent):
            return None
        start = next((m for m in sent if m["type"] == "http.response.start"), None)
        if start is None:  # neither passed nor answered: an ASGI server answers 500
            return 500, [], b"Internal Server Error"
        data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return start["status"], list(start.get("headers") or []), data


def serve(opts: dict) -> None:
    flags = opts["flags"]
    model_dir = Path(opts["model"])
    if not (model_dir / "config.json").exists():
        print(f"stub-vllm: model {opts['model']!r} not found (no config.json); the hub is unreachable", file=sys.stderr)
        raise SystemExit(1)
    served = flags.get("--served-model-name", opts["model"])
    api_key = flags.get("--api-key") or os.environ.get("VLLM_API_KEY")
    dev_mode = os.environ.get("VLLM_SERVER_DEV_MODE") == "1" and "--enable-sleep-mode" in flags
    max_len = int(flags.get("--max-model-len", 512))
    state = {"sleeping": False}
    try:
        chain = MiddlewareChain(opts["middleware"]) if opts["middleware"] else None
    except Exception:  # noqa: BLE001 - vLLM fails to build its app the same way
        traceback.print_exc()
        raise SystemExit(1) from None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # headers and body go out in separate writes: with Nagle on, a keep-alive client waits
        # for a delayed ACK (~40 ms) before the body of every non-streaming answer
        disable_nagle_algorithm = True

        def log_message(self, fmt: str, *args: object) -> None:
            sys.stderr.write("stub-vllm: " + (fmt % args) + "\n")

        def _send(self, status: int, body: object) -> None:
            self._raw()  # an unread request body would be taken for the next request on this connection
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if not api_key or not self.path.startswith("/v1"):
                return True
            if self.headers.get("Authorization") == f"Bearer {api_key}":
                return True
            self._send(401, {"error": "Unauthorized"})
            return False

        def _raw(self) -> bytes:
            if getattr(self, "_body_of", None) is not self.headers:  # once per request (keep-alive)
                length = int(self.headers.get("Content-Length") or 0)
                self._body_of, self._read = self.headers, self.rfile.read(length)
            return self._read

        def _body(self) -> dict:
            return json.loads(self._raw() or b"{}")

        def _through_middleware(self) -> bool:
            """True when the request may be served; else the middleware's answer was sent."""
            if chain is None:
                return True
            answer = chain.run(self.command, self.path, list(self.headers.items()), self._raw(),
                               self.client_address[:2], self.server.server_address[:2])
            if answer is None:
                return True
            status, headers, data = answer
            self.send_response(status)
            for name, value in headers:
                self.send_header(name.decode("latin-1"), value.decode("latin-1"))
            if not any(name.lower() == b"content-length" for name, _ in headers):
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return False

        def do_GET(self) -> None:  # noqa: N802
            if not self._through_middleware():
                return
            if self.path == "/health":
                return self._send(200, {})
            if self.path == "/version":
                return self._send(200, {"version": "0.32.0"})
                return self._send(200, {})
            if self.path == "/is_sleeping" and dev_mode:
                return self._send(200, {"is_sleeping": state["sleeping"]})
            if not self._authorized():
                return
            if self.path == "/v1/models":
                return self._send(200, {"object": "list", "data": [
                    {"id": served, "object": "model", "created": int(time.time()), "owned_by": "vllm",
                     "root": opts["model"], "max_model_len": max_len}]})
            self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:  # noqa: N802
            if not self._through_middleware():
                return
            if dev_mode and self.path.startswith("/sleep"):
                state["sleeping"] = True
                return self._send(200, {})
            if dev_mode and self.path == "/wake_up":
                state["sleeping"] = False
                return self._send(200, {})
            if self.path == "/invocations":  # SageMaker's route: outside /v1, so vLLM asks no key
                body = self._body()
                return self._generate("/v1/chat/completions" if "messages" in body else "/v1/completions", body)
            if not self._authorized():
                return
            if self.path == "/v1/embeddings":
                return self._embed(self._body())
            if self.path not in ("/v1/completions", "/v1/chat/completions"):
                return self._send(404, {"detail": "Not Found"})
            self._generate(self.path, self._body())

        def _embed(self, body: dict) -> None:
            if body.get("model") != served:
                return self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                                  "type": "NotFoundError", "param": "model", "code": 404}})
            inputs = body.get("input")
            inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
            words = sum(len(str(i).split()) for i in inputs)
            self._send(200, {"object": "list", "model": served,
                             "data": [{"object": "embedding", "index": i, "embedding": [0.5, -0.5, 0.25, len(str(x)) / 100]}
                                      for i, x in enumerate(inputs)],
                             "usage": {"prompt_tokens": words, "total_tokens": words}})

        def _generate(self, route: str, body: dict) -> None:
            if body.get("model") != served:
                return self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                                  "type": "NotFoundError", "param": "model", "code": 404}})
            if state["sleeping"]:
                return self._send(503, {"error": {"message": "engine is sleeping", "code": 503}})
            n = max(1, min(int(body.get("max_tokens") or 16), 64))
            text = " ".join(["stub"] * n)
            prompt_tokens = max(1, _words(body.get("prompt")) + sum(_words(m.get("content"))
                                                                   for m in body.get("messages") or []))
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
            now = int(time.time())
            if body.get("stream"):
                return self._stream(route, n, usage if (body.get("stream_options") or {}).get("include_usage") else None)
            if route == "/v1/completions":
                return self._send(200, {"id": "cmpl-stub", "object": "text_completion", "created": now, "model": served,
                                        "choices": [{"index": 0, "text": text, "finish_reason": "length", "logprobs": None}],
                                        "usage": usage})
            self._send(200, {"id": "chatcmpl-stub", "object": "chat.completion", "created": now, "model": served,
                             "choices": [{"index": 0, "finish_reason": "length",
                                          "message": {"role": "assistant", "content": text}}],
                             "usage": usage})

        def _stream(self, route: str, n: int, usage: dict | None) -> None:
            """Server-sent events with chunked transfer encoding, one token per chunk."""
            self._raw()
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chat = route == "/v1/chat/completions"
            base = {"id": "chatcmpl-stub" if chat else "cmpl-stub", "created": int(time.time()), "model": served,
                    "object": "chat.completion.chunk" if chat else "text_completion"}

            def event(payload: object) -> None:
                data = f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            delay = float(os.environ.get("STUB_ENGINE_TOKEN_S", "0"))
            for i in range(n):
                time.sleep(delay)
                piece = "stub" if i == 0 else " stub"
                last = "length" if i == n - 1 else None
                choice = ({"index": 0, "delta": {"role": "assistant", "content": piece} if i == 0 else {"content": piece},
                           "finish_reason": last} if chat else {"index": 0, "text": piece, "finish_reason": last})
                event({**base, "choices": [choice]})
            if usage is not None:
                event({**base, "choices": [], "usage": usage})
            event("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    server = ThreadingHTTPServer((flags.get("--host", "127.0.0.1"), int(flags.get("--port", 8000))), Handler)
    print(f"stub-vllm: serving {served!r} on {server.server_address}", file=sys.stderr, flush=True)
    server.serve_forever()


def _words(content: object) -> int:
    if isinstance(content, list):  # chat content parts
        return sum(_words(part.get("text")) for part in content if isinstance(part, dict))
    return len(str(content).split()) if content else 0


def main() -> None:
    opts = parse(sys.argv[1:])
    time.sleep(float(os.environ.get("STUB_ENGINE_STARTUP_S", "0.2")))
    code = os.environ.get("STUB_ENGINE_EXIT_CODE")
    if code:
        print("stub-vllm: crashing on purpose (STUB_ENGINE_EXIT_CODE)", file=sys.stderr)
        raise SystemExit(int(code))
    serve(opts)


if __name__ == "__main__":
    main()
