"""Scheduler plugins: filters, scorers and pickers, each small, each with its formula.

A profile (scheduler.py) is a list of filters, weighted scorers and one picker. Plugins are
plain functions (filters.py, scorers.py) and classes (pickers.py), listed in the explicit
registries below; a profile names them.

Notation: for endpoint e, cap = capacity (relative speed, Meta `capacity`), slots = requests it
runs at once (Meta `slots`), a = requests in flight from this gateway, U = complexity units in
flight from this gateway, u = the request's units, q = scraped queue depth for the model,
g = scraped GPU utilisation. Scraped values count only while younger than `max_age_s`.
"""

from __future__ import annotations

from collections.abc import Mapping

from .base import Context, Filter, RequestInfo, Scorer
from .filters import f_not_ejected, f_ready, f_region
from .pickers import BestOfK, MaxScore, Picker, PowerOfTwo, RoundRobin
from .scorers import (
    background_util,
    fresh_load,
    predicted_seconds,
    s_gpu_headroom,
    s_inflight,
    s_latency,
    s_outstanding,
    s_predicted,
    s_price,
    s_queue,
    s_region,
    s_weighted_inflight,
    service_seconds,
)

FILTERS: Mapping[str, Filter] = {"ready": f_ready, "not_ejected": f_not_ejected, "region": f_region}
SCORERS: Mapping[str, Scorer] = {
    "inflight": s_inflight,
    "weighted_inflight": s_weighted_inflight,
    "outstanding": s_outstanding,
    "gpu_headroom": s_gpu_headroom,
    "queue": s_queue,
    "region": s_region,
    "predicted": s_predicted,
    "latency": s_latency,
    "price": s_price,
}
PICKERS: Mapping[str, type[Picker]] = {
    "max_score": MaxScore,
    "best_of_k": BestOfK,
    "p2c": PowerOfTwo,
    "round_robin": RoundRobin,
}

__all__ = [
    "FILTERS",
    "PICKERS",
    "SCORERS",
    "BestOfK",
    "Context",
    "Filter",
    "MaxScore",
    "Picker",
    "PowerOfTwo",
    "RequestInfo",
    "RoundRobin",
    "Scorer",
    "background_util",
    "fresh_load",
    "predicted_seconds",
    "s_price",
    "service_seconds",
]
