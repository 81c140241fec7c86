"""Live Lambda Cloud prices for `deployer cost` and `plan` (deployer/costing/live.py).

`GET /instance-types` returns every instance type with `price_cents_per_hour` (openapi-1.10.0).
The call goes through the process-wide Lambda rate limiter, like every other Lambda call.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx

from deployer.errors import ProviderError

from .api import describe, shared_limiter
from .settings import load_settings


def live_prices(timeout: float = 10) -> list[dict[str, Any]] | None:
    """One record per instance type: {"match": {"instance_type"}, "per": "instance",
    "usd_per_hour": {"on_demand"}, "source", "as_of"}; None without a Lambda API key.

    One GET, no retry (the caller falls back to shipped figures). Raises ProviderError in
    Lambda's terms when it answers with an error or an undocumented body."""
    settings = load_settings()
    if settings.api_key is None:
        return None
    url = settings.api_url.rstrip("/") + "/instance-types"
    headers = {"Authorization": f"Bearer {settings.api_key.get_secret_value()}", "Accept": "application/json"}
    shared_limiter(settings.rate_interval, settings.launch_interval).wait("default")
    try:
        response = httpx.get(url, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ProviderError("lambda", f"cannot read the instance types ({exc.__class__.__name__})") from None
    if response.status_code != 200:
        raise describe(response)
    try:
        data = response.json()["data"]
        items = [(name, item["instance_type"]["price_cents_per_hour"]) for name, item in data.items()]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ProviderError("lambda", "GET /instance-types: the body is not {data: {name: {instance_type}}}") from None
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    source = f"GET {url}"
    return [
        {"match": {"instance_type": name}, "per": "instance", "usd_per_hour": {"on_demand": cents / 100.0},
         "source": source, "as_of": now}
        for name, cents in items
        if isinstance(cents, (int, float)) and not isinstance(cents, bool)
    ]
