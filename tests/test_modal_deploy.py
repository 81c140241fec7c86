"""The Modal adapter against the local Modal control plane, through the real Modal SDK.

The emulator (tests/emulators/modal) records every request; its containers start the vLLM
command read from the uploaded app file, with the stub engine (fast) here; see
test_modal_cli.py for the real engine.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from grpclib import Status
from modal_proto import api_pb2

from deployer.client import wait_ready
from deployer.errors import NotReadyError, ProviderError
from deployer.orchestrator import Orchestrator
from deployer.provider import Deployment, Endpoint, Resource, Secrets
from deployer.settings import Settings
from deployer.spec import validate_spec
from providers.modal.adapter import Provider
from tests.emulators.modal import ModalEmulator
from tests.emulators.modal.fixtures import modal_emulator_fixture  # noqa: F401 - provides `modal_emulator`

KEY = "dpk-test-key-0123456789"


def tiny_spec(model_dir: Path, **overrides: Any) -> Any:
    data: dict = {"name": "tiny", "provider": "modal",
                  "model": {"id": str(model_dir), "served_name": "tiny", "max_model_len": 256},
                  "resources": {"gpu": "L40S"},
                  "scaling": {"min_replicas": 0, "max_replicas": 3, "idle_timeout": 120, "concurrency": 16}}
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return validate_spec(data)


class Recorded:
    """A Recorder that keeps what the adapter records, as the state store would."""

    def __init__(self) -> None:
        self.resources: list[Resource] = []

    def __call__(self, kind: str, id: str, **extra: Any) -> None:
        self.resources = [r for r in self.resources if (r.kind, r.id) != (kind, id)] + [Resource(kind, id, extra)]

    def deployment(self, spec: Any, url: str | None = None) -> Deployment:
        return Deployment(spec.name, "modal", spec, list(self.resources), url)


@pytest.fixture
def provider(tmp_path: Path) -> Provider:
    return Provider(Settings(home=tmp_path / "home"))


def deploy(provider: Provider, spec: Any, recorded: Recorded, secrets: Secrets | None = None) -> Endpoint:
    endpoint = provider.apply(spec, secrets or Secrets(api_key=KEY), None, recorded)
    wait_ready(endpoint, timeout=60)
    return endpoint


def test_snapshot_deploy_chat_redeploy_destroy(provider: Provider, modal_emulator: ModalEmulator,
                                               tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUB_ENGINE_TOKEN_S", "0.05")  # the container's engine streams a token per 50 ms
    spec, recorded = tiny_spec(tiny_model), Recorded()
    endpoint = deploy(provider, spec, recorded, Secrets(api_key=KEY, hf_token="hf_test_token"))

    app = modal_emulator.deployed_app("dplr-tiny")
    assert app is not None and app.tags == {"deployer-name": "tiny"}
    assert [(r.kind, r.id) for r in recorded.resources] == [
        ("secret", "dplr-tiny-key"), ("secret", "dplr-tiny-hf"), ("app", "dplr-tiny"), ("app", app.app_id)]
    assert modal_emulator.secret_env("dplr-tiny-key") == {"VLLM_API_KEY": KEY}
    assert modal_emulator.secret_env("dplr-tiny-hf") == {"HF_TOKEN": "hf_test_token"}
    container = modal_emulator.container(app.app_id, "serve")
    assert container is not None and container.events[:4] == ["start 1", "sleep ok", "wake_up ok", "snapshot restored"]

    # the endpoint needs the key; with it, chat works through the openai client
    assert httpx.get(endpoint.url + "/models").status_code == 401
    client = openai.OpenAI(base_url=endpoint.url, api_key=KEY)
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert reply.choices[0].message.content
    # a stream arrives token by token through the web URL, as Modal relays it, not as one body at the end
    arrivals = [time.monotonic() for chunk in client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True)
        if chunk.choices and chunk.choices[0].delta.content]
    assert len(arrivals) == 8 and arrivals[-1] - arrivals[0] >= 0.25, arrivals

    deployment = recorded.deployment(spec, endpoint.url)
    report = provider.status(deployment)
    assert report.state == "ready" and report.details["containers"] == 1 and report.details["mode"] == "snapshot"

    # the same spec again: Modal sees no change, the container keeps running, the URL stays
    again = provider.apply(spec, Secrets(api_key=KEY, hf_token="hf_test_token"), deployment, recorded)
    assert again.url == endpoint.url
    assert modal_emulator.deployed_app("dplr-tiny").version == 1
    assert modal_emulator.container(app.app_id, "serve") is container and container.starts == 1

    provider.destroy(recorded.deployment(spec))
    assert modal_emulator.holds_nothing()
    assert modal_emulator.secret_env("dplr-tiny-key") is None and modal_emulator.secret_env("dplr-tiny-hf") is None
    assert provider.status(recorded.deployment(spec)).state == "stopped"
    assert httpx.get(endpoint.url + "/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404
    provider.destroy(recorded.deployment(spec))  # idempotent


def test_recorded_protos_carry_the_settings(provider: Provider, modal_emulator: ModalEmulator,
                                            tiny_model: Path) -> None:
    spec, recorded = tiny_spec(tiny_model, providers={"modal": {"buffer_containers": 1, "timeout": 900}}), Recorded()
    deploy(provider, spec, recorded)
    app = modal_emulator.deployed_app("dplr-tiny")
    fn = modal_emulator.functions_of(app.app_id)["Server.*"]
    assert [c.app_id for c in modal_emulator.requests("ClassCreate")] == [app.app_id]
    assert fn.is_class and set(fn.method_definitions) == {"serve"}

    assert (fn.resources.gpu_config.gpu_type, fn.resources.gpu_config.count) == ("L40S", 1)
    assert fn.checkpointing_enabled and dict(fn.experimental_options) == {"enable_gpu_snapshot": "True"}
    assert fn.resources.memory_mb >= 8 * 1024
    scaler = fn.autoscaler_settings
    assert (scaler.min_containers, scaler.max_containers) == (0, 3)
    assert (scaler.buffer_containers, scaler.scaledown_window) == (1, 120)
    assert fn.max_concurrent_inputs == 16 and fn.timeout_secs == 900
    web = fn.method_definitions["serve"].webhook_config
    assert web.type == api_pb2.WEBHOOK_TYPE_WEB_SERVER and web.web_server_port == 8000
    assert web.web_server_startup_timeout == fn.startup_timeout_secs >= 300
    volumes = {m.mount_path: m.volume_id for m in fn.volume_mounts}
    named = {v.object_id: v.name for v in modal_emulator.control.volumes.values()}
    assert {path: named[vid] for path, vid in volumes.items()} == {
        "/root/.cache/huggingface": "dplr-hf-cache", "/root/.cache/vllm": "dplr-vllm-cache"}
    secret_names = {modal_emulator.control.secrets[sid].name for sid in fn.secret_ids}
    assert secret_names == {"dplr-tiny-key"}  # no HF token here, so no HF secret

    commands = [c for image in modal_emulator.requests("ImageGetOrCreate") for c in image.image.dockerfile_commands]
    assert any("vllm==0.32.0" in c for c in commands)
    assert any(c.startswith("FROM nvidia/cuda:12.9.0-devel-ubuntu22.04") for c in commands)
    env = modal_emulator.control.image_env(fn.image_id)
    assert env["HF_XET_HIGH_PERFORMANCE"] == "1" and env["VLLM_SERVER_DEV_MODE"] == "1"
    assert env["TORCHINDUCTOR_COMPILE_THREADS"] == "1"
    uploaded = modal_emulator.control.source_files(list(fn.mount_ids))
    assert "/root/app.py" in uploaded and KEY not in uploaded["/root/app.py"]
    provider.destroy(recorded.deployment(spec))


def test_plain_mode_on_two_gpus_and_a_changed_spec_replaces_the_container(
        provider: Provider, modal_emulator: ModalEmulator, tiny_model: Path) -> None:
    spec, recorded = tiny_spec(tiny_model, resources={"gpu": "H100", "count": 2}), Recorded()
    endpoint = deploy(provider, spec, recorded)
    app = modal_emulator.deployed_app("dplr-tiny")
    fn = modal_emulator.functions_of(app.app_id)["serve"]
    assert (fn.resources.gpu_config.gpu_type, fn.resources.gpu_config.count) == ("H100", 2)
    assert not fn.checkpointing_enabled and not fn.experimental_options
    assert fn.webhook_config.web_server_port == 8000
    first = modal_emulator.container(app.app_id, "serve")
    assert first.events[:2] == ["start 1", "running"]

    changed = tiny_spec(tiny_model, resources={"gpu": "H100", "count": 2}, scaling={"concurrency": 8})
    moved = provider.apply(changed, Secrets(api_key=KEY), recorded.deployment(spec), recorded)
    assert moved.url == endpoint.url and modal_emulator.deployed_app("dplr-tiny").version == 2
    wait_ready(moved, timeout=60)
    assert modal_emulator.container(app.app_id, "serve") is not first and not first.engine.alive()
    assert modal_emulator.functions_of(app.app_id)["serve"].max_concurrent_inputs == 8
    provider.destroy(recorded.deployment(changed))
    assert modal_emulator.holds_nothing()


def test_rejected_deploy_is_a_provider_error_and_leaves_no_app(
        provider: Provider, modal_emulator: ModalEmulator, tiny_model: Path) -> None:
    modal_emulator.fail_next("FunctionCreate", Status.RESOURCE_EXHAUSTED, "Workspace GPU limit reached (L40S)")
    recorded = Recorded()
    with pytest.raises(ProviderError) as caught:
        provider.apply(tiny_spec(tiny_model), Secrets(api_key=KEY), None, recorded)
    assert "Workspace GPU limit reached" in caught.value.message and caught.value.code == "ResourceExhaustedError"
    assert caught.value.hint and "quota" in caught.value.hint
    assert modal_emulator.deployed_app("dplr-tiny") is None
    assert all(a.state == api_pb2.APP_STATE_STOPPED for a in modal_emulator.control.apps.values())
    provider.destroy(recorded.deployment(tiny_spec(tiny_model)))  # cleans the secret it recorded
    assert modal_emulator.secret_env("dplr-tiny-key") is None


def test_bad_token_is_a_provider_error_with_what_to_do(
        provider: Provider, modal_emulator: ModalEmulator, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-wrong")
    with pytest.raises(ProviderError) as caught:
        provider.apply(tiny_spec(tiny_model), Secrets(api_key=KEY), None, Recorded())
    assert caught.value.code == "AuthError" and "modal token new" in (caught.value.hint or "")
    assert not modal_emulator.control.apps


def test_never_ready_app_fails_deploy_with_the_logs(
        tmp_path: Path, modal_emulator: ModalEmulator, tiny_model: Path) -> None:
    """No GPU capacity: the container stays queued, readiness times out, and min_replicas > 0 makes
    deployer stop the app rather than leave a warm container billing."""
    modal_emulator.gpu_capacity = False
    settings = Settings(home=tmp_path / "home")
    spec = tiny_spec(tiny_model, scaling={"min_replicas": 1}, startup={"readiness_timeout": 4})
    with pytest.raises(NotReadyError) as caught:
        Orchestrator(settings).deploy(spec)
    message = str(caught.value)
    assert "queued: no GPU capacity" in message and "deployer stopped it" in message
    assert modal_emulator.deployed_app("dplr-tiny") is None
    assert Orchestrator(settings).destroy("tiny") == ["modal"]
    assert modal_emulator.holds_nothing()


def test_a_flag_vllm_rejects_crash_loops_and_the_logs_say_why(
        tmp_path: Path, modal_emulator: ModalEmulator, tiny_model: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    spec = tiny_spec(tiny_model, model={"engine_args": {"not-a-vllm-flag": True}}, startup={"readiness_timeout": 5})
    with pytest.raises(NotReadyError) as caught:
        Orchestrator(settings).deploy(spec)
    assert "unrecognized arguments: --not-a-vllm-flag" in str(caught.value)
    assert "stays deployed" in str(caught.value)  # min_replicas 0: nothing bills while idle
    app = modal_emulator.deployed_app("dplr-tiny")
    assert modal_emulator.container(app.app_id, "serve").starts > 1  # Modal restarts crashed containers
    Orchestrator(settings).destroy("tiny")
    assert modal_emulator.holds_nothing()


def test_destroy_of_an_app_modal_no_longer_knows_succeeds(
        provider: Provider, modal_emulator: ModalEmulator, tiny_model: Path) -> None:
    spec = tiny_spec(tiny_model)
    ghost = Deployment("tiny", "modal", spec, [Resource("app", "ap-" + "x" * 22, {"app_name": "dplr-tiny"}),
                                               Resource("secret", "dplr-tiny-key", {})])
    provider.destroy(ghost)
    names = modal_emulator.rpc_names()
    assert "AppGetOrCreate" in names and "AppStop" not in names  # looked up, found nothing to stop
    assert provider.status(ghost).state == "gone"


def test_destroy_survives_app_stop_answering_not_found(
        provider: Provider, modal_emulator: ModalEmulator, tiny_model: Path) -> None:
    spec, recorded = tiny_spec(tiny_model), Recorded()
    deploy(provider, spec, recorded)
    modal_emulator.fail_next("AppStop", Status.NOT_FOUND, "App not found")
    provider.destroy(recorded.deployment(spec))
    assert len(modal_emulator.requests("AppStop")) == 2  # the refused stop, then the one by id that did it
    assert modal_emulator.holds_nothing()


def test_logs_list_owned_and_a_lost_app_id(provider: Provider, modal_emulator: ModalEmulator, tiny_model: Path) -> None:
    spec, recorded = tiny_spec(tiny_model), Recorded()
    deploy(provider, spec, recorded)
    deployment = recorded.deployment(spec)
    lines = list(provider.logs(deployment))
    assert "[modal] sleep ok" in lines and any("stub-vllm: serving 'tiny'" in line for line in lines)
    owned = {(o.kind, o.id, o.deployment) for o in provider.list_owned()}
    app_id = recorded.resources[-1].id
    assert {("app", app_id, "tiny"), ("secret", "dplr-tiny-key", "tiny"), ("volume", "dplr-hf-cache", None)} <= owned
    assert provider.has_credentials()

    # a deploy that died before the app id was recorded: status and destroy find the app by name
    lost = Deployment("tiny", "modal", spec, [Resource("app", "dplr-tiny", {"environment": None, "intent": True}),
                                              Resource("secret", "dplr-tiny-key", {})])
    assert provider.status(lost).details["app_id"] == app_id
    provider.destroy(lost)
    assert modal_emulator.holds_nothing()
    assert not [o for o in provider.list_owned() if o.kind != "volume"]
