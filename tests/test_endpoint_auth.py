"""Every deployed endpoint refuses a request without its key or with a wrong one; Lambda's firewall
opens the serving port to the configured networks only; a spec or a key that would leave an
endpoint open is refused before anything is created.

Requests go where a client's would: RunPod's data plane (`/v2/{id}/openai/v1`, and the queue
routes), the VM's IP on Lambda, Modal's web URL; each emulator starts the engine from what the
adapter produced, and the stub engine checks the key the way vLLM does (on /v1 only). Everything
outside /v1 is guarded by deployer's middleware (templates/deployer_vllm_guard.py), which the
stub loads from the PYTHONPATH the emulated host gives it, as vLLM does with `--middleware`;
the local provider's guard is checked in real vLLM by tests/test_local_e2e.py.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml

from deployer.client import wait_ready
from deployer.errors import InputError, ProviderError
from deployer.provider import Deployment, Resource, Secrets
from deployer.settings import Settings
from deployer.spec import validate_spec
from deployer.vllm_command import GUARD_FILE, GUARD_MIDDLEWARE, GUARD_MODULE, guard_source
from tests.emulators.lambda_cloud.fixture import ENDPOINT_KEY as LAMBDA_KEY
from tests.emulators.lambda_cloud.fixture import lambda_cloud  # noqa: F401 - fixture
from tests.emulators.modal import ModalEmulator
from tests.emulators.modal.fixtures import modal_emulator_fixture  # noqa: F401 - provides `modal_emulator`
from tests.emulators.runpod import RunPodEmulator
from tests.emulators.runpod.fixture import deploy_in_process, runpod_emulator, start_runpod, tiny_spec  # noqa: F401
from tests.support.engine import REPO, launch_vllm, tiny_model

MODAL_KEY = "dpk-auth-test-key-0123456789"
WRONG = "dpk-wrong-key-0123456789abcdef"
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
COMPLETION = {"model": "tiny", "prompt": "Hi", "max_tokens": 2}


class Recorded:
    """The `record` callback, keeping what the state store would."""

    def __init__(self) -> None:
        self.resources: list[Resource] = []

    def __call__(self, kind: str, id: str, **extra: Any) -> None:
        if not any((r.kind, r.id) == (kind, id) for r in self.resources):
            self.resources.append(Resource(kind, id, dict(extra)))

    def deployment(self, spec: Any, provider: str) -> Deployment:
        return Deployment(spec.name, provider, spec, list(self.resources))


def refused_without_the_key(base: str, key: str, *, wrong: str = WRONG) -> None:
    """Every OpenAI route answers 401 with no key, a wrong key, or the key in another scheme;
    with the key it answers (so the refusals are about the key, nothing else)."""
    calls = [("GET", "/models", None), ("POST", "/chat/completions", CHAT), ("POST", "/completions", COMPLETION)]
    attempts = {"no key": {}, "wrong key": {"Authorization": f"Bearer {wrong}"},
                "Basic scheme": {"Authorization": f"Basic {key}"}, "empty bearer": {"Authorization": "Bearer"}}
    with httpx.Client(timeout=30) as http:
        for method, path, body in calls:
            for what, headers in attempts.items():
                answer = http.request(method, base + path, json=body, headers=headers)
                assert answer.status_code == 401, f"{method} {path} with {what}: {answer.status_code} {answer.text}"
            good = http.request(method, base + path, json=body, headers={"Authorization": f"Bearer {key}"})
            assert good.status_code == 200, f"{method} {path} with the key: {good.status_code} {good.text[:200]}"


# -- RunPod: the platform checks the RunPod API key on every data-plane route ------------------------


def test_runpod_data_plane_refuses_calls_without_the_runpod_key(runpod_emulator: RunPodEmulator) -> None:  # noqa: F811
    provider, deployment, endpoint = deploy_in_process(tiny_spec(name="auth-rp"))
    assert endpoint.api_key == runpod_emulator.api_key and "RunPod API key" in endpoint.key_source
    # the endpoint key deployer knows (Secrets.api_key) is no credential there: only the RunPod key is
    refused_without_the_key(endpoint.url, runpod_emulator.api_key, wrong="unused")
    endpoint_id = deployment.resource("endpoint").id
    base = f"{runpod_emulator.data_url}/{endpoint_id}"
    queue = [("POST", "/runsync", {"input": {"prompt": "Hi"}}), ("POST", "/run", {"input": {"prompt": "Hi"}}),
             ("GET", "/health", None), ("GET", "/status/some-job", None), ("POST", "/purge-queue", None)]
    with httpx.Client(timeout=30) as http:
        for method, path, body in queue:
            for headers in ({}, {"Authorization": f"Bearer {WRONG}"}):
                answer = http.request(method, base + path, json=body, headers=headers)
                assert answer.status_code == 401, f"{method} {path}: {answer.status_code}"
    provider.destroy(deployment)
    assert runpod_emulator.leftovers() == []


# -- Lambda: vLLM checks the key; the ruleset opens the port to the allowed networks only ---------


def test_lambda_vm_refuses_calls_without_the_key_and_the_ruleset_opens_only_what_is_allowed(
        lambda_cloud) -> None:  # noqa: F811
    bed = lambda_cloud
    spec = bed.spec("auth-lam", allowed_cidrs=["127.0.0.0/8", "198.51.100.0/24"], ssh_cidrs=["192.0.2.0/24"],
                    regions=["us-south-2"])
    port = spec.options("lambda").port
    provider, record = bed.provider(), Recorded()
    endpoint = provider.apply(spec, bed.secrets(), None, record)
    wait_ready(endpoint, timeout=30)
    refused_without_the_key(endpoint.url, LAMBDA_KEY)

    [created] = bed.emulator.calls_to("POST", "/firewall-rulesets")
    rules = {(r["protocol"], tuple(r["port_range"]), r["source_network"]) for r in created.body["rules"]}
    assert rules == {("tcp", (22, 22), "192.0.2.0/24"), ("tcp", (port, port), "127.0.0.0/8"),
                     ("tcp", (port, port), "198.51.100.0/24")}
    [launch] = bed.emulator.calls_to("POST", "/instance-operations/launch")
    [ruleset_id] = record_ids(record, "firewall-ruleset")
    assert launch.body["firewall_rulesets"] == [{"id": ruleset_id}] and launch.body["region_name"] == "us-south-2"
    instance = bed.cloud.instances[record_ids(record, "instance")[0]]
    assert instance.ruleset_ids == [ruleset_id]  # the VM sits behind this ruleset, not the global rules
    provider.destroy(record.deployment(spec, "lambda"))
    assert bed.cloud.live() == [] and bed.cloud.rulesets == {}


def test_lambda_never_lands_where_the_firewall_does_not_apply_when_networks_are_restricted(
        lambda_cloud) -> None:  # noqa: F811
    """Lambda applies no firewall rules in us-south-1: a VM there would be open to every network,
    whatever allowed_cidrs says. Restricted networks and only us-south-1 capacity: no launch."""
    bed = lambda_cloud
    bed.cloud.set_capacity("gpu_1x_h100_sxm5", ["us-south-1"])
    bed.cloud.set_capacity("gpu_1x_h100_pcie", [])
    restricted = bed.spec("walled", allowed_cidrs=["203.0.113.0/24"])
    with pytest.raises(ProviderError, match="us-south-1") as caught:
        bed.provider().apply(restricted, bed.secrets(), None, Recorded())
    assert "firewall" in str(caught.value) and bed.cloud.live() == []
    assert bed.emulator.calls_to("POST", "/instance-operations/launch") == []

    with pytest.raises(InputError, match="us-south-1"):  # plan says so before anything is created
        bed.provider().render(bed.spec("walled", allowed_cidrs=["203.0.113.0/24"], regions=["us-south-1"]),
                              Secrets.redacted())
    with pytest.raises(InputError, match="us-south-1"):
        bed.provider().render(bed.spec("walled", ssh_cidrs=["203.0.113.0/24"], regions=["us-south-1"]),
                              Secrets.redacted())

    # open to all networks anyway (the default): us-south-1 is fine, the key still guards the port
    spec = bed.spec("open")
    provider, record = bed.provider(), Recorded()
    endpoint = provider.apply(spec, bed.secrets(), None, record)
    assert bed.cloud.live()[0].region == "us-south-1"
    wait_ready(endpoint, timeout=30)
    assert httpx.get(endpoint.url + "/models").status_code == 401
    provider.destroy(record.deployment(spec, "lambda"))
    assert bed.cloud.live() == [] and bed.cloud.rulesets == {}


def record_ids(record: Recorded, kind: str) -> list[str]:
    return [r.id for r in record.resources if r.kind == kind]


# -- Modal: the web URL forwards to vLLM, which checks the key from the Modal Secret --------------


@pytest.mark.parametrize("mode", ["snapshot", "plain"])
def test_modal_web_url_refuses_calls_without_the_key(modal_emulator: ModalEmulator, tmp_path: Path,  # noqa: F811
                                                     mode: str) -> None:
    from providers.modal.adapter import Provider

    spec = validate_spec({"name": "auth-modal", "provider": "modal",
                          "model": {"id": str(tiny_model()), "served_name": "tiny", "max_model_len": 256},
                          "resources": {"gpu": "L4"}, "providers": {"modal": {"mode": mode}}})
    provider, record = Provider(Settings(home=tmp_path / "home")), Recorded()
    endpoint = provider.apply(spec, Secrets(api_key=MODAL_KEY), None, record)
    wait_ready(endpoint, timeout=60)
    refused_without_the_key(endpoint.url, MODAL_KEY)
    provider.destroy(record.deployment(spec, "modal"))
    assert modal_emulator.holds_nothing()


# -- vLLM's --api-key guards /v1 only; deployer's guard covers the rest ----------------------------


def routes_outside_v1_need_the_key(server: str, key: str, *, dev_mode: bool = False) -> None:
    """POST /invocations (SageMaker's route: the same completions and chats) and /version answer
    401 without the key or with a wrong one, and serve with it; GET /health stays open. With
    dev mode, /sleep and /wake_up too (answered, with the key, so the server ends up awake)."""
    keyed, wrong = {"Authorization": f"Bearer {key}"}, {"Authorization": f"Bearer {WRONG}"}
    calls = [("POST", "/invocations", CHAT), ("POST", "/invocations", COMPLETION), ("GET", "/version", None)]
    if dev_mode:
        calls += [("POST", "/sleep?level=1", None), ("POST", "/wake_up", None)]
    with httpx.Client(base_url=server, timeout=30) as http:
        for method, path, body in calls:
            answers = [http.request(method, path, json=body, headers=h).status_code for h in ({}, wrong)]
            assert answers == [401, 401], f"{method} {path} without the key / with a wrong one: {answers}"
            served = http.request(method, path, json=body, headers=keyed)
            assert served.status_code == 200, f"{method} {path} with the key: {served.status_code} {served.text[:200]}"
        assert http.get("/health").status_code == 200  # what health checks call: open, tells nothing


def test_lambda_routes_outside_v1_need_the_key_too(lambda_cloud) -> None:  # noqa: F811
    bed = lambda_cloud
    spec = bed.spec("inv-lam", regions=["us-south-2"])
    provider, record = bed.provider(), Recorded()
    endpoint = provider.apply(spec, bed.secrets(), None, record)
    try:
        wait_ready(endpoint, timeout=30)
        routes_outside_v1_need_the_key(endpoint.url.removesuffix("/v1"), LAMBDA_KEY)
    finally:
        provider.destroy(record.deployment(spec, "lambda"))


def test_modal_routes_outside_v1_need_the_key_too(modal_emulator: ModalEmulator, tmp_path: Path) -> None:  # noqa: F811
    from providers.modal.adapter import Provider

    spec = validate_spec({"name": "inv-modal", "provider": "modal",
                          "model": {"id": str(tiny_model()), "served_name": "tiny", "max_model_len": 256},
                          "resources": {"gpu": "L4"}})  # snapshot mode: the default on one GPU
    provider, record = Provider(Settings(home=tmp_path / "home")), Recorded()
    endpoint = provider.apply(spec, Secrets(api_key=MODAL_KEY), None, record)
    try:
        wait_ready(endpoint, timeout=60)
        routes_outside_v1_need_the_key(endpoint.url.removesuffix("/v1"), MODAL_KEY, dev_mode=True)
        wait_ready(endpoint, timeout=10)  # still serving after the keyed sleep / wake-up
    finally:
        provider.destroy(record.deployment(spec, "modal"))


# -- the guard itself, and vLLM without it ---------------------------------------------------------


def load_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str | None) -> ModuleType:
    """A fresh import of the shipped guard from a directory on sys.path (as vLLM imports it),
    with VLLM_API_KEY set to `key` (unset for None)."""
    directory = tmp_path / "guard"
    directory.mkdir(exist_ok=True)
    (directory / GUARD_FILE).write_text(guard_source())
    if key is None:
        monkeypatch.delenv("VLLM_API_KEY", raising=False)
    else:
        monkeypatch.setenv("VLLM_API_KEY", key)
    monkeypatch.syspath_prepend(str(directory))
    sys.modules.pop(GUARD_MODULE, None)
    try:
        return importlib.import_module(GUARD_MODULE)
    finally:
        sys.modules.pop(GUARD_MODULE, None)


def test_the_guard_passes_keyed_requests_and_get_health_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ASGI contract, scope by scope: what reaches the app and what the client gets instead."""
    guard = load_guard(tmp_path, monkeypatch, MODAL_KEY)
    reached: list[str] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        reached.append(f"{scope['type']} {scope.get('path', '')}")

    def call(kind: str, path: str = "", method: str = "GET", auth: str | None = None) -> list[dict]:
        scope = {"type": kind, "path": path, "method": method,
                 "headers": [(b"authorization", auth.encode())] if auth is not None else []}
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "websocket.connect"} if kind == "websocket" else {"type": "http.request", "body": b""}

        async def send(message: dict) -> None:
            sent.append(message)

        asyncio.run(guard.RequireKey(app)(scope, receive, send))
        return sent

    refused = [("/invocations", "POST", None), ("/metrics", "GET", f"Bearer {WRONG}"), ("/sleep", "POST", MODAL_KEY),
               ("/v1/models", "GET", f"Basic {MODAL_KEY}"), ("/collective_rpc", "POST", f"Bearer {MODAL_KEY}x"),
               ("/health", "POST", None), ("/health/", "GET", None), ("/ping", "GET", None), ("/load", "GET", "Bearer")]
    for path, method, auth in refused:
        start, body = call("http", path, method, auth)
        assert start["status"] == 401 and json.loads(body["body"]) == {"error": "Unauthorized"}, (path, method, auth)
        assert (b"www-authenticate", b"Bearer") in start["headers"]
    assert reached == []
    for path, method, auth in [("/health", "GET", None), ("/invocations", "POST", f"Bearer {MODAL_KEY}"),
                               ("/tokenize", "POST", f"bearer {MODAL_KEY}")]:
        assert call("http", path, method, auth) == []
    assert call("websocket", "/v1/realtime") == [{"type": "websocket.close", "code": 1008}]  # 403 before accept
    assert call("websocket", "/v1/realtime", auth=f"Bearer {MODAL_KEY}") == [] and call("lifespan") == []
    assert reached == ["http /health", "http /invocations", "http /tokenize", "websocket /v1/realtime", "lifespan "]

    for unset in (None, ""):  # vLLM imports the module while it builds its app: no key, no server
        with pytest.raises(RuntimeError, match="VLLM_API_KEY is not set"):
            load_guard(tmp_path, monkeypatch, unset)


def test_vllm_alone_serves_invocations_to_anyone_and_a_guard_it_cannot_import_stops_it(tmp_path: Path) -> None:
    """Why the guard exists (the stub is vLLM here: /v1 keyed, /invocations open), and that a
    guard missing from PYTHONPATH fails the start instead of serving unguarded."""
    model, env = str(tiny_model()), {"VLLM_API_KEY": MODAL_KEY}
    alone = launch_vllm([model, "--served-model-name", "tiny"], env=env, log_path=tmp_path / "alone.log")
    missing = launch_vllm([model, "--served-model-name", "tiny", "--middleware", GUARD_MIDDLEWARE],
                          env={**env, "PYTHONPATH": str(tmp_path / "empty")}, log_path=tmp_path / "missing.log")
    try:
        assert alone.wait_healthy(30), alone.log()
        assert httpx.get(alone.base_url + "/v1/models").status_code == 401
        assert httpx.post(alone.base_url + "/invocations", json=CHAT).status_code == 200
        assert missing.proc.wait(timeout=30) == 1
        assert f"No module named '{GUARD_MODULE}'" in missing.log()
    finally:
        alone.stop()
        missing.stop()


# -- refused before anything is created -------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deployer", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=REPO, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("engine_args", [{"root-path": "/"}, {"root-path": "/v"}, {"hf-token": "hf_in_the_spec_xyz"},
                                         {"middleware": "my_module.MyMiddleware"}])
def test_engine_args_that_open_the_endpoint_or_carry_a_secret_are_refused(engine_args: dict[str, str]) -> None:
    """`--root-path /` makes vLLM's key check strip the root from the path, so /v1/... is checked as
    v1/... and passes unguarded; `--hf-token` would put the token into state and plan output;
    `--middleware` is deployer's key guard, which engine_args must not replace or wrap."""
    data = {"name": "bad", "provider": "modal", "model": {"id": str(tiny_model()), "engine_args": engine_args},
            "resources": {"gpu": "L4"}}
    with pytest.raises(InputError) as caught:
        validate_spec(data)
    assert next(iter(engine_args)) in caught.value.message
    assert "hf_in_the_spec_xyz" not in caught.value.message


@pytest.mark.parametrize("provider", ["runpod", "lambda", "modal"])
def test_deploy_refuses_a_weak_endpoint_key_before_calling_the_provider(
        provider: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The core's check (auth.api_key_env shorter than 16 characters) holds on every provider:
    exit code 2 and not a single call to the provider. `plan` of a root-path spec is refused too."""
    calls: Any
    if provider == "runpod":
        emu = request.getfixturevalue("start_runpod")()
        env, calls = emu.env(), lambda: emu.calls("control") + emu.calls("data")
    elif provider == "lambda":
        bed = request.getfixturevalue("lambda_cloud")
        env, calls = bed.env, lambda: bed.emulator.calls
    else:
        emu = request.getfixturevalue("modal_emulator")
        env, calls = emu.env(), emu.rpc_names
    spec = {"name": "weak", "provider": provider,
            "model": {"id": str(tiny_model()), "served_name": "tiny", "max_model_len": 256},
            "resources": {"gpu": "H100" if provider == "lambda" else "L4"},
            "auth": {"api_key_env": "DPLR_WEAK_KEY"}}
    config = tmp_path / "weak.yaml"
    config.write_text(yaml.safe_dump(spec))
    home = {"DEPLOYER_HOME": str(tmp_path / "weak-home")}
    weak = run_cli("deploy", str(config), "--json", env={**env, **home, "DPLR_WEAK_KEY": "short"})
    assert weak.returncode == 2, weak.stderr
    assert "too weak" in json.loads(weak.stdout)["error"] and "short" not in weak.stdout + weak.stderr
    unset = run_cli("deploy", str(config), "--json", env={**env, **home, "DPLR_WEAK_KEY": ""})
    assert unset.returncode == 2 and "not set" in json.loads(unset.stdout)["error"], unset.stderr
    spec["model"]["engine_args"] = {"root-path": "/"}
    config.write_text(yaml.safe_dump(spec))
    opened = run_cli("plan", str(config), "--json", env={**env, **home})
    assert opened.returncode == 2 and "root-path" in json.loads(opened.stdout)["error"], opened.stderr
    assert list(calls()) == []
