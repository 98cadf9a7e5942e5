"""What the servicers share: the servicer context type and the hints that travel in a request."""

from __future__ import annotations

from typing import Any

import grpc
from meshgate.v1 import routing_pb2

from ...pipeline.context import RequestContext, current

Context = grpc.aio.ServicerContext[Any, Any]

_PREFER = {routing_pb2.PREFERENCE_LATENCY: "latency", routing_pb2.PREFERENCE_COST: "cost"}
_CACHE = {
    routing_pb2.CACHE_MODE_USE: "use",
    routing_pb2.CACHE_MODE_BYPASS: "bypass",
    routing_pb2.CACHE_MODE_REFRESH: "refresh",
}


def request_context(routing: Any = None) -> RequestContext:
    """The current call's context (server interceptor), with the message's RoutingHints."""
    ctx = current()
    if routing is None:
        return ctx
    return ctx.with_hints(
        routing.preferred_region, _PREFER.get(routing.prefer, ""), _CACHE.get(routing.cache_mode, "")
    )
