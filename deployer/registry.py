"""Backends by name. The core reaches a provider only through this module.

`options_model` imports a backend's light `options` module; `load` imports its adapter, and
so whatever the adapter imports at module level (which must not be a heavy SDK).
"""

from __future__ import annotations

import importlib
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING

from providers import BACKENDS

from .errors import InputError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .provider import Provider
    from .settings import Settings


def names() -> list[str]:
    """Every backend name, in the table's order."""
    return list(BACKENDS)


def _package(name: str) -> str:
    try:
        return BACKENDS[name]
    except KeyError:
        raise InputError(
            f"unknown provider {name!r}", hint=f"one of: {', '.join(BACKENDS)}"
        ) from None


@cache
def options_model(name: str) -> type[BaseModel]:
    """The pydantic model of `providers.<name>` in a spec."""
    return importlib.import_module(_package(name) + ".options").Options


def optional_module(name: str, module: str) -> ModuleType | None:
    """`<backend package>.<module>` of backend `name` (e.g. its `pricing`), or None when the
    backend has no such module. Errors inside the module propagate."""
    qualified = f"{_package(name)}.{module}"
    try:
        return importlib.import_module(qualified)
    except ModuleNotFoundError as exc:
        if exc.name == qualified:
            return None
        raise


def load(name: str, settings: Settings) -> Provider:
    """A ready adapter for backend `name`. Raises InputError for an unknown name."""
    module = importlib.import_module(_package(name) + ".adapter")
    return module.Provider(settings)
