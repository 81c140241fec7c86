"""`deployer gateway status`: the running gateway's /metrics, read with its key and parsed."""

from __future__ import annotations

from typing import Any

import httpx

from ..errors import DeployerError
from ..settings import Settings
from .metrics import parse
from .routes import load_routes
from .server import client_key, key_location


def read_status(path: str, settings: Settings, *, timeout: float = 5.0) -> dict[str, Any]:
    """{"name", "url", "backends": [...], "responses": {...}} from the gateway the file describes.

    Raises InputError for a bad file, DeployerError when no gateway answers or it refuses the key."""
    config, _ = load_routes(path)
    key = client_key(config, settings, create=False)
    if key is None:
        raise DeployerError(f"gateway {config.name!r} has no key yet ({key_location(config, settings)}): it never ran here",
                            hint=f"start it with `deployer gateway run {path}`")
    base = config.local_url.removesuffix("/v1")
    try:
        response = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=timeout)
    except httpx.HTTPError as exc:
        raise DeployerError(f"no gateway answers at {base} ({exc.__class__.__name__})",
                            hint=f"start it with `deployer gateway run {path}`") from None
    if response.status_code != 200:
        raise DeployerError(f"the gateway at {base} answered {response.status_code} to GET /metrics",
                            hint="is another gateway (with another key) listening on that port?")
    return {"name": config.name, "url": config.local_url, **parse(response.text)}
