"""An empty credential (`export LAMBDA_API_KEY=`) is no credential: `gc` and live prices skip the
provider, and a deploy stops before any provider call with an error that says the variable is
empty."""

from __future__ import annotations

import pytest

from deployer import registry
from deployer.settings import Settings
from tests.support.engine import REPO

BLANK = {"LAMBDA_API_KEY": "", "DEPLOYER_LAMBDA_API_KEY": "  ", "RUNPOD_API_KEY": " ", "DEPLOYER_RUNPOD_API_KEY": "",
         "MODAL_TOKEN_ID": "", "MODAL_TOKEN_SECRET": " "}


@pytest.fixture
def blank_credentials(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in BLANK.items():
        monkeypatch.setenv(key, value)
    return BLANK


@pytest.mark.parametrize("provider", ["lambda", "runpod", "modal"])
def test_a_blank_credential_is_no_credential(blank_credentials: dict[str, str], provider: str, home: object) -> None:
    assert registry.load(provider, Settings()).has_credentials() is False


@pytest.mark.parametrize(("config", "message"), [
    ("lambda-llama-8b", "lambda: no Lambda Cloud API key (LAMBDA_API_KEY and DEPLOYER_LAMBDA_API_KEY set but empty)"),
    ("runpod-qwen-0.5b", "runpod: no RunPod API key found (RUNPOD_API_KEY and DEPLOYER_RUNPOD_API_KEY set but empty)"),
    ("modal-qwen-l40s", "modal: no Modal credentials found (MODAL_TOKEN_ID and MODAL_TOKEN_SECRET set but empty)"),
])
def test_deploy_says_which_variable_is_empty(blank_credentials: dict[str, str], cli: object, config: str,
                                             message: str) -> None:
    """Every provider treats missing credentials alike: the user's setup, so exit 2 (bad input)."""
    done = cli("deploy", str(REPO / "configs" / f"{config}.yaml"), env=blank_credentials)  # type: ignore[operator]
    assert done.code == 2, done
    assert message in done.err and "hint:" in done.err and "Traceback" not in done.err


def test_gc_skips_providers_whose_credentials_are_blank(blank_credentials: dict[str, str], cli: object) -> None:
    report = cli("gc", "--json", env=blank_credentials).json()  # type: ignore[operator]
    assert {s["provider"]: s["reason"] for s in report["skipped"]} == {
        "runpod": "no credentials", "lambda": "no credentials", "modal": "no credentials"}
