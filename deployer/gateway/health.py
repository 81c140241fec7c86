"""Background health: probes through the shared endpoint client, and re-resolving each backend
from the state so a deployment that moved (new URL, new provider, rotated key) is followed
without restarting the gateway.

A probe is `EndpointClient.models()` (listing the served model), run in a worker thread: the
same check readiness starts with, never a completion (a probe must not cost tokens). Backends
whose deployment scales to zero are probed only while out of rotation (`when-out`): a periodic
probe would keep a worker up and billing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx

from ..client import EndpointClient
from ..errors import DeployerError
from ..provider import Endpoint
from ..settings import Settings
from .backends import Backend, resolve
from .routes import GatewayConfig

log = logging.getLogger("deployer.gateway")


def probe(endpoint: Endpoint, timeout: float) -> str | None:
    """None when the endpoint lists its served model, else the problem in a few words (no key,
    no header). Blocks for at most about `timeout` seconds."""
    try:
        with EndpointClient(endpoint, timeout=timeout) as client:
            models = client.models()
    except httpx.HTTPStatusError as exc:
        return f"GET /models answered {exc.response.status_code}"
    except httpx.HTTPError as exc:
        return f"GET /models failed: {exc.__class__.__name__}"
    except DeployerError as exc:
        return exc.message[:200]
    if endpoint.model not in models:
        return f"it serves {models[:5]}, not {endpoint.model!r}"
    return None


class HealthMonitor:
    """Runs `round` every `health.interval` seconds until cancelled. `on_change(backend,
    old_provider)` is called on the event loop whenever a backend's rotation or provider changed."""

    def __init__(self, config: GatewayConfig, settings: Settings, backends: dict[str, Backend],
                 on_change: Callable[[Backend, str | None], None]) -> None:
        self.config = config
        self.settings = settings
        self.backends = backends
        self.on_change = on_change

    async def run(self) -> None:
        while True:
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed round must not stop the monitor
                log.warning("health round failed: %s: %s", exc.__class__.__name__, str(exc)[:200])
            await asyncio.sleep(self.config.health.interval)

    async def round(self) -> None:
        """Re-resolve every backend, then probe those due. Never raises for a backend's failure."""
        unreachable = await self.refresh()
        due = [b for b in self.backends.values()
               if b.name not in unreachable and (b.probe == "always" or not b.healthy)]
        if not due:
            return
        timeout = self.config.health.timeout
        results = await asyncio.gather(*(asyncio.to_thread(probe, b.endpoint, timeout) for b in due))
        for backend, problem in zip(due, results):
            if problem is None:
                if backend.mark_in():
                    log.info("backend %s (%s) is back in rotation", backend.name, backend.provider)
                    self.on_change(backend, None)
            elif backend.mark_out(f"probe: {problem}"):
                log.warning("backend %s (%s) is out of rotation: probe: %s", backend.name, backend.provider, problem)
                self.on_change(backend, None)

    async def refresh(self) -> set[str]:
        """Follow deployments that moved or were redeployed (URL, provider or key changed); one
        that can no longer be reached (destroyed, key gone) leaves the rotation. Returns the
        names of those (not worth probing)."""
        resolved = await asyncio.to_thread(resolve, list(self.backends), self.settings)
        unreachable = set()
        for name, found in resolved.items():
            backend = self.backends[name]
            if isinstance(found, DeployerError):
                unreachable.add(name)
                if backend.mark_out(found.message):
                    log.warning("backend %s is out of rotation: %s", name, found.message)
                    self.on_change(backend, None)
                continue
            if found.endpoint != backend.endpoint or found.provider != backend.provider:
                old = backend.provider
                if found.provider != old or found.endpoint.url != backend.endpoint.url:
                    log.info("backend %s now serves from %s on %s", name, found.endpoint.url, found.provider)
                backend.endpoint, backend.provider = found.endpoint, found.provider
                self.on_change(backend, old)
        return unreachable
