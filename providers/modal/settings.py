"""Modal's own settings, as the Modal SDK reads them, plus deployer's pacing knobs.

Modal's variables are the SDK's (deployer passes nothing else to it):

    MODAL_TOKEN_ID / MODAL_TOKEN_SECRET  credentials (else the active profile in ~/.modal.toml,
                                         or MODAL_CONFIG_PATH, written by `modal token new`)
    MODAL_SERVER_URL                     the control plane, default https://api.modal.com
    MODAL_ENVIRONMENT                    the Modal environment (providers.modal.environment wins)

deployer's own:

    DEPLOYER_MODAL_STOP_TIMEOUT   seconds `destroy` waits for Modal to report the app stopped
    DEPLOYER_MODAL_POLL_INTERVAL  seconds between two checks while waiting
    DEPLOYER_MODAL_PROBE_TIMEOUT  seconds one readiness request to the app may take (10; a cold
                                  container holds it: the next attempt asks again)

This module imports nothing heavy; `has_credentials` reads the SDK's config only when the
environment does not already answer.
"""

from __future__ import annotations

import os

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from deployer.settings import blank_variables

DEFAULT_SERVER_URL = "https://api.modal.com"


class ModalSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEPLOYER_MODAL_", env_file=".env", extra="ignore")

    stop_timeout: float = Field(120.0, gt=0)
    poll_interval: float = Field(1.0, gt=0)
    probe_timeout: float = Field(10.0, gt=0)


def load_settings(**overrides: object) -> ModalSettings:
    """deployer's Modal knobs from the environment (and `.env`); `overrides` win. No I/O beyond that."""
    return ModalSettings(**overrides)  # type: ignore[arg-type]


def server_url() -> str:
    """The control plane the SDK will talk to (MODAL_SERVER_URL, else Modal's)."""
    return os.environ.get("MODAL_SERVER_URL") or DEFAULT_SERVER_URL


def environment_name(option: str | None = None) -> str | None:
    """The Modal environment: the spec's option, else MODAL_ENVIRONMENT, else None (the
    workspace's default environment)."""
    return option or os.environ.get("MODAL_ENVIRONMENT") or None


def has_credentials() -> bool:
    """Whether a Modal token is configured: MODAL_TOKEN_ID/SECRET in the environment, or the
    active profile of the SDK's config file. Never contacts Modal."""
    if blank_tokens():
        return False  # the SDK lets a set variable win over the config file, even an empty one
    if os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"):
        return True
    try:
        from modal.config import config
    except ImportError:  # the `modal` extra is not installed
        return False
    return bool(config.get("token_id") and config.get("token_secret"))


def blank_tokens() -> list[str]:
    """MODAL_TOKEN_ID / MODAL_TOKEN_SECRET when set to nothing (`export MODAL_TOKEN_ID=`)."""
    return blank_variables("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET")


def token() -> tuple[str, str] | None:
    """(token id, token secret) as the SDK resolves them (environment, then config profile), or
    None. Imports modal's config module."""
    from modal.config import config

    if blank_tokens():
        return None
    token_id, token_secret = config.get("token_id"), config.get("token_secret")
    return (token_id, token_secret) if token_id and token_secret else None
