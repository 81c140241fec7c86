"""RunPod end to end against the emulator (stub engine): the CLI flow, scale to zero and FlashBoot,
live pool resolution, leaks found by name, logs without secrets."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from openai import OpenAI

from deployer.provider import Deployment
from deployer.settings import Settings
from providers.runpod.adapter import Provider
from tests.emulators.runpod import RunPodEmulator
from tests.emulators.runpod.catalog import default_catalog
from tests.emulators.runpod.fixture import deploy_in_process, runpod_emulator, start_runpod, tiny_spec  # noqa: F401
from tests.support.engine import REPO, tiny_model


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deployer", *args], capture_output=True, text=True,
                          env=dict(os.environ), cwd=REPO, timeout=timeout)


def write_spec(path: Path, *, max_replicas: int = 1, idle_timeout: int = 60, readiness: int = 60) -> Path:
    spec = {
        "name": "tiny-rp", "provider": "runpod",
        "model": {"id": str(tiny_model()), "served_name": "tiny", "max_model_len": 256, "dtype": "float32",
                  "engine_args": {"enforce-eager": True}},
        "resources": {"gpu": "L4"},
        "scaling": {"min_replicas": 0, "max_replicas": max_replicas, "idle_timeout": idle_timeout},
        "startup": {"readiness_timeout": readiness},
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def test_cli_deploy_chat_redeploy_update_destroy(runpod_emulator: RunPodEmulator, tmp_path: Path) -> None:
    emu = runpod_emulator
    config = write_spec(tmp_path / "tiny.yaml", idle_timeout=1200)  # x0.02: 24 s, so `logs` below finds the worker

    deployed = cli("deploy", str(config), "--json")
    assert deployed.returncode == 0, deployed.stderr
    doc = json.loads(deployed.stdout)
    [endpoint] = emu.endpoints()
    assert endpoint["name"] == "dplr-tiny-rp"
    assert doc["url"] == f"{emu.data_url}/{endpoint['id']}/openai/v1"
    assert "RunPod API key" in doc["key_source"] and emu.api_key not in deployed.stdout + deployed.stderr
    assert doc["resources"] == [{"kind": "endpoint", "id": endpoint["id"]}]

    chat = OpenAI(base_url=doc["url"], api_key=emu.api_key).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=4)
    assert chat.model == "tiny" and chat.choices[0].message.content

    writes = len(emu.calls(method="POST")) + len(emu.calls(method="PATCH"))
    again = cli("deploy", str(config), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["action"] == "unchanged"
    assert len(emu.calls(method="POST")) + len(emu.calls(method="PATCH")) == writes

    write_spec(config, max_replicas=2, idle_timeout=1800)
    updated = cli("deploy", str(config), "--json")
    assert updated.returncode == 0, updated.stderr
    assert json.loads(updated.stdout)["action"] == "updated"
    [patch] = emu.calls(method="PATCH")
    assert patch.body == {"workers": {"min": 0, "max": 2, "idleTimeout": 1800}}
    [same] = emu.endpoints()
    assert same["id"] == endpoint["id"] and same["workers"]["max"] == 2 and len(emu.calls(method="POST")) == 1

    status = cli("status", "tiny-rp", "--json")
    assert status.returncode == 0, status.stderr
    [row] = json.loads(status.stdout)
    assert row["state"] == "ready" and row["details"]["endpoint"] == endpoint["id"]
    assert "completed=" in row["details"]["jobs"]

    logs = cli("logs", "tiny-rp")
    assert logs.returncode == 0, logs.stderr
    assert "Starting vLLM: vllm serve" in logs.stdout and "--served-model-name tiny" in logs.stdout

    destroyed = cli("destroy", "tiny-rp", "--json")
    assert destroyed.returncode == 0, destroyed.stderr
    assert json.loads(destroyed.stdout)["status"] == "destroyed"
    assert emu.leftovers() == []
    order = [(c.method, c.path.split("/")[-1]) for c in emu.calls() if c.method in ("PATCH", "DELETE")]
    assert order[-2:] == [("PATCH", endpoint["id"]), ("DELETE", endpoint["id"])]
    assert emu.calls(method="PATCH")[-1].body == {"workers": {"min": 0, "max": 0}}
    assert emu.calls(method="GET", path=r"^/v2/serverless$")[-1].status == 200  # verified by listing


def test_scales_to_zero_then_an_update_in_place_wakes_it_with_flashboot(runpod_emulator: RunPodEmulator) -> None:
    emu = runpod_emulator
    provider, deployment, endpoint = deploy_in_process(tiny_spec(scaling={"idle_timeout": 20}))  # x0.02: 0.4 s
    assert emu.wait_for(lambda: not emu.live_workers(), timeout=10), "min 0: the idle worker must go"
    report = provider.status(deployment)
    assert report.state == "ready" and "scaled to zero" in report.details["workers"]
    longer = tiny_spec(scaling={"idle_timeout": 3000})
    deploy_in_process(longer, current=deployment)  # PATCH in place, then the readiness request wakes it
    [patch] = emu.calls(method="PATCH")
    assert patch.body == {"workers": {"min": 0, "max": 1, "idleTimeout": 3000}}
    assert len(emu.endpoints()) == 1 and emu.endpoints()[0]["id"] == endpoint.url.split("/")[-3]
    client = OpenAI(base_url=endpoint.url, api_key=endpoint.api_key)
    assert client.completions.create(model="tiny", prompt="Hi", max_tokens=2).choices[0].text
    followed = provider.logs(deployment, follow=True)
    lines = list(itertools.islice(followed, 3))
    followed.close()
    assert lines[0].startswith("[") and "placed on NVIDIA L4" in lines[0]
    assert "FlashBoot: resuming" in "\n".join(provider.logs(deployment))
    provider.destroy(deployment)
    assert emu.leftovers() == []


def test_pools_come_from_the_live_catalog_at_deploy(start_runpod: object) -> None:
    catalog = default_catalog()
    for gpu in catalog:  # this account's catalog puts the L4 in a pool of its own
        if gpu["id"] == "NVIDIA L4":
            gpu["pool"] = "ADA_24_L4"
    emu = start_runpod(catalog=catalog)
    spec = tiny_spec()
    provider = Provider(Settings())
    from deployer.provider import Secrets

    planned = provider.render(spec, Secrets.redacted(has_hf_token=False))
    assert planned.requests[2].json["gpu"]["pools"] == ["AMPERE_24"]
    deployment = Deployment(name=spec.name, provider="runpod", spec=spec)
    provider.apply(spec, Secrets(api_key="x"), None, lambda kind, id, **extra: None)
    [create] = emu.calls(method="POST")
    assert create.body["gpu"]["pools"] == ["ADA_24_L4"]
    assert {k: v for k, v in create.body.items() if k != "gpu"} == \
        {k: v for k, v in planned.requests[2].json.items() if k != "gpu"}
    provider.destroy(deployment)  # nothing recorded: found by its name
    assert emu.leftovers() == []


def test_a_scan_finds_what_the_state_lost(runpod_emulator: RunPodEmulator) -> None:
    emu = runpod_emulator
    spec = tiny_spec(name="lost")
    provider = Provider(Settings())
    from deployer.provider import Secrets

    provider.apply(spec, Secrets(api_key="x"), None, lambda kind, id, **extra: None)  # record lost
    provider.apply(spec, Secrets(api_key="x"), None, lambda kind, id, **extra: None)  # found by name: no second
    assert len(emu.endpoints()) == 1 and len(emu.calls(method="POST")) == 1
    owned = provider.list_owned()
    assert {(o.kind, o.deployment) for o in owned} == {("endpoint", "lost")}  # its bound template goes with it
    provider.destroy(Deployment(name="lost", provider="runpod", spec=None))
    assert emu.leftovers() == []
    assert provider.list_owned() == []


def test_logs_never_show_the_hf_token(start_runpod: object, monkeypatch: object) -> None:
    token = "hf_secret_value_for_the_test_123"
    emu = start_runpod(secrets={"hf_token": token})
    monkeypatch.setenv("HF_TOKEN", token)  # type: ignore[attr-defined]
    provider, deployment, _ = deploy_in_process(tiny_spec(name="gated"), hf_token=token)
    [create] = emu.calls(method="POST")
    assert create.body["env"]["HF_TOKEN"] == "{{ RUNPOD_SECRET_hf_token }}"
    worker = emu.live_workers()[0]
    assert any(token in line for _, _, line in worker.log.entries), "the worker logs its command line"
    lines = list(provider.logs(deployment))
    assert any("--hf-token <redacted>" in line for line in lines)
    assert not any(token in line for line in lines)
    provider.destroy(deployment)
    assert emu.leftovers() == []


def test_a_first_deploy_sends_what_plan_listed(runpod_emulator: RunPodEmulator) -> None:
    from deployer.provider import Secrets

    spec = tiny_spec(name="same")
    provider = Provider(Settings())
    planned = provider.render(spec, Secrets.redacted(has_hf_token=False))
    provider.apply(spec, Secrets(api_key="x"), None, lambda kind, id, **extra: None)
    host = runpod_emulator.control_url.removesuffix("/v2")  # plan shows the configured base URL
    sent = [(c.method, host + c.path, c.body) for c in runpod_emulator.calls()]
    assert sent == [(r.method, r.url, r.json) for r in planned.requests]
    provider.destroy(Deployment(name="same", provider="runpod", spec=spec))
    assert runpod_emulator.leftovers() == []
