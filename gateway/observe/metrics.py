"""Every Prometheus metric of the gateway, in one place (prefix meshgate_, bounded labels).

The request path must stay cheap: prometheus_client's Counter/Histogram take a lock per update
and walk buckets in Python, which costs ~40 us per call under load on these machines (measured
with bench/overhead.py). So per-call metrics are plain ints in dicts, updated only from the event
loop thread, and turned into metric families at scrape time by a collector. A scrape may see a
histogram's count and sum one observation apart; Prometheus tolerates that.
Per-endpoint gauges are read from the endpoint table at scrape time too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from adapters.llm import Usage
from discovery.consul import SourceStats

from ..endpoints import EndpointState
from .genai import GenAIMetrics
from .hist import Histogram, histogram_family, observe
from .model_stats import ModelStats

# The gRPC service of each RPC the pipeline serves (meshgate_model_requests_total's `service`).
SERVICES = {
    **dict.fromkeys(("Infer", "InferStream", "Generate", "GenerateStream", "Embed"), "meshgate.v1.Inference"),
    **dict.fromkeys(
        ("ModelInfer", "ModelStreamInfer", "ModelConfig", "ModelMetadata"), "inference.GRPCInferenceService"
    ),
}


class ByPrincipal:
    """Calls and cost by the caller's project and/or department (metrics.principal_labels),
    off when `labels` is empty: per-principal series only where an operator asks for them."""

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.calls: dict[tuple[str, ...], int] = {}  # (label values..., code)
        self.cost: dict[tuple[str, ...], float] = {}

    def add(self, principal: Any, code: grpc.StatusCode, cost: float) -> None:
        who = tuple(getattr(principal, f) for f in self.labels)
        key = (*who, code.name)
        self.calls[key] = self.calls.get(key, 0) + 1
        if cost:
            self.cost[who] = self.cost.get(who, 0.0) + cost

    def families(self) -> Iterator[Metric]:
        if not self.labels:
            return
        by = " and ".join(self.labels)
        yield _counter_family(
            "meshgate_principal_requests",
            f"Calls through the request pipeline by the caller's {by} (metrics.principal_labels) and code.",
            [*self.labels, "code"],
            self.calls,
        )
        yield _counter_family(
            "meshgate_principal_cost",
            f"What calls cost (the prices config), by the caller's {by}.",
            list(self.labels),
            self.cost,
        )


class Metrics:
    def __init__(
        self, registry: CollectorRegistry = REGISTRY, principal_labels: tuple[str, ...] = ()
    ) -> None:
        self.registry = registry
        self.requests: dict[tuple[str, str], int] = {}
        self.request_seconds: dict[tuple[str], Histogram] = {}
        self.backend_requests: dict[tuple[str, str, str], int] = {}
        self.backend_seconds: dict[tuple[str], Histogram] = {}
        self.token_counts: dict[tuple[str, str], int] = {}
        self.background_errors: dict[tuple[str], int] = {}
        self.undecodable: dict[tuple[str], int] = {}
        self.cache_results: dict[tuple[str], int] = {}
        self.model_calls: dict[tuple[str, str, str, str, str], int] = {}  # service, method, model, pool, code
        self.principals = ByPrincipal(principal_labels)  # metrics.principal_labels (restart-only)
        self.models = ModelStats()  # per-model counts in Triton's shape (KServe ModelStatistics)
        self.genai = GenAIMetrics(registry)  # time to first token, per output token, GenAI names
        self.retries = Counter(
            "meshgate_retries_total",
            "Calls retried on another endpoint, by pool.",
            ["pool"],
            registry=registry,
        )
        self.retry_budget_exhausted = Counter(
            "meshgate_retry_budget_exhausted_total",
            "Retries not sent because the pool's retry budget was spent, by pool.",
            ["pool"],
            registry=registry,
        )
        self.ejections = Counter(
            "meshgate_outlier_ejections_total",
            "Endpoints taken out of rotation by passive outlier ejection.",
            ["pool", "endpoint"],
            registry=registry,
        )
        self.spills = Counter(
            "meshgate_spills_total",
            "Alias targets passed over, by the pool that answered instead and reason"
            " (deadline: predicted completion past the caller's deadline; fallback: answered by a"
            " later target of the chain).",
            ["pool", "reason"],
            registry=registry,
        )
        self.scrapes = Counter(
            "meshgate_load_scrapes_total",
            "Load probe scrapes of metrics URLs, by result (ok, error).",
            ["result"],
            registry=registry,
        )
        self.ratelimit_refusals = Counter(
            "meshgate_ratelimit_refusals_total",
            "Calls refused by a rate limit, by limit and kind (requests, tokens, concurrency).",
            ["limit", "kind"],
            registry=registry,
        )
        self.cache_store_errors = Counter(
            "meshgate_cache_store_errors_total",
            "Response cache operations that failed because its store (Redis) could not be reached,"
            " by op (get: answered as a miss; set: the answer was not kept).",
            ["op"],
            registry=registry,
        )
        self.ratelimit_store_errors = Counter(
            "meshgate_ratelimit_store_errors_total",
            "Rate-limit decisions made without the store (unreachable), by what the limits' policy"
            " did (open: let through, closed: refused).",
            ["policy"],
            registry=registry,
        )
        registry.register(_CallCollector(self))

    def request_done(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """A call answered by the gateway. Event loop thread only."""
        key = (method, code.name)
        self.requests[key] = self.requests.get(key, 0) + 1
        observe(self.request_seconds, (method,), seconds)

    def backend_done(self, pool: str, endpoint: str, code: grpc.StatusCode, seconds: float) -> None:
        """A call to a backend finished. Event loop thread only."""
        key = (pool, endpoint, code.name)
        self.backend_requests[key] = self.backend_requests.get(key, 0) + 1
        observe(self.backend_seconds, (pool,), seconds)

    def call_done(
        self, method: str, model: str, pool: str, code: grpc.StatusCode, principal: Any, cost: float
    ) -> None:
        """A call through the pipeline ended (answered, refused, failed): by service, method,
        model and pool, and, where metrics.principal_labels says, by project / department."""
        key = (SERVICES.get(method, ""), method, model, pool, code.name)
        self.model_calls[key] = self.model_calls.get(key, 0) + 1
        if self.principals.labels:
            self.principals.add(principal, code, cost)

    def tokens(self, pool: str, usage: Usage) -> None:
        """Token usage of one LLM call (also partial usage of a broken stream)."""
        for kind, n in (
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
            ("cached", usage.cached_tokens),
        ):
            if n:
                self.token_counts[(pool, kind)] = self.token_counts.get((pool, kind), 0) + n

    def undecodable_request(self, method: str) -> None:
        """A request body that did not parse as the method's message (INVALID_ARGUMENT)."""
        self.undecodable[(method,)] = self.undecodable.get((method,), 0) + 1

    def background_error(self, loop: str) -> None:
        """A background loop (or a stage's settle) failed unexpectedly and was restarted."""
        self.background_errors[(loop,)] = self.background_errors.get((loop,), 0) + 1

    def watch_endpoints(self, states: Callable[[], Iterable[EndpointState]]) -> None:
        self.registry.register(_EndpointCollector(states))

    def watch_discovery(
        self, sources: list[tuple[str, SourceStats]], table_invalid: dict[tuple[str, str], int]
    ) -> None:
        """Discovery sources that keep stats (Consul), and the endpoint table's skipped entries."""
        self.registry.register(_DiscoveryCollector(sources, table_invalid))


def _counter_family(name: str, doc: str, labels: list[str], data: Mapping[Any, float]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, n in list(data.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], n)
    return family


class _CallCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        yield _counter_family(
            "meshgate_requests",
            "Calls answered by the gateway, by RPC method and gRPC status code.",
            ["method", "code"],
            m.requests,
        )
        yield _counter_family(
            "meshgate_model_requests",
            "Calls through the request pipeline (answered, refused or failed), by gRPC service, RPC"
            " method, the model the caller named, the pool that answered ('' if none) and code.",
            ["service", "method", "model", "pool", "code"],
            m.model_calls,
        )
        yield from m.principals.families()
        yield histogram_family(
            "meshgate_request_duration_seconds",
            "Time from a call's arrival to its answer, by RPC method.",
            ["method"],
            m.request_seconds,
        )
        yield _counter_family(
            "meshgate_backend_requests",
            "Calls sent to backends, by pool, endpoint and gRPC status code.",
            ["pool", "endpoint", "code"],
            m.backend_requests,
        )
        yield _counter_family(
            "meshgate_tokens",
            "LLM tokens by pool and kind (prompt, completion, cached).",
            ["pool", "kind"],
            m.token_counts,
        )
        yield histogram_family(
            "meshgate_backend_request_duration_seconds",
            "Backend call latency as seen by the gateway, by pool.",
            ["pool"],
            m.backend_seconds,
        )
        yield _counter_family(
            "meshgate_undecodable_requests",
            "Requests whose body did not parse as the method's message (answered INVALID_ARGUMENT),"
            " by RPC method.",
            ["method"],
            m.undecodable,
        )
        yield _counter_family(
            "meshgate_cache_requests",
            "Calls the response cache looked at, by result (hit, collapsed: answered by an identical"
            " call's backend call, miss, refresh, bypass, uncacheable: not deterministic).",
            ["result"],
            m.cache_results,
        )
        yield _counter_family(
            "meshgate_background_errors",
            "Unexpected failures of background loops (discovery, readiness, load probe, registration)"
            " and of stage settlement, by loop; each was logged and the loop restarted.",
            ["loop"],
            m.background_errors,
        )


class _EndpointCollector(Collector):
    def __init__(self, states: Callable[[], Iterable[EndpointState]]) -> None:
        self._states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ready, inflight, age, units, score, ejected, signal, scrape_age = _endpoint_families()
        now = time.monotonic()
        for s in list(self._states()):
            labels = [s.endpoint.pool, s.endpoint.id]
            ready.add_metric(labels, 1.0 if s.health.live and s.health.ready_models else 0.0)
            inflight.add_metric(labels, float(s.calls.in_flight))
            if s.health.checked_at:
                age.add_metric(labels, now - s.health.checked_at)
            units.add_metric(labels, s.calls.units)
            if s.calls.score >= 0:
                score.add_metric(labels, s.calls.score)
            ejected.add_metric(labels, 1.0 if s.ejection.ejected_until > now else 0.0)
            load = s.scrape.load
            if load is not None:
                scrape_age.add_metric(labels, now - load.at)
                for name in ("gpu_util", "gpu_mem", "queue", "running", "kv_cache", "busy"):
                    value = getattr(load, name)
                    if value is not None:
                        signal.add_metric([*labels, name], value)
            shared = s.scrape.shared
            if shared is not None:
                signal.add_metric([*labels, "others_running"], shared.others)
                signal.add_metric([*labels, "background"], shared.background)
                signal.add_metric([*labels, "our_share"], shared.share)
        yield from (ready, inflight, age, units, score, ejected, signal, scrape_age)


def _endpoint_families() -> tuple[GaugeMetricFamily, ...]:
    """The per-endpoint gauge families, empty: ready, in flight, check age, units, score,
    ejected, load signals, scrape age."""
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
    units = GaugeMetricFamily(
        "meshgate_endpoint_outstanding_units",
        "Complexity units in flight to the endpoint from this gateway.",
        labels=["pool", "endpoint"],
    )
    score = GaugeMetricFamily(
        "meshgate_endpoint_score",
        "The endpoint's score at its last scheduling decision (0..1, higher wins).",
        labels=["pool", "endpoint"],
    )
    ejected = GaugeMetricFamily(
        "meshgate_endpoint_ejected",
        "1 while the endpoint is ejected by passive outlier detection.",
        labels=["pool", "endpoint"],
    )
    signal = GaugeMetricFamily(
        "meshgate_endpoint_load",
        "The endpoint's latest scraped load signals (gpu_util, gpu_mem, queue, running, kv_cache,"
        " busy) and what the scheduler makes of them (others_running, background, our_share).",
        labels=["pool", "endpoint", "signal"],
    )
    scrape_age = GaugeMetricFamily(
        "meshgate_endpoint_load_age_seconds",
        "Seconds since the endpoint's metrics were last scraped successfully.",
        labels=["pool", "endpoint"],
    )
    return (ready, inflight, age, units, score, ejected, signal, scrape_age)


class _DiscoveryCollector(Collector):
    """Health of discovery: each source's data age and errors; entries skipped, whether a source
    refused them (bad Meta) or the endpoint table could not build them (unreadable key file)."""

    def __init__(
        self, sources: list[tuple[str, SourceStats]], table_invalid: dict[tuple[str, str], int]
    ) -> None:
        self._sources = sources
        self._table_invalid = table_invalid

    def collect(self) -> Iterator[Metric]:
        age = GaugeMetricFamily(
            "meshgate_discovery_data_age_seconds",
            "Seconds since the source's data was last known current (0 while its queries succeed, a"
            " blocking query that waits included); its last known endpoints stay in force meanwhile.",
            labels=["source"],
        )
        errors: dict[tuple[str, str], int] = {}
        invalid = dict(self._table_invalid)
        now = time.monotonic()
        for name, stats in self._sources:
            age.add_metric([name], stats.data_age(now))
            for kind, n in list(stats.errors.items()):
                errors[(name, kind)] = n
            for reason, n in list(stats.invalid.items()):
                invalid[(name, reason)] = invalid.get((name, reason), 0) + n
        if self._sources:
            yield age
            yield _counter_family(
                "meshgate_discovery_errors",
                "Failed discovery queries, by error kind.",
                ["source", "kind"],
                errors,
            )
        yield _counter_family(
            "meshgate_discovery_invalid_entries",
            "Discovered instances skipped because they could not be used (bad Meta, options the"
            " adapter refuses, an unreadable key file), by reason.",
            ["source", "reason"],
            invalid,
        )
