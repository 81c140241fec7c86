"""RunPod credentials and base URLs, from the environment, `.env` and the runpod SDK's config file.

    from providers.runpod.settings import load_settings
    settings = load_settings()          # never raises for a missing key: settings.api_key is None
    settings.api_key.get_secret_value() # the RunPod API key, when there is one

The key comes from RUNPOD_API_KEY (or DEPLOYER_RUNPOD_API_KEY), else from `~/.runpod/config.toml`
(`[default] api_key = "..."`, the file `runpod config` writes). `key_origin` says which, in words.
Base URLs: DEPLOYER_RUNPOD_API_URL (REST v2 control plane) and DEPLOYER_RUNPOD_ENDPOINT_URL (the
serverless data plane). Timing knobs exist so tests can run against a fast local emulator.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from deployer.errors import InputError

API_URL = "https://api.runpod.io/v2"
ENDPOINT_URL = "https://api.runpod.ai/v2"


def default_config_file() -> Path:
    return Path.home() / ".runpod" / "config.toml"


class RunPodSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEPLOYER_RUNPOD_", env_file=".env", extra="ignore")

    api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("RUNPOD_API_KEY", "DEPLOYER_RUNPOD_API_KEY")
    )
    api_url: str = API_URL
    endpoint_url: str = ENDPOINT_URL
    config_file: Path | None = None  # default ~/.runpod/config.toml
    profile: str = "default"
    key_origin: str | None = None  # set by load_settings

    timeout: float = 30.0  # seconds per control-plane call
    probe_timeout: float = 10.0  # seconds per readiness request (a crash-looping worker holds it open)
    retries: int = 5
    backoff: float = 0.5
    poll_interval: float = 3.0  # between status polls while draining, deleting and probing
    drain_timeout: float = 300.0  # waiting for workers to stop before DELETE
    delete_timeout: float = 300.0  # waiting for a deleted endpoint to disappear from the list
    log_idle: float = 2.0  # `logs` without --follow stops after this many quiet seconds

    @property
    def config_path(self) -> Path:
        return self.config_file or default_config_file()


def env_settings() -> RunPodSettings:
    """Settings from the environment and `.env` only (no key file). Raises InputError for a bad value."""
    try:
        return RunPodSettings()
    except ValidationError as exc:
        problems = "; ".join(f"DEPLOYER_RUNPOD_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise InputError(f"bad RunPod setting: {problems}") from None


def load_settings() -> RunPodSettings:
    """Settings with the API key resolved from the environment or the SDK's config file.

    Reads a file, touches no network. Raises InputError when a setting or the config file is
    malformed; a missing key is not an error here (`api_key` is None)."""
    settings = env_settings()
    if settings.api_key is not None and settings.api_key.get_secret_value().strip():
        return settings.model_copy(update={"key_origin": "$RUNPOD_API_KEY"})
    path = settings.config_path
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return settings.model_copy(update={"api_key": None})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{path}: cannot read the RunPod config ({exc})",
                         hint='it should hold [default] api_key = "..." (see `runpod config`)') from None
    value = (data.get(settings.profile) or {}).get("api_key")
    if not isinstance(value, str) or not value.strip():
        return settings.model_copy(update={"api_key": None})
    return settings.model_copy(update={"api_key": SecretStr(value.strip()), "key_origin": str(path)})
