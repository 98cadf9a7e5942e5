"""What every scheduler plugin takes: the endpoint, the request and the moment."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from ...endpoints import EndpointState


class RequestInfo(NamedTuple):
    """What the scheduler knows about one request."""

    model: str
    version: str
    units: float  # complexity units (cost per item x items, or per 1k tokens x tokens / 1000)
    region: str = ""
    timeout_s: float = 0.0  # the caller's remaining time; 0 = unknown
    prefer: str = ""  # "" | "latency" | "cost" (RoutingHints.prefer)


class Context(NamedTuple):
    now: float  # time.monotonic()
    max_age_s: float  # scraped values older than this are ignored
    mean_units: float = 0.0  # the pool's mean units per request (others' calls look like ours)


Filter = Callable[[EndpointState, RequestInfo, Context], bool]
Scorer = Callable[[EndpointState, RequestInfo, Context], float]
