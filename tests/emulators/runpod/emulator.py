"""A local RunPod: REST v2 control plane + serverless data plane on 127.0.0.1, started by tests.

    emu = RunPodEmulator(log_dir=tmp_path, time_scale=0.02)
    emu.start()
    os.environ.update(emu.env())   # DEPLOYER_RUNPOD_API_URL / _ENDPOINT_URL, RUNPOD_API_KEY
    ...
    emu.close()
    assert not emu.violations       # every request and response matched openapi-v2.json

Workers start the engine (tests.support.engine.launch_vllm) from the endpoint's env the way the
vLLM worker does, so what the adapter sends is what runs. Faults on demand: `emu.faults`.
"""

from __future__ import annotations

import http
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.polling import wait_until

from .catalog import default_catalog
from .cluster import Cluster, Timing
from .control import ControlPlane, problem
from .dataplane import DataPlane, error, response_problems
from .http import Call, Plane, Reply, Server
from .openapi import ContractChecker

DEFAULT_KEY = "rpa_emulator-key-for-tests-only"


@dataclass
class Rule:
    status: int | None  # None: a delay rule
    count: int
    method: str | None
    path: re.Pattern[str] | None
    retry_after: int | None = None
    delay: float = 0.0
    after_acting: bool = False

    def matches(self, call: Call) -> bool:
        return (self.count > 0 and (self.method is None or self.method == call.method)
                and (self.path is None or bool(self.path.search(call.path))))


@dataclass
class Faults:
    """Trouble on demand. Flags act at once; rules act on the next `count` matching control calls."""

    no_capacity: bool = False  # no GPU free: workers stay THROTTLED
    crash: bool = False  # engines exit at start: workers crash-loop (UNHEALTHY)
    linger_delete_s: float = 0.0  # a deleted endpoint stays listed (and readable) this long
    keep_bound_template: bool = False  # DELETE of an endpoint leaves its template behind
    rules: list[Rule] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, status: int, *, count: int = 1, method: str | None = None, path: str | None = None,
             retry_after: int | None = None, after_acting: bool = False) -> None:
        """Answer the next `count` matching calls with `status` (problem+json). `after_acting`: do
        the real work first, then answer with the error (a response lost after the fact)."""
        self.rules.append(Rule(status, count, method, re.compile(path) if path else None, retry_after,
                               after_acting=after_acting))

    def slow(self, seconds: float, *, count: int = 1, method: str | None = None, path: str | None = None) -> None:
        """Hold the next `count` matching responses `seconds` after doing the work."""
        self.rules.append(Rule(None, count, method, re.compile(path) if path else None, delay=seconds,
                               after_acting=True))

    def take(self, call: Call, *, after_acting: bool) -> Rule | None:
        with self.lock:
            for rule in self.rules:
                if rule.after_acting == after_acting and rule.matches(call):
                    rule.count -= 1
                    return rule
        return None


@dataclass
class Exchange:
    plane: str
    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # as received (tests scan them for secrets)


class RateWindows:
    """Per-key windows for the RateLimit / RateLimit-Policy headers (and a 429 past a quota)."""

    def __init__(self, quotas: dict[str, int]) -> None:
        self.quotas = quotas
        self.lengths = {"minute": 60, "hour": 3600, "day": 86400}
        self.state: dict[tuple[str, str], tuple[float, int]] = {}
        self.lock = threading.Lock()

    def take(self, key: str) -> tuple[bool, dict[str, str], int]:
        now = time.monotonic()
        remaining, allowed, retry = [], True, 0
        with self.lock:
            for window, quota in self.quotas.items():
                start, used = self.state.get((key, window), (now, 0))
                if now - start >= self.lengths[window]:
                    start, used = now, 0
                reset = int(self.lengths[window] - (now - start)) or 1
                if used >= quota:
                    allowed, retry = False, max(retry, reset)
                else:
                    used += 1
                self.state[(key, window)] = (start, used)
                remaining.append(f'"{window}";r={max(0, quota - used)};t={reset}')
        policy = ", ".join(f'"{w}";q={q};w={self.lengths[w]}' for w, q in self.quotas.items())
        return allowed, {"RateLimit": ", ".join(remaining), "RateLimit-Policy": policy}, retry


class RunPodEmulator:
    def __init__(
        self,
        *,
        log_dir: Path,
        api_key: str = DEFAULT_KEY,
        read_only_keys: tuple[str, ...] = (),
        cold_start_s: float = 0.2,
        flashboot_cold_start_s: float = 0.05,
        time_scale: float = 1.0,
        crash_backoff_s: float = 0.3,
        engine_startup_s: float = 0.2,
        real_engine: bool | None = None,
        openai_wait_s: float = 90.0,
        catalog: list[dict[str, Any]] | None = None,
        secrets: dict[str, str] | None = None,
        network_volumes: dict[str, dict[str, Any]] | None = None,
        rate_quotas: dict[str, int] | None = None,
    ) -> None:
        self.api_key = api_key
        self.read_only_keys = set(read_only_keys)
        self.all_keys = {api_key, *read_only_keys}
        self.openai_wait_s = openai_wait_s
        self.network_volumes = dict(network_volumes or {})
        self.faults = Faults()
        self.closing = threading.Event()
        self.exchanges: list[Exchange] = []
        self.violations: list[str] = []
        self._record_lock = threading.Lock()
        self.rates = RateWindows(rate_quotas or {"minute": 6000, "hour": 300000, "day": 5000000})
        self.checker = ContractChecker()
        timing = Timing(cold_start_s=cold_start_s, flashboot_cold_start_s=flashboot_cold_start_s,
                        time_scale=time_scale, crash_backoff_s=crash_backoff_s,
                        engine_startup_s=engine_startup_s, real_engine=real_engine)
        self.cluster = Cluster(timing=timing, log_dir=Path(log_dir), catalog=catalog or default_catalog(),
                               secrets=dict(secrets or {}), faults=self.faults)
        self.control = ControlPlane(self)
        self.data = DataPlane(self)
        self._control_server = Server(Plane(self.control.routes(), self._around_control, self._no_control_route),
                                      self._after_control)
        self._data_server = Server(Plane(self.data.routes(), self.data.around, self._no_data_route),
                                   self._after_data)

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self._control_server.port}/v2"

    @property
    def data_url(self) -> str:
        return f"http://127.0.0.1:{self._data_server.port}/v2"

    def start(self) -> RunPodEmulator:
        self.cluster.start()
        self._control_server.start()
        self._data_server.start()
        return self

    def close(self) -> None:
        """Stop every worker and engine, then both servers. Idempotent."""
        if self.closing.is_set():
            return
        self.closing.set()
        self.cluster.close()
        self._control_server.stop()
        self._data_server.stop()

    def env(self) -> dict[str, str]:
        """What the adapter needs to talk to this emulator instead of RunPod."""
        return {"DEPLOYER_RUNPOD_API_URL": self.control_url, "DEPLOYER_RUNPOD_ENDPOINT_URL": self.data_url,
                "RUNPOD_API_KEY": self.api_key}

    # -- what tests look at ------------------------------------------------------------------

    def calls(self, plane: str = "control", method: str | None = None, path: str | None = None) -> list[Exchange]:
        with self._record_lock:
            return [e for e in self.exchanges if e.plane == plane and (method is None or e.method == method)
                    and (path is None or re.search(path, e.path))]

    def endpoints(self) -> list[dict[str, Any]]:
        with self.cluster.lock:
            return [self.control.view(e) for e in self.cluster.endpoints.values()]

    def templates(self) -> list[dict[str, Any]]:
        with self.cluster.lock:
            return list(self.control.templates.values())

    def live_workers(self) -> list[Any]:
        with self.cluster.lock:
            return [w for w in self.cluster.all_workers if not w.gone.is_set()]

    def leftovers(self) -> list[str]:
        """What the emulated account still holds or runs (empty: nothing)."""
        out = [f"endpoint {e['id']} ({e['name']})" for e in self.endpoints()]
        out += [f"template {t['id']} ({t['name']})" for t in self.templates()]
        out += [f"worker {w.id} ({w.status})" for w in self.live_workers()]
        if self.cluster.engines_alive():
            out.append(f"{self.cluster.engines_alive()} engine process(es)")
        return out

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        return wait_until(predicate, timeout)

    def violation(self, what: str, call: Call, problems: list[str]) -> None:
        with self._record_lock:
            self.violations += [f"{what} {call.method} {call.path}: {p}" for p in problems]

    # -- control-plane wrapper ---------------------------------------------------------------

    def _around_control(self, call: Call, dispatch: Any) -> Reply:
        problems = self.checker.request(call.method, call.path, call.query, call.headers, call.body or None)
        auth = call.header("Authorization") or ""
        key = auth[7:] if auth.startswith("Bearer ") else None
        if key is None or key not in self.all_keys:
            if not self.checker.security_only(problems) and problems:
                self.violation("request", call, problems)
            return problem(401, "missing bearer token" if key is None else "invalid api key")
        if problems:
            self.violation("request", call, problems)
            return problem(422, "Request validation failed.", errors=problems)
        allowed, headers, retry = self.rates.take(key)
        if not allowed:
            return problem(429, "rate limit exceeded", headers={**headers, "Retry-After": str(retry)})
        rule = self.faults.take(call, after_acting=False)
        if rule is not None:
            return self._fault_reply(rule, headers)
        if key in self.read_only_keys and call.method != "GET":
            reply = problem(403, "access denied")
        else:
            reply = dispatch(call)
        rule = self.faults.take(call, after_acting=True)
        if rule is not None:
            if rule.status is None:
                time.sleep(rule.delay)
            else:
                reply = self._fault_reply(rule, headers)
        reply.headers.update(headers)
        return reply

    def _fault_reply(self, rule: Rule, headers: dict[str, str]) -> Reply:
        extra = dict(headers)
        if rule.retry_after is not None:
            extra["Retry-After"] = str(rule.retry_after)
        detail = {429: "rate limit exceeded for the minute window"}.get(rule.status, http.HTTPStatus(rule.status).phrase.lower())
        return problem(rule.status, detail, headers=extra)

    def _no_control_route(self, call: Call) -> Reply:
        return problem(501, "the emulator does not implement this path")

    def _no_data_route(self, call: Call) -> Reply:
        return error(404, "no such route")

    def _after_control(self, call: Call, reply: Reply, sent: bytes) -> None:
        self._record("control", call, reply)
        headers = {"Content-Type": reply.content_type, **reply.headers} if sent else dict(reply.headers)
        problems = self.checker.response(call.method, call.path, call.query, call.headers, call.body or None,
                                         reply.status, headers, sent)
        if problems:
            self.violation("response", call, problems)

    def _after_data(self, call: Call, reply: Reply, sent: bytes) -> None:
        self._record("data", call, reply)
        problems = response_problems(call, reply, sent)
        if problems:
            self.violation("data-plane response", call, problems)

    def _record(self, plane: str, call: Call, reply: Reply) -> None:
        try:
            body = call.json()
        except ValueError:
            body = call.body
        with self._record_lock:
            self.exchanges.append(Exchange(plane, call.method, call.path, dict(call.query), body, reply.status,
                                          headers=dict(call.headers)))
