"""The cost report: every option that can host the spec's GPUs, priced at the user's traffic,
the break-even points between serverless and always-on, and a recommendation with reasons.

Options, for `count` x `gpu` of the spec:
  - each serverless provider as the spec configures it (min_replicas warm, the rest scaling
    from zero after scaling.idle_timeout), and with a warm minimum of one when the spec has none;
  - each VM instance type with exactly that many GPUs, billed 24 h a day.
Every figure comes from formulas.py; the report only assembles them (`build` returns plain data,
the JSON of `deployer cost --json`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import formulas
from .capacity import CapacityReport, ColdStart
from .catalog import Catalog, Offer
from .formulas import HOURS_PER_MONTH, MonthlyBill, Traffic

# Rules of thumb (the computed figures win where they disagree).
HIGH_UTILIZATION = 0.5  # busy share of 24 h above which dedicated usually wins
LOW_UTILIZATION = 0.25  # below which serverless usually wins
HIGH_TOKENS_PER_MONTH = 1e9  # token volume at which dedicated usually wins
BURSTY_HOURS_PER_DAY = 12.0  # traffic in fewer hours a day than this is bursty

SCALE_TO_ZERO = "scale-to-zero"
WARM = "warm"
VM = "vm"
FREE = "this machine: free"


@dataclass
class Option:
    offer: Offer
    mode: str  # SCALE_TO_ZERO | WARM | VM
    warm_replicas: int
    idle_window_s: float
    cold: ColdStart | None
    spec_provider: bool
    bill: MonthlyBill | None = None

    @property
    def id(self) -> str:
        if self.mode == VM:
            return f"{self.offer.provider}/{self.offer.sku['instance_type']}"
        return f"{self.offer.provider}/{self.mode}" + (f"-{self.warm_replicas}" if self.mode == WARM else "")

    @property
    def always_on(self) -> bool:
        return self.mode in (WARM, VM)

    @property
    def busy_mode(self) -> str:
        """The price mode a request's busy time bills at."""
        if self.mode == VM:
            return next(iter(self.offer.prices))
        return "flex" if self.mode == SCALE_TO_ZERO else "active"

    @property
    def hourly(self) -> float:
        """$/h of one replica in the option's own mode (what an always-on replica costs)."""
        return self.offer.rate(self.busy_mode)

    @property
    def cold_s(self) -> float:
        return self.cold.mid_s if self.cold is not None else 0.0

    def describe(self) -> str:
        if self.mode == VM:
            return f"{self.offer.label} {self.offer.sku['instance_type']}"
        if self.mode == WARM:
            return f"{self.offer.label} {self.offer.sku_label}, {self.warm_replicas} warm"
        return f"{self.offer.label} {self.offer.sku_label}, scale to zero"


def traffic_of(spec: Any, *, requests_per_hour: float | None = None, seconds_per_request: float | None = None,
               tokens_per_request: int | None = None, hours_per_day: float | None = None) -> tuple[Traffic | None, str]:
    """The traffic to price: flags override the spec's `traffic:` field by field. (None, why)
    when no request rate is known."""
    base = spec.traffic
    rate = requests_per_hour if requests_per_hour is not None else (base.requests_per_hour if base else None)
    if rate is None:
        return None, "no traffic: pass --requests-per-hour R or set traffic.requests_per_hour in the spec"
    from_flags = any(v is not None for v in (requests_per_hour, seconds_per_request, tokens_per_request, hours_per_day))
    source = "flags" if from_flags and base is None else "spec and flags" if from_flags else "spec"
    return Traffic(
        requests_per_hour=rate,
        seconds_per_request=seconds_per_request if seconds_per_request is not None else (base.seconds_per_request if base else 2.0),
        hours_per_day=hours_per_day if hours_per_day is not None else (base.hours_per_day if base else 24.0),
        tokens_per_request=tokens_per_request if tokens_per_request is not None else (base.tokens_per_request if base else None),
    ), source


def options_for(spec: Any, catalog: Catalog, capacity: CapacityReport | None,
                providers: list[str] | None = None) -> list[Option]:
    """The options that can host the spec's GPUs (see the module docstring)."""
    gpu, count = spec.resources.gpu, spec.resources.count
    colds = {c.provider: c for c in capacity.cold_start} if capacity is not None else {}
    idle = float(spec.scaling.idle_timeout)
    warm = spec.scaling.min_replicas
    out: list[Option] = []
    for offer in catalog.offers(gpu, count, providers):
        mine = offer.provider == spec.provider
        cold = colds.get(offer.provider)
        if offer.kind == "vm":
            out.append(Option(offer, VM, 0, 0.0, cold, mine))
            continue
        if warm:
            out.append(Option(offer, WARM, warm, idle, cold, mine))
        else:
            out.append(Option(offer, SCALE_TO_ZERO, 0, idle, cold, mine))
            out.append(Option(offer, WARM, 1, idle, cold, False))
    return out


def price_option(option: Option, traffic: Traffic) -> MonthlyBill:
    offer = option.offer
    if option.mode == VM:
        return formulas.vm_month(traffic, rate=offer.rate(option.busy_mode))
    return formulas.serverless_month(
        traffic, flex_rate=offer.rate("flex"), active_rate=offer.rate("active"),
        idle_window_s=option.idle_window_s, cold_s=option.cold_s, increment_s=offer.increment_s,
        warm_replicas=option.warm_replicas,
    )


def option_dict(option: Option, traffic: Traffic | None) -> dict[str, Any]:
    offer = option.offer
    per_request = formulas.cost_per_request(traffic.seconds_per_request if traffic else 0.0, offer.rate(option.busy_mode))
    data: dict[str, Any] = {
        "id": option.id,
        "provider": offer.provider,
        "label": offer.label,
        "kind": offer.kind,
        "mode": option.mode,
        "warm_replicas": option.warm_replicas,
        "spec_provider": option.spec_provider,
        "gpu": offer.gpu,
        "count": offer.count,
        "sku": offer.sku,
        "sku_label": offer.sku_label,
        "billing_increment_s": offer.increment_s,
        "rate_usd_per_hour": {mode: offer.rate(mode) for mode in offer.prices},
        "gpu_usd_per_hour": {mode: offer.gpu_rate(mode) for mode in offer.prices},
        "extras_usd_per_hour": offer.extras_per_hour,
        "prices": offer.price_dict(),
        "idle_window_s": option.idle_window_s if offer.kind == "serverless" else None,
        "cold_start_s": None if option.cold is None else {
            "low": option.cold.low_s, "high": option.cold.high_s, "used": option.cold_s},
        "note": offer.note,
        "cost_per_request_usd": per_request if traffic else None,
        "lone_request_usd": None,
        "usd_per_million_tokens": None,
        "monthly": None,
    }
    if traffic is not None:
        if option.mode == SCALE_TO_ZERO:
            data["lone_request_usd"] = formulas.lone_request_cost(
                traffic.seconds_per_request, option.cold_s, option.idle_window_s, offer.increment_s, offer.rate("flex"))
        if option.bill is not None:
            bill = option.bill
            monthly_per_request = bill.usd / traffic.requests_per_month if traffic.requests_per_month else None
            data["monthly"] = {
                "usd": bill.usd,
                "replicas": bill.replicas,
                "cold_starts": bill.cold_starts,
                "billed_hours": bill.billed_seconds / 3600.0,
                "usd_per_request": monthly_per_request,
                "terms": {name: term.to_dict() for name, term in bill.terms.items()},
            }
            if traffic.tokens_per_request and monthly_per_request is not None:
                data["usd_per_million_tokens"] = monthly_per_request / traffic.tokens_per_request * 1e6
    return data


def arrival_model(traffic: Traffic, idle_window_s: float) -> dict[str, Any]:
    m = formulas.replicas_needed(traffic.rho)
    return {
        "name": "poisson",
        "description": (
            "requests arrive as a Poisson process during the traffic hours; ceil(rho) replicas share them; "
            "after each request a replica that goes idle stays billed for min(gap, W) and a gap longer than W "
            "scales it to zero, so the next request pays a cold start"
        ),
        "rate_per_second": traffic.rate_per_s,
        "rho": traffic.rho,
        "replicas": m,
        "per_replica_rate_per_second": traffic.rate_per_s / m,
        "idle_window_s": idle_window_s,
        "p_gap_longer_than_window": _p_scale_down(traffic, idle_window_s),
        "requests_per_month": traffic.requests_per_month,
        "busy_hours_per_day": traffic.busy_hours_per_day,
        "busy_hours_per_replica_day": traffic.busy_hours_per_replica_day,
        "utilization_24h": traffic.utilization,
        "tokens_per_month": traffic.tokens_per_month,
        "terms": {
            "busy": "N x S",
            "idle_tail": "N (1 - r) (1 - e^(-l W)) / l  [+ per traffic day: W - (1 - e^(-l W)) / l]",
            "cold_start": "N (1 - r) e^(-l W) x C  [+ per traffic day: (1 - e^(-l W)) x C]",
            "rounding": "cold starts x increment / 2 (each billing session rounded up)",
            "warm": "warm replicas x 730 h at the active rate",
            "vm": "ceil(rho) VMs x 730 h",
            "symbols": "N requests a month per replica, S seconds per request, l per-replica arrivals per second, "
                       "r = l S, W idle window, C cold start (middle of the expected range)",
        },
    }


def _p_scale_down(traffic: Traffic, idle_window_s: float) -> float:
    import math

    m = formulas.replicas_needed(traffic.rho)
    return math.exp(-traffic.rate_per_s / m * idle_window_s)


def break_even(options: list[Option], traffic: Traffic | None) -> list[dict[str, Any]]:
    """Each scale-to-zero option against each always-on one: the utilisation (and busy hours a
    day) above which always-on is cheaper; busy-time only, and at the traffic's own shape."""
    rows = []
    for flex in (o for o in options if o.mode == SCALE_TO_ZERO):
        flex_rate = flex.offer.rate("flex")
        for fixed in (o for o in options if o.always_on and (o.mode == VM or o.warm_replicas == 1)):
            always = fixed.hourly
            simple = formulas.simple_break_even(always, flex_rate)
            row: dict[str, Any] = {
                "serverless": flex.id,
                "always_on": fixed.id,
                "serverless_usd_per_busy_hour": flex_rate,
                "always_on_usd_per_hour": always,
                "utilization": simple,
                "busy_hours_per_day": min(simple, 1.0) * 24.0 if simple < 1 else None,
                "never": simple >= 1,
                "at_traffic": None,
            }
            if traffic is not None:
                requests = formulas.traffic_break_even(
                    traffic, always_on_month_usd=always * HOURS_PER_MONTH, flex_rate=flex_rate,
                    idle_window_s=flex.idle_window_s, cold_s=flex.cold_s, increment_s=flex.offer.increment_s,
                )
                if requests is None:
                    row["at_traffic"] = {"requests_per_hour": None, "never": True}
                else:
                    busy = requests * traffic.seconds_per_request * traffic.hours_per_day / 3600.0
                    row["at_traffic"] = {
                        "requests_per_hour": requests,
                        "busy_hours_per_day": busy,
                        "utilization": busy / 24.0,
                        "never": False,
                    }
            rows.append(row)
    return rows


def rule_of_thumb(spec: Any, traffic: Traffic) -> tuple[str | None, list[str]]:
    """The usual decision rules, as (verdict, reasons): "dedicated", "serverless",
    "warm or dedicated" (cold starts not tolerated), or None (no rule applies)."""
    u = traffic.utilization
    reasons = []
    if spec.scaling.min_replicas >= 1:
        return "warm or dedicated", [
            f"scaling.min_replicas is {spec.scaling.min_replicas}: cold starts are not tolerated, "
            "so a warm minimum or a dedicated VM"]
    tokens = traffic.tokens_per_month
    if u >= HIGH_UTILIZATION:
        reasons.append(f"utilization {u:.0%} of the day is high (>= {HIGH_UTILIZATION:.0%}): dedicated usually wins")
    if tokens is not None and tokens >= HIGH_TOKENS_PER_MONTH:
        reasons.append(f"{tokens / 1e9:.1f}B tokens a month is high volume (>= {HIGH_TOKENS_PER_MONTH / 1e9:.0f}B): dedicated usually wins")
    if reasons:
        return "dedicated", reasons
    if u <= LOW_UTILIZATION:
        reasons.append(f"utilization {u:.0%} of the day is low (<= {LOW_UTILIZATION:.0%}): serverless usually wins")
    if traffic.hours_per_day <= BURSTY_HOURS_PER_DAY:
        reasons.append(f"traffic {traffic.hours_per_day:g} h a day is bursty (<= {BURSTY_HOURS_PER_DAY:g} h): scale-to-zero usually wins")
    if reasons:
        return "serverless", reasons
    return None, [f"utilization {u:.0%} is between the rules of thumb ({LOW_UTILIZATION:.0%}-{HIGH_UTILIZATION:.0%}): the figures decide"]


def _break_even_row(best: Option, priced: list[Option], breaks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The break-even row between the recommendation and its strongest rival of the other kind."""
    if best.mode == SCALE_TO_ZERO:
        rivals = sorted((o for o in priced if o.always_on), key=lambda o: o.bill.usd)
        pair = (best.id, rivals[0].id) if rivals else None
    else:
        rivals = sorted((o for o in priced if o.mode == SCALE_TO_ZERO), key=lambda o: o.bill.usd)
        pair = (rivals[0].id, best.id) if rivals else None
    if pair is None:
        return None
    return next((b for b in breaks if (b["serverless"], b["always_on"]) == pair), None)


RULE_MODES = {"dedicated": {VM}, "serverless": {SCALE_TO_ZERO}, "warm or dedicated": {WARM, VM}}


def recommend(spec: Any, options: list[Option], traffic: Traffic, breaks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The cheapest option the spec's constraints allow, with its reasons (figures first)."""
    priced = [o for o in options if o.bill is not None]
    if not priced:
        return None
    verdict, rule_reasons = rule_of_thumb(spec, traffic)
    allowed = priced
    if spec.scaling.min_replicas >= 1:  # cold-start intolerance is a constraint, not a preference
        allowed = [o for o in priced if o.always_on] or priced
    ranked = sorted(allowed, key=lambda o: o.bill.usd)
    best = ranked[0]
    reasons = [
        f"{best.describe()}: ${best.bill.usd:,.2f}/month at {traffic.requests_per_hour:g} requests/h x "
        f"{traffic.seconds_per_request:g} s, {traffic.hours_per_day:g} h/day, the cheapest of {len(allowed)} options"
        + (f"; next {ranked[1].describe()} ${ranked[1].bill.usd:,.2f}" if len(ranked) > 1 else "")
    ]
    reasons.extend(rule_reasons)
    agrees = verdict is None or best.mode in RULE_MODES[verdict]
    if not agrees:
        rule_best = next((o for o in ranked if o.mode in RULE_MODES[verdict]), None)
        if rule_best is not None:
            reasons.append(
                f"the figures win over the rule of thumb: its pick {rule_best.describe()} would cost "
                f"${rule_best.bill.usd:,.2f}/month (+${rule_best.bill.usd - best.bill.usd:,.2f})")
    if best.mode == SCALE_TO_ZERO and best.cold is not None and best.bill.cold_starts >= 0.5:
        warm = next((o for o in priced if o.offer is best.offer and o.mode == WARM), None)
        extra = (f"; scaling.min_replicas: 1 removes them for ${warm.bill.usd:,.2f}/month "
                 f"(+${warm.bill.usd - best.bill.usd:,.2f})" if warm else "")
        reasons.append(
            f"expect {best.bill.cold_starts:,.0f} cold starts a month of about {best.cold.low_s:.0f}-{best.cold.high_s:.0f} s "
            f"(idle timeout {best.idle_window_s:g} s){extra}")
    row = _break_even_row(best, priced, breaks)
    if row and row.get("at_traffic") and not row["at_traffic"]["never"]:
        at = row["at_traffic"]
        reasons.append(
            f"break-even {row['serverless']} vs {row['always_on']}: {at['busy_hours_per_day']:.1f} busy h/day "
            f"({at['requests_per_hour']:,.0f} requests/h of {traffic.seconds_per_request:g} s) per replica; "
            f"you have {traffic.busy_hours_per_replica_day:.2f}")
    elif row and row.get("at_traffic"):
        reasons.append(f"{row['serverless']} stays cheaper than {row['always_on']} even with one replica fully busy "
                       f"for your {traffic.hours_per_day:g} traffic hours a day")
    if best.offer.note:
        reasons.append(f"price caveat for {best.id}: {best.offer.note}; a provider key reads live prices, "
                       "--pricing FILE overrides")
    if best.bill.replicas > spec.scaling.max_replicas and best.mode != VM:
        reasons.append(f"the traffic keeps {best.bill.replicas} replicas busy: raise scaling.max_replicas "
                       f"(now {spec.scaling.max_replicas})")
    return {
        "option": best.id,
        "provider": best.offer.provider,
        "mode": best.mode,
        "monthly_usd": best.bill.usd,
        "rule_of_thumb": verdict,
        "figures_agree_with_rule": agrees,
        "reasons": reasons,
    }


def build(spec: Any, catalog: Catalog, traffic: Traffic | None, capacity: CapacityReport | None,
          *, traffic_source: str = "", providers: list[str] | None = None) -> dict[str, Any]:
    """The whole report as plain data (the JSON of `deployer cost --json`)."""
    gpu, count = spec.resources.gpu, spec.resources.count
    doc: dict[str, Any] = {
        "name": spec.name,
        "provider": spec.provider,
        "model": spec.model.id,
        "gpu": gpu,
        "count": count,
        "traffic": None,
        "arrival_model": None,
        "capacity": capacity.to_dict() if capacity is not None else None,
        "options": [],
        "unavailable": [],
        "break_even": [],
        "recommendation": None,
        "prices": {
            "override_file": catalog.override_file,
            "live": dict(catalog.live),
            "shipped_note": "figures not live or overridden are the shipped catalog's, with their date",
        },
        "notes": list(catalog.notes),
    }
    if traffic is not None:
        doc["traffic"] = {
            "requests_per_hour": traffic.requests_per_hour,
            "seconds_per_request": traffic.seconds_per_request,
            "tokens_per_request": traffic.tokens_per_request,
            "hours_per_day": traffic.hours_per_day,
            "source": traffic_source,
        }
        doc["arrival_model"] = arrival_model(traffic, float(spec.scaling.idle_timeout))
    if gpu is None:
        doc["notes"].append(f"{FREE} (no resources.gpu: set one to compare cloud GPUs)")
        return doc
    options = options_for(spec, catalog, capacity, providers)
    if capacity is None or capacity.weights_gib is None:
        doc["notes"].append("model size unknown: cold starts are not priced (set model.params_b)")
    if traffic is not None:
        for option in options:
            option.bill = price_option(option, traffic)
    doc["options"] = [option_dict(o, traffic) for o in options]
    names = list(dict.fromkeys([*(providers or catalog.providers), *([spec.provider] if spec.provider in catalog.providers else [])]))
    for name in names:
        reason = catalog.why_not(name, gpu, count)
        if reason:
            doc["unavailable"].append({"provider": name, "reason": reason})
    if spec.provider not in catalog.providers:
        doc["notes"].append(f"{spec.provider}: {FREE}" if spec.provider == "local" else f"{spec.provider}: no prices in the catalog")
    doc["break_even"] = break_even(options, traffic)
    if traffic is None:
        doc["notes"].append("no traffic: pass --requests-per-hour R (or set traffic: in the spec) for monthly figures "
                            "and a recommendation")
    else:
        doc["recommendation"] = recommend(spec, options, traffic, doc["break_even"])
    return doc


def cost_report(spec: Any, *, pricing: str | None = None, live: bool = True, traffic: Traffic | None = None,
                traffic_source: str = "", providers: list[str] | None = None, timeout: float = 10.0,
                observed: bool = False) -> dict[str, Any]:
    """Load prices (shipped, live, override), size the model, build the report; with `observed`,
    add the last hour of `deployer gateway` traffic to the spec's deployment, priced on the same
    options, when the state has any (observed.py). Raises InputError for a bad override file;
    never refuses a model that does not fit (`capacity` says so)."""
    from . import capacity as capacity_mod
    from .catalog import load

    catalog = load(pricing, live=live, providers=providers, timeout=timeout)
    cap = capacity_mod.estimate(spec, catalog=catalog) if spec.resources.gpu else None
    doc = build(spec, catalog, traffic, cap, traffic_source=traffic_source, providers=providers)
    if cap is not None and cap.fits is False:
        doc["notes"].insert(0, f"capacity: {cap.summary()}: it does not fit; `deployer plan` refuses it")
    if observed:
        from . import observed as observed_mod

        observed_mod.attach(doc, spec, options_for(spec, catalog, cap, providers) if spec.resources.gpu else [])
    return doc


def plan_summary(spec: Any, settings: Any) -> dict[str, Any] | None:
    """Cost per request and per month on the spec's own provider at the spec's traffic, for
    `deployer plan`; None without `traffic:` in the spec. Live prices are read for that provider
    only (with credentials), with a short timeout."""
    if spec.traffic is None:
        return None
    if spec.resources.gpu is None or spec.provider == "local":
        return {"provider": spec.provider, "note": FREE}
    from .catalog import pricing_file

    traffic, source = traffic_of(spec)
    doc = cost_report(spec, pricing=pricing_file(None, settings), traffic=traffic, traffic_source=source,
                      providers=[spec.provider], timeout=5.0)
    options = [o for o in doc["options"] if o["spec_provider"]]
    return {
        "provider": spec.provider,
        "gpu": doc["gpu"],
        "count": doc["count"],
        "traffic": doc["traffic"],
        "options": [
            {
                "id": o["id"],
                "sku": o["sku_label"],
                "mode": o["mode"],
                "usd_per_hour": o["rate_usd_per_hour"],
                "cost_per_request_usd": o["cost_per_request_usd"],
                "monthly_usd": o["monthly"]["usd"] if o["monthly"] else None,
                "monthly_terms_usd": {k: v["usd"] for k, v in (o["monthly"] or {}).get("terms", {}).items()},
                "prices": {mode: f["origin"] + (f" ({f['as_of']})" if f["as_of"] else "")
                           for mode, f in o["prices"]["modes"].items()},
            }
            for o in options
        ],
        "unavailable": [u["reason"] for u in doc["unavailable"] if u["provider"] == spec.provider],
        "notes": doc["notes"],
    }
