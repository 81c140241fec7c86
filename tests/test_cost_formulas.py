"""The cost formulas against cases worked out by hand (numbers written out in each test)."""

from __future__ import annotations

import math

import pytest

from deployer.costing import formulas
from deployer.costing.formulas import Traffic

DAYS = 730 / 24  # days in deployer's 730-hour month


# -- billing increments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "increment", "billed"),
    [
        (2.3, 1, 3),  # per second, rounded up
        (2.0, 1, 2),
        (0.2, 1, 1),
        (61, 60, 120),  # per minute, rounded up
        (60, 60, 60),
        (1, 60, 60),
        (0, 60, 0),
        (59.99999999999, 60, 60),  # float noise does not add a minute
    ],
)
def test_billed_seconds_rounds_up_to_the_increment(seconds: float, increment: float, billed: float) -> None:
    assert formulas.billed_seconds(seconds, increment) == billed


def test_cost_per_request_is_busy_seconds_times_gpus_times_unit_price() -> None:
    # RunPod H100 flex 0.00116 $/s per GPU, 2 GPUs, 3 s busy: 0.00116 x 2 x 3 = 0.00696
    rate = 0.00116 * 3600 * 2
    assert formulas.cost_per_request(3.0, rate) == pytest.approx(0.00696)


def test_lone_request_is_one_session_rounded_up() -> None:
    rate = 3600.0  # $1 per second keeps the arithmetic visible
    # cold 20 s + request 2.5 s + idle window 60 s = 82.5 s
    assert formulas.lone_request_cost(2.5, 20, 60, 1, rate) == pytest.approx(83.0)  # per second
    assert formulas.lone_request_cost(2.5, 20, 60, 60, rate) == pytest.approx(120.0)  # per minute


# -- traffic ---------------------------------------------------------------------------------


def test_traffic_derived_figures() -> None:
    t = Traffic(requests_per_hour=120, seconds_per_request=3, hours_per_day=10, tokens_per_request=600)
    assert t.rate_per_s == pytest.approx(1 / 30)
    assert t.rho == pytest.approx(0.1)  # 120/3600 x 3
    assert t.requests_per_month == pytest.approx(120 * 10 * 730 / 24)  # 36,500
    assert t.busy_hours_per_day == pytest.approx(1.0)  # 120 x 10 x 3 / 3600
    assert t.utilization == pytest.approx(1 / 24)
    # 2700 requests/h x 2 s: 1.5 replicas busy -> 2 replicas, each busy 18 of 24 h
    heavy = Traffic(requests_per_hour=2700, seconds_per_request=2)
    assert heavy.busy_hours_per_day == pytest.approx(36.0)
    assert heavy.busy_hours_per_replica_day == pytest.approx(18.0)
    assert heavy.utilization == pytest.approx(0.75)
    assert t.tokens_per_month == pytest.approx(36500 * 600)


@pytest.mark.parametrize(("rho", "replicas"), [(0.0, 1), (0.3, 1), (1.0, 1), (1.0000001, 2), (2.5, 3)])
def test_replicas_needed(rho: float, replicas: int) -> None:
    assert formulas.replicas_needed(rho) == replicas


# -- the serverless month ---------------------------------------------------------------------


def test_idle_tail_at_low_traffic_bills_a_full_window_and_a_cold_start_per_request() -> None:
    # 1 request an hour, 2 s each, idle window 300 s, cold start 30 s, all day
    t = Traffic(requests_per_hour=1, seconds_per_request=2)
    rate = 3600.0  # $1/s
    bill = formulas.serverless_month(t, flex_rate=rate, active_rate=rate, idle_window_s=300, cold_s=30, increment_s=1)
    n = 1 * 24 * DAYS  # 730 requests
    lam = 1 / 3600
    r = 2 / 3600
    stay = math.exp(-300 / 3600)  # 0.92004: most gaps outlast the window
    gaps = n * (1 - r)
    assert bill.terms["busy"].seconds == pytest.approx(n * 2)
    assert bill.terms["idle_tail"].seconds == pytest.approx(gaps * (1 - stay) / lam)
    assert bill.terms["cold_start"].seconds == pytest.approx(gaps * stay * 30)
    assert bill.terms["rounding"].seconds == pytest.approx(gaps * stay * 0.5)
    assert bill.cold_starts == pytest.approx(gaps * stay)
    # by hand: (1 - 0.920044) x 3600 s x (1 - 2/3600) = 287.68 s of idle tail per request
    assert bill.terms["idle_tail"].seconds / n == pytest.approx(287.68, abs=0.01)
    assert bill.usd == pytest.approx(n * 2 + gaps * (1 - stay) / lam + gaps * stay * 30.5)


def test_idle_tail_at_very_low_traffic_tends_to_the_full_window() -> None:
    t = Traffic(requests_per_hour=0.01, seconds_per_request=2)
    bill = formulas.serverless_month(t, flex_rate=1, active_rate=1, idle_window_s=300, cold_s=30, increment_s=1)
    n = t.requests_per_month
    assert bill.terms["idle_tail"].seconds == pytest.approx(n * 300, rel=1e-3)
    assert bill.cold_starts == pytest.approx(n, rel=1e-3)


def test_high_traffic_all_day_keeps_the_replica_up_all_month_with_no_cold_starts() -> None:
    # 1000 requests/h x 2 s: rho 0.556, gaps average 3.6 s, far below the 300 s window
    t = Traffic(requests_per_hour=1000, seconds_per_request=2)
    bill = formulas.serverless_month(t, flex_rate=1, active_rate=1, idle_window_s=300, cold_s=30, increment_s=1)
    # busy + idle = the whole month: N S + N (1 - rho) / lambda = T
    assert bill.terms["busy"].seconds + bill.terms["idle_tail"].seconds == pytest.approx(730 * 3600, rel=1e-9)
    assert bill.cold_starts < 1e-20


def test_high_traffic_part_of_the_day_adds_a_night_tail_and_a_morning_cold_start() -> None:
    # 8 traffic hours a day: the month bills the traffic hours, plus each night a full window
    # W minus the mean gap it replaces (1/lambda = 3.6 s), plus one cold start each morning
    t = Traffic(requests_per_hour=1000, seconds_per_request=2, hours_per_day=8)
    bill = formulas.serverless_month(t, flex_rate=1, active_rate=1, idle_window_s=300, cold_s=30, increment_s=1)
    assert bill.terms["busy"].seconds + bill.terms["idle_tail"].seconds == pytest.approx(
        DAYS * (8 * 3600 + 300 - 3.6), rel=1e-9)
    assert bill.cold_starts == pytest.approx(DAYS, rel=1e-9)
    assert bill.terms["cold_start"].seconds == pytest.approx(DAYS * 30, rel=1e-9)


def test_traffic_beyond_one_replica_is_split_over_ceil_rho_replicas() -> None:
    # 2700 requests/h x 2 s: rho 1.5 -> 2 replicas, each 1350/h with utilisation 0.75
    t = Traffic(requests_per_hour=2700, seconds_per_request=2, hours_per_day=24)
    bill = formulas.serverless_month(t, flex_rate=1, active_rate=1, idle_window_s=0.001, cold_s=0, increment_s=1)
    assert bill.replicas == 2
    n = t.requests_per_month
    lam = 1350 / 3600
    stay = math.exp(-lam * 0.001)
    per_replica_gaps = n / 2 * (1 - 0.75)
    assert bill.cold_starts == pytest.approx(2 * per_replica_gaps * stay)
    assert bill.terms["busy"].seconds == pytest.approx(n * 2)


def test_min_replicas_bill_all_month_at_the_active_rate() -> None:
    # one warm replica at 0.00093 $/s (RunPod's former H100 active rate) covers rho 0.1
    t = Traffic(requests_per_hour=180, seconds_per_request=2)
    active = 0.00093 * 3600
    bill = formulas.serverless_month(t, flex_rate=99.0, active_rate=active, idle_window_s=60, cold_s=30,
                                     increment_s=1, warm_replicas=1)
    assert set(bill.terms) == {"warm"}
    assert bill.usd == pytest.approx(0.00093 * 730 * 3600)  # $2,444.04
    assert bill.cold_starts == 0


def test_min_replicas_below_the_load_add_flex_replicas_for_the_rest() -> None:
    # rho 2.5 -> 3 replicas: 1 warm all month, 2 flex ones taking 1/3 of the requests each
    t = Traffic(requests_per_hour=4500, seconds_per_request=2)
    bill = formulas.serverless_month(t, flex_rate=2.0, active_rate=1.0, idle_window_s=10, cold_s=5,
                                     increment_s=1, warm_replicas=1)
    assert bill.replicas == 3
    assert bill.terms["warm"].usd == pytest.approx(730.0)
    assert bill.terms["busy"].seconds == pytest.approx(t.requests_per_month * 2 * 2 / 3)
    assert bill.terms["busy"].usd == pytest.approx(t.requests_per_month * 2 * 2 / 3 * 2.0 / 3600)


def test_vm_bills_24_hours_a_day_whatever_the_traffic() -> None:
    quiet = Traffic(requests_per_hour=1, seconds_per_request=2, hours_per_day=2)
    assert formulas.vm_month(quiet, rate=2.49).usd == pytest.approx(2.49 * 730)  # $1,817.70
    busy = Traffic(requests_per_hour=2700, seconds_per_request=2)  # rho 1.5: two VMs
    assert formulas.vm_month(busy, rate=2.49).usd == pytest.approx(2 * 2.49 * 730)


# -- break-even -------------------------------------------------------------------------------


def test_simple_break_even_is_always_on_rate_over_serverless_rate() -> None:
    # Lambda H100 PCIe $2.49/h vs RunPod H100 flex 0.00116 $/s = $4.176/h
    u = formulas.simple_break_even(2.49, 0.00116 * 3600)
    assert u == pytest.approx(0.59626, abs=1e-5)
    assert u * 24 == pytest.approx(14.31, abs=0.01)  # busy hours a day
    assert formulas.simple_break_even(4.176, 4.176) == 1.0


def test_traffic_break_even_without_idle_tail_equals_the_simple_one() -> None:
    # no idle window, no cold start, negligible rounding: serverless bills busy time only, so the
    # break-even rate is u* x 3600 / S = 0.59626 x 1800 = 1073.3 requests/h
    t = Traffic(requests_per_hour=10, seconds_per_request=2)
    requests = formulas.traffic_break_even(t, always_on_month_usd=2.49 * 730, flex_rate=4.176,
                                           idle_window_s=0, cold_s=0, increment_s=1e-9)
    assert requests == pytest.approx(2.49 / 4.176 * 1800, rel=1e-6)


def test_traffic_break_even_with_an_idle_window_comes_earlier_and_balances_the_bills() -> None:
    t = Traffic(requests_per_hour=10, seconds_per_request=2)
    kwargs = dict(flex_rate=4.176, idle_window_s=300, cold_s=20, increment_s=1)
    requests = formulas.traffic_break_even(t, always_on_month_usd=2.49 * 730, **kwargs)
    assert requests is not None and requests < 2.49 / 4.176 * 1800
    at = formulas.serverless_month(Traffic(requests, 2), active_rate=4.176, **kwargs)
    assert at.usd == pytest.approx(2.49 * 730, rel=1e-6)


def test_traffic_break_even_never_when_traffic_hours_cannot_reach_it() -> None:
    # 8 h a day fully busy at $4.176/h is $1,016/month: below a $1,817.70 always-on VM
    t = Traffic(requests_per_hour=10, seconds_per_request=2, hours_per_day=8)
    assert formulas.traffic_break_even(t, always_on_month_usd=2.49 * 730, flex_rate=4.176, idle_window_s=60,
                                       cold_s=20, increment_s=1) is None
