"""deployer's key check in front of every route of vLLM's OpenAI server.

vLLM's own check (--api-key / VLLM_API_KEY) covers /v1, /v2, /inference and /cohere only:
POST /invocations serves the same completions and chats without a key, /tokenize, /metrics,
/version and /load answer anyone, and so do /sleep, /wake_up and /collective_rpc when
VLLM_SERVER_DEV_MODE=1. deployer starts vLLM with `--middleware deployer_vllm_guard.RequireKey`
and this file's directory on PYTHONPATH, so vLLM wraps its whole app in RequireKey.

Contract:
- The key is VLLM_API_KEY, the variable vLLM reads itself. Importing this module without it
  raises RuntimeError, so vLLM fails to start rather than serve unguarded.
- An HTTP request reaches vLLM only with `Authorization: Bearer <key>` (compared in constant
  time), except `GET /health`, which tells nothing but "up" and is what health checks call.
  Anything else is answered 401 {"error": "Unauthorized"}, as vLLM answers on /v1.
- A websocket needs the key too; without it the handshake is refused (HTTP 403).
- Other scopes (lifespan) pass through untouched.

Standard library only: it runs inside vLLM's process. Shipped by deployer (its templates);
a copy on a server is rewritten by the next deploy.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

KEY_ENV = "VLLM_API_KEY"
OPEN = {("GET", "/health")}
_REFUSAL = json.dumps({"error": "Unauthorized"}).encode()


def configured_key() -> str:
    """The endpoint key from VLLM_API_KEY. Raises RuntimeError when it is unset or empty."""
    key = os.environ.get(KEY_ENV, "")
    if not key:
        raise RuntimeError(f"deployer_vllm_guard: {KEY_ENV} is not set; refusing to serve without a key")
    return key


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()  # equal lengths: compare_digest then leaks nothing


class RequireKey:
    """ASGI middleware: every request needs the key, but GET /health (see the module docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._key = _digest(configured_key().encode())

    def allows(self, scope: dict[str, Any]) -> bool:
        """Whether this http/websocket scope may reach the app."""
        if scope["type"] == "http" and (scope.get("method"), scope.get("path")) in OPEN:
            return True
        for name, value in scope.get("headers") or ():
            if name.lower() == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(_digest(token), self._key)
        return False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or self.allows(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(_REFUSAL)).encode()),
                (b"www-authenticate", b"Bearer")]})
            await send({"type": "http.response.body", "body": _REFUSAL})
        else:
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})  # before accept: the server answers 403


configured_key()  # fail at import (vLLM imports this while building its app), not on the first request
