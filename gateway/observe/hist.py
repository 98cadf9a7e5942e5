"""Histograms kept as plain bucket counts on the event loop and turned into Prometheus families
at scrape time (metrics.py says why), with buckets fit for inference."""

from __future__ import annotations

import bisect
from typing import Any

from prometheus_client.core import HistogramMetricFamily, Metric

# Seconds, fit for inference: a cache hit (1 ms) to a long generation (2 min).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
)  # fmt: skip
# Tokens per call: the OpenTelemetry GenAI conventions' advice for gen_ai.client.token.usage.
TOKEN_BUCKETS: tuple[float, ...] = tuple(4.0**i for i in range(14))


class Histogram:
    """Bucket counts (not cumulative) and sum for one label set."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last slot: +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


def observe(
    data: dict[Any, Histogram], key: Any, value: float, bounds: tuple[float, ...] = LATENCY_BUCKETS
) -> None:
    """One observation into `data[key]`, created on first use. Event loop thread only."""
    hist = data.get(key)
    if hist is None:
        hist = data[key] = Histogram(bounds)
    hist.observe(value)


def histogram_family(name: str, doc: str, labels: list[str], data: dict[Any, Histogram]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for key, hist in list(data.items()):
        counts = list(hist.counts)
        cumulative, buckets = 0, []
        for bound, n in zip([*hist.bounds, float("inf")], counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        family.add_metric(list(key), buckets, hist.sum)
    return family
