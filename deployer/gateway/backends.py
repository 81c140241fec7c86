"""The gateway's backends: recorded deployments resolved to URLs, keys and limits, with the
in-flight count and health each one carries while the gateway runs.

`resolve` reads the state through `Orchestrator.target` (no provider call, no network) and is
the only place a backend key enters the gateway; the key stays inside the `Endpoint`, whose repr
hides it. All mutation of a `Backend` happens on the event loop's thread, so a check followed by
an update without an `await` between them is atomic.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from ..errors import DeployerError, InputError
from ..provider import Endpoint
from ..settings import Settings
from .routes import GatewayConfig, ProbeMode, unknown_deployment


@dataclass
class Backend:
    """One deployment behind the gateway. `endpoint` holds the URL and key (replaced when the
    deployment moves); `limit` is what primary-overflow lets it hold before the next takes over."""

    name: str
    provider: str
    endpoint: Endpoint
    limit: int
    probe: ProbeMode
    in_flight: int = 0
    healthy: bool = True
    failures: int = 0  # consecutive failed requests
    problem: str | None = None  # why it is out of rotation (shown in a debugger, logged by the callers)

    @property
    def model(self) -> str:
        return self.endpoint.model

    @property
    def full(self) -> bool:
        return self.in_flight >= self.limit

    def mark_out(self, problem: str) -> bool:
        """Take it out of rotation; True when that is a change (for logging once)."""
        changed = self.healthy
        self.healthy, self.problem = False, problem
        return changed

    def mark_in(self) -> bool:
        """Put it back in rotation; True when that is a change."""
        changed = not self.healthy
        self.healthy, self.problem, self.failures = True, None, 0
        return changed


@dataclass(frozen=True)
class Resolved:
    """What the state says about one deployment now (computed off the event loop)."""

    name: str
    provider: str
    endpoint: Endpoint
    concurrency: int
    scales_to_zero: bool


def resolve_all(config: GatewayConfig, settings: Settings, *, source: str = "",
                lines: dict[tuple[Any, ...], int] | None = None) -> dict[str, Resolved]:
    """Every deployment the routes name, resolved from the state (for starting). Blocks on
    SQLite only. Raises InputError (exit 2) naming the file, line and key path for a deployment
    the state does not record; DeployerError (exit 1) for one without an endpoint or key yet."""
    recorded = recorded_names(settings)
    missing = [name for name in config.deployments() if name not in recorded]
    if missing:
        errors = [unknown_deployment(name, recorded, source, lines or {}, config) for name in missing]
        raise InputError("\n".join(e.message for e in errors), hint=errors[0].hint)
    out = {}
    for name, found in resolve(config.deployments(), settings).items():
        if isinstance(found, DeployerError):
            raise DeployerError(f"backend {name!r}: {found.message}", hint=found.hint)
        out[name] = found
    return out


def resolve(names: list[str], settings: Settings) -> dict[str, Resolved | DeployerError]:
    """Each deployment as the state records it now, or the error saying why it cannot be
    reached (not recorded, no endpoint yet, key not at hand). Blocks on SQLite; never raises
    for one deployment's problem."""
    from ..orchestrator import Orchestrator

    orch = Orchestrator(settings)
    if not orch.state_exists():
        return {name: DeployerError(f"no deployment named {name!r}") for name in names}
    out: dict[str, Resolved | DeployerError] = {}
    try:
        for name in names:
            try:
                target = orch.target(name)
            except DeployerError as exc:
                out[name] = exc
                continue
            spec = target.deployment.spec
            out[name] = Resolved(
                name=name, provider=target.deployment.provider, endpoint=target.endpoint,
                concurrency=spec.scaling.concurrency,
                scales_to_zero=spec.scaling.min_replicas == 0 and _scales_to_zero(target.deployment.provider),
            )
    finally:
        orch.state.close()
    return out


def recorded_names(settings: Settings) -> list[str]:
    """The deployment names the state records (none without a state). Blocks on SQLite."""
    from ..state import StateStore

    if not (settings.home / "state.db").exists():
        return []
    store = StateStore(settings.home)
    try:
        return sorted({row["name"] for row in store.rows()})
    finally:
        store.close()


def build(config: GatewayConfig, resolved: dict[str, Resolved]) -> dict[str, Backend]:
    """Backends by deployment name, with limits and probe modes from the routes (or defaults)."""
    backends = {}
    for name, found in resolved.items():
        entries = [b for r in config.routes for b in r.backends if b.deployment == name]
        limit = next((b.max_in_flight for b in entries if b.max_in_flight is not None), found.concurrency)
        probe = next((b.probe for b in entries if b.probe is not None), None)
        backends[name] = Backend(name=name, provider=found.provider, endpoint=found.endpoint, limit=limit,
                                 probe=probe or ("when-out" if found.scales_to_zero else "always"))
    return backends


@cache
def _scales_to_zero(provider: str) -> bool:
    """Whether the provider bills only while serving (then a probe would keep a replica billing).
    From the shipped price catalog's `cold_start.scales_to_zero`; unknown providers: no."""
    from ..costing.catalog import shipped_raw

    entry = shipped_raw().get("providers", {}).get(provider) or {}
    return bool((entry.get("cold_start") or {}).get("scales_to_zero"))
