"""The gateway as users run it (`deployer gateway run`, a real process) in front of deployments
served by stub engines (real HTTP servers requiring their keys, streaming one SSE chunk per
token). Policies, failover before the first byte, overflow, health, metrics, status, traffic
in the state, errors, and that no key leaks anywhere."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from deployer.settings import Settings
from deployer.state import StateStore
from deployer.vllm_command import serve_argv
from tests.support.engine import EngineProcess, free_port, launch_vllm
from tests.support.gateway import (
    GatewayProcess, Streamed, gateway_file, in_process, record_deployment, start_gateway, stream_chat,
    streams_at_once, stub_deployment, tiny_local_spec,
)
from tests.support.polling import wait_until

SLOW = {"STUB_ENGINE_TOKEN_S": "0.1"}


@pytest.fixture
def fleet(home: Path, tmp_path: Path):
    """Start stub deployments and gateways; everything is stopped at teardown."""
    engines: list[EngineProcess] = []
    gateways: list[GatewayProcess] = []

    class Fleet:
        def deployment(self, name: str, **kwargs) -> EngineProcess:
            engine = stub_deployment(home, name, tmp_path / "engines", **kwargs)
            engines.append(engine)
            return engine

        def ready(self, *started: EngineProcess) -> None:
            for engine in started:
                assert engine.wait_healthy(30), engine.log()

        def gateway(self, routes: list[dict], **sections) -> GatewayProcess:
            config = gateway_file(tmp_path / f"gateway{len(gateways)}.yaml", f"gw{len(gateways)}", routes, **sections)
            gateway = start_gateway(config, home, tmp_path / f"gateway{len(gateways)}.log")
            gateway.config = config  # type: ignore[attr-defined]
            gateways.append(gateway)
            return gateway

        def adopt(self, engine: EngineProcess) -> EngineProcess:
            engines.append(engine)
            return engine

    try:
        yield Fleet()
    finally:
        for gateway in gateways:
            gateway.stop()
        for engine in engines:
            engine.stop()


def deployment_key(home: Path, name: str) -> str:
    return (home / "keys" / f"{name}.key").read_text().strip()


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_one_url_serves_every_route_streams_incrementally_and_requires_its_key(fleet, home: Path) -> None:
    solo = fleet.deployment("solo", env=SLOW)
    fleet.ready(solo)
    gw = fleet.gateway([{"model": "tiny-chat", "backends": ["solo"]}])
    seen: list[str] = []
    with httpx.Client(timeout=30) as client:
        models = client.get(f"{gw.url}/models", headers=gw.headers())
        assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == ["tiny-chat"]
        for path, body in (("chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
                           ("completions", {"prompt": "Hi", "max_tokens": 2}), ("embeddings", {"input": ["a b", "c"]})):
            answer = client.post(f"{gw.url}/{path}", headers=gw.headers(), json={"model": "tiny-chat", **body})
            assert answer.status_code == 200 and answer.headers["x-deployer-backend"] == "solo", answer.text
            assert answer.json()["model"] == "tiny"  # the backend's served name: the alias is the gateway's
            seen.append(answer.text)

        # the client users use, streaming: tokens arrive one by one, 0.1 s apart, not at the end
        start = time.monotonic()
        chunks = []
        stream = OpenAI(base_url=gw.url, api_key=gw.key, max_retries=0).chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True)
        for chunk in stream:
            chunks.append((time.monotonic() - start, chunk.choices[0].delta.content if chunk.choices else None))
        texts = [text for _, text in chunks if text]
        assert len(texts) == 8 and "".join(texts) == " ".join(["stub"] * 8)
        arrivals = [at for at, text in chunks if text]
        assert arrivals[0] < 0.45 and arrivals[-1] > 0.7, arrivals  # the first token came long before the last
        assert sum(1 for a, b in zip(arrivals, arrivals[1:]) if b - a > 0.05) >= 5, arrivals

        # every route but GET /health needs the gateway's key: none, a wrong one, the backend's own
        backend_key = deployment_key(home, "solo")
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {backend_key}"},
                        {"Authorization": gw.key}):
            for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/metrics"),
                                 ("GET", "/nowhere")):
                refused = client.request(method, gw.base + path, headers=headers, json={"model": "tiny-chat"})
                assert refused.status_code == 401, (method, path, refused.text)
                assert refused.json()["error"]["code"] == "invalid_api_key"
                seen.append(refused.text)
        assert client.get(f"{gw.base}/health").json() == {"status": "ok"}

        unknown = client.post(f"{gw.url}/completions", headers=gw.headers(), json={"model": "gpt-4", "prompt": "x"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
        assert "tiny-chat" in unknown.json()["error"]["message"]
        not_json = client.post(f"{gw.url}/completions", headers=gw.headers(), content=b"{nope")
        assert not_json.status_code == 400 and not_json.json()["error"]["type"] == "invalid_request_error"
        wrong_method = client.get(f"{gw.url}/chat/completions", headers=gw.headers())
        assert wrong_method.status_code == 405 and "error" in wrong_method.json()
        seen += [unknown.text, not_json.text, wrong_method.text]
    for text in seen:
        assert backend_key not in text and gw.key not in text


def test_killing_the_primary_mid_load_fails_only_requests_that_had_started_streaming(fleet, home: Path) -> None:
    primary, standby = fleet.deployment("primary", env=SLOW), fleet.deployment("standby", env=SLOW)
    fleet.ready(primary, standby)
    gw = fleet.gateway([{"model": "tiny", "policy": "failover", "backends": ["primary", "standby"]}])
    port = primary.port
    with httpx.Client() as client:
        assert stream_chat(client, gw.url, gw.key, max_tokens=1).backend == "primary"  # connections warm
    finished_on_primary = threading.Semaphore(0)

    def kill_primary() -> None:  # once a few streams are done, while many are mid-way or just sent
        for _ in range(5):
            assert finished_on_primary.acquire(timeout=20)
        os.killpg(primary.proc.pid, signal.SIGKILL)
        primary.proc.wait()

    start = time.monotonic()

    def one(i: int) -> Streamed:
        time.sleep(max(0.0, start + i * 0.025 - time.monotonic()))  # 40 requests/s of 0.8 s streams
        result = stream_chat(client, gw.url, gw.key, max_tokens=8)
        if result.ok and result.backend == "primary":
            finished_on_primary.release()
        return result

    killer = threading.Thread(target=kill_primary)
    with httpx.Client(limits=httpx.Limits(max_connections=64)) as client, cf.ThreadPoolExecutor(48) as pool:
        killer.start()
        results = list(pool.map(one, range(64)))
    killer.join()
    assert not primary.alive()

    failed = [r for r in results if not r.ok]
    assert all(r.started for r in failed), [(r.status, r.error, len(r.events)) for r in failed if not r.started]
    for r in failed:  # a stream cut after its first token ends with an OpenAI-style error event naming the backend
        assert r.backend == "primary" and "backend primary failed mid-stream" in (r.error or ""), r.error
    served = {name: sum(1 for r in results if r.ok and r.backend == name) for name in ("primary", "standby")}
    assert served["primary"] >= 5 and served["standby"] >= 20 and len(failed) <= 40, (served, len(failed))
    text = gw.metrics()
    retried = sum(metric(text, "deployer_gateway_backend_errors_total", backend="primary", kind=kind)
                  for kind in ("connect", "transport", "timeout"))
    assert retried >= 1  # attempts on primary failed before their first byte, and those requests still succeeded
    assert metric(text, "deployer_gateway_backend_errors_total", backend="primary", kind="stream") == len(failed)
    assert metric(text, "deployer_gateway_backend_healthy", backend="primary") == 0
    assert metric(text, "deployer_gateway_requests_total", code="200") == 65  # every request got an answer started
    assert "backend primary (local) is out of rotation" in gw.log()

    # the primary comes back on its address: the probes return it to rotation and it takes traffic again
    fleet.adopt(launch_vllm(engine_argv("primary"), port=port, env={"VLLM_API_KEY": deployment_key(home, "primary")},
                            log_path=primary.log_path))
    assert wait_until(lambda: metric(gw.metrics(), "deployer_gateway_backend_healthy", backend="primary") == 1), gw.log()
    with httpx.Client() as client:
        assert stream_chat(client, gw.url, gw.key, max_tokens=2).backend == "primary"
    assert "backend primary (local) is back in rotation" in gw.log()


def engine_argv(name: str) -> list[str]:
    """The engine command of deployment `name` (to start it again, or elsewhere)."""
    return serve_argv(tiny_local_spec(name), host="127.0.0.1", api_key=None)


def test_overflow_spills_at_the_concurrency_limit_and_weights_split_traffic(fleet, home: Path) -> None:
    base = fleet.deployment("base", concurrency=2, env=SLOW)
    over = fleet.deployment("over", env=SLOW)
    fleet.ready(base, over)
    gw = fleet.gateway([
        {"model": "tiny", "policy": "primary-overflow", "backends": ["base", "over"]},
        {"model": "spread", "policy": "weighted", "backends": [{"deployment": "base", "weight": 3}, "over"]},
    ])
    results = streams_at_once(gw.url, gw.key, 6, max_tokens=8)
    assert all(r.ok for r in results)
    assert sorted(r.backend for r in results) == ["base", "base", "over", "over", "over", "over"]
    with httpx.Client() as client:
        # the burst is over: base has room again and takes the next request
        assert stream_chat(client, gw.url, gw.key, max_tokens=1).backend == "base"

        status = in_process("gateway", "status", str(gw.config), "--json")
        assert status.exit_code == 0, status.output
        rows = {r["backend"]: r for r in json.loads(status.stdout)["backends"]}
        assert (rows["base"]["requests"], rows["base"]["limit"], rows["base"]["in_flight"]) == (3, 2, 0)
        assert (rows["over"]["requests"], rows["over"]["limit"], rows["over"]["healthy"]) == (4, 32, True)
        assert rows["base"]["p50_s"] > 0.5  # eight tokens at 0.1 s

        def quick(_: int) -> str | None:
            answer = client.post(f"{gw.url}/completions", headers=gw.headers(),
                                 json={"model": "spread", "prompt": "x", "max_tokens": 1})
            return answer.headers.get("x-deployer-backend")

        with cf.ThreadPoolExecutor(8) as quick_pool:
            picks = list(quick_pool.map(quick, range(120)))
    assert 0.6 <= picks.count("base") / 120 <= 0.9 and picks.count("over") + picks.count("base") == 120


def test_errors_name_the_backend_in_openai_form_and_no_key_leaks_anywhere(fleet, home: Path) -> None:
    wrong = fleet.deployment("wrongkey", engine_key="dpk-the-engine-expects-another-key-0123456789")
    fleet.ready(wrong)
    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    record_deployment(home, "silent", f"http://127.0.0.1:{silent.getsockname()[1]}/v1")
    record_deployment(home, "gone", f"http://127.0.0.1:{free_port()}/v1")
    gw = fleet.gateway([
        {"model": "bad-key", "backends": ["wrongkey"]},
        {"model": "slow", "backends": ["silent"]},
        {"model": "down", "backends": ["gone"]},
        {"model": "mixed", "backends": ["gone", "wrongkey"]},
    ], timeouts={"connect": 1, "first_byte": 0.5}, health={"interval": 30, "timeout": 1})
    answers = {}
    try:
        with httpx.Client(timeout=10) as client:
            for model in ("bad-key", "slow", "down", "mixed"):
                answers[model] = client.post(f"{gw.url}/chat/completions", headers=gw.headers(), json={
                    "model": model, "messages": [{"role": "user", "content": "Hi"}], "stream": model == "slow"})
            metrics_text = gw.metrics()
    finally:
        silent.close()
    expected = {"bad-key": (502, "wrongkey: answered 401"), "slow": (504, "silent: no answer within 0.5 s"),
                "down": (503, "gone: cannot connect"), "mixed": (502, "wrongkey: answered 401")}
    for model, (status, words) in expected.items():
        answer = answers[model]
        assert answer.status_code == status, (model, answer.text)
        error = answer.json()["error"]
        assert words in error["message"] and error["type"] == "backend_error", (model, error)
    # the refused connection took `gone` out of rotation at once: `mixed` no longer tries it
    assert "gone" not in answers["mixed"].json()["error"]["message"]
    assert metric(metrics_text, "deployer_gateway_backend_healthy", backend="gone") == 0
    assert metric(metrics_text, "deployer_gateway_backend_requests_total", backend="gone") == 1
    status = in_process("gateway", "status", str(gw.config))
    check = in_process("gateway", "check", str(gw.config), "--json")
    assert status.exit_code == check.exit_code == 0, (status.output, check.output)
    assert "wrongkey" in status.stdout and "out" in status.stdout and "0/32" in status.stdout
    assert {r["backend"] for r in json.loads(check.stdout)["routes"][3]["backends"]} == {"gone", "wrongkey"}
    assert gw.stop() in (0, -signal.SIGTERM)

    secrets = [gw.key, *(deployment_key(home, n) for n in ("wrongkey", "silent", "gone"))]
    texts = {"log": gw.log(), "metrics": metrics_text, "status": status.output, "check": check.output}
    texts.update({f"answer {m}": a.text + json.dumps(dict(a.headers)) for m, a in answers.items()})
    for path in home.rglob("*"):
        if path.is_file() and "keys" not in path.relative_to(home).parts:
            texts[str(path)] = path.read_bytes().decode(errors="replace")
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a key leaked into {where}"
    assert (home / "keys" / "gateways" / "gw0.key").stat().st_mode & 0o777 == 0o600


def test_a_moved_deployment_is_followed_and_traffic_reaches_the_state_and_cost(fleet, home: Path,
                                                                              tmp_path: Path) -> None:
    first = fleet.deployment("mover")
    fleet.ready(first)
    gw = fleet.gateway([{"model": "tiny", "backends": ["mover"]}])
    with httpx.Client(timeout=10) as client:
        def ask() -> httpx.Response:
            return client.post(f"{gw.url}/completions", headers=gw.headers(),
                               json={"model": "tiny", "prompt": "x", "max_tokens": 1})

        assert all(ask().status_code == 200 for _ in range(5))
        # redeployed elsewhere (as a provider switch or a new port would): the state says where it is now
        second = fleet.adopt(launch_vllm(engine_argv("mover"), env={"VLLM_API_KEY": deployment_key(home, "mover")},
                                         log_path=tmp_path / "mover2.log"))
        fleet.ready(second)
        record_deployment(home, "mover", f"{second.base_url}/v1")
        first.stop()
        assert wait_until(lambda: "now serves from" in gw.log(), 5), gw.log()
        assert all(ask().status_code == 200 for _ in range(5))  # same URL for the client, the new server behind it
    assert gw.stop() in (0, -signal.SIGTERM)

    store = StateStore(home)
    rows = store.gateway_traffic(since=time.time() - 3600, deployment="mover")
    store.close()
    assert len(rows) == 1 and rows[0]["requests"] == 10 and rows[0]["errors"] == 0 and rows[0]["gateway"] == "gw0"
    spec = tmp_path / "mover.yaml"
    spec.write_text(f"name: mover\nmodel: {{id: {Settings(home=home).home}/no-model}}\n")
    cost = in_process("cost", str(spec), "--json")
    assert cost.exit_code == 0, cost.output
    observed = json.loads(cost.stdout)["observed"]["providers"]
    assert observed[0]["provider"] == "local" and observed[0]["requests"] == 10
    assert observed[0]["note"] == "this machine: free" and observed[0]["hour_usd"] is None
    table = in_process("cost", str(spec))
    assert "observed through deployer gateway" in table.stdout and "this machine: free" in table.stdout

