"""The shared endpoint client against real local HTTP servers (stub engine processes)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from deployer.client import EndpointClient, wait_ready
from deployer.errors import NotReadyError
from deployer.provider import Endpoint
from tests.support.engine import free_port, launch_vllm


def serve_args(model: Path, key: str = "k-1") -> list[str]:
    return [str(model), "--served-model-name", "m", "--api-key", key]


@pytest.fixture
def engines(tmp_path: Path):
    started = []

    def start(args: list[str], **kw):
        engine = launch_vllm(args, log_path=tmp_path / f"e{len(started)}.log", real=False, **kw)
        started.append(engine)
        return engine

    yield start
    for engine in started:
        engine.stop()


def test_smoke_lists_the_model_and_completes_one_token(engines, tiny_model) -> None:
    engine = engines(serve_args(tiny_model))
    assert engine.wait_healthy(30)
    with EndpointClient(Endpoint(engine.base_url + "/v1", "k-1", "m")) as client:
        result = client.smoke()
    assert result.models == ["m"] and result.completion == "stub"


def test_wrong_key_and_wrong_model_are_not_ready(engines, tiny_model) -> None:
    engine = engines(serve_args(tiny_model))
    assert engine.wait_healthy(30)
    with EndpointClient(Endpoint(engine.base_url + "/v1", "wrong", "m")) as client:
        with pytest.raises(NotReadyError, match="GET /models answered 401"):
            client.smoke()
    with EndpointClient(Endpoint(engine.base_url + "/v1", "k-1", "other")) as client:
        with pytest.raises(NotReadyError, match=r"serves \['m'\], not 'other'"):
            client.smoke()


def test_readiness_is_noticed_within_a_second(engines, tiny_model) -> None:
    port = free_port()
    engine = engines(serve_args(tiny_model), port=port, env={"STUB_ENGINE_STARTUP_S": "3"})
    answered_at: list[float] = []

    def watch() -> None:  # an independent observer of when the server first answers
        while not answered_at:
            try:
                httpx.get(f"{engine.base_url}/health", timeout=0.2)
                answered_at.append(time.monotonic())
            except httpx.HTTPError:
                time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    wait_ready(Endpoint(engine.base_url + "/v1", "k-1", "m"), timeout=30)
    ready_at = time.monotonic()
    watcher.join(5)
    assert ready_at - answered_at[0] < 1.0


def test_a_dead_server_ends_the_wait_at_once(engines, tiny_model) -> None:
    engine = engines(serve_args(tiny_model), env={"STUB_ENGINE_EXIT_CODE": "3"})
    start = time.monotonic()
    with pytest.raises(NotReadyError, match="gave up waiting: exited with 3"):
        wait_ready(Endpoint(engine.base_url + "/v1", "k-1", "m"), timeout=60,
                   probe=lambda: None if engine.alive() else f"exited with {engine.proc.returncode}")
    assert time.monotonic() - start < 10


def test_timeout_reports_the_last_problem() -> None:
    start = time.monotonic()
    with pytest.raises(NotReadyError, match="not ready after 1s; last problem: ConnectError"):
        wait_ready(Endpoint(f"http://127.0.0.1:{free_port()}/v1", "k", "m"), timeout=1)
    assert time.monotonic() - start < 3
