"""Core settings from the environment and `.env` (pydantic-settings).

Provider credentials and base URLs belong to each backend (`providers/<name>/settings.py`),
which read them the same way; the core only knows where its state lives.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "deployer"


def blank_variables(*names: str) -> list[str]:
    """Those of `names` set in the environment to nothing but spaces (`export KEY=`): such a
    credential counts as absent, and the error about the missing one should say why."""
    return [name for name in names if name in os.environ and not os.environ[name].strip()]


class Settings(BaseSettings):
    """DEPLOYER_HOME holds the state database, generated keys, logs and rendered files."""

    model_config = SettingsConfigDict(env_prefix="DEPLOYER_", env_file=".env", extra="ignore")

    home: Path = Field(default_factory=_default_home)
    pricing: Path | None = None  # DEPLOYER_PRICING: a price override file

    def ensure_home(self) -> Path:
        """Create DEPLOYER_HOME (0700) if needed and return it."""
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.home

    def path(self, *parts: str) -> Path:
        """A path under DEPLOYER_HOME whose parent directory exists."""
        target = self.ensure_home().joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return target
