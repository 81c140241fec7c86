"""pytest glue: `runpod_emulator` starts a fast emulator and points the adapter at it.

    from tests.emulators.runpod.fixture import runpod_emulator  # noqa: F401 (a fixture)

The fixture sets the adapter's settings through the environment (base URLs, key, fast timings),
isolates HOME (no ~/.runpod/config.toml leaks in), and on teardown stops every worker and engine
and fails the test if any request or response broke openapi-v2.json.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .emulator import RunPodEmulator

FAST_SETTINGS = {
    "DEPLOYER_RUNPOD_TIMEOUT": "5",
    "DEPLOYER_RUNPOD_BACKOFF": "0.05",
    "DEPLOYER_RUNPOD_POLL_INTERVAL": "0.1",
    "DEPLOYER_RUNPOD_DRAIN_TIMEOUT": "20",
    "DEPLOYER_RUNPOD_DELETE_TIMEOUT": "20",
    "DEPLOYER_RUNPOD_LOG_IDLE": "0.3",
}
FAST_CLOCKS = {"cold_start_s": 0.2, "flashboot_cold_start_s": 0.05, "time_scale": 0.02, "crash_backoff_s": 0.2,
               "openai_wait_s": 3.0}


def adapter_env(emu: RunPodEmulator, home: Path) -> dict[str, str]:
    """Environment for the adapter (in-process or a CLI subprocess) to use `emu`."""
    return {**emu.env(), **FAST_SETTINGS, "HOME": str(home), "DEPLOYER_HOME": str(home / "deployer")}


def make_emulator(tmp_path: Path, **overrides: object) -> RunPodEmulator:
    options = {**FAST_CLOCKS, **overrides}
    return RunPodEmulator(log_dir=tmp_path / "runpod-emulator", **options).start()  # type: ignore[arg-type]


@pytest.fixture
def start_runpod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., RunPodEmulator]]:
    """A function that starts an emulator (keyword overrides: see RunPodEmulator) and points the
    adapter at it. Every emulator started is closed at teardown and checked for violations."""
    started: list[RunPodEmulator] = []
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    for key in ("RUNPOD_API_KEY", "DEPLOYER_RUNPOD_API_KEY", "DEPLOYER_RUNPOD_CONFIG_FILE"):
        monkeypatch.delenv(key, raising=False)

    def start(**overrides: object) -> RunPodEmulator:
        emu = make_emulator(tmp_path / f"emu{len(started)}", **overrides)
        started.append(emu)
        for key, value in adapter_env(emu, home).items():
            monkeypatch.setenv(key, value)
        return emu

    try:
        yield start
    finally:
        for emu in started:
            emu.close()
    problems = [v for emu in started for v in emu.violations]
    assert not problems, "RunPod contract violations:\n" + "\n".join(problems)


@pytest.fixture
def runpod_emulator(start_runpod: Callable[..., RunPodEmulator]) -> RunPodEmulator:
    """A fast emulator with default settings (see `start_runpod` for custom ones)."""
    return start_runpod()


def tiny_spec(name: str = "tiny", **sections: object) -> object:
    """A RunPod spec serving the local tiny model (CPU-friendly engine settings), with overrides per section."""
    from deployer.spec import validate_spec
    from tests.support.engine import tiny_model

    data: dict = {
        "name": name, "provider": "runpod",
        "model": {"id": str(tiny_model()), "served_name": "tiny", "max_model_len": 256, "dtype": "float32",
                  "engine_args": {"enforce-eager": True}},
        "resources": {"gpu": "L4"},
        "scaling": {"min_replicas": 0, "max_replicas": 1, "idle_timeout": 60},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return validate_spec(data)


def deploy_in_process(spec: object, *, timeout: float = 30.0, hf_token: str | None = None,
                      current: object = None) -> tuple[object, object, object]:
    """apply + the core's readiness wait, without the CLI: (provider, deployment, endpoint)."""
    from deployer.client import wait_ready
    from deployer.provider import Deployment, Resource, Secrets
    from deployer.settings import Settings
    from providers.runpod.adapter import Provider

    provider = Provider(Settings())
    deployment = current or Deployment(name=spec.name, provider="runpod", spec=spec)  # type: ignore[attr-defined]

    def record(kind: str, id: str, **extra: object) -> None:
        if not any(r.kind == kind and r.id == id for r in deployment.resources):
            deployment.resources.append(Resource(kind, id, dict(extra)))

    endpoint = provider.apply(spec, Secrets(api_key="unused", hf_token=hf_token), current, record)
    wait_ready(endpoint, timeout=timeout, probe=lambda: provider.probe(deployment))
    return provider, deployment, endpoint
