"""Filters: which endpoints may take the request at all."""

from __future__ import annotations

from ...endpoints import EndpointState
from .base import Context, RequestInfo


def f_ready(state: EndpointState, req: RequestInfo, ctx: Context) -> bool:
    """Serves the model (and version) and its last readiness check passed."""
    return state.ready_for(req.model, req.version)


def f_not_ejected(state: EndpointState, req: RequestInfo, ctx: Context) -> bool:
    """Not inside a passive outlier ejection (see outlier.py)."""
    return state.ejection.ejected_until <= ctx.now


def f_region(state: EndpointState, req: RequestInfo, ctx: Context) -> bool:
    """Hard region constraint: only the requested region (when the request names one)."""
    return not req.region or state.endpoint.region == req.region
