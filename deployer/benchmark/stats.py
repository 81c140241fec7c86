"""Figures from request results: distributions, throughput, tokens and errors, as plain data.

Latencies: TTFT, inter-token (gaps between chunks), time per output token (per request: first
-> last chunk over the usage's tokens after the first), end-to-end.

Percentiles interpolate linearly between the two nearest ranks (numpy's default), so p50 of
[1, 2, 3, 4] is 2.5. Throughput counts successful requests over the wall-clock duration of the
run (first request sent -> last one finished): `seconds_per_request` = duration / successes is what
one replica spends per request at the run's concurrency (at concurrency 1: the mean latency),
the figure `deployer cost --measured` prices.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .load import RequestResult


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) of `values`, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values: Sequence[float]) -> dict[str, float | int] | None:
    """{n, mean, min, p50, p90, p99, max} of `values`, None when empty."""
    if not values:
        return None
    out: dict[str, float | int] = {"n": len(values), "mean": sum(values) / len(values), "min": min(values)}
    for q in (50, 90, 99):
        out[f"p{q}"] = percentile(values, q)  # type: ignore[assignment]
    out["max"] = max(values)
    return out


def summarize(results: Sequence[RequestResult], *, planned: int, duration_s: float) -> dict[str, Any]:
    """The load figures of one run (`bench --json` without its header and cold start)."""
    ok = [r for r in results if r.ok]
    errors = Counter(r.error for r in results if r.error)
    samples: dict[str, str] = {}
    for r in results:
        if r.error and r.error not in samples and r.detail:
            samples[r.error] = r.detail
    usage = [r for r in ok if r.completion_tokens is not None]
    prompt_counts = [float(r.prompt_tokens) for r in ok if r.prompt_tokens is not None]
    output_total = sum(r.completion_tokens or 0 for r in usage)
    mismatched = [r.index for r in usage if r.completion_tokens != r.chunks]
    seconds = duration_s if duration_s > 0 else None
    return {
        "requests": {"planned": planned, "finished": len(results), "ok": len(ok), "failed": len(results) - len(ok),
                     "unfinished": planned - len(results)},
        "errors": dict(sorted(errors.items())),
        "error_samples": samples,
        "duration_s": duration_s,
        "ttft_s": distribution([r.ttft_s for r in ok if r.ttft_s is not None]),
        "itl_s": distribution([gap for r in ok for gap in r.gaps_s]),
        "tpot_s": distribution([r.tpot_s for r in ok if r.tpot_s is not None]),
        "e2e_s": distribution([r.e2e_s for r in ok if r.e2e_s is not None]),
        "tokens": {
            "prompt_counted_mean": sum(prompt_counts) / len(prompt_counts) if prompt_counts else None,
            "output_total": output_total,
            "output_per_request_mean": output_total / len(usage) if usage else None,
            "chunks_total": sum(r.chunks for r in ok),
            "without_usage": len(ok) - len(usage),
            "chunks_equal_usage": not mismatched and len(usage) == len(ok),
            "mismatched_count": len(mismatched),
            "mismatched_requests": mismatched[:20],
        },
        "throughput": {
            "requests_per_s": len(ok) / seconds if seconds else None,
            "output_tokens_per_s": output_total / seconds if seconds else None,
            "seconds_per_request": seconds / len(ok) if seconds and ok else None,
        },
    }
