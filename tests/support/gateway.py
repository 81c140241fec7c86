"""Helpers for gateway tests: deployments served by stub engines, the gateway as a real process,
and a streaming client that records when each chunk arrived.

`stub_deployment` records a local deployment in the state exactly as `deployer deploy` leaves
one (intent row, process resource, ready status with its URL) and generates its key the way
deploy does; the server behind it is the stub engine requiring that key. The gateway then
resolves it through `Orchestrator.target` like any deployment.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from deployer import keys
from deployer.settings import Settings
from deployer.spec import validate_spec
from deployer.state import StateStore
from deployer.vllm_command import serve_argv
from tests.support.engine import REPO, EngineProcess, free_port, launch_vllm, tiny_model


def tiny_local_spec(name: str, *, concurrency: int = 32) -> Any:
    return validate_spec({
        "name": name, "provider": "local",
        "model": {"id": str(tiny_model()), "served_name": "tiny", "max_model_len": 256, "dtype": "float32",
                  "engine_args": {"enforce-eager": True}},
        "scaling": {"concurrency": concurrency},
    })


def stub_deployment(home: Path, name: str, log_dir: Path, *, concurrency: int = 32,
                    env: dict[str, str] | None = None, port: int | None = None, engine_key: str | None = None) -> EngineProcess:
    """Start a stub engine for a local deployment `name` and record it in the state at `home`.
    `engine_key`: the key the engine requires, when it should differ from the recorded one."""
    spec = tiny_local_spec(name, concurrency=concurrency)
    key = keys.endpoint_key(spec, Settings(home=home), create=True)
    engine = launch_vllm(serve_argv(spec, host="127.0.0.1", api_key=None), port=port,
                         env={"VLLM_API_KEY": engine_key or key, **(env or {})}, log_path=log_dir / f"{name}.log")
    record_deployment(home, name, f"{engine.base_url}/v1", pid=engine.proc.pid, concurrency=concurrency)
    return engine


def record_deployment(home: Path, name: str, url: str, *, pid: int = 0, concurrency: int = 32) -> str:
    """Record a ready local deployment `name` at `url` as deploy does (generating its key if
    needed); returns the key clients must send."""
    settings = Settings(home=home)
    spec = tiny_local_spec(name, concurrency=concurrency)
    key = keys.endpoint_key(spec, settings, create=True)
    store = StateStore(home)
    try:
        store.begin(name, "local", "stub", spec.model_dump(mode="json"), "creating")
        if pid:
            store.record_resource(name, "local", "process", str(pid))
        store.set_status(name, "local", "ready", url=url,
                         key_source=f"the deployment's API key ({keys.key_path(settings, name)})")
    finally:
        store.close()
    assert key is not None
    return key


def gateway_file(path: Path, name: str, routes: list[dict[str, Any]], *, port: int | None = None,
                 **sections: Any) -> Path:
    """Write a gateway file (fast health probes unless `health` is given); returns its path."""
    doc = {"name": name, "listen": {"host": "127.0.0.1", "port": port or free_port()},
           "health": {"interval": 0.3, "timeout": 2}, "routes": routes, **sections}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class GatewayProcess:
    """`deployer gateway run FILE` as a user starts it, its output in `log_path`."""

    proc: subprocess.Popen
    url: str  # .../v1
    key: str
    log_path: Path

    @property
    def base(self) -> str:
        return self.url.removesuffix("/v1")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def metrics(self) -> str:
        return httpx.get(f"{self.base}/metrics", headers=self.headers(), timeout=5).text

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM (graceful: drains, flushes traffic to the state), SIGKILL after `timeout`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_gateway(config: Path, home: Path, log_path: Path, *, env: dict[str, str] | None = None,
                  timeout: float = 30) -> GatewayProcess:
    """Start the gateway and wait until /health answers; fails with its log if it exits."""
    doc = yaml.safe_load(config.read_text())
    url = f"http://127.0.0.1:{doc['listen']['port']}/v1"
    full_env = {**os.environ, "DEPLOYER_HOME": str(home), **(env or {})}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "deployer", "gateway", "run", str(config)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env, cwd=REPO)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the gateway exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(url.removesuffix("/v1") + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    else:
        proc.kill()
        raise AssertionError(f"the gateway did not answer in {timeout}s:\n{log_path.read_text()}")
    key_file = Path(home) / "keys" / "gateways" / f"{doc['name']}.key"
    key = (env or {}).get(doc.get("auth", {}).get("api_key_env") or "", "") or key_file.read_text().strip()
    return GatewayProcess(proc, url, key, log_path)


@dataclass
class Streamed:
    """One streamed request as the client saw it."""

    status: int = 0
    sent_at: float = 0.0  # monotonic time the request was sent
    backend: str | None = None
    events: list[Any] = field(default_factory=list)  # parsed `data:` payloads ("[DONE]" kept as text)
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each event
    error: str | None = None  # a transport error or an error event

    @property
    def started(self) -> bool:
        """Whether any token reached the client."""
        return any(isinstance(e, dict) and e.get("choices") for e in self.events)

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None and bool(self.events) and self.events[-1] == "[DONE]"

    @property
    def text(self) -> str:
        out = []
        for e in self.events:
            if isinstance(e, dict):
                for c in e.get("choices") or []:
                    out.append(c.get("text") or (c.get("delta") or {}).get("content") or "")
        return "".join(out)


def stream_chat(client: httpx.Client, url: str, key: str, *, model: str = "tiny", max_tokens: int = 8,
                timeout: float = 60) -> Streamed:
    """POST a streaming chat completion and read it event by event (never raises)."""
    result = Streamed()
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": max_tokens,
            "stream": True}
    result.sent_at = time.monotonic()
    try:
        with client.stream("POST", f"{url}/chat/completions", json=body, timeout=timeout,
                           headers={"Authorization": f"Bearer {key}"}) as response:
            result.status = response.status_code
            result.backend = response.headers.get("x-deployer-backend")
            if response.status_code != 200:
                result.error = response.read().decode(errors="replace")
                return result
            buffer = b""
            for data in response.iter_raw():  # SSE lines end in \n only (tokens may hold U+2028 and the like)
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.startswith(b"data: "):
                        continue
                    payload = line[6:].decode()
                    event = payload if payload == "[DONE]" else json.loads(payload)
                    result.events.append(event)
                    result.arrivals.append(time.monotonic())
                    if isinstance(event, dict) and "error" in event:
                        result.error = json.dumps(event["error"])
    except httpx.HTTPError as exc:
        result.error = f"{exc.__class__.__name__}: {exc}"
    return result


def streams_at_once(url: str, key: str, count: int, *, max_tokens: int) -> list[Streamed]:
    """`count` streaming chats released together (a barrier), each on its own connection."""
    barrier = threading.Barrier(count)

    def one(client: httpx.Client) -> Streamed:
        barrier.wait()
        return stream_chat(client, url, key, max_tokens=max_tokens)

    with httpx.Client(limits=httpx.Limits(max_connections=count + 8)) as client, \
            concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, [client] * count))


def in_process(*args: str, env: dict[str, str] | None = None) -> Any:
    """`deployer ARGS` run in this process by typer's runner (the gateway and cost commands),
    without a Python start-up per call; exit codes and output are the CLI's own."""
    import typer
    from typer.testing import CliRunner

    from deployer.costing.cli import register as register_cost
    from deployer.gateway.cli import register as register_gateway

    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """deployer (gateway and cost)."""

    register_gateway(app)
    register_cost(app)
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})
