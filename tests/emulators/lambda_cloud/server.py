"""The emulated Lambda Cloud API over real HTTP on 127.0.0.1 (`/api/v1/...`).

Per request: route by Lambda's OpenAPI document, check the Authorization header (Bearer, or
Basic as Lambda also accepts), apply the documented rate limits when `strict_limits` is set
(429 when exceeded), validate the body against the document (400 global/invalid-parameters),
inject any queued fault, run the operation, wrap it in `{"data": ...}` or `{"error": ...}` and
validate the response too. Every validation failure is appended to `violations`, which the
test fixture asserts empty: a mismatch with the document fails the test.
"""

from __future__ import annotations

import base64
import json
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .cloud import ApiError, LambdaCloud
from .openapi import PREFIX, OpenApi, Route, openapi

Handler = Callable[[LambdaCloud, dict[str, str], Any], Any]

HANDLERS: dict[tuple[str, str], Handler] = {
    ("GET", "/instance-types"): lambda c, p, b: c.list_instance_types(),
    ("GET", "/regions"): lambda c, p, b: c.list_regions(),
    ("GET", "/images"): lambda c, p, b: c.list_images(),
    ("POST", "/instance-operations/launch"): lambda c, p, b: c.launch(b),
    ("POST", "/instance-operations/terminate"): lambda c, p, b: c.terminate(b),
    ("POST", "/instance-operations/restart"): lambda c, p, b: c.restart(b),
    ("GET", "/instances"): lambda c, p, b: c.list_instances(),
    ("GET", "/instances/{id}"): lambda c, p, b: c.get_instance(p["id"]),
    ("POST", "/instances/{id}"): lambda c, p, b: c.rename_instance(p["id"], b),
    ("GET", "/ssh-keys"): lambda c, p, b: c.list_ssh_keys(),
    ("POST", "/ssh-keys"): lambda c, p, b: c.add_ssh_key(b),
    ("DELETE", "/ssh-keys/{id}"): lambda c, p, b: c.delete_ssh_key(p["id"]),
    ("GET", "/firewall-rulesets"): lambda c, p, b: c.list_rulesets(),
    ("POST", "/firewall-rulesets"): lambda c, p, b: c.create_ruleset(b),
    ("GET", "/firewall-rulesets/global"): lambda c, p, b: c.get_global_ruleset(),
    ("GET", "/firewall-rulesets/{id}"): lambda c, p, b: c.get_ruleset(p["id"]),
    ("PATCH", "/firewall-rulesets/{id}"): lambda c, p, b: c.patch_ruleset(p["id"], b),
    ("DELETE", "/firewall-rulesets/{id}"): lambda c, p, b: c.delete_ruleset(p["id"]),
    ("GET", "/file-systems"): lambda c, p, b: c.list_filesystems(),
    ("POST", "/filesystems"): lambda c, p, b: c.create_filesystem(b),
    ("DELETE", "/filesystems/{id}"): lambda c, p, b: c.delete_filesystem(p["id"]),
}

WINDOW = 4  # intervals over which the overall rate is judged

UNAUTHORIZED = ApiError(401, "global/invalid-api-key", "API key was invalid, expired, or deleted.",
                        "Check your API key or create a new one, then try again.")


@dataclass
class Fault:
    method: str
    template: str
    status: int
    count: int
    after: bool  # act first, then fail (the answer is lost, the effect is not)


@dataclass
class Hold:
    method: str
    template: str
    seconds: float
    count: int


@dataclass
class Call:
    at: float
    method: str
    path: str  # without the /api/v1 prefix
    status: int
    body: Any  # the request body (tests only; holds user_data)
    headers: dict[str, str] = field(default_factory=dict)  # as received (tests scan them for secrets)


class LambdaEmulator:
    """Start with `start()`, stop with `stop()` (idempotent). `base_url` is the API base to give
    the adapter (DEPLOYER_LAMBDA_API_URL). `cloud` is the account state, for setting capacity
    and faults and for inspection."""

    def __init__(
        self,
        workdir: Path,
        *,
        speed: float = 1000.0,
        strict_limits: tuple[float, float] | None = None,
        tolerance: float = 0.5,
        real_engine: bool | None = None,
        engine_env: dict[str, str] | None = None,
        api_key: str | None = None,
    ) -> None:
        self.cloud = LambdaCloud(workdir, speed=speed, real_engine=real_engine, engine_env=engine_env)
        self.openapi: OpenApi = openapi()
        self.api_key = api_key or "emu-" + secrets.token_hex(12)
        self.strict_limits = strict_limits
        self.tolerance = tolerance
        self.violations: list[str] = []
        self.calls: list[Call] = []
        self.too_many = 0
        self._faults: list[Fault] = []
        self._holds: list[Hold] = []
        self._last = {"launch": -math.inf}
        self._recent: list[float] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> LambdaEmulator:
        emulator = self

        class RequestHandler(_Handler):
            pass

        RequestHandler.emulator = emulator
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="lambda-emulator", daemon=True)
        self._thread.start()
        self.cloud.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.cloud.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the emulator first"
        return f"http://127.0.0.1:{self._server.server_address[1]}{PREFIX}"

    # -- test controls --------------------------------------------------------------------

    def inject(self, method: str, template: str, status: int = 500, *, count: int = 1, after: bool = False) -> None:
        """Answer the next `count` matching requests with `status`; with `after`, do the work first."""
        with self._lock:
            self._faults.append(Fault(method, template, status, count, after))

    def hold(self, method: str, template: str, seconds: float, *, count: int = 1) -> None:
        """Do the work of the next `count` matching requests, then hold each answer `seconds` (a slow
        answer: a client whose timeout is shorter gives up after Lambda acted; one killed meanwhile
        never learns what was made)."""
        with self._lock:
            self._holds.append(Hold(method, template, seconds, count))

    def pending_faults(self, status: int | None = None) -> int:
        """Injected faults (of `status`, when given) and holds not yet used up."""
        with self._lock:
            faults = sum(f.count for f in self._faults if status is None or f.status == status)
            return faults + (sum(h.count for h in self._holds) if status is None else 0)

    def clear_faults(self) -> None:
        """Forget injected faults and holds not yet used up (an outage is over)."""
        with self._lock:
            self._faults.clear()
            self._holds.clear()

    def calls_to(self, method: str, path: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path == path]

    # -- request handling -----------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: Any, raw_body: bytes) -> tuple[int, Any, dict[str, str]]:
        now = time.monotonic()
        path = urlsplit(raw_path).path
        short = path[len(PREFIX):] if path.startswith(PREFIX + "/") else None
        body: Any = None
        route: Route | None = None
        try:
            if short is None:
                raise ApiError(404, "global/not-found", "The requested resource was not found.")
            route, params, _ = self.openapi.match(method, short)
            if route is None or (method, route.template) not in HANDLERS:
                if route is not None:
                    self._violation(f"{method} {route.template} is documented but not emulated")
                raise ApiError(404, "global/not-found", "The requested resource was not found.")
            if not self._authorized(headers.get("Authorization")):
                raise UNAUTHORIZED
            limited = self._rate_limited(now, route)
            if limited:
                raise limited
            if raw_body:
                try:
                    body = json.loads(raw_body)
                except ValueError:
                    raise ApiError(400, "global/invalid-parameters", "Request body is not valid JSON.") from None
            problems = self.openapi.request_problems(route, body)
            if problems:
                self._violation(*problems)
                raise ApiError(400, "global/invalid-parameters", "Invalid request data: " + "; ".join(problems)[:500])
            fault = self._take_fault(method, route.template)
            if fault is not None and not fault.after:
                raise _fault_error(fault.status)
            data = HANDLERS[(method, route.template)](self.cloud, params, body)
            if fault is not None:
                raise _fault_error(fault.status)
            status, out = 200, {"data": data}
        except ApiError as exc:
            status, out = exc.status, exc.body()
        problems = self.openapi.response_problems(route, status, out)
        if problems:
            self._violation(*problems)
            status, out = 500, {"error": {"code": "global/internal-error", "message": "emulator response invalid"}}
        with self._lock:
            self.calls.append(Call(now, method, short or path, status, body, headers=dict(headers.items())))
            if status == 429:
                self.too_many += 1
        held = self._take_hold(method, route.template) if route is not None and status < 400 else None
        if held is not None:
            time.sleep(held.seconds)
        return status, out, {}

    def _authorized(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return value.strip() == self.api_key
        if scheme.lower() == "basic":
            value = value.strip()
            try:
                decoded = base64.b64decode(value, validate=True).decode()
            except ValueError:
                decoded = ""
            return value == self.api_key or decoded.rstrip(":") == self.api_key
        return False

    def _rate_limited(self, now: float, route: Route) -> ApiError | None:
        """Lambda: about 1 request per second; launch at most 1 per 12 s (scaled by strict_limits).

        Overall: more than WINDOW + 1 requests within WINDOW intervals is a burst (a client that
        spaces its requests by the interval never gets there, whatever the network jitter below
        one interval). Launch: two launches closer than `tolerance` x the launch interval."""
        if self.strict_limits is None:
            return None
        general, launch = self.strict_limits
        with self._lock:
            recent = [t for t in self._recent if now - t < WINDOW * general]
            recent.append(now)
            self._recent = recent
            burst = len(recent) > WINDOW + 1
            is_launch = route.template == "/instance-operations/launch"
            too_soon = is_launch and now - self._last["launch"] < launch * self.tolerance
            if is_launch:
                self._last["launch"] = now
        if burst or too_soon:
            return ApiError(429, "global/too-many-requests", "Too many requests.",
                            "Slow down: about 1 request per second, 1 launch per 12 seconds.")
        return None

    def _take_fault(self, method: str, template: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method == method and fault.template == template and fault.count > 0:
                    fault.count -= 1
                    return fault
        return None

    def _take_hold(self, method: str, template: str) -> Hold | None:
        with self._lock:
            for held in self._holds:
                if held.method == method and held.template == template and held.count > 0:
                    held.count -= 1
                    return held
        return None

    def _violation(self, *problems: str) -> None:
        with self._lock:
            self.violations.extend(problems)


def _fault_error(status: int) -> ApiError:
    if status == 429:
        return ApiError(429, "global/too-many-requests", "Too many requests.")
    if status == 503:
        return ApiError(503, "provider/internal-unavailable", "Provider unavailable", "Try again shortly")
    return ApiError(status, "global/internal-error", "An internal server error occurred.",
                    "Try again later. Contact Support if the problem persists.")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no delayed-ACK stall between headers and body
    emulator: LambdaEmulator

    def log_message(self, fmt: str, *args: object) -> None:  # quiet
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        status, out, extra = self.emulator.handle(self.command, self.path, self.headers, raw)
        payload = json.dumps(out).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up or died (a held answer)
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve
