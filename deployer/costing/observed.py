"""What the last hour of real traffic cost, from what `deployer gateway` recorded in the state.

The gateway counts, per deployment and provider, each request it sent and the wall seconds
until the last byte came back (`StateStore.gateway_traffic`). Here that hour is priced with the
same formulas and prices as the estimate, on the option the deployment runs as (scale to zero,
warm replicas, or a VM), next to the estimate for an hour at the spec's `traffic:`:

- busy: the gateway's seconds at the busy rate: what the requests themselves billed (an upper
  bound of GPU-busy time: the seconds include the network and any provider queue);
- hour: an hour at the observed rate and request length, per the cost model: busy time plus the
  idle tail and cold starts it implies (serverless), or the VM's hour, billed used or not;
- estimate: the same for an hour at the spec's traffic (when it has `traffic:`).

`attach` adds this as `observed` to a `deployer cost` document when the deployment had gateway
traffic in the window; `render` prints it.
"""

from __future__ import annotations

import time
from typing import Any

from . import formulas
from .formulas import HOURS_PER_MONTH, Traffic
from .report import SCALE_TO_ZERO, VM, WARM, Option, price_option

WINDOW_S = 3600.0


def attach(doc: dict[str, Any], spec: Any, options: list[Option], *, now: float | None = None,
           window_s: float = WINDOW_S) -> None:
    """Add `observed` to the cost document of `spec`, priced on `options` (the report's), when
    the state holds gateway traffic to its deployment from the last `window_s` seconds. Reads
    the state; never writes."""
    from deployer.settings import Settings

    section = observed(spec, doc, options, Settings(), now=now, window_s=window_s)
    if section is not None:
        doc["observed"] = section


def observed(spec: Any, doc: dict[str, Any], options: list[Option], settings: Any, *, now: float | None = None,
             window_s: float = WINDOW_S) -> dict[str, Any] | None:
    """The priced traffic of the last `window_s` seconds per provider, or None without any."""
    from deployer.state import StateStore

    if not (settings.home / "state.db").exists():
        return None
    until = time.time() if now is None else now
    since = until - window_s
    store = StateStore(settings.home)
    try:
        rows = store.gateway_traffic(since=since // 60 * 60, deployment=spec.name)  # from the minute `since` is in
    finally:
        store.close()
    if not rows:
        return None
    per_provider: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = per_provider.setdefault(row["provider"], {"provider": row["provider"], "gateways": [], "requests": 0,
                                                          "errors": 0, "seconds": 0.0})
        entry["gateways"].append(row["gateway"])
        entry["requests"] += row["requests"]
        entry["errors"] += row["errors"]
        entry["seconds"] += row["seconds"]
    hours = window_s / 3600.0
    estimate = doc.get("traffic")
    providers = []
    for entry in per_provider.values():
        n = entry["requests"]
        entry["requests_per_hour"] = n / hours
        entry["seconds_per_request"] = entry["seconds"] / n if n else None
        entry.update(_priced(spec, doc, options, entry, estimate))
        providers.append(entry)
    return {"deployment": spec.name, "window_s": window_s, "since": since, "until": until, "providers": providers}


def _priced(spec: Any, doc: dict[str, Any], options: list[Option], entry: dict[str, Any],
            estimate: dict[str, Any] | None) -> dict[str, Any]:
    """busy_usd, hour_usd, estimate_hour_usd and the option they are priced on (None: free or unpriced)."""
    out: dict[str, Any] = {"option": None, "busy_usd": None, "hour_usd": None, "estimate_hour_usd": None,
                           "estimate": None, "note": None}
    option = _option(spec, options, entry["provider"])
    if option is None:
        out["note"] = ("this machine: free" if entry["provider"] == "local" else
                       "no price: the spec has no resources.gpu" if not doc.get("gpu") else
                       f"no price for {entry['provider']} in the catalog")
        return out
    out["option"] = option.id
    if option.mode != VM:  # a VM bills its hours, not its requests
        out["busy_usd"] = formulas.cost(entry["seconds"], option.offer.rate(option.busy_mode))
    if entry["requests"]:
        out["hour_usd"] = _hour(option, Traffic(entry["requests_per_hour"], entry["seconds_per_request"]))
    if estimate:
        out["estimate_hour_usd"] = _hour(option, Traffic(estimate["requests_per_hour"], estimate["seconds_per_request"]))
        out["estimate"] = {"requests_per_hour": estimate["requests_per_hour"],
                           "seconds_per_request": estimate["seconds_per_request"]}
    if option.mode == VM:
        out["note"] = "a VM bills every hour it exists, used or not"
    return out


def _option(spec: Any, options: list[Option], provider: str) -> Option | None:
    """The priced option matching how the deployment runs on `provider`: its VM (the cheapest
    type when several fit), or serverless scaled to zero / with the spec's warm replicas."""
    mine = [o for o in options if o.offer.provider == provider]
    vms = sorted((o for o in mine if o.mode == VM), key=lambda o: o.hourly)
    if vms:
        return vms[0]
    warm = spec.scaling.min_replicas
    return next((o for o in mine if (o.mode == WARM and o.warm_replicas == warm)
                 or (o.mode == SCALE_TO_ZERO and not warm)), None)


def _hour(option: Option, traffic: Traffic) -> float:
    """Dollars for one hour of `traffic` (all day long) on `option`, per the cost model."""
    return price_option(option, traffic).usd / HOURS_PER_MONTH


def render(doc: dict[str, Any], out: Any) -> None:
    """Print the `observed` section of a cost document, if it has one, on a rich Console."""
    section = doc.get("observed")
    if not section:
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"observed through deployer gateway, last {section['window_s'] / 60:.0f} min "
                        f"(deployment {escape(section['deployment'])})", title_justify="left")
    for column in ("option", "requests", "failed", "s/request", "busy", "hour at this traffic", "estimate (spec traffic)"):
        table.add_column(column, justify="left" if column == "option" else "right", no_wrap=True)
    notes = []
    for entry in section["providers"]:
        spr = entry["seconds_per_request"]
        table.add_row(escape(entry["option"] or entry["provider"]), f"{entry['requests']:,}", f"{entry['errors']:,}",
                      "-" if spr is None else f"{spr:.2f}", _usd(entry["busy_usd"]), _usd(entry["hour_usd"]),
                      _usd(entry["estimate_hour_usd"]))
        if entry["note"]:
            notes.append(f"{entry['provider']}: {entry['note']}")
    out.print(table)
    out.print("  [dim]busy: the gateway's request seconds at the busy rate (they include network and queueing); "
              "hour: an hour at the observed rate and length per the cost model (idle tail and cold starts "
              "included); estimate: the same at the spec's traffic.[/]")
    for note in notes:
        out.print(f"  [dim]{escape(note)}[/]")


def _usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:.5f}" if 0 < value < 0.01 else f"${value:,.2f}"
