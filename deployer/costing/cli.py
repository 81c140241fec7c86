"""`deployer cost CONFIG`: what the spec costs on every provider that can host its GPUs.

`register(app)` adds the command to a Typer app. Everything heavy is imported inside the
command. Bad input (flags, spec, pricing file) is an InputError: exit code 2.
"""

from __future__ import annotations

from typing import Any, Optional

import typer


def register(app: typer.Typer) -> None:
    """Add `cost` to `app`."""
    from deployer.cli import handled

    @app.command("cost")
    @handled
    def cost(
        config: str = typer.Argument(..., help="Path of the deployment spec (YAML).", show_default=False),
        requests_per_hour: Optional[float] = typer.Option(None, "--requests-per-hour", help="Requests an hour during traffic hours (default: the spec's traffic:)."),
        seconds_per_request: Optional[float] = typer.Option(None, "--seconds-per-request", help="GPU-busy seconds per request (default: the spec's, else 2)."),
        tokens_per_request: Optional[int] = typer.Option(None, "--tokens-per-request", help="Tokens per request, for cost per million tokens."),
        hours_per_day: Optional[float] = typer.Option(None, "--hours-per-day", help="Hours a day the traffic runs (default 24)."),
        pricing: Optional[str] = typer.Option(None, "--pricing", help="Price override file (YAML/JSON; default: $DEPLOYER_PRICING)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout and nothing else."),
        measured: bool = typer.Option(False, "--measured", help="Price with what `deployer bench` measured (seconds per request, cold start) beside the assumed figures; CONFIG may then be a deployment name."),
    ) -> None:
        """Cost per request and per month on every provider that can host the spec's GPUs.

        Also the break-even with always-on, and a recommendation. Prices: shipped (dated), live
        with a provider key, or overridden by --pricing."""
        if measured:
            from .measured import show

            return show(config, as_json=as_json, requests_per_hour=requests_per_hour, pricing=pricing,
                        seconds_per_request=seconds_per_request, tokens_per_request=tokens_per_request,
                        hours_per_day=hours_per_day)
        doc = run(config, requests_per_hour=requests_per_hour, seconds_per_request=seconds_per_request,
                  tokens_per_request=tokens_per_request, hours_per_day=hours_per_day, pricing=pricing)
        from deployer.console import print_json, stdout_console

        from . import observed

        if as_json:
            print_json(doc)
            return
        render(doc, stdout_console())
        observed.render(doc, stdout_console())


def validate_flags(requests_per_hour: float | None, seconds_per_request: float | None,
                   tokens_per_request: int | None, hours_per_day: float | None) -> None:
    """Raise InputError for a traffic flag out of range."""
    from deployer.errors import InputError

    if requests_per_hour is not None and requests_per_hour < 0:
        raise InputError(f"--requests-per-hour must be >= 0, not {requests_per_hour:g}")
    if seconds_per_request is not None and seconds_per_request <= 0:
        raise InputError(f"--seconds-per-request must be > 0, not {seconds_per_request:g}")
    if tokens_per_request is not None and tokens_per_request < 1:
        raise InputError(f"--tokens-per-request must be >= 1, not {tokens_per_request}")
    if hours_per_day is not None and not 0 < hours_per_day <= 24:
        raise InputError(f"--hours-per-day must be in (0, 24], not {hours_per_day:g}")


def run(config: str, *, requests_per_hour: float | None = None, seconds_per_request: float | None = None,
        tokens_per_request: int | None = None, hours_per_day: float | None = None,
        pricing: str | None = None, live: bool = True) -> dict[str, Any]:
    """The cost report of the spec at `config` as plain data, with the last hour of gateway
    traffic (`observed`) when there was any. Raises InputError for bad input."""
    from deployer.settings import Settings
    from deployer.spec import load_spec

    from .catalog import pricing_file
    from .report import cost_report, traffic_of

    validate_flags(requests_per_hour, seconds_per_request, tokens_per_request, hours_per_day)
    spec = load_spec(config)
    traffic, source = traffic_of(spec, requests_per_hour=requests_per_hour, seconds_per_request=seconds_per_request,
                                 tokens_per_request=tokens_per_request, hours_per_day=hours_per_day)
    return cost_report(spec, pricing=pricing_file(pricing, Settings()), live=live, traffic=traffic,
                       traffic_source=source, observed=True)


def render_plan_extras(extras: dict[str, Any], out: Any) -> None:
    """Print the `capacity` and `cost` entries `plan` adds (capacity.check(...).to_dict() and
    report.plan_summary(...)) as a few readable lines on a rich Console."""
    from rich.markup import escape

    cap = extras.get("capacity")
    if cap:
        _capacity_lines(cap, out)
    cost = extras.get("cost")
    if not cost:
        return
    if "note" in cost:
        out.print(f"cost: {escape(cost['note'])}")
        return
    t = cost["traffic"]
    out.print(f"cost at {t['requests_per_hour']:g} requests/h x {t['seconds_per_request']:g} s, "
              f"{t['hours_per_day']:g} h/day on {cost['count']}x {cost['gpu']} ({cost['provider']}):")
    for item in cost["options"]:
        terms = ", ".join(f"{name} {_usd(usd, 0)}" for name, usd in item["monthly_terms_usd"].items())
        prices = ", ".join(f"{mode} {origin}" for mode, origin in item["prices"].items())
        out.print(f"  {escape(item['sku'])} {item['mode']}: {_usd(item['cost_per_request_usd'], 5)} per request busy, "
                  f"{_usd(item['monthly_usd'])}/month ({escape(terms)}); prices {escape(prices)}")
    for reason in cost["unavailable"]:
        out.print(f"  {escape(reason)}")
    for note in cost["notes"]:
        out.print(f"  [dim]note: {escape(note)}[/]")
    out.print("  [dim]all providers, break-even and a recommendation: deployer cost CONFIG[/]")


def _capacity_lines(cap: dict[str, Any], out: Any) -> None:
    from rich.markup import escape

    if cap["fits"] is None:
        out.print(f"capacity: size unknown ({escape('; '.join(cap['notes']))})")
    else:
        seqs = (f", room for {cap['sequences_at_max_len']} sequences of {cap['max_model_len']} tokens"
                if cap["sequences_at_max_len"] else "")
        verdict = "fits" if cap["fits"] else "[bold red]does not fit[/]"
        out.print(f"capacity: {verdict}: {cap['required_gib']:.1f} of {cap['available_gib']:.1f} GiB "
                  f"(weights {cap['weights_gib']:.2f} GiB, {escape(cap['precision'])}){seqs}")
    for cold in cap["cold_start"]:
        levers = f"; levers: {escape('; '.join(cold['levers']))}" if cold["levers"] else ""
        what = "cold start" if cold["scales_to_zero"] else "start (once per deploy)"
        out.print(f"  {cold['label']}: {what} {cold['low_s']:.0f}-{cold['high_s']:.0f} s "
                  f"(floor {cold['floor_s']:.0f} s){levers}")


# -- the table --------------------------------------------------------------------------------


def _usd(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if 0 < abs(value) < 0.01 and digits < 5:
        return f"${value:.5f}"
    return f"${value:,.{digits}f}"


def _origin(option: dict[str, Any]) -> str:
    """Where an option's figures come from, in one word each (details in the prices section)."""
    figures = list(option["prices"]["modes"].values()) + [e["usd_per_unit_second"] for e in option["prices"]["extras"]]
    return "/".join(dict.fromkeys(figure["origin"] for figure in figures))


def _num(value: float) -> str:
    """A price without exponent notation: 0.0000131, 2.49."""
    return f"{value:.10f}".rstrip("0").rstrip(".") if value else "0"


def _figure(figure: dict[str, Any]) -> str:
    if figure["origin"] == "shipped":
        return f"shipped, as of {figure['as_of']}: {figure['source']}"
    if figure["origin"] == "live":
        return f"live, {figure['source']} at {figure['as_of']}"
    return f"override, {figure['source']}" + (f" (as of {figure['as_of']})" if figure["as_of"] else "")


def price_lines(doc: dict[str, Any]) -> list[str]:
    """One line per distinct priced SKU: its figures, unit and provenance."""
    lines: list[str] = []
    seen: set[str] = set()
    for option in doc["options"]:
        key = f"{option['provider']} {option['sku_label']}"
        if key in seen:
            continue
        seen.add(key)
        prices = option["prices"]
        unit = "/GPU/s" if prices["unit"] == "usd_per_gpu_second" else "/h"
        by_figure: dict[str, list[str]] = {}
        for mode, figure in prices["modes"].items():
            by_figure.setdefault(_figure(figure), []).append(f"{mode} ${_num(figure['value'])}{unit}")
        parts = [f"{', '.join(modes)} ({where})" for where, modes in by_figure.items()]
        for extra in prices["extras"]:
            figure = extra["usd_per_unit_second"]
            parts.append(f"+ {extra['name']} {extra['units']:g} {extra['unit']} x ${_num(figure['value'])}/s ({_figure(figure)})")
        note = f" [{option['note']}]" if option.get("note") else ""
        lines.append(f"{key}: " + "; ".join(parts) + note)
    return lines


def render(doc: dict[str, Any], out: Any) -> None:
    """Print the report as tables and text on a rich Console."""
    from rich.markup import escape
    from rich.table import Table

    gpu = f"{doc['count']}x {doc['gpu']}" if doc["gpu"] else "no GPU"
    out.print(f"[bold]{escape(doc['name'])}[/]: {escape(doc['model'])} on {gpu} (spec provider: {doc['provider']})")
    traffic = doc["traffic"]
    if traffic:
        tokens = f", {traffic['tokens_per_request']} tokens/request" if traffic["tokens_per_request"] else ""
        out.print(f"traffic: {traffic['requests_per_hour']:g} requests/h x {traffic['seconds_per_request']:g} s, "
                  f"{traffic['hours_per_day']:g} h/day{tokens} (from {traffic['source']})")
        model = doc["arrival_model"]
        out.print(
            f"arrivals: Poisson, {model['rate_per_second'] * 3600:g}/h; rho {model['rho']:.3f} -> {model['replicas']} replica(s); "
            f"{model['requests_per_month']:,.0f} requests/month, {model['busy_hours_per_replica_day']:.2f} busy h/day "
            f"per replica ({model['utilization_24h']:.1%} of 24 h); P(gap > idle timeout {model['idle_window_s']:g} s) = "
            f"{model['p_gap_longer_than_window']:.3f}")
    if doc.get("capacity"):
        _capacity_lines(doc["capacity"], out)
    if doc["options"]:
        table = Table(title="options", title_justify="left")
        table.add_column("option", no_wrap=True)
        for column in ("$/h", "busy/req", "avg/req", "lone req", "month", "busy", "idle", "cold"):
            table.add_column(column, justify="right", no_wrap=True)
        for option in doc["options"]:
            monthly = option["monthly"]
            terms = (monthly or {}).get("terms", {})
            rate = next(iter(option["rate_usd_per_hour"].values())) if option["kind"] == "vm" else \
                option["rate_usd_per_hour"]["flex" if option["mode"] == "scale-to-zero" else "active"]
            name = option["id"] + (" *" if option["spec_provider"] else "") + (
                "" if _origin(option) == "shipped" else f" ({_origin(option)})")
            table.add_row(
                escape(name), _usd(rate), _usd(option["cost_per_request_usd"], 5),
                _usd(monthly["usd_per_request"], 5) if monthly and monthly["usd_per_request"] is not None else "-",
                _usd(option["lone_request_usd"], 4),
                _usd(monthly["usd"], 0) if monthly else "-",
                _usd(terms["busy"]["usd"], 0) if "busy" in terms else "",
                _usd(terms["idle_tail"]["usd"], 0) if "idle_tail" in terms else "",
                _usd(terms["cold_start"]["usd"] + terms["rounding"]["usd"], 0) if "cold_start" in terms else "",
            )
        out.print(table)
        out.print("  [dim]* the spec's provider. busy/req: a request's busy time at the rate; avg/req: the month "
                  "divided by the requests; lone req: one request on a replica scaled to zero (cold start + request "
                  "+ idle window, rounded up); month: busy + idle tail + cold starts (with billing rounding), or warm "
                  "replicas / VMs all month. Live or overridden prices are marked; see `prices` below.[/]")
    for item in doc["unavailable"]:
        out.print(f"  [dim]{escape(item['provider'])}: {escape(item['reason'])}[/]")
    if doc["break_even"]:
        table = Table(title="break-even (always-on becomes cheaper above)", title_justify="left")
        for column in ("serverless", "always on", "busy-time only", "at your traffic's shape"):
            table.add_column(column)
        for row in doc["break_even"]:
            simple = "never" if row["never"] else f"{row['utilization']:.0%} = {row['busy_hours_per_day']:.1f} busy h/day"
            at = row["at_traffic"]
            shaped = "-" if at is None else "never" if at["never"] else \
                f"{at['busy_hours_per_day']:.1f} busy h/day ({at['requests_per_hour']:,.0f} requests/h)"
            table.add_row(escape(row["serverless"]), escape(row["always_on"]), simple, shaped)
        out.print(table)
    rec = doc["recommendation"]
    if rec:
        out.print(f"[bold green]recommendation:[/] {escape(rec['option'])} (${rec['monthly_usd']:,.2f}/month)")
        for reason in rec["reasons"]:
            out.print(f"  - {escape(reason)}")
    if doc["options"]:
        out.print("prices:")
        for line in price_lines(doc):
            out.print(f"  {escape(line)}")
    prices = doc["prices"]
    if prices["live"]:
        for name, what in prices["live"].items():
            out.print(f"[dim]live prices for {escape(name)}: {escape(what)}[/]")
    if prices["override_file"]:
        out.print(f"[dim]overrides from {escape(prices['override_file'])}[/]")
    for note in doc["notes"]:
        out.print(f"[dim]note: {escape(note)}[/]")
