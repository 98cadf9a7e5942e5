"""Consul health entries -> Endpoints, by meshgate's service Meta conventions.

A model backend is a Consul service whose name is the pool, tagged `inference` (configurable),
with Meta:

    backend      required: triton | kserve_v2 | ... (an adapter kind the gateway knows)
    models       required: comma list of `name` or `name:version`
    metrics_url  Prometheus metrics of the server (load probe)
    gpu          GPU class, e.g. a100-80g
    capacity     relative capacity units (float > 0, default 1)
    region       region label
    slots        requests the server runs at once (int >= 1, default 1)
    costs        comma list of model=units (complexity per item / per 1k tokens), e.g. bert=1,llama=8
    cost_per_hour, price_in_per_1k, price_out_per_1k   kept as given (prices)

The address is Service.Address, else Node.Address (Consul's rule); the port is Service.Port.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

from .base import Endpoint, ModelRef


class InvalidEntry(ValueError):
    """An entry that cannot become an endpoint; `reason` is a short, bounded label for metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def endpoint_from_entry(entry: Any, pool: str, known_backends: Collection[str]) -> Endpoint:
    """One /v1/health/service entry -> Endpoint; InvalidEntry when its Meta or shape is wrong."""
    if not isinstance(entry, Mapping):
        raise InvalidEntry("malformed", "entry is not an object")
    service, node = entry.get("Service"), entry.get("Node") or {}
    if not isinstance(service, Mapping) or not isinstance(node, Mapping):
        raise InvalidEntry("malformed", "entry has no Service object")
    sid = str(service.get("ID") or "")
    meta = service.get("Meta") or {}
    if not isinstance(meta, Mapping):
        raise InvalidEntry("malformed", f"service {sid!r}: Meta is not an object")
    backend = str(meta.get("backend", "")).strip()
    if not backend:
        raise InvalidEntry("missing_backend", f"service {sid!r}: Meta 'backend' is missing")
    if backend not in known_backends:
        raise InvalidEntry(
            "unknown_backend",
            f"service {sid!r}: Meta backend={backend!r} is not one of {', '.join(sorted(known_backends))}",
        )
    models = tuple(ModelRef.parse(m) for m in str(meta.get("models", "")).split(",") if m.strip())
    if not models or any(not m.name for m in models):
        raise InvalidEntry("bad_models", f"service {sid!r}: Meta 'models' must list name or name:version")
    try:
        capacity = float(meta.get("capacity", 1.0))
    except ValueError:
        capacity = math.nan
    if not capacity > 0 or math.isinf(capacity):
        raise InvalidEntry(
            "bad_capacity", f"service {sid!r}: Meta capacity={meta.get('capacity')!r} must be > 0"
        )
    try:
        slots = int(meta.get("slots", 1))
    except ValueError:
        slots = 0
    if slots < 1:
        raise InvalidEntry(
            "bad_slots", f"service {sid!r}: Meta slots={meta.get('slots')!r} must be an integer >= 1"
        )
    try:
        costs = parse_costs(str(meta.get("costs", "")))
    except ValueError as err:
        raise InvalidEntry("bad_costs", f"service {sid!r}: Meta costs: {err}") from None
    address = str(service.get("Address") or node.get("Address") or "")
    port = service.get("Port")
    if not address or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidEntry("bad_address", f"service {sid!r}: no usable address/port ({address!r}, {port!r})")
    return Endpoint(
        id=sid,
        pool=pool,
        host=address,
        port=port,
        backend=backend,
        models=models,
        region=str(meta.get("region", "")),
        metrics_url=str(meta.get("metrics_url", "")),
        capacity=capacity,
        gpu=str(meta.get("gpu", "")),
        meta={str(k): str(v) for k, v in meta.items()},
        slots=slots,
        costs=costs,
    )


def parse_costs(text: str) -> dict[str, float]:
    """'bert=1,llama=8' -> {'bert': 1.0, 'llama': 8.0}; ValueError names the bad item."""
    out: dict[str, float] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        try:
            units = float(value)
        except ValueError:
            units = math.nan
        if not sep or not name.strip() or not units > 0 or math.isinf(units):
            raise ValueError(f"{item!r}: expected model=units with units > 0")
        out[name.strip()] = units
    return out
