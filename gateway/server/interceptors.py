"""The server interceptor: what every meshgate RPC gets, in one place.

For each call of the Inference, Models and KServe services it builds the RequestContext
(request id from `x-request-id` metadata or a new one, the deadline defaulted and capped by
config, the peer, the W3C `traceparent`, the priority class), binds it for the handler, turns a
GatewayError into its gRPC status (with google.rpc details), echoes the request id in the
trailing metadata, counts the call (meshgate_requests_total, meshgate_request_duration_seconds)
and writes one access-log line (logger `meshgate.access`, logfmt; `server.access_log`).

A bug (any other exception) is logged once with its traceback and answered INTERNAL with the
request id, never with the exception's text. Health and reflection pass through untouched: a
mesh probes health every second, and those calls are not traffic.

Cost: handlers are wrapped once per method and cached, so a call pays for one extra coroutine
frame (or async generator for streams), not for building a handler.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from ..config import ServerConfig
from ..errors import GatewayError
from ..observe.metrics import Metrics
from ..pipeline.context import RequestContext, bind, unbind

log = logging.getLogger("meshgate.server")
access = logging.getLogger("meshgate.access")

Context = grpc.aio.ServicerContext[Any, Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # not subscriptable at run time
_OK = grpc.StatusCode.OK
_REQUEST_ID = "x-request-id"
_MAX_ID = 128  # a caller's request id longer than this is replaced, not echoed


class PipelineInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, config: ServerConfig, metrics: Metrics, services: frozenset[str]) -> None:
        self._config = config
        self._metrics = metrics
        self._services = services  # full service names whose calls are wrapped
        self._access_log = config.access_log
        self._wrapped: dict[str, Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        path = handler_call_details.method
        handler = self._wrapped.get(path)
        if handler is None:
            handler = await continuation(handler_call_details)
            service, _, method = path.lstrip("/").rpartition("/")
            if handler is not None and service in self._services:
                handler = self._wrap(method, handler)
                self._wrapped[path] = handler
        return handler

    def _wrap(self, method: str, handler: Any) -> Any:
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary(method, handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._stream(method, handler.unary_stream))
        return handler  # client-streaming methods: none served yet

    def _context(self, method: str, context: Context, start: float) -> RequestContext:
        request_id = traceparent = priority = ""
        for key, value in context.invocation_metadata() or ():
            if key == _REQUEST_ID:
                request_id = value if isinstance(value, str) and len(value) <= _MAX_ID else ""
            elif key == "traceparent":
                traceparent = str(value)
            elif key == "x-meshgate-priority":
                priority = str(value)
        remaining = context.time_remaining()
        cfg = self._config
        timeout = cfg.default_timeout_s if remaining is None else min(float(remaining), cfg.max_timeout_s)
        return RequestContext.new(
            request_id or secrets.token_hex(8),
            method,
            timeout,
            start=start,
            peer=context.peer(),
            traceparent=traceparent,
            priority=priority,
        )

    def _unary(self, method: str, inner: Callable[[Any, Context], Awaitable[Any]]) -> Any:
        async def handle(request: Any, context: Context) -> Any:
            start = time.monotonic()
            ctx = self._context(method, context, start)
            token = bind(ctx)
            code = grpc.StatusCode.UNKNOWN
            try:
                response = await inner(request, context)
                code = _OK
                context.set_trailing_metadata(((_REQUEST_ID, ctx.request_id),))
                return response
            except GatewayError as err:
                code = err.code
                await _abort(context, ctx, err)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception:  # a bug: log it once, answer without its text
                code = grpc.StatusCode.INTERNAL
                log.exception("%s failed (request %s)", method, ctx.request_id)
                await _abort(context, ctx, _internal(ctx))
            finally:
                unbind(token)
                self._done(ctx, code, start)

        return handle

    def _stream(self, method: str, inner: Callable[[Any, Context], AsyncIterator[Any]]) -> Any:
        async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
            start = time.monotonic()
            ctx = self._context(method, context, start)
            token = bind(ctx)
            code = grpc.StatusCode.UNKNOWN
            stream = inner(request, context)
            try:
                async for message in stream:
                    yield message
                code = _OK
                context.set_trailing_metadata(((_REQUEST_ID, ctx.request_id),))
            except GatewayError as err:
                code = err.code
                await _abort(context, ctx, err)
            except (asyncio.CancelledError, GeneratorExit):
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("%s failed (request %s)", method, ctx.request_id)
                await _abort(context, ctx, _internal(ctx))
            finally:
                await stream.aclose()  # type: ignore[attr-defined]  # settles the call now, not at GC
                unbind(token)
                self._done(ctx, code, start)

        return handle

    def _done(self, ctx: RequestContext, code: grpc.StatusCode, start: float) -> None:
        seconds = time.monotonic() - start
        self._metrics.request_done(ctx.method, code, seconds)
        if self._access_log and access.isEnabledFor(logging.INFO):
            r = ctx.record
            access.info(
                "method=%s code=%s ms=%.2f request_id=%s peer=%s user=%s model=%s pool=%s endpoint=%s attempts=%d",
                ctx.method,
                code.name,
                seconds * 1000.0,
                ctx.request_id,
                ctx.peer,
                ctx.principal.user or "-",
                r.model or "-",
                r.pool or "-",
                r.endpoint or "-",
                r.attempts,
            )


def _internal(ctx: RequestContext) -> GatewayError:
    return GatewayError(grpc.StatusCode.INTERNAL, f"internal error in the gateway (request {ctx.request_id})")


async def _abort(context: Context, ctx: RequestContext, err: GatewayError) -> None:
    status = err.to_status()
    metadata = (*status.trailing_metadata, (_REQUEST_ID, ctx.request_id))
    await context.abort(status.code, status.details, metadata)
