"""meshgate.v1.Admin: pools and endpoints, drain/undrain, config reload, principals.

The front door lets only principals with the `admin` role in (interceptors.py); this servicer
is not in the request pipeline: nothing here routes to a model.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import grpc
from meshgate.v1 import admin_pb2, admin_pb2_grpc

from ...config import ConfigError
from ...endpoints import EndpointTable
from ...errors import GatewayError, did_you_mean, echo
from ...ledger.records import GROUPS, LedgerUnavailable
from ...routing.scheduler import Scheduler
from ...stores.counters import StoreUnavailable
from ..build import Shared
from ..reload import ReloadPlan
from .common import Context
from .models import endpoint_pb

# (principal, expires_at or 0, revoked, last seen as time.monotonic() or None)
PrincipalRow = tuple[Any, ...]


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(
        self,
        table: EndpointTable,
        scheduler: Scheduler,
        reload: Callable[[], ReloadPlan],
        principals: Callable[[], list[PrincipalRow]],
        shared: Shared,
    ) -> None:
        self._shared = shared
        self._table = table
        self._scheduler = scheduler
        self._reload = reload
        self._principals = principals

    async def ListPools(self, request: Any, context: Context) -> Any:
        pools = self._table.pools()
        if request.pool:
            if request.pool not in pools:
                raise GatewayError(
                    grpc.StatusCode.NOT_FOUND,
                    f"pool: no pool {echo(request.pool)}{did_you_mean(request.pool, pools)}",
                    field="pool",
                )
            pools = {request.pool: pools[request.pool]}
        now = time.monotonic()
        response = admin_pb2.ListPoolsResponse()
        for name in sorted(pools):
            states = sorted(pools[name], key=lambda s: s.endpoint.id)
            endpoints = [endpoint_pb(s, None, now) for s in states]
            response.pools.add(
                name=name,
                ready=any(e.ready for e in endpoints),
                profile=self._scheduler.profile_for(name).name,
                endpoints=endpoints,
            )
        return response

    async def DrainEndpoint(self, request: Any, context: Context) -> Any:
        return self._drain(request, True)

    async def UndrainEndpoint(self, request: Any, context: Context) -> Any:
        return self._drain(request, False)

    def _drain(self, request: Any, drained: bool) -> Any:
        for field in ("pool", "endpoint_id"):
            if not getattr(request, field):
                raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: required", field=field)
        state = self._table.drain(request.pool, request.endpoint_id, drained)
        response = admin_pb2.DrainEndpointResponse if drained else admin_pb2.UndrainEndpointResponse
        return response(endpoint=endpoint_pb(state, None, time.monotonic()))

    async def ReloadConfig(self, request: Any, context: Context) -> Any:
        try:
            plan = self._reload()  # synchronous: two reloads never interleave
        except ConfigError as err:
            raise GatewayError(
                grpc.StatusCode.FAILED_PRECONDITION, f"config not reloaded, the running config stays: {err}"
            ) from None
        return admin_pb2.ReloadConfigResponse(
            source=plan.source, applied=plan.applied, restart_required=plan.restart_required
        )

    async def ListPrincipals(self, request: Any, context: Context) -> Any:
        now = time.monotonic()
        response = admin_pb2.ListPrincipalsResponse()
        for principal, expires_at, revoked, seen in self._principals():
            response.principals.add(
                user=principal.user,
                project=principal.project,
                department=principal.department,
                roles=sorted(principal.roles),
                auth=principal.auth,
                credential_id=principal.credential_id,
                expires_at=expires_at,
                revoked=revoked,
                last_seen_seconds_ago=now - seen if seen is not None else -1.0,
            )
        return response

    async def GetUsage(self, request: Any, context: Context) -> Any:
        ledger = self._shared.ledger
        if ledger is None:
            raise GatewayError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "no usage ledger is configured (ledger: {store: sqlite, path: meshgate-usage.db})",
            )
        for g in request.group_by:
            if g not in GROUPS:
                raise GatewayError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"group_by: unknown {echo(g)}; expected some of {', '.join(GROUPS)}",
                    field="group_by",
                )
        until = request.until or time.time()
        since = request.since or until - 86400.0
        if not since < until:
            raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT, "since: must be before until", field="since")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ledger.flush(), 2.0)
        try:
            rows = await ledger.store.usage(since, until, list(request.group_by))
        except LedgerUnavailable as err:
            raise GatewayError(grpc.StatusCode.UNAVAILABLE, f"usage ledger: {err}") from None
        response = admin_pb2.GetUsageResponse(
            since=since,
            until=until,
            group_by=list(request.group_by),
            currency=self._shared.currency,
            unwritten=ledger.buffered,
        )
        for row in rows:
            response.rows.add(
                group=list(row.group),
                calls=row.calls,
                tokens_in=row.tokens_in,
                tokens_out=row.tokens_out,
                tokens_cached=row.tokens_cached,
                gpu_seconds=row.gpu_seconds,
                cost=row.cost,
                cache_hits=row.cache_hits,
                errors=row.errors,
            )
        return response

    async def ListBudgets(self, request: Any, context: Context) -> Any:
        stage = self._shared.budget_stage
        response = admin_pb2.ListBudgetsResponse(currency=self._shared.currency)
        if stage is None:
            return response
        try:
            states = await stage.states(request.budget, request.key)
        except StoreUnavailable as err:
            raise GatewayError(grpc.StatusCode.UNAVAILABLE, f"budget store: {err}") from None
        if request.budget and not states and not any(b.name == request.budget for b in stage.budgets):
            names = [b.name for b in stage.budgets]
            raise GatewayError(
                grpc.StatusCode.NOT_FOUND,
                f"budget: no budget {echo(request.budget)}{did_you_mean(request.budget, names)}",
                field="budget",
            )
        for st in states:
            b = st.budget
            response.budgets.add(
                name=b.name,
                scope=b.scope,
                key=st.value,
                unit=b.unit,
                limit=b.limit,
                spent=st.spent,
                remaining=b.limit - st.spent,
                window_start=st.window.start,
                window_end=st.window.end,
                over_soft_threshold=st.over_soft,
            )
        return response
