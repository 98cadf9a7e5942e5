"""meshgate.v1.Models: what the gateway can serve, from the live endpoint table."""

from __future__ import annotations

import time
from typing import Any

import grpc
from meshgate.v1 import models_pb2, models_pb2_grpc

from ...endpoints import EndpointState
from ...errors import GatewayError, did_you_mean, echo
from ...pipeline.director import Director
from .common import Context, request_context


def _model_pb(name: str, states: list[EndpointState]) -> Any:
    now = time.monotonic()
    versions = sorted({r.version for s in states for r in s.endpoint.models if r.name == name and r.version})
    pools: dict[str, list[EndpointState]] = {}
    for s in states:
        pools.setdefault(s.endpoint.pool, []).append(s)
    model = models_pb2.Model(
        name=name,
        versions=versions,
        ready=any(s.ready_for(name, "") for s in states),
        backends=sorted({s.endpoint.backend for s in states}),
    )
    for pool_name in sorted(pools):
        members = sorted(pools[pool_name], key=lambda s: s.endpoint.id)
        model.pools.add(
            name=pool_name,
            ready=any(s.ready_for(name, "") for s in members),
            endpoints=[endpoint_pb(s, name, now) for s in members],
        )
    return model


def endpoint_pb(s: EndpointState, model: str | None, now: float) -> Any:
    """One endpoint as the Models and Admin services show it: for `model`, or (None) as a whole,
    with the models it declares."""
    health, calls, ep = s.health, s.calls, s.endpoint
    if model is None:
        ready = health.live and bool(health.ready_models) and not s.drained
    else:
        ready = s.ready_for(model, "")
    pb = models_pb2.Endpoint(
        id=ep.id,
        address=ep.address,
        backend=ep.backend,
        ready=ready,
        region=ep.region,
        in_flight=calls.in_flight,
        status_message=health.message,
        checked_seconds_ago=(now - health.checked_at) if health.checked_at else -1.0,
        capacity=ep.capacity,
        slots=ep.slots,
        outstanding_units=calls.units,
        score=calls.score,
        ejected=s.ejection.ejected_until > now,
        consecutive_failures=s.ejection.consecutive_failures,
        latency_per_unit_seconds=calls.latency.get(model, 0.0) if model is not None else 0.0,
        health_checked=s.health_checked,
        drained=s.drained,
        models=[f"{r.name}:{r.version}" if r.version else r.name for r in ep.models] if model is None else [],
    )
    load = s.scrape.load
    if load is not None:
        pb.load.age_seconds = now - load.at
        for field, value in (
            ("gpu_utilization", load.gpu_util),
            ("gpu_memory", load.gpu_mem),
            ("queue_depth", load.queue if model is None else load.queue_for(model)),
            ("running", load.running),
            ("kv_cache_usage", load.kv_cache),
            ("busy", load.busy),
        ):
            if value is not None:
                setattr(pb.load, field, value)
        shared = s.scrape.shared
        if shared is not None:
            pb.load.others_running = shared.others
            pb.load.background_load = shared.background
            pb.load.our_share = shared.share
    return pb


class ModelsServicer(models_pb2_grpc.ModelsServicer):
    def __init__(self, director: Director) -> None:
        self._director = director

    # Authorised here, by model: a caller sees only the models it may call the method on.
    routed_methods = frozenset({"ListModels", "GetModel"})

    async def ListModels(self, request: Any, context: Context) -> Any:
        visible = self._director.visible(request_context())
        models = [_model_pb(name, states) for name, states in sorted(visible.items())]
        if request.ready_only:
            models = [m for m in models if m.ready]
        return models_pb2.ListModelsResponse(models=models)

    async def GetModel(self, request: Any, context: Context) -> Any:
        if not request.name:
            raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT, "name: required", field="name")
        ctx = request_context()
        self._director.authorize(ctx, request.name)
        models = self._director.visible(ctx)
        states = models.get(request.name)
        if not states:
            hint = did_you_mean(request.name, models)
            raise GatewayError(
                grpc.StatusCode.NOT_FOUND,
                f"name: model {echo(request.name)} is not served by any pool{hint}",
                field="name",
            )
        return models_pb2.GetModelResponse(model=_model_pb(request.name, states))
