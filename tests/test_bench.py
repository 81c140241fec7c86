"""`deployer bench` on stub engines: the streaming client's timings and token counts, errors
counted by kind (never raised), the CLI's JSON, table, bad input and Ctrl-C, the stored results
`cost --measured` prices, and `--cold` through a fake provider and the RunPod and Modal emulators.
The real engine runs in test_bench_engine.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployer import keys
from deployer.benchmark import stats
from deployer.benchmark.load import LoadRun, LoadSpec, RequestResult, first_token
from deployer.errors import InputError
from deployer.provider import Deployment, Endpoint
from deployer.settings import Settings
from deployer.spec import validate_spec
from deployer.state import StateStore
from tests.emulators.modal import ModalEmulator
from tests.emulators.modal.fixtures import modal_emulator_fixture  # noqa: F401 - provides `modal_emulator`
from tests.emulators.runpod import RunPodEmulator
from tests.emulators.runpod.fixture import runpod_emulator, start_runpod, tiny_spec  # noqa: F401
from tests.support.engine import REPO, EngineProcess, free_port, launch_vllm

SMALL = ("--requests", "6", "--concurrency", "2", "--prompt-tokens", "12", "--max-tokens", "5")


# -- helpers ------------------------------------------------------------------------------------


def stub(tmp_path: Path, model: Path, key: str, served: str = "tiny", token_s: float = 0.0) -> EngineProcess:
    engine = launch_vllm([str(model), "--served-model-name", served], log_path=tmp_path / f"stub-{served}.log",
                         env={"VLLM_API_KEY": key, "STUB_ENGINE_TOKEN_S": str(token_s)})
    assert engine.wait_healthy(30), engine.log()
    return engine


@pytest.fixture
def engines() -> Iterator[list[EngineProcess]]:
    started: list[EngineProcess] = []
    yield started
    for engine in started:
        engine.stop()


def record_deployment(home: Path, spec_data: dict[str, Any], url: str, spec_hash: str = "hash-1") -> str:
    """Record a ready deployment at `url` in the state under `home` as a deploy would; returns its key."""
    spec = validate_spec(spec_data)
    settings = Settings(home=home)
    key = keys.endpoint_key(spec, settings, create=True)
    state = StateStore(settings.ensure_home())
    state.begin(spec.name, spec.provider, spec_hash, spec.model_dump(mode="json"), "creating")
    state.set_status(spec.name, spec.provider, "ready", url=url, key_source="the deployment's API key")
    state.close()
    return key


def local_spec(model: Path, name: str = "stubby") -> dict[str, Any]:
    return {"name": name, "provider": "local",
            "model": {"id": str(model), "served_name": name, "max_model_len": 256}}


@pytest.fixture
def served(home: Path, tmp_path: Path, tiny_model: Path, engines: list[EngineProcess]):
    """A deployment `stubby` recorded as local, answered by a stub engine with its key."""

    def make(token_s: float = 0.0) -> tuple[EngineProcess, str]:
        key = keys.endpoint_key(validate_spec(local_spec(tiny_model)), Settings(home=home), create=True)
        engine = stub(tmp_path, tiny_model, key, "stubby", token_s)
        engines.append(engine)
        record_deployment(home, local_spec(tiny_model), engine.base_url + "/v1")
        return engine, key

    return make


class Troubled(ThreadingHTTPServer):
    """An OpenAI-ish server that misbehaves by path: /broken/ cuts the stream after one chunk,
    /error/ streams an error object, /flaky/ answers 503 twice before streaming one token."""

    def __init__(self) -> None:
        self.flaky_calls = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no delayed-ACK stall between headers and body

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                kind = self.path.split("/")[1]
                if kind == "flaky":
                    server.flaky_calls += 1
                    if server.flaky_calls <= 2:
                        self.send_response(503)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = {"choices": [{"index": 0, "text": "x"}]}
                events = {"broken": [chunk], "error": [{"error": {"message": "boom", "code": 500}}, "[DONE]"],
                          "flaky": [chunk, {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
                                    "[DONE]"]}[kind]
                for event in events:
                    data = f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n".encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                if kind == "broken":
                    self.close_connection = True
                    return  # no terminating chunk: the stream breaks
                self.wfile.write(b"0\r\n\r\n")

        super().__init__(("127.0.0.1", 0), Handler)
        self.daemon_threads = True
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hanging up on a broken stream is the point

    def url(self, kind: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{kind}/v1"


# -- statistics -----------------------------------------------------------------------------------


def test_percentiles_interpolate_and_the_summary_counts_what_happened() -> None:
    assert stats.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert stats.percentile(list(map(float, range(101))), 90) == 90.0
    assert stats.percentile([], 50) is None
    results = [RequestResult(index=i, sent_at=0.0, ttft_s=0.1 * (i + 1), e2e_s=1.0 + i, gaps_s=[0.05, 0.07],
                             chunks=3, prompt_tokens=10, completion_tokens=3) for i in range(3)]
    results.append(RequestResult(index=3, sent_at=0.0, error="http_503", detail="busy"))
    summary = stats.summarize(results, planned=5, duration_s=2.0)
    assert summary["requests"] == {"planned": 5, "finished": 4, "ok": 3, "failed": 1, "unfinished": 1}
    assert summary["errors"] == {"http_503": 1} and summary["error_samples"] == {"http_503": "busy"}
    assert summary["ttft_s"]["n"] == 3 and summary["ttft_s"]["p50"] == pytest.approx(0.2)
    assert summary["itl_s"]["n"] == 6 and summary["e2e_s"]["max"] == 3.0
    assert summary["throughput"] == {"requests_per_s": 1.5, "output_tokens_per_s": 4.5,
                                     "seconds_per_request": pytest.approx(2 / 3)}
    assert summary["tokens"]["chunks_equal_usage"] and summary["tokens"]["output_total"] == 9


# -- the streaming client ---------------------------------------------------------------------------


def test_stream_timings_and_token_counts_against_the_stub(tmp_path: Path, tiny_model: Path,
                                                         engines: list[EngineProcess]) -> None:
    key = "k" * 24
    engines.append(engine := stub(tmp_path, tiny_model, key, token_s=0.02))
    endpoint = Endpoint(url=engine.base_url + "/v1", api_key=key, model="tiny")
    run = LoadRun(endpoint, LoadSpec(requests=6, concurrency=3, prompt_tokens=12, max_tokens=5))
    results = asyncio.run(run.run())
    assert len(results) == 6 and all(r.ok for r in results), [r.detail for r in results]
    assert sorted(r.index for r in results) == list(range(6))
    for r in results:
        assert 0.02 <= r.ttft_s < r.e2e_s  # the stub sleeps 0.02 s before every token
        assert r.chunks == r.completion_tokens == 5 and len(r.gaps_s) == 4
        assert r.tpot_s == pytest.approx(sum(r.gaps_s) / 4, rel=0.01)
        assert statistics.median(r.gaps_s) >= 0.015  # not min: a client stalled by a busy CPU reads two at once
        assert r.prompt_tokens == 12  # the stub counts words: the prompt has exactly P of them
    summary = stats.summarize(results, planned=6, duration_s=run.duration_s)
    assert summary["tokens"]["output_total"] == 30 and summary["tokens"]["chunks_equal_usage"]
    # 6 requests of >= 0.1 s each, 3 at a time: the run took two rounds, not six
    assert 0.2 <= run.duration_s < 6 * 0.1 * 2
    assert summary["throughput"]["requests_per_s"] == pytest.approx(6 / run.duration_s)


def test_errors_are_counted_by_kind_never_raised(tmp_path: Path, tiny_model: Path,
                                                 engines: list[EngineProcess]) -> None:
    key = "k" * 24
    engines.append(engine := stub(tmp_path, tiny_model, key, token_s=0.5))
    troubled = Troubled()
    spec = LoadSpec(requests=2, concurrency=2, prompt_tokens=4, max_tokens=3, timeout_s=0.4)

    def kinds(url: str, api_key: str = key) -> list[str | None]:
        results = asyncio.run(LoadRun(Endpoint(url=url, api_key=api_key, model="tiny"), spec).run())
        return [r.error for r in results]

    try:
        assert kinds(engine.base_url + "/v1", "wrong-key-0123456789") == ["http_401"] * 2
        assert kinds(f"http://127.0.0.1:{free_port()}/v1") == ["connect"] * 2
        assert kinds(engine.base_url + "/v1") == ["timeout"] * 2  # 3 tokens x 0.5 s > 0.4 s
        assert kinds(troubled.url("broken")) == ["stream_broken"] * 2
        assert kinds(troubled.url("error")) == ["error_event"] * 2

        # the cold request is sent again while the endpoint answers 503, then timed to its first token
        since = time.monotonic()
        endpoint = Endpoint(url=troubled.url("flaky"), api_key=key, model="tiny")
        result, attempts = asyncio.run(first_token(endpoint, spec, since=since, timeout_s=10, retry_every=0.05))
        assert result.ok and attempts == 3 and troubled.flaky_calls == 3
        assert result.completion_tokens == result.chunks == 1 and result.sent_at > since
    finally:
        troubled.shutdown()


# -- the command ------------------------------------------------------------------------------------


def test_bench_json_table_storage_and_cost_measured(cli, home: Path, served) -> None:
    engine, key = served(token_s=0.01)
    result = cli("bench", "stubby", *SMALL, "--json")
    assert result.code == 0, result
    doc = result.json()
    assert doc["name"] == "stubby" and doc["provider"] == "local" and doc["spec_hash"] == "hash-1"
    assert doc["requests"] == {"planned": 6, "finished": 6, "ok": 6, "failed": 0, "unfinished": 0}
    assert doc["errors"] == {} and not doc["interrupted"] and doc["cold"] is None
    assert doc["tokens"]["output_total"] == 30 and doc["tokens"]["prompt_counted_mean"] == 12
    assert doc["ttft_s"]["p50"] < doc["e2e_s"]["p50"] and doc["itl_s"]["p50"] >= 0.008
    assert doc["throughput"]["seconds_per_request"] == pytest.approx(doc["duration_s"] / 6)
    assert "bench stubby on local" in result.err and "6/6" in result.err  # progress on stderr

    table = cli("bench", "stubby", *SMALL)
    assert table.code == 0, table
    assert "TTFT (ms)" in table.out and "errors: none" in table.out and "one chunk per token" in table.out
    state = StateStore(home)
    stored = state.benchmarks("stubby")
    assert [b["seq"] for b in stored] == [2, 1] and stored[1]["result"]["duration_s"] == doc["duration_s"]

    cost = cli("cost", "stubby", "--measured", "--requests-per-hour", "60", "--json")
    assert cost.code == 0, cost
    priced = cost.json()
    assert priced["measured"]["seconds_per_request"] == stored[0]["result"]["throughput"]["seconds_per_request"]
    assert priced["measured"]["benchmark"]["seq"] == 2 and priced["assumed"]["seconds_per_request"] == 2.0
    assert priced["measured"]["cold_start_s"] is None and any("--cold" in n for n in priced["notes"])
    shown = cli("cost", "stubby", "--measured", "--requests-per-hour", "60")
    assert shown.code == 0 and "seconds per request" in shown.out, shown
    assert cli("cost", "stubby", "--measured", "--requests-per-hour", "60", "--seconds-per-request", "2").code == 2

    # the key is never printed or stored
    blob = b"".join(p.read_bytes() for p in home.glob("state.db*"))
    for text in (result.out, result.err, table.out, cost.out, shown.out):
        assert key not in text
    assert key.encode() not in blob


def test_bad_input_is_refused_with_exit_2(cli, home: Path, served, tiny_model: Path) -> None:
    served()
    for args, words in [(("bench", "nope"), "no deployment named 'nope'"),
                        (("bench", "stubby", "--concurrency", "0"), "--concurrency"),
                        (("bench", "stubby", "--requests", "0"), "--requests"),
                        (("bench", "stubby", "--prompt-tokens", "250", "--max-tokens", "10"), "max_model_len 256"),
                        (("cost", "nope", "--measured"), "no deployment named 'nope'")]:
        result = cli(*args)
        assert result.code == 2 and words in result.err and "hint:" in result.err, result
        assert "Traceback" not in result.err
    as_json = cli("bench", "stubby", "--concurrency", "0", "--json")
    assert as_json.code == 2 and as_json.json()["exit_code"] == 2
    assert cli("cost", "stubby", "--measured", "--requests-per-hour", "60").code == 2  # nothing measured yet

    record_deployment(home, {"name": "vm", "provider": "lambda", "resources": {"gpu": "A10"},
                             "model": {"id": str(tiny_model), "served_name": "vm"}}, "http://127.0.0.1:9/v1")
    refused = cli("bench", "vm", "--cold")
    assert refused.code == 2 and "never scales to zero" in refused.err and "without --cold" in refused.err, refused
    assert StateStore(home).benchmarks("vm") == []


def test_ctrl_c_prints_the_partial_report(home: Path, served) -> None:
    served(token_s=0.05)
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployer", "bench", "stubby", "--requests", "500", "--concurrency", "2",
         "--prompt-tokens", "8", "--max-tokens", "4", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "DEPLOYER_HOME": str(home)})
    assert proc.stderr is not None
    assert "bench stubby on local" in proc.stderr.readline()  # the load starts now
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    doc = json.loads(out)
    assert doc["interrupted"] and doc["stored_as"] is None and "Traceback" not in err
    done = doc["requests"]
    assert done["ok"] >= 2 and done["unfinished"] > 0 and done["ok"] + done["unfinished"] == 500
    assert doc["tokens"]["output_total"] == 4 * done["ok"]
    assert StateStore(home).benchmarks("stubby") == []  # a partial run is not priced


# -- cold starts --------------------------------------------------------------------------------------


def test_cold_through_a_provider_that_restarts(tmp_path: Path, home: Path, tiny_model: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The core's cold path against the fake provider (restart on the same port, new id recorded)."""
    from deployer import registry
    from deployer.benchmark import cold
    from deployer.orchestrator import Orchestrator
    from tests.support.fake_provider import FakeCloud, FakeProvider

    fake = FakeProvider(FakeCloud(tmp_path / "cloud.json"), tmp_path / "logs")
    monkeypatch.setattr(registry, "load", lambda name, settings: fake)
    orch = Orchestrator(Settings())
    spec = validate_spec({"name": "demo", "provider": "local", "model": {"id": str(tiny_model), "served_name": "demo"}})
    try:
        deployed = orch.deploy(spec)
        before = {r["id"] for r in deployed.resources}
        messages: list[str] = []
        doc = cold.measure(orch, orch.target("demo"), LoadSpec(prompt_tokens=4, max_tokens=2), messages.append)
        assert fake.colds == 1 and doc["error"] is None and doc["how"].startswith("restarted fake server")
        assert 0 < doc["measured_s"] and doc["ttft_s"] <= doc["measured_s"] and doc["attempts"] >= 1
        assert doc["predicted"] is None and "no resources.gpu" in doc["predicted_note"]
        after = {r.id for r in orch.target("demo").deployment.resources}
        assert after - before and orch.target("demo").deployment.url == deployed.url
        assert any("making demo cold" in m for m in messages)
    finally:
        orch.destroy("demo")
    assert fake.cloud.load() == {}, "the restarted server was destroyed too"


def _write(tmp_path: Path, spec: Any) -> Path:
    path = tmp_path / f"{spec.name}.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    return path


def test_cold_on_runpod_waits_for_zero_workers(cli, tmp_path: Path, start_runpod) -> None:
    emu: RunPodEmulator = start_runpod()
    spec = tiny_spec(name="rp-cold", scaling={"idle_timeout": 5})  # x time_scale 0.02: 0.1 s
    deployed = cli("deploy", str(_write(tmp_path, spec)), "--json")
    assert deployed.code == 0, deployed
    result = cli("bench", "rp-cold", "--cold", *SMALL, "--json")
    assert result.code == 0, result
    doc = result.json()
    cold = doc["cold"]
    assert "/health reported no worker" in cold["how"] and cold["error"] is None, cold
    assert 0 < cold["ttft_s"] <= cold["measured_s"]
    assert cold["predicted"]["provider"] == "runpod" and "FlashBoot" in " ".join(cold["predicted"]["levers"])
    assert doc["requests"]["ok"] == 6 and doc["tokens"]["output_total"] == 30
    health = [e for e in emu.exchanges if e.path.endswith("/health")]
    assert health, "make_cold asked RunPod's /health"
    assert emu.api_key not in result.out + result.err

    cost = cli("cost", "rp-cold", "--measured", "--requests-per-hour", "60", "--json")
    assert cost.code == 0, cost
    priced = cost.json()
    assert priced["measured"]["cold_start_s"] == cold["measured_s"]
    mine = next(o for o in priced["measured_report"]["options"] if o["id"] == "runpod/scale-to-zero")
    assert mine["cold_start_s"]["used"] == pytest.approx(cold["measured_s"])
    assumed = next(o for o in priced["assumed_report"]["options"] if o["id"] == "runpod/scale-to-zero")
    assert assumed["cold_start_s"]["used"] == pytest.approx(priced["assumed"]["cold_start_s"])
    # bench's prediction is the capacity model's, as `cost` shows it
    model = next(c for c in priced["assumed_report"]["capacity"]["cold_start"] if c["provider"] == "runpod")
    assert (model["low_s"], model["high_s"]) == (cold["predicted"]["low_s"], cold["predicted"]["high_s"])
    assert cli("destroy", "rp-cold").code == 0
    assert emu.leftovers() == []


def test_cold_is_refused_where_warm_workers_are_kept(runpod_emulator: RunPodEmulator) -> None:
    from providers.runpod.adapter import Provider

    spec = tiny_spec(name="warm", scaling={"min_replicas": 1})
    with pytest.raises(InputError, match="never scales to zero"):
        Provider(Settings()).make_cold(Deployment("warm", "runpod", spec), lambda *a, **k: None, 1.0)
    assert not [e for e in runpod_emulator.exchanges if e.path.endswith("/health")]  # refused before asking


def test_cold_on_modal_waits_for_no_container(cli, tmp_path: Path, tiny_model: Path,
                                              modal_emulator: ModalEmulator) -> None:
    modal_emulator.scale_to_zero = True
    spec = validate_spec({"name": "md-cold", "provider": "modal",
                          "model": {"id": str(tiny_model), "served_name": "md-cold", "max_model_len": 256},
                          "resources": {"gpu": "L4"}, "scaling": {"idle_timeout": 10}})  # x time_scale 0.1: 1 s
    deployed = cli("deploy", str(_write(tmp_path, spec)), "--json")
    assert deployed.code == 0, deployed
    app = modal_emulator.deployed_app("dplr-md-cold")
    result = cli("bench", "md-cold", "--cold", *SMALL, "--json")
    assert result.code == 0, result
    cold = result.json()["cold"]
    assert "no running container" in cold["how"] and cold["error"] is None, cold
    assert 0 < cold["measured_s"] and cold["predicted"]["provider"] == "modal"
    container = modal_emulator.container(app.app_id, "serve")
    assert any("cold start" in e for e in container.events)  # the first request started a new container
    assert result.json()["requests"]["ok"] == 6
    assert cli("destroy", "md-cold").code == 0
    assert modal_emulator.holds_nothing()
