"""meshgate.v1.Models: what the gateway can serve, from the live endpoint table."""

from __future__ import annotations

import time
from typing import Any

import grpc
from meshgate.v1 import models_pb2, models_pb2_grpc

from ...endpoints import EndpointState
from ...errors import GatewayError, did_you_mean, echo
from ...pipeline.director import Director
from .common import Context


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
        pool = model.pools.add(name=pool_name, ready=any(s.ready_for(name, "") for s in members))
        for s in members:
            pool.endpoints.add(
                id=s.endpoint.id,
                address=s.endpoint.address,
                backend=s.endpoint.backend,
                ready=s.ready_for(name, ""),
                region=s.endpoint.region,
                in_flight=s.calls.in_flight,
                status_message=s.health.message,
                checked_seconds_ago=(now - s.health.checked_at) if s.health.checked_at else -1.0,
                capacity=s.endpoint.capacity,
                slots=s.endpoint.slots,
                outstanding_units=s.calls.units,
                score=s.calls.score,
                ejected=s.ejection.ejected_until > now,
                consecutive_failures=s.ejection.consecutive_failures,
                latency_per_unit_seconds=s.calls.latency.get(name, 0.0),
                health_checked=s.health_checked,
            )
            load = s.scrape.load
            if load is not None:
                ep = pool.endpoints[-1]
                ep.load.age_seconds = now - load.at
                for field, value in (
                    ("gpu_utilization", load.gpu_util),
                    ("gpu_memory", load.gpu_mem),
                    ("queue_depth", load.queue_for(name)),
                    ("running", load.running),
                    ("kv_cache_usage", load.kv_cache),
                    ("busy", load.busy),
                ):
                    if value is not None:
                        setattr(ep.load, field, value)
                shared = s.scrape.shared
                if shared is not None:
                    ep.load.others_running = shared.others
                    ep.load.background_load = shared.background
                    ep.load.our_share = shared.share
    return model


class ModelsServicer(models_pb2_grpc.ModelsServicer):
    def __init__(self, director: Director) -> None:
        self._director = director

    async def ListModels(self, request: Any, context: Context) -> Any:
        models = [_model_pb(name, states) for name, states in sorted(self._director.models().items())]
        if request.ready_only:
            models = [m for m in models if m.ready]
        return models_pb2.ListModelsResponse(models=models)

    async def GetModel(self, request: Any, context: Context) -> Any:
        if not request.name:
            raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT, "name: required", field="name")
        models = self._director.models()
        states = models.get(request.name)
        if not states:
            hint = did_you_mean(request.name, models)
            raise GatewayError(
                grpc.StatusCode.NOT_FOUND,
                f"name: model {echo(request.name)} is not served by any pool{hint}",
                field="name",
            )
        return models_pb2.GetModelResponse(model=_model_pb(request.name, states))
