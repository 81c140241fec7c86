"""Live prices from the providers' APIs, reached without naming a provider.

A backend publishes prices by shipping a `pricing` module next to its adapter (found through
the `providers.BACKENDS` table) with:

    def live_prices(timeout: float = 10) -> list[dict] | None

None means "no credentials: nothing to read". Otherwise a list of records, each
    {"match": {<SKU key>: value}, "per": "gpu" | "instance",
     "usd_per_hour": {<mode>: $/h}, "source": "GET <url>", "as_of": "<UTC time>"}
which `catalog.apply_live` puts in place of the shipped figures whose SKU matches. A failing
call never fails the command: it becomes a note and the shipped figures stay.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

Records = list[dict[str, Any]]


def pricing_module(provider: str) -> Any | None:
    """`<backend package>.pricing` for `provider`, or None when the backend has none."""
    from deployer import registry

    if provider not in registry.names():
        return None
    return registry.optional_module(provider, "pricing")


def _one(provider: str, timeout: float) -> tuple[Records | None, str | None]:
    try:
        module = pricing_module(provider)
        if module is None or not hasattr(module, "live_prices"):
            return None, None
        records = module.live_prices(timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any failure falls back to shipped figures
        text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        return None, f"{provider}: live prices unavailable ({text}); using shipped figures"
    return records, None


def fetch_live(providers: Iterable[str], *, timeout: float = 10.0) -> tuple[dict[str, tuple[Records, str]], list[str]]:
    """Live records per provider that has credentials, read in parallel, and notes on failures.

    Returns ({provider: (records, what was read)}, notes). Blocks at most about `timeout`."""
    names = list(providers)
    results: dict[str, tuple[Records, str]] = {}
    notes: list[str] = []
    if not names:
        return results, notes
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        futures = {name: pool.submit(_one, name, timeout) for name in names}
    for name, future in futures.items():
        records, note = future.result()
        if note:
            notes.append(note)
        if records:
            sources = sorted({str(r.get("source", "")) for r in records})
            results[name] = (records, ", ".join(s for s in sources if s))
    return results, notes
