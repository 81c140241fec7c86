"""Lambda Cloud credentials, base URL and pacing, from the environment (pydantic-settings).

    LAMBDA_API_KEY                 the API key (else `api_key = ...` in ~/.lambda_cloud/lambda_keys)
    DEPLOYER_LAMBDA_API_URL        base URL, default https://cloud.lambda.ai/api/v1
    DEPLOYER_LAMBDA_RATE_INTERVAL  seconds between any two API calls (Lambda: about 1 per second)
    DEPLOYER_LAMBDA_LAUNCH_INTERVAL seconds between two launches (Lambda: 1 per 12 s)
    DEPLOYER_LAMBDA_POLL_INTERVAL  seconds between instance-state polls while waiting
    DEPLOYER_LAMBDA_PROBE_INTERVAL seconds between instance checks while the core waits for vLLM
    DEPLOYER_LAMBDA_TERMINATE_TIMEOUT seconds destroy waits for `terminated`
    DEPLOYER_LAMBDA_RETRY_BACKOFF  first delay before retrying a 5xx or a network error
    DEPLOYER_LAMBDA_REQUEST_TIMEOUT seconds one control-plane call may take (30)
    DEPLOYER_LAMBDA_PROBE_TIMEOUT  seconds one readiness request to vLLM may take (10)

Tests shrink the intervals together with the emulator's strict limits (same ratio), so "never
causes a 429" is checked at a faster clock.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_API_URL = "https://cloud.lambda.ai/api/v1"
KEYS_FILE = Path("~/.lambda_cloud/lambda_keys")


class LambdaSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DEPLOYER_LAMBDA_", env_file=".env", extra="ignore", populate_by_name=True
    )

    api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("LAMBDA_API_KEY", "DEPLOYER_LAMBDA_API_KEY")
    )
    api_url: str = DEFAULT_API_URL
    keys_file: Path = KEYS_FILE
    rate_interval: float = Field(1.0, ge=0)
    launch_interval: float = Field(12.0, ge=0)
    poll_interval: float = Field(5.0, gt=0)
    probe_interval: float = Field(15.0, ge=0)
    terminate_timeout: float = Field(900.0, gt=0)
    retry_backoff: float = Field(1.0, ge=0)
    request_timeout: float = Field(30.0, gt=0)  # one control-plane call
    probe_timeout: float = Field(10.0, gt=0)  # one readiness request to the VM's vLLM

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_is_absent(cls, value: object) -> object:
        """`LAMBDA_API_KEY=` (empty or spaces) is no key: the keys file is read instead."""
        return None if isinstance(value, str) and not value.strip() else value


def read_keys_file(path: Path) -> str | None:
    """The `api_key` from a Lambda keys file (`api_key = <key>` lines, as Lambda's tools write it),
    or None when the file is missing or holds none. Never raises for a missing file."""
    try:
        text = path.expanduser().read_text()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "api_key" and value.strip():
            return value.strip()
    return None


def load_settings(**overrides: object) -> LambdaSettings:
    """Settings from the environment (and `.env`), the API key falling back to the keys file.

    `overrides` are field values that win over the environment. Does no network I/O."""
    settings = LambdaSettings(**overrides)  # type: ignore[arg-type]
    if settings.api_key is None:
        found = read_keys_file(settings.keys_file)
        if found:
            settings = settings.model_copy(update={"api_key": SecretStr(found)})
    return settings
