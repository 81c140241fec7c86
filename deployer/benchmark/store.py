"""Bench results in the state database (table `benchmarks`), and the ones worth pricing.

A stored result is the report `bench --json` prints (it never holds a key). Interrupted runs are
printed but not stored: a partial run would skew the figures `cost --measured` uses.
"""

from __future__ import annotations

from typing import Any

from deployer.state import StateStore


def save(state: StateStore, report: dict[str, Any]) -> int:
    """Store a finished run's report; returns its number."""
    return state.record_benchmark(report["name"], report["provider"], report["spec_hash"] or "", report)


def usable_load(state: StateStore, name: str, provider: str | None = None) -> dict[str, Any] | None:
    """The newest stored run of `name` with at least one successful request, or None. The row
    ({"seq", "provider", "spec_hash", "at", "result"}) says which deployment it measured."""
    for row in state.benchmarks(name, provider):
        if ((row["result"].get("throughput") or {}).get("seconds_per_request")) is not None:
            return row
    return None


def usable_cold(state: StateStore, name: str, provider: str | None = None) -> dict[str, Any] | None:
    """The newest stored run of `name` that measured a cold start, or None."""
    for row in state.benchmarks(name, provider):
        if ((row["result"].get("cold") or {}).get("measured_s")) is not None:
            return row
    return None
