"""The gateway's Prometheus metrics (prometheus-client), and reading them back for
`deployer gateway status`.

Each gateway has its own registry (nothing global), so several can live in one process. Label
values are deployment names, providers, model aliases, status codes and error kinds: never a
URL, header or key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "deployer_gateway"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, float("inf"))
ERROR_KINDS = ("connect", "timeout", "status", "transport", "stream")
"""connect: refused or unreachable; timeout: no first byte in time; status: a 5xx, 408, 429, 401
or 403 answer (not passed on); transport: the connection broke before the first byte; stream:
the backend failed after the first byte reached the client (never retried)."""
CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass(frozen=True)
class AttemptMetrics:
    requests: Any
    latency: Any
    first_byte: Any
    in_flight: Any


class GatewayMetrics:
    """Counters, histograms and gauges per backend. Methods never block."""

    def __init__(self) -> None:
        disable_created_metrics()  # `_created` series double the output and say nothing a scraper needs
        self.registry = CollectorRegistry(auto_describe=False)
        per_backend = ["model", "backend", "provider"]
        self.requests = Counter(f"{PREFIX}_backend_requests", "Requests sent to a backend (each attempt counts).",
                                per_backend, registry=self.registry)
        self.errors = Counter(f"{PREFIX}_backend_errors", "Failed attempts, by kind: " + ", ".join(ERROR_KINDS) + ".",
                              [*per_backend, "kind"], registry=self.registry)
        self.latency = Histogram(f"{PREFIX}_backend_request_seconds",
                                 "Seconds from sending a request to a backend to the last byte of its answer.",
                                 per_backend, buckets=BUCKETS, registry=self.registry)
        self.first_byte = Histogram(f"{PREFIX}_backend_first_byte_seconds",
                                    "Seconds from sending a request to a backend to the first byte of its body.",
                                    per_backend, buckets=BUCKETS, registry=self.registry)
        self.in_flight = Gauge(f"{PREFIX}_backend_in_flight", "Requests a backend holds now.",
                               ["backend", "provider"], registry=self.registry)
        self.limit = Gauge(f"{PREFIX}_backend_limit", "In-flight requests before primary-overflow spills over.",
                           ["backend", "provider"], registry=self.registry)
        self.healthy = Gauge(f"{PREFIX}_backend_healthy", "1 while the backend is in rotation, else 0.",
                             ["backend", "provider"], registry=self.registry)
        self.responses = Counter(f"{PREFIX}_requests", "Answers the gateway gave its clients, by status code.",
                                 ["model", "code"], registry=self.registry)
        self._children: dict[tuple[str, str, str], AttemptMetrics] = {}
        self._answers: dict[tuple[str, int], Any] = {}

    def of(self, model: str, backend: str, provider: str) -> AttemptMetrics:
        """The series one attempt updates (looked up once per label set, then cached)."""
        key = (model, backend, provider)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = AttemptMetrics(
                self.requests.labels(*key), self.latency.labels(*key), self.first_byte.labels(*key),
                self.in_flight.labels(backend, provider))
        return found

    def answered(self, model: str, status: int) -> None:
        key = (model, status)
        child = self._answers.get(key)
        if child is None:
            child = self._answers[key] = self.responses.labels(model, str(status))
        child.inc()

    def backend(self, name: str, provider: str, limit: int, healthy: bool, old_provider: str | None = None) -> None:
        """Set a backend's gauges (and drop its series under a provider it left)."""
        if old_provider is not None and old_provider != provider:
            for gauge in (self.in_flight, self.limit, self.healthy):
                try:
                    gauge.remove(name, old_provider)
                except KeyError:
                    pass
        self.limit.labels(name, provider).set(limit)
        self.healthy.labels(name, provider).set(1 if healthy else 0)
        self.in_flight.labels(name, provider)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# -- reading /metrics back (deployer gateway status) -------------------------------------------


@dataclass
class BackendRow:
    backend: str
    provider: str
    healthy: bool = False
    in_flight: int = 0
    limit: int = 0
    models: set[str] = field(default_factory=set)
    requests: float = 0.0
    errors: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count

    def quantile(self, q: float) -> float | None:
        """The q-quantile of request seconds, interpolated in its bucket as Prometheus'
        histogram_quantile does; None without requests."""
        bounds = sorted(self.buckets)
        total = self.buckets.get(float("inf"), 0.0)
        if not total:
            return None
        rank, lower, below = q * total, 0.0, 0.0
        for bound in bounds:
            count = self.buckets[bound]
            if count >= rank:
                if bound == float("inf"):
                    return lower
                return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
            lower, below = bound, count
        return lower

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "provider": self.provider, "models": sorted(self.models),
            "healthy": self.healthy, "in_flight": self.in_flight, "limit": self.limit,
            "requests": int(self.requests), "errors": {k: int(v) for k, v in sorted(self.errors.items())},
            "seconds": self.seconds, "p50_s": self.quantile(0.5), "p99_s": self.quantile(0.99),
        }


def parse(text: str) -> dict[str, Any]:
    """The gateway's /metrics text as {"backends": [row dicts], "responses": {model: {code: n}}}."""
    from prometheus_client.parser import text_string_to_metric_families

    rows: dict[tuple[str, str], BackendRow] = {}
    responses: dict[str, dict[str, int]] = {}

    def row(labels: dict[str, str]) -> BackendRow:
        key = (labels["backend"], labels["provider"])
        return rows.setdefault(key, BackendRow(*key))

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == f"{PREFIX}_requests_total":
                responses.setdefault(labels["model"], {})[labels["code"]] = int(value)
            elif name == f"{PREFIX}_backend_requests_total":
                r = row(labels)
                r.requests += value
                r.models.add(labels["model"])
            elif name == f"{PREFIX}_backend_errors_total":
                errors = row(labels).errors
                errors[labels["kind"]] = errors.get(labels["kind"], 0.0) + value
            elif name == f"{PREFIX}_backend_request_seconds_sum":
                row(labels).seconds += value
            elif name == f"{PREFIX}_backend_request_seconds_bucket":
                buckets = row(labels).buckets
                bound = float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + value
            elif name == f"{PREFIX}_backend_in_flight":
                row(labels).in_flight = int(value)
            elif name == f"{PREFIX}_backend_limit":
                row(labels).limit = int(value)
            elif name == f"{PREFIX}_backend_healthy":
                row(labels).healthy = value >= 1
    return {"backends": [r.to_dict() for r in rows.values()], "responses": responses}
