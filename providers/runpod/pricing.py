"""Live RunPod serverless prices for `deployer cost` and `plan` (deployer/costing/live.py).

`GET /v2/catalog/gpus` lists every GPU type with its serverless `pool` and `price.serverless`,
the list price per GPU per hour of that pool (openapi-v2.json, GpuType). Since 2026-05-13 RunPod
bills flex and active workers at the same documented rate, so one figure replaces both;
negotiated discounts are not in the catalog (put them in a --pricing file).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx

from deployer.errors import ProviderError

from .settings import load_settings


def live_prices(timeout: float = 10) -> list[dict[str, Any]] | None:
    """One record per serverless pool: {"match": {"pool"}, "per": "gpu", "usd_per_hour":
    {"flex", "active"}, "source", "as_of"}; None without a RunPod API key.

    One GET, no retry (the caller falls back to shipped figures). Raises ProviderError when
    RunPod answers with an error or a body outside the documented shape."""
    settings = load_settings()
    if settings.api_key is None:
        return None
    url = settings.api_url.rstrip("/") + "/catalog/gpus"
    headers = {"Authorization": f"Bearer {settings.api_key.get_secret_value()}", "Accept": "application/json"}
    try:
        response = httpx.get(url, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ProviderError("runpod", f"cannot read the GPU catalog ({exc.__class__.__name__})") from None
    if response.status_code != 200:
        try:
            problem = response.json()
            said = problem.get("detail") or problem.get("title") or ""
        except ValueError:
            said = response.text[:120]
        raise ProviderError("runpod", f"GET /v2/catalog/gpus answered {response.status_code} {said}".rstrip(),
                            status=response.status_code)
    try:
        gpus = response.json()["gpus"]
    except (ValueError, KeyError, TypeError):
        raise ProviderError("runpod", "GET /v2/catalog/gpus: the body has no `gpus` list") from None
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    by_pool: dict[str, float] = {}
    for gpu in gpus:
        pool = gpu.get("pool")
        price = (gpu.get("price") or {}).get("serverless")
        if pool and isinstance(price, (int, float)) and not isinstance(price, bool):
            by_pool.setdefault(pool, float(price))
    source = f"GET {url}"
    return [
        {"match": {"pool": pool}, "per": "gpu", "usd_per_hour": {"flex": price, "active": price},
         "source": source, "as_of": now}
        for pool, price in by_pool.items()
    ]
