"""pytest wiring for the Lambda emulator: start it, point the adapter at it, check it afterwards.

    from tests.emulators.lambda_cloud.fixture import lambda_cloud  # noqa: F401  (the fixture)

`lambda_cloud` yields a `LambdaTestbed`: the running emulator (strict rate limits on, at a
10x faster clock than Lambda's, with the adapter's limiter scaled the same way), an isolated
DEPLOYER_HOME, and helpers for specs and adapters. At teardown every emulated VM is stopped and
the test fails if the emulator saw a request or sent a response outside Lambda's OpenAPI
document, or answered 429 (the adapter must never provoke one).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deployer.provider import Secrets
from deployer.settings import Settings
from deployer.spec import validate_spec
from tests.support.engine import free_port, tiny_model

from .server import LambdaEmulator

RATE_INTERVAL = 0.1  # Lambda: 1 s
LAUNCH_INTERVAL = 1.2  # Lambda: 12 s
SPEED = 1000.0  # emulated seconds per real second: a 5-minute boot takes 0.3 s
ENDPOINT_KEY_ENV = "DEPLOYER_TEST_LAMBDA_ENDPOINT_KEY"
ENDPOINT_KEY = "sk-lambda-test-endpoint-key"


@dataclass
class LambdaTestbed:
    emulator: LambdaEmulator
    home: Path
    env: dict[str, str]  # what a CLI subprocess needs (also set in os.environ for this test)

    @property
    def cloud(self) -> Any:
        return self.emulator.cloud

    def provider(self) -> Any:
        """A fresh adapter, as a new CLI process would make it."""
        from providers.lambda_cloud.adapter import Provider

        return Provider(Settings(home=self.home))

    def secrets(self, hf_token: str | None = None) -> Secrets:
        return Secrets(api_key=ENDPOINT_KEY, hf_token=hf_token)

    def spec_data(self, name: str = "lam", **lambda_opts: Any) -> dict[str, Any]:
        """A spec for the tiny model on one H100, on a free port, 60 s readiness timeout."""
        opts = {"port": free_port(), **lambda_opts}
        return {
            "name": name,
            "provider": "lambda",
            "model": {
                "id": str(tiny_model()), "served_name": "tiny", "max_model_len": 256, "dtype": "float32",
                "engine_args": {"enforce-eager": True},
            },
            "resources": {"gpu": "H100", "count": 1},
            "startup": {"readiness_timeout": 60},
            "auth": {"api_key_env": ENDPOINT_KEY_ENV},
            "providers": {"lambda": opts},
        }

    def spec(self, name: str = "lam", **lambda_opts: Any) -> Any:
        return validate_spec(self.spec_data(name, **lambda_opts))


def start_testbed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, real_engine: bool | None = None,
    engine_env: dict[str, str] | None = None, api_key: str | None = None,
) -> LambdaTestbed:
    emulator = LambdaEmulator(
        tmp_path / "lambda-emulator", speed=SPEED, strict_limits=(RATE_INTERVAL, LAUNCH_INTERVAL),
        real_engine=real_engine, engine_env=engine_env, api_key=api_key,
    ).start()
    home = tmp_path / "deployer-home"
    env = {
        "DEPLOYER_HOME": str(home),
        "DEPLOYER_LAMBDA_API_URL": emulator.base_url,
        "LAMBDA_API_KEY": emulator.api_key,
        "DEPLOYER_LAMBDA_KEYS_FILE": str(tmp_path / "no-lambda-keys"),
        "DEPLOYER_LAMBDA_RATE_INTERVAL": str(RATE_INTERVAL),
        "DEPLOYER_LAMBDA_LAUNCH_INTERVAL": str(LAUNCH_INTERVAL),
        "DEPLOYER_LAMBDA_POLL_INTERVAL": "0.1",
        "DEPLOYER_LAMBDA_PROBE_INTERVAL": "0.3",
        "DEPLOYER_LAMBDA_TERMINATE_TIMEOUT": "30",
        "DEPLOYER_LAMBDA_RETRY_BACKOFF": "0.05",
        ENDPOINT_KEY_ENV: ENDPOINT_KEY,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return LambdaTestbed(emulator=emulator, home=home, env=env)


def finish_testbed(bed: LambdaTestbed) -> None:
    """Stop everything; fail on any OpenAPI violation or 429."""
    report = bed.cloud.vm_report()
    bed.emulator.stop()
    if report:
        print(report)  # shown by pytest when the test failed
    assert not bed.emulator.violations, f"OpenAPI violations: {bed.emulator.violations}"
    assert bed.emulator.too_many == 0, f"the emulator answered 429 {bed.emulator.too_many} times"


@pytest.fixture
def lambda_cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LambdaTestbed]:
    bed = start_testbed(tmp_path, monkeypatch)
    try:
        yield bed
    finally:
        finish_testbed(bed)

