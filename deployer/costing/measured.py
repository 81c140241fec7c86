"""`deployer cost NAME --measured`: the cost report priced twice, with the assumed figures and
with what `deployer bench` measured on the deployment, side by side.

Measured figures (the newest stored bench runs of the deployment, on its provider):
  - seconds per request: the run's wall-clock duration / successful requests, i.e. what one
    replica spends per request at the run's concurrency (at concurrency 1: the mean latency).
    It replaces `traffic.seconds_per_request` (or --seconds-per-request, which is then refused);
  - cold start: the newest `bench --cold` run's request -> first token. It replaces the capacity
    model's range for the deployment's own provider; the other providers keep their prediction.
NAME is a recorded deployment (its spec comes from the state) or a spec file (its `name:`).
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Any

from deployer.errors import InputError


def _spec_and_row(target: str, state: Any) -> tuple[Any, dict[str, Any] | None, str]:
    """(spec, the deployment's state row or None, where the spec came from)."""
    from deployer.spec import load_spec, validate_spec

    row = state.current(target) if state is not None else None
    if row is not None:
        return validate_spec(row["spec"], source=f"state of {target}"), row, "state"
    if Path(target).is_file():
        spec = load_spec(target)
        rows = state.rows(spec.name) if state is not None else []
        row = next((r for r in rows if r["provider"] == spec.provider), None)
        return spec, row, target
    raise InputError(f"no deployment named {target!r} (and no spec file of that name)",
                     hint="`deployer list` shows what exists; `deployer bench NAME` measures a deployment")


def run(target: str, *, requests_per_hour: float | None = None, seconds_per_request: float | None = None,
        tokens_per_request: int | None = None, hours_per_day: float | None = None, pricing: str | None = None,
        live: bool = True) -> dict[str, Any]:
    """Both reports and their comparison as plain data. Raises InputError for bad input, or when
    nothing usable was measured."""
    from deployer.benchmark import store
    from deployer.settings import Settings
    from deployer.state import StateStore

    from . import capacity as capacity_mod
    from .catalog import load, pricing_file
    from .cli import validate_flags
    from .report import build, traffic_of

    if seconds_per_request is not None:
        raise InputError("--seconds-per-request and --measured both set the seconds per request",
                         hint="drop --seconds-per-request: --measured uses what `deployer bench` measured")
    validate_flags(requests_per_hour, seconds_per_request, tokens_per_request, hours_per_day)
    settings = Settings()
    state = StateStore(settings.home) if (settings.home / "state.db").exists() else None
    spec, row, source = _spec_and_row(target, state)
    provider = row["provider"] if row else spec.provider
    load_row = store.usable_load(state, spec.name, provider) if state is not None else None
    if load_row is None:
        raise InputError(f"nothing measured for {spec.name} on {provider}",
                         hint=f"run `deployer bench {spec.name}` (add --cold to measure a cold start too)")
    cold_row = store.usable_cold(state, spec.name, provider)
    assumed_traffic, traffic_source = traffic_of(spec, requests_per_hour=requests_per_hour,
                                                 tokens_per_request=tokens_per_request, hours_per_day=hours_per_day)
    if assumed_traffic is None:
        raise InputError("--measured prices a month of traffic, and no request rate is known",
                         hint="pass --requests-per-hour R, or set traffic.requests_per_hour in the spec")
    measured_s = load_row["result"]["throughput"]["seconds_per_request"]
    measured_cold = cold_row["result"]["cold"]["measured_s"] if cold_row else None
    catalog = load(pricing_file(pricing, settings), live=live)
    cap = capacity_mod.estimate(spec, catalog=catalog) if spec.resources.gpu else None
    assumed = build(spec, catalog, assumed_traffic, cap, traffic_source=traffic_source)
    measured = build(spec, catalog, dataclasses.replace(assumed_traffic, seconds_per_request=measured_s),
                     _with_cold(cap, provider, measured_cold), traffic_source="deployer bench")
    predicted = next((c for c in (cap.cold_start if cap else []) if c.provider == provider), None)
    notes = list(assumed["notes"])
    if row is not None and load_row["spec_hash"] != row["spec_hash"]:
        notes.append(f"bench #{load_row['seq']} measured an earlier version of {spec.name}: bench it again")
    if measured_cold is None:
        notes.append(f"no cold start measured: `deployer bench {spec.name} --cold` measures one; the prediction stays")
    return {
        "name": spec.name,
        "provider": provider,
        "spec_source": source,
        "assumed": {
            "seconds_per_request": assumed_traffic.seconds_per_request,
            "seconds_per_request_source": "spec traffic" if spec.traffic else "default",
            "cold_start_s": predicted.mid_s if predicted else None,
            "cold_start_source": "capacity model, mid-range" if predicted else None,
        },
        "measured": {
            "seconds_per_request": measured_s,
            "benchmark": _run_ref(load_row),
            "cold_start_s": measured_cold,
            "cold_benchmark": _run_ref(cold_row) if cold_row else None,
        },
        "options": [_pair(a, m) for a, m in zip(assumed["options"], measured["options"])],
        "notes": notes,
        "assumed_report": assumed,
        "measured_report": measured,
    }


def show(target: str, *, as_json: bool, **flags: Any) -> None:
    """`cost TARGET --measured`: print the comparison (one JSON document with `as_json`)."""
    from deployer.console import print_json, stdout_console

    doc = run(target, **flags)
    if as_json:
        print_json(doc)
    else:
        render(doc, stdout_console())


def _with_cold(cap: Any, provider: str, seconds: float | None) -> Any:
    """The capacity report with `provider`'s cold-start range replaced by the measured seconds."""
    if cap is None or seconds is None:
        return cap
    colds = [dataclasses.replace(c, low_s=seconds, high_s=seconds, notes=[*c.notes, "measured by deployer bench"])
             if c.provider == provider else c for c in cap.cold_start]
    return dataclasses.replace(cap, cold_start=colds)


def _run_ref(row: dict[str, Any]) -> dict[str, Any]:
    settings = row["result"].get("settings") or {}
    return {"seq": row["seq"], "at": datetime.datetime.fromtimestamp(row["at"], datetime.timezone.utc).isoformat(
        timespec="seconds"), "spec_hash": row["spec_hash"], "requests": settings.get("requests"),
        "concurrency": settings.get("concurrency")}


def _pair(assumed: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    def monthly(option: dict[str, Any]) -> float | None:
        return option["monthly"]["usd"] if option["monthly"] else None

    return {
        "id": assumed["id"], "provider": assumed["provider"], "mode": assumed["mode"],
        "spec_provider": assumed["spec_provider"],
        "cost_per_request_usd": {"assumed": assumed["cost_per_request_usd"], "measured": measured["cost_per_request_usd"]},
        "lone_request_usd": {"assumed": assumed["lone_request_usd"], "measured": measured["lone_request_usd"]},
        "monthly_usd": {"assumed": monthly(assumed), "measured": monthly(measured)},
    }


def render(doc: dict[str, Any], out: Any) -> None:
    """Print the two sets of figures and the options side by side on a rich Console."""
    from rich.markup import escape
    from rich.table import Table

    from .cli import _usd

    assumed, measured = doc["assumed"], doc["measured"]
    bench = measured["benchmark"]
    out.print(f"[bold]{escape(doc['name'])}[/] on {doc['provider']}: assumed figures beside those `deployer bench` "
              f"measured (#{bench['seq']}, {bench['at']}, {bench['requests']} requests at concurrency {bench['concurrency']})")
    figures = Table("figure", "assumed", "measured", title_justify="left")
    figures.add_row("seconds per request", f"{assumed['seconds_per_request']:g} ({assumed['seconds_per_request_source']})",
                    f"{measured['seconds_per_request']:.3f} (bench #{bench['seq']})")
    cold_assumed = "-" if assumed["cold_start_s"] is None else f"{assumed['cold_start_s']:.1f} s ({assumed['cold_start_source']})"
    cold_measured = "-" if measured["cold_start_s"] is None else \
        f"{measured['cold_start_s']:.2f} s (bench #{measured['cold_benchmark']['seq']})"
    figures.add_row(f"cold start on {doc['provider']}", cold_assumed, cold_measured)
    out.print(figures)
    if doc["options"]:
        table = Table("option", title="options", title_justify="left")
        for column in ("busy/req assumed", "measured", "lone req assumed", "measured", "month assumed", "measured"):
            table.add_column(column, justify="right", no_wrap=True)
        for option in doc["options"]:
            cells = []
            for key, digits in (("cost_per_request_usd", 5), ("lone_request_usd", 4), ("monthly_usd", 0)):
                cells += [_usd(option[key]["assumed"], digits), _usd(option[key]["measured"], digits)]
            table.add_row(escape(option["id"] + (" *" if option["spec_provider"] else "")), *cells)
        out.print(table)
        out.print("  [dim]* the spec's provider; the measured cold start replaces the predicted one for it only. "
                  "`deployer cost --json` explains each column.[/]")
    for note in doc["notes"]:
        out.print(f"[dim]note: {escape(note)}[/]")
