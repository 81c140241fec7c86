"""RunPod faults: each ends in a clear error (or is ridden out), and after destroy nothing is left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from deployer.errors import MissingCredentialsError, NotReadyError, ProviderError
from deployer.orchestrator import Orchestrator
from deployer.provider import Deployment, Secrets
from deployer.settings import Settings
from providers.runpod.adapter import Provider
from tests.emulators.runpod import RunPodEmulator
from tests.emulators.runpod.fixture import runpod_emulator, start_runpod, tiny_spec  # noqa: F401
from tests.support.engine import REPO

NO_SECRETS = Secrets(api_key="unused")


def apply_only(spec: object) -> tuple[Provider, Deployment]:
    provider = Provider(Settings())
    deployment = Deployment(name=spec.name, provider="runpod", spec=spec)  # type: ignore[attr-defined]
    provider.apply(spec, NO_SECRETS, None,
                   lambda kind, id, **extra: deployment.resources.append(_resource(kind, id)))
    return provider, deployment


def _resource(kind: str, id: str) -> object:
    from deployer.provider import Resource

    return Resource(kind, id)


def test_no_capacity_ends_in_a_throttled_diagnosis_and_destroy_cleans(start_runpod: object, tmp_path: Path) -> None:
    emu: RunPodEmulator = start_runpod(openai_wait_s=0.5)
    emu.faults.no_capacity = True
    spec = tiny_spec(name="nocap", startup={"readiness_timeout": 3}).model_dump(mode="json")
    config = tmp_path / "nocap.yaml"
    config.write_text(yaml.safe_dump(spec))
    run = lambda *a: subprocess.run([sys.executable, "-m", "deployer", *a], capture_output=True, text=True,  # noqa: E731
                                    env=dict(os.environ), cwd=REPO, timeout=120)
    deployed = run("deploy", str(config))
    assert deployed.returncode == 1
    assert "no capacity" in deployed.stderr and "throttled" in deployed.stderr
    assert "AMPERE_24" in deployed.stderr and "deployer destroy nocap" in deployed.stderr
    [endpoint] = emu.endpoints()
    status = run("status", "nocap", "--json")
    [row] = json.loads(status.stdout)
    assert row["resources"] == [{"kind": "endpoint", "id": endpoint["id"]}]  # still recorded
    assert row["state"] in ("throttled", "ready")  # the queue was purged: the worker may be gone already
    destroyed = run("destroy", "nocap", "--json")
    assert destroyed.returncode == 0, destroyed.stderr
    assert emu.leftovers() == []


@pytest.mark.parametrize("cause", ["wrong-flag-value", "injected-crash"])
def test_a_crash_loop_fails_fast_with_the_workers_log(start_runpod: object, cause: str) -> None:
    emu: RunPodEmulator = start_runpod(openai_wait_s=1.0)
    if cause == "wrong-flag-value":  # KV_CACHE_DTYPE=int3: the worker passes it, vLLM refuses it
        spec = tiny_spec(name="crashy", model={"engine_args": {"enforce-eager": True, "kv-cache-dtype": "int3"}},
                         startup={"readiness_timeout": 60})
        expect = "invalid choice: 'int3'"
    else:
        emu.faults.crash = True
        spec = tiny_spec(name="crashy", startup={"readiness_timeout": 60})
        expect = "crashing on purpose"
    orchestrator = Orchestrator(Settings())
    started = time.monotonic()
    with pytest.raises(NotReadyError) as failure:
        orchestrator.deploy(spec)
    assert time.monotonic() - started < 30, "the probe must end the wait long before the timeout"
    message = str(failure.value)
    assert "crash-looping" in message and "unhealthy" in message and expect in message
    assert orchestrator.list()[0]["resources"], "the endpoint stays recorded for destroy"
    assert orchestrator.destroy("crashy") == ["runpod"]
    assert emu.leftovers() == []


def test_429_5xx_and_lost_responses_make_exactly_one_endpoint(runpod_emulator: RunPodEmulator) -> None:
    emu = runpod_emulator
    emu.faults.fail(429, retry_after=1, method="GET", path=r"^/v2/serverless$")
    emu.faults.fail(503, count=2, method="GET", path=r"^/v2/catalog/gpus$")
    emu.faults.fail(502, method="POST", path=r"^/v2/serverless$", after_acting=True)  # created, answer lost
    provider, deployment = apply_only(tiny_spec(name="flaky"))
    assert len(emu.endpoints()) == 1
    assert len(emu.calls(method="POST")) == 1, "a lost create is looked up by name, not repeated"
    assert [c.status for c in emu.calls(method="GET", path="catalog")] == [503, 503, 200]
    assert [r.id for r in deployment.resources] == [emu.endpoints()[0]["id"]]
    emu.faults.fail(500, method="DELETE")
    provider.destroy(deployment)
    assert [c.status for c in emu.calls(method="DELETE")] == [500, 204]
    assert emu.leftovers() == []


def test_a_slow_create_response_is_not_a_second_endpoint(runpod_emulator: RunPodEmulator,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    emu = runpod_emulator
    monkeypatch.setenv("DEPLOYER_RUNPOD_TIMEOUT", "0.5")
    emu.faults.slow(1.5, method="POST", path=r"^/v2/serverless$")
    provider, deployment = apply_only(tiny_spec(name="slow"))
    assert emu.wait_for(lambda: len(emu.calls(method="POST")) == 1, timeout=5)  # logged once answered
    assert len(emu.endpoints()) == 1 and len(emu.calls(method="POST")) == 1
    provider.destroy(deployment)
    assert emu.leftovers() == []


def test_credential_errors_say_which_credential(start_runpod: object, monkeypatch: pytest.MonkeyPatch) -> None:
    emu: RunPodEmulator = start_runpod(read_only_keys=("rpa_readonly_key_000000000000000000",))
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_wrong_key_1111111111111111111111")
    with pytest.raises(ProviderError) as wrong:
        apply_only(tiny_spec(name="creds"))
    assert "rejected the API key from $RUNPOD_API_KEY" in str(wrong.value) and wrong.value.status == 401
    assert "RUNPOD_API_KEY" in wrong.value.hint and "rpa_wrong_key" not in str(wrong.value)
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_readonly_key_000000000000000000")
    with pytest.raises(ProviderError) as readonly:
        apply_only(tiny_spec(name="creds"))
    assert "not allowed to POST /v2/serverless" in str(readonly.value) and readonly.value.status == 403
    assert "Serverless" in readonly.value.hint
    monkeypatch.delenv("RUNPOD_API_KEY")
    with pytest.raises(MissingCredentialsError, match="no RunPod API key"):
        apply_only(tiny_spec(name="creds"))
    assert emu.leftovers() == []


@pytest.mark.parametrize("options, detail", [
    ({"network_volume_id": "vol-missing"}, "network volume(s) not found: vol-missing"),
    ({"pools": ["NOPE_99"]}, "unknown serverless GPU pool(s): NOPE_99"),
])
def test_problem_details_reach_the_user(runpod_emulator: RunPodEmulator, options: dict, detail: str) -> None:
    with pytest.raises(ProviderError) as refused:
        apply_only(tiny_spec(name="refused", providers={"runpod": options}))
    assert "400 Bad Request" in str(refused.value) and detail in str(refused.value)
    assert runpod_emulator.leftovers() == []


def test_a_delete_that_leaves_the_endpoint_listed_is_waited_out(runpod_emulator: RunPodEmulator,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    emu = runpod_emulator
    emu.faults.linger_delete_s = 2.0
    provider, deployment = apply_only(tiny_spec(name="linger"))
    monkeypatch.setenv("DEPLOYER_RUNPOD_DELETE_TIMEOUT", "0.5")
    with pytest.raises(ProviderError, match="still lists endpoint"):
        Provider(Settings()).destroy(deployment)
    monkeypatch.setenv("DEPLOYER_RUNPOD_DELETE_TIMEOUT", "20")
    Provider(Settings()).destroy(deployment)  # idempotent: the endpoint is deleting; wait until it is gone
    assert emu.leftovers() == []


def test_a_template_left_behind_is_removed(runpod_emulator: RunPodEmulator) -> None:
    emu = runpod_emulator
    emu.faults.keep_bound_template = True
    provider, deployment = apply_only(tiny_spec(name="tpl"))
    assert [t["name"].split("__")[0] for t in emu.templates()] == ["dplr-tpl"]
    provider.destroy(deployment)
    assert emu.calls(method="DELETE", path="^/v2/templates/")
    assert emu.leftovers() == []


def test_a_crash_loop_is_noticed_in_seconds_while_runpod_holds_the_request(start_runpod: object,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """RunPod holds a data-plane request up to 90 s while no worker answers. Each readiness
    request gives up after the probe timeout (not the 30 s control-plane timeout), so the probe
    sees the crash loop after seconds."""
    assert Provider(Settings()).probe_timeout() <= 10.0 < Provider(Settings()).runpod.timeout
    emu: RunPodEmulator = start_runpod(openai_wait_s=90.0)
    emu.faults.crash = True
    monkeypatch.setenv("DEPLOYER_RUNPOD_PROBE_TIMEOUT", "1.5")
    started = time.monotonic()
    with pytest.raises(NotReadyError, match="crash-looping"):
        Orchestrator(Settings()).deploy(tiny_spec(name="heldopen", startup={"readiness_timeout": 120}))
    assert time.monotonic() - started < 20, "a held request must not hide the crash loop"
    assert Orchestrator(Settings()).destroy("heldopen") == ["runpod"]
    assert emu.leftovers() == []
