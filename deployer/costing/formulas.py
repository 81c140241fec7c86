"""The cost arithmetic, as pure functions of plain numbers (no catalog, no spec, no I/O).

Units: seconds, hours, US dollars; a `rate` is dollars per hour for one replica (all its GPUs
plus what is billed on top). A month is 730 hours (365 x 24 / 12).

The serverless model. Requests arrive as a Poisson process at `rate_per_s` during the traffic
hours of each day, and each needs `busy_s` seconds of one replica (GPU-busy time; if a replica
batches requests, pass latency divided by the batch). m = ceil(rho) replicas share the traffic
(rho = arrivals x busy time), each seeing a Poisson stream of 1/m of it. For one replica with
utilisation r = rho / m and arrival rate l, as in an M/G/1 queue:
  - a fraction (1 - r) of requests leave it idle; each idle gap is exponential with mean 1/l;
  - the replica stays up (billed) for min(gap, W), W = the scale-down window / idle timeout,
    on average (1 - e^(-l W)) / l per gap;
  - a gap longer than W (probability e^(-l W)) scales it to zero, and the next request pays a
    cold start of C seconds, billed;
  - each cold start opens a billing session, rounded up to the billing increment: on average
    half an increment more per session;
  - with fewer than 24 traffic hours a day, each day's last gap is the night: it always ends
    in a scale-down after a full window W and the next morning starts cold.
Warm (min) replicas are billed all month; while the traffic needs no more replicas than the
warm ones, nothing scales to zero and nothing starts cold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

HOURS_PER_MONTH = 730.0
DAYS_PER_MONTH = HOURS_PER_MONTH / 24.0
SECONDS_PER_HOUR = 3600.0


def billed_seconds(seconds: float, increment_s: float) -> float:
    """`seconds` rounded up to whole billing increments (1: per second, 60: per minute)."""
    if seconds <= 0:
        return 0.0
    units = math.ceil(seconds / increment_s - 1e-9)
    return units * increment_s


def cost(seconds: float, rate_per_hour: float) -> float:
    """Dollars for `seconds` at `rate_per_hour`."""
    return seconds * rate_per_hour / SECONDS_PER_HOUR


def cost_per_request(busy_s: float, rate_per_hour: float) -> float:
    """The busy time of one request at the replica's rate: what a request adds on a warm replica."""
    return cost(busy_s, rate_per_hour)


def lone_request_cost(busy_s: float, cold_s: float, idle_window_s: float, increment_s: float, rate_per_hour: float) -> float:
    """One request on a replica scaled to zero: cold start + request + the idle window, as one
    billing session rounded up to the increment."""
    return cost(billed_seconds(cold_s + busy_s + idle_window_s, increment_s), rate_per_hour)


@dataclass(frozen=True)
class Traffic:
    requests_per_hour: float
    seconds_per_request: float
    hours_per_day: float = 24.0
    tokens_per_request: int | None = None

    @property
    def rate_per_s(self) -> float:
        return self.requests_per_hour / SECONDS_PER_HOUR

    @property
    def rho(self) -> float:
        """Offered load during traffic hours: busy replicas needed on average."""
        return self.rate_per_s * self.seconds_per_request

    @property
    def requests_per_month(self) -> float:
        return self.requests_per_hour * self.hours_per_day * DAYS_PER_MONTH

    @property
    def busy_seconds_per_month(self) -> float:
        return self.requests_per_month * self.seconds_per_request

    @property
    def busy_hours_per_day(self) -> float:
        return self.requests_per_hour * self.hours_per_day * self.seconds_per_request / SECONDS_PER_HOUR

    @property
    def busy_hours_per_replica_day(self) -> float:
        """Busy hours a day of each of the ceil(rho) replicas the traffic needs."""
        return self.busy_hours_per_day / replicas_needed(self.rho)

    @property
    def utilization(self) -> float:
        """Busy share of the whole day (24 h) of each replica: how much an always-on one is used."""
        return self.busy_hours_per_replica_day / 24.0

    @property
    def tokens_per_month(self) -> float | None:
        return None if self.tokens_per_request is None else self.requests_per_month * self.tokens_per_request


def replicas_needed(rho: float) -> int:
    """Replicas the offered load keeps busy: ceil(rho), at least one."""
    return max(1, math.ceil(rho - 1e-9))


@dataclass(frozen=True)
class Term:
    """One line of a bill: billed seconds (per month) and dollars."""

    seconds: float
    usd: float

    def to_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds, "hours": self.seconds / SECONDS_PER_HOUR, "usd": self.usd}


@dataclass(frozen=True)
class MonthlyBill:
    """A month of one option: named terms (busy, idle_tail, cold_start, rounding, warm, vm)."""

    terms: dict[str, Term]
    replicas: int
    cold_starts: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def usd(self) -> float:
        return sum(term.usd for term in self.terms.values())

    @property
    def billed_seconds(self) -> float:
        return sum(term.seconds for term in self.terms.values())


def flex_replica_seconds(
    *, rate_per_s: float, busy_s: float, requests: float, idle_window_s: float, cold_s: float,
    increment_s: float, days: float, all_day: bool,
) -> dict[str, float]:
    """Billed seconds per month of ONE scale-to-zero replica receiving `requests` a month at
    Poisson `rate_per_s` (see the module docstring). Returns busy, idle_tail, cold_start,
    rounding seconds and the number of cold starts."""
    if requests <= 0 or rate_per_s <= 0:
        return {"busy": 0.0, "idle_tail": 0.0, "cold_start": 0.0, "rounding": 0.0, "cold_starts": 0.0}
    r = min(rate_per_s * busy_s, 1.0)
    gaps = requests * (1.0 - r)  # idle periods: one per busy period
    stay = math.exp(-rate_per_s * idle_window_s)  # P(gap > W)
    mean_idle = (1.0 - stay) / rate_per_s  # E[min(gap, W)]
    idle = gaps * mean_idle
    cold_starts = gaps * stay
    if not all_day:
        # the night ends each day: that gap is billed W in full and always ends cold
        idle += days * (idle_window_s - mean_idle)
        cold_starts += days * (1.0 - stay)
    return {
        "busy": requests * busy_s,
        "idle_tail": idle,
        "cold_start": cold_starts * cold_s,
        "rounding": cold_starts * increment_s / 2.0,
        "cold_starts": cold_starts,
    }


def serverless_month(
    traffic: Traffic,
    *,
    flex_rate: float,
    active_rate: float,
    idle_window_s: float,
    cold_s: float,
    increment_s: float,
    warm_replicas: int = 0,
) -> MonthlyBill:
    """A month of a serverless option: `warm_replicas` always on at `active_rate`, the rest of
    the needed replicas scaling from zero at `flex_rate`."""
    m = replicas_needed(traffic.rho)
    terms: dict[str, Term] = {}
    if warm_replicas:
        warm_s = warm_replicas * HOURS_PER_MONTH * SECONDS_PER_HOUR
        terms["warm"] = Term(warm_s, cost(warm_s, active_rate))
    flex = max(0, m - warm_replicas)
    cold_starts = 0.0
    if flex:
        per = flex_replica_seconds(
            rate_per_s=traffic.rate_per_s / m,
            busy_s=traffic.seconds_per_request,
            requests=traffic.requests_per_month / m,
            idle_window_s=idle_window_s,
            cold_s=cold_s,
            increment_s=increment_s,
            days=DAYS_PER_MONTH,
            all_day=traffic.hours_per_day >= 24.0,
        )
        cold_starts = per["cold_starts"] * flex
        for name in ("busy", "idle_tail", "cold_start", "rounding"):
            seconds = per[name] * flex
            terms[name] = Term(seconds, cost(seconds, flex_rate))
    return MonthlyBill(terms=terms, replicas=m, cold_starts=cold_starts)


def vm_month(traffic: Traffic | None, *, rate: float) -> MonthlyBill:
    """A month of always-on VMs: as many as the traffic keeps busy (at least one), 24 h a day."""
    m = replicas_needed(traffic.rho) if traffic else 1
    seconds = m * HOURS_PER_MONTH * SECONDS_PER_HOUR
    return MonthlyBill(terms={"vm": Term(seconds, cost(seconds, rate))}, replicas=m)


def simple_break_even(always_on_rate: float, serverless_rate: float) -> float:
    """Utilisation at which busy-time-only serverless billing costs as much as always-on:
    always-on $/h divided by serverless $/h of use. At or above 1: serverless never costs more."""
    return always_on_rate / serverless_rate


def traffic_break_even(
    traffic: Traffic,
    *,
    always_on_month_usd: float,
    flex_rate: float,
    idle_window_s: float,
    cold_s: float,
    increment_s: float,
) -> float | None:
    """Requests per hour (same request length, hours per day and arrival model as `traffic`) at
    which one scale-from-zero replica costs `always_on_month_usd` a month; None when it stays
    cheaper up to full use of one replica. Found by bisection: the bill grows with traffic."""

    def bill(requests_per_hour: float) -> float:
        shaped = Traffic(requests_per_hour, traffic.seconds_per_request, traffic.hours_per_day)
        return serverless_month(
            shaped, flex_rate=flex_rate, active_rate=flex_rate, idle_window_s=idle_window_s,
            cold_s=cold_s, increment_s=increment_s,
        ).usd

    high = SECONDS_PER_HOUR / traffic.seconds_per_request  # one replica fully busy
    if bill(high) < always_on_month_usd:
        return None
    low = 0.0
    for _ in range(100):
        mid = (low + high) / 2
        if bill(mid) < always_on_month_usd:
            low = mid
        else:
            high = mid
    return (low + high) / 2
