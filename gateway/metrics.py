"""Every Prometheus metric of the gateway, in one place (prefix meshgate_, bounded labels).

Per-endpoint gauges are read from the endpoint table at scrape time by a collector, so the
request path only touches two counters and two histograms.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .endpoints import EndpointState

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.requests = Counter(
            "meshgate_requests_total",
            "Calls answered by the gateway, by RPC method and gRPC status code.",
            ["method", "code"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "meshgate_request_duration_seconds",
            "Time from a call's arrival to its answer, by RPC method.",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.backend_requests = Counter(
            "meshgate_backend_requests_total",
            "Calls sent to backends, by pool, endpoint and gRPC status code.",
            ["pool", "endpoint", "code"],
            registry=registry,
        )
        self.backend_seconds = Histogram(
            "meshgate_backend_request_duration_seconds",
            "Backend call latency as seen by the gateway, by pool.",
            ["pool"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "meshgate_retries_total",
            "Calls retried on another endpoint, by pool.",
            ["pool"],
            registry=registry,
        )
        self._children: dict[tuple[str, ...], Callable[..., None]] = {}

    def request_done(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        key = ("r", method, code.name)
        inc = self._children.get(key)
        if inc is None:
            inc = self._children[key] = self.requests.labels(method, code.name).inc
            self._children[("rs", method)] = self.request_seconds.labels(method).observe
        inc()
        self._children[("rs", method)](seconds)

    def backend_done(self, pool: str, endpoint: str, code: grpc.StatusCode, seconds: float) -> None:
        key = ("b", pool, endpoint, code.name)
        inc = self._children.get(key)
        if inc is None:
            inc = self._children[key] = self.backend_requests.labels(pool, endpoint, code.name).inc
            self._children[("bs", pool)] = self.backend_seconds.labels(pool).observe
        inc()
        self._children[("bs", pool)](seconds)

    def watch_endpoints(self, states: Callable[[], Iterable[EndpointState]]) -> None:
        self.registry.register(_EndpointCollector(states))


class _EndpointCollector(Collector):
    def __init__(self, states: Callable[[], Iterable[EndpointState]]) -> None:
        self._states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ready = GaugeMetricFamily(
            "meshgate_endpoint_ready",
            "1 when the endpoint is live with a ready model.",
            labels=["pool", "endpoint"],
        )
        inflight = GaugeMetricFamily(
            "meshgate_endpoint_in_flight", "Calls in flight to the endpoint.", labels=["pool", "endpoint"]
        )
        age = GaugeMetricFamily(
            "meshgate_endpoint_check_age_seconds",
            "Seconds since the endpoint's readiness was last checked.",
            labels=["pool", "endpoint"],
        )
        now = time.monotonic()
        for s in self._states():
            labels = [s.endpoint.pool, s.endpoint.id]
            ready.add_metric(labels, 1.0 if s.live and s.ready_models else 0.0)
            inflight.add_metric(labels, float(s.in_flight))
            if s.checked_at:
                age.add_metric(labels, now - s.checked_at)
        yield ready
        yield inflight
        yield age
