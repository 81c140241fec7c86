"""The RunPod emulator itself: it refuses what openapi-v2.json refuses, catches its own bad
responses, and its data plane and workers behave as RunPod documents them."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.emulators.runpod import RunPodEmulator
from tests.emulators.runpod import control as control_module
from tests.emulators.runpod.fixture import runpod_emulator, start_runpod  # noqa: F401
from tests.support.engine import tiny_model


def api(emu: RunPodEmulator, key: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=emu.control_url, headers={"Authorization": f"Bearer {key or emu.api_key}"}, timeout=10)


def endpoint_body(**overrides: object) -> dict:
    body = {
        "name": "raw", "type": "QUEUE", "image": "runpod/worker-v1-vllm:v2.25.2",
        "env": {"MODEL_NAME": str(tiny_model()), "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "tiny", "MAX_MODEL_LEN": "256"},
        "gpu": {"pools": ["AMPERE_24"], "count": 1}, "workers": {"min": 0, "max": 1, "idleTimeout": 30},
        "scaling": {"type": "QUEUE_DELAY", "queueDelay": 4},
    }
    body.update(overrides)
    return body


def test_requests_the_document_forbids_are_refused_and_recorded(runpod_emulator: RunPodEmulator) -> None:
    emu = runpod_emulator
    with api(emu) as client:
        bad = client.post("/serverless", json=endpoint_body(bogus=1))
        assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
        assert any("bogus" in e for e in bad.json()["errors"])
        assert client.get("/catalog/gpus", params={"product": "SERVERLESS"}).status_code == 400
        both = endpoint_body(gpu={"pools": ["AMPERE_24"], "allowedCudaVersions": ["13.0"], "minCudaVersion": "12.8"})
        assert client.post("/serverless", json=both).json()["detail"].endswith("mutually exclusive")
        stray = endpoint_body(gpu={"pools": ["AMPERE_24"], "excludedTypes": ["NVIDIA H100 PCIe"]})
        assert "not in the selected pools" in client.post("/serverless", json=stray).json()["detail"]
    assert httpx.get(emu.control_url + "/serverless").json()["detail"] == "missing bearer token"
    assert any("bogus" in v for v in emu.violations)
    emu.violations.clear()  # those were this test's own doing
    assert emu.leftovers() == []


def test_a_response_that_breaks_the_document_is_caught(runpod_emulator: RunPodEmulator,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    emu = runpod_emulator
    with api(emu) as client:
        created = client.post("/serverless", json=endpoint_body()).json()
        real_view = control_module.ControlPlane.view
        monkeypatch.setattr(control_module.ControlPlane, "view",
                            lambda self, e: {k: v for k, v in real_view(self, e).items() if k != "createdAt"})
        client.get(f"/serverless/{created['id']}")
        assert any("createdAt" in v for v in emu.violations)
        emu.violations.clear()
        monkeypatch.undo()
        assert client.delete(f"/serverless/{created['id']}").status_code == 204
    assert not emu.violations and emu.leftovers() == []


def test_queue_routes_workers_and_scale_to_zero(runpod_emulator: RunPodEmulator) -> None:
    emu = runpod_emulator
    with api(emu) as client:
        endpoint = client.post("/serverless", json=endpoint_body()).json()
    urls = endpoint["requestUrls"]
    data = httpx.Client(headers={"Authorization": emu.api_key}, timeout=30)  # the bare key works too
    job = data.post(urls["run"], json={"input": {"prompt": "Hello", "sampling_params": {"max_tokens": 3}}}).json()
    assert job["status"] == "IN_QUEUE"
    deadline = time.monotonic() + 20
    while (status := data.get(urls["status"].replace("{job_id}", job["id"])).json())["status"] != "COMPLETED":
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["output"][0]["choices"][0]["text"] and status["workerId"]
    sync = data.post(urls["runSync"], json={"input": {"openai_route": "/v1/models"}}).json()
    assert sync["status"] == "COMPLETED" and sync["output"][0]["data"][0]["id"] == "tiny"
    health = data.get(urls["health"]).json()
    assert health["jobs"]["completed"] == 2 and health["workers"]["ready"] == 1
    assert data.post(urls["retry"].replace("{job_id}", job["id"])).status_code == 400
    assert data.post(urls["purgeQueue"]).json() == {"removed": 0, "status": "completed"}
    assert emu.wait_for(lambda: not emu.live_workers(), timeout=10), "idleTimeout 30 x 0.02 with min 0"
    assert data.get(urls["health"]).json()["workers"] == {
        "idle": 0, "initializing": 0, "ready": 0, "running": 0, "throttled": 0, "unhealthy": 0}
    assert httpx.get(urls["health"], headers={"Authorization": "Bearer nope"}).status_code == 401
    with api(emu) as client:
        assert client.delete(f"/serverless/{endpoint['id']}").status_code == 204
        assert client.get(f"/serverless/{endpoint['id']}").status_code == 404
    assert data.get(urls["health"]).status_code == 404
    data.close()
    assert emu.leftovers() == []


def test_rate_limit_headers_and_429_past_the_quota(start_runpod: object) -> None:
    emu: RunPodEmulator = start_runpod(rate_quotas={"minute": 2, "hour": 100, "day": 1000})
    with api(emu) as client:
        first = client.get("/serverless")
        assert first.headers["RateLimit"].startswith('"minute";r=1;') and 'q=2;w=60' in first.headers["RateLimit-Policy"]
        client.get("/serverless")
        limited = client.get("/serverless")
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
        assert limited.json()["title"] == "Too Many Requests"


def test_jobs_wait_for_a_host_with_the_right_cuda_and_can_be_cancelled(runpod_emulator: RunPodEmulator) -> None:
    emu = runpod_emulator
    with api(emu) as client:
        old_cuda = endpoint_body(gpu={"pools": ["AMPERE_24"], "allowedCudaVersions": ["11.8"]})
        endpoint = client.post("/serverless", json=old_cuda).json()
    urls = endpoint["requestUrls"]
    data = httpx.Client(headers={"Authorization": f"Bearer {emu.api_key}"}, timeout=30)
    first = data.post(urls["run"], json={"input": {"prompt": "a"}}).json()
    second = data.post(urls["run"], json={"input": {"prompt": "b"}}).json()
    assert emu.wait_for(lambda: data.get(urls["health"]).json()["workers"]["throttled"] == 1, timeout=5)
    assert data.get(urls["health"]).json()["jobs"]["inQueue"] == 2
    assert data.post(urls["cancel"].replace("{job_id}", first["id"])).json()["status"] == "CANCELLED"
    waited = data.post(urls["runSync"] + "?wait=1000", json={"input": {"prompt": "c"}}).json()
    assert waited["status"] == "IN_QUEUE"  # runsync hands back a job to poll once its wait is over
    assert data.post(urls["purgeQueue"]).json()["removed"] == 2
    assert data.get(urls["status"].replace("{job_id}", second["id"])).json()["status"] == "CANCELLED"
    with api(emu) as client:
        patched = client.patch(f"/serverless/{endpoint['id']}", json={"gpu": {"allowedCudaVersions": ["13.0"]}})
        assert patched.json()["gpu"]["allowedCudaVersions"] == ["13.0"]
    job = data.post(urls["run"], json={"input": {"messages": [{"role": "user", "content": "hi"}]}}).json()
    streamed = data.get(urls["stream"].replace("{job_id}", job["id"])).json()
    assert streamed["status"] == "COMPLETED"
    assert streamed["stream"][0]["output"]["choices"][0]["message"]["content"]
    with api(emu) as client:
        assert client.delete(f"/serverless/{endpoint['id']}").status_code == 204
    data.close()
    assert emu.wait_for(lambda: emu.leftovers() == [], timeout=10), emu.leftovers()
