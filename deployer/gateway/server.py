"""Starting a gateway: the file checked, the backends resolved, the key at hand, the port
bound, then uvicorn serving the app with the background tasks (health, traffic flush) running.

`prepare` does everything that can fail on input or state before anything listens; `serve`
blocks until SIGINT/SIGTERM, then drains in-flight requests (up to DRAIN_S) and flushes the
traffic totals to the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import keys
from ..errors import DeployerError
from ..settings import Settings
from .backends import build, resolve_all
from .routes import GatewayConfig, load_routes

FLUSH_S = 10.0  # traffic totals reach the state at least this often (a crash loses at most this much)
DRAIN_S = 10.0  # seconds in-flight requests get to finish on shutdown

log = logging.getLogger("deployer.gateway")


def key_path(settings: Settings, name: str) -> Path:
    """Where a generated gateway key lives (apart from deployment keys: names may coincide)."""
    return settings.home / "keys" / "gateways" / f"{name}.key"


def key_location(config: GatewayConfig, settings: Settings) -> str:
    """Where the gateway's client key is, in words a user can act on (no secret)."""
    if config.auth.api_key_env:
        return f"env ${config.auth.api_key_env}"
    return str(key_path(settings, config.name))


def client_key(config: GatewayConfig, settings: Settings, *, create: bool) -> str | None:
    """The key clients send to the gateway: from `auth.api_key_env`, or generated once (0600).
    Raises InputError for an unset or weak variable."""
    if config.auth.api_key_env:
        return keys.env_key(config.auth.api_key_env)
    return keys.generated_key(key_path(settings, config.name), create=create)


@dataclass
class Prepared:
    config: GatewayConfig
    gateway: Any  # proxy.Gateway
    settings: Settings
    sock: socket.socket | None = None


def prepare(path: str, settings: Settings, *, bind: bool = True) -> Prepared:
    """Check the file, resolve every backend from the state, get the client key, bind the port.

    Raises InputError (bad file, unknown deployment, bad key variable) or DeployerError (a
    backend without an endpoint or key yet, the port taken). Creates the key file if needed."""
    from .proxy import Gateway
    from .usage import UsageLedger

    config, lines = load_routes(path)
    resolved = resolve_all(config, settings, source=str(path), lines=lines)
    key = client_key(config, settings, create=True)
    assert key is not None
    gateway = Gateway(config, build(config, resolved), key, UsageLedger(config.name, settings.ensure_home()))
    prepared = Prepared(config, gateway, settings)
    if bind:
        prepared.sock = _bind(config.listen.host, config.listen.port)
    return prepared


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: without it, asyncio's loop (no uvloop) lets Nagle's
    # algorithm meet the client's delayed ACK, and every answer waits about 40 ms
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DeployerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                            hint="set listen.port in the gateway file to a free port") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def lifespan_for(prepared: Prepared) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """Background tasks for the app's lifetime: health rounds and traffic flushes; on the way
    out, the backend connections are closed and the last totals written."""
    from .health import HealthMonitor

    gateway = prepared.gateway

    async def flush_forever() -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await asyncio.to_thread(gateway.ledger.flush)
            except Exception as exc:  # noqa: BLE001 - kept for the next flush
                log.warning("could not write traffic to the state: %s", exc.__class__.__name__)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await gateway.open()
        monitor = HealthMonitor(prepared.config, prepared.settings, gateway.backends, gateway.backend_changed)
        tasks = [asyncio.create_task(monitor.run()), asyncio.create_task(flush_forever())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await gateway.aclose()
            try:
                await asyncio.to_thread(gateway.ledger.flush)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not write the last traffic totals to the state: %s", exc.__class__.__name__)

    return lifespan


class ScrubbingFormatter(logging.Formatter):
    """Formats as usual, then replaces every key the gateway holds (tracebacks included)."""

    def __init__(self, secrets: Callable[[], list[str]]) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self.secrets():
            if secret:
                text = text.replace(secret, "<redacted>")
        return text


def setup_logging(gateway: Any) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ScrubbingFormatter(gateway.secrets))
    for name, level in (("deployer.gateway", logging.INFO), ("uvicorn", logging.WARNING)):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def serve(prepared: Prepared) -> None:
    """Serve on the bound socket until SIGINT/SIGTERM. Blocks."""
    import uvicorn

    from .proxy import build_app

    setup_logging(prepared.gateway)
    app = build_app(prepared.gateway, lifespan=lifespan_for(prepared))
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", server_header=False,
                            timeout_graceful_shutdown=DRAIN_S, backlog=2048)
    server = uvicorn.Server(config)
    assert prepared.sock is not None
    server.run(sockets=[prepared.sock])
