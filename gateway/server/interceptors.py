"""The front-door interceptor: what every meshgate RPC gets, in one place.

For each call of the Inference, Models and KServe services it builds the RequestContext
(request id from `x-request-id` metadata or a new one, the deadline defaulted and capped by
config, the peer, the W3C `traceparent`, the priority class), binds it for the handler, turns a
GatewayError into its gRPC status (with google.rpc details), echoes the request id in the
trailing metadata, counts the call (meshgate_requests_total, meshgate_request_duration_seconds)
and writes one access-log line (logger `meshgate.access`, logfmt; `server.access_log`). With
`tracing` on, it starts the call's server span and ends it with the outcome (observe/tracing.py).

A bug (any other exception) is logged once with its traceback and answered INTERNAL with the
request id, never with the exception's text. Health and reflection get only the body guard
below: a mesh probes health every second, and those calls are not traffic.

Identity (when `auth.authenticators` are configured): the `authorization` metadata is turned into
the call's Principal before anything else runs (UNAUTHENTICATED saying which check failed), and a
method that names no model is authorised here (PERMISSION_DENIED); methods that route to a model
(the servicer's `routed_methods`) are authorised by AuthorizeStage, which knows the model. With
auth configured, `auth.audit_log` adds one JSON line per call on logger `meshgate.audit`
(principal, credential id, method, model, route, code, latency; never payloads or credentials).

A request body that does not parse as the method's message is the caller's mistake, answered
INVALID_ARGUMENT without a traceback (bodies.py).

It wraps each method's handler once, when the servicers are registered (`register`), instead of
sitting in grpc.aio's per-call interceptor pipeline, which builds HandlerCallDetails and awaits a
chain of coroutines for every call before the handler runs. Measured with make bench-overhead
(1 KiB, c=64, against the commit before this front door, one run each): +76 us of CPU per call
as a grpc.aio ServerInterceptor, +55 us wrapped at registration; runs on these 2 shared cores
vary by about +-20 us. In process, the wrapper costs ~2.6 us a call (a fake context).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import grpc

from ..config import ServerConfig
from ..errors import GatewayError, abort
from ..observe.logs import call_fields
from ..observe.metrics import Metrics
from ..observe.tracing import Tracing, failed
from ..pipeline.context import ANONYMOUS, CallRecord, Principal, RequestContext, bind, unbind
from ..policy.audit import audit_line
from ..policy.auth.authenticate import Authentication
from ..policy.auth.authorize import Rules
from .bodies import BodyGuard, Undecodable, decoder, message_name
from .registrar import Registrar

log = logging.getLogger("meshgate.server")
access = logging.getLogger("meshgate.access")
audit = logging.getLogger("meshgate.audit")

Context = grpc.aio.ServicerContext[Any, Any]
Authz = Literal["rules", "model", "admin"]
_OK = grpc.StatusCode.OK
_REQUEST_ID = "x-request-id"
_MAX_ID = 128
_MAX_SEEN = 10_000  # a caller's request id longer than this is replaced, not echoed


class FrontDoor:
    def __init__(
        self,
        config: ServerConfig,
        metrics: Metrics,
        authentication: Authentication | None = None,
        rules: Rules | None = None,
        audit_log: bool = False,
        tracing: Tracing | None = None,
    ) -> None:
        self._metrics = metrics
        self._tracing = tracing
        self.use(config, authentication, rules, audit_log)
        # Principals that authenticated lately -> time.monotonic() of their last call (Admin's
        # ListPrincipals), bounded.
        self.seen: dict[Principal, float] = {}
        self._prefix = secrets.token_hex(4)  # request ids: unique per process, then a counter
        self._counter = itertools.count(1)
        self._bodies = BodyGuard(metrics)
        self.guard = self._bodies.guard

    def use(
        self,
        config: ServerConfig,
        authentication: Authentication | None,
        rules: Rules | None,
        audit_log: bool,
    ) -> None:
        """The settings calls get (at start, and from a config reload): each call reads them as
        it starts, so a reload never changes a call half way."""
        self._config = config
        self._authn = authentication
        self._rules = rules
        self._admits = authentication is not None or rules is not None
        self._audit = audit_log and authentication is not None
        self._access_log = config.access_log
        # With no authenticator the gateway listens on loopback (or was told it may not): the
        # Admin service is then as open as the rest. Otherwise it needs the `admin` role.
        self._admin_open = authentication is None and not config.allow_unauthenticated

    def register(
        self,
        add_to_server: Callable[[Any, Any], None],
        servicer: Any,
        server: grpc.aio.Server,
        *,
        front_door: bool = True,
        admin: bool = False,
    ) -> None:
        """`add_XServicer_to_server(servicer, server)` (generated code), every method wrapped:
        with the whole front door, or (`front_door=False`: health, reflection) the body guard
        only. `admin`: every method needs the admin role (the rules do not apply)."""
        routed: frozenset[str] = getattr(servicer, "routed_methods", frozenset())

        def wrap(service: str, method: str, handler: Any) -> Any:
            authz: Authz = "admin" if admin else "model" if method in routed else "rules"
            return self.wrap(method, handler, authz, service)

        def guard(service: str, method: str, handler: Any) -> Any:
            return self.guard(method, handler)

        registrar = Registrar(server, wrap if front_door else guard)
        add_to_server(servicer, registrar)
        registrar.close()

    def wrap(self, method: str, handler: Any, authz: Authz = "rules", service: str = "") -> Any:
        """`handler` (a grpc.RpcMethodHandler of RPC `method`, short name, of `service`, the full
        name) with the front door. `authz`: who authorises the call: the rules here, the pipeline
        knowing the model ("model"), or the admin role ("admin")."""
        message = message_name(handler)
        handler = handler._replace(request_deserializer=decoder(handler.request_deserializer))
        if handler.unary_unary is not None:
            return handler._replace(
                unary_unary=self._unary(method, message, handler.unary_unary, authz, service)
            )
        if handler.unary_stream is not None or handler.stream_stream is not None:
            inner = handler.unary_stream or handler.stream_stream
            if inspect.isasyncgenfunction(inner):
                raise TypeError(f"{method}: stream handlers write with context.write, they do not yield")
            if handler.unary_stream is not None:
                return handler._replace(unary_stream=self._unary(method, message, inner, authz, service))

            # Bidirectional (KServe's ModelStreamInfer): an undecodable body in the stream ends
            # it with INVALID_ARGUMENT, raised where the handler reads it.
            async def checked(requests: Any) -> Any:
                async for request in requests:
                    if type(request) is Undecodable:
                        raise self._bodies.undecodable(method, message, request)
                    yield request

            def bidi(requests: Any, context: Context) -> Awaitable[Any]:
                result: Awaitable[Any] = inner(checked(requests), context)
                return result

            return handler._replace(stream_stream=self._unary(method, message, bidi, authz, service))
        raise TypeError(f"{method}: client-streaming methods are not served")

    def _context(self, method: str, context: Context, start: float) -> tuple[RequestContext, str]:
        """The call's context, and its `authorization` metadata ("" when none)."""
        request_id = traceparent = tracestate = priority = authorization = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value if isinstance(value, str) else ""
            elif key == _REQUEST_ID:
                request_id = value if isinstance(value, str) and len(value) <= _MAX_ID else ""
            elif key == "traceparent":
                traceparent = str(value)
            elif key == "tracestate":
                tracestate = str(value)
            elif key == "x-meshgate-priority":
                priority = str(value)
        remaining = context.time_remaining()
        cfg = self._config
        timeout = cfg.default_timeout_s if remaining is None else min(float(remaining), cfg.max_timeout_s)
        ctx = RequestContext(
            request_id or f"{self._prefix}{next(self._counter):08x}",
            method,
            start + timeout,
            CallRecord(),
            ANONYMOUS,
            context.peer(),
            traceparent,
            priority,
            tracestate=tracestate,
        )
        return ctx, authorization

    def _admit(
        self, ctx: RequestContext, authorization: str, context: Context, authz: Authz
    ) -> RequestContext | Awaitable[RequestContext]:
        """`ctx` with the caller's principal (an awaitable of it in the rare case that the
        authenticator must fetch first, e.g. an issuer's new keys); raises UNAUTHENTICATED /
        PERMISSION_DENIED."""
        principal = ctx.principal
        if self._authn is not None:
            found = self._authn.authenticate(authorization, context)
            if not isinstance(found, Principal):
                return self._admit_later(ctx, found, authz)
            principal = found
        return self._admitted(ctx, principal, authz)

    async def _admit_traced(
        self, ctx: RequestContext, authorization: str, context: Context, authz: Authz
    ) -> RequestContext:
        """`_admit` in an `auth` span."""
        span = ctx.trace.child("auth")
        try:
            admitted = self._admit(ctx, authorization, context, authz)
            ctx = admitted if isinstance(admitted, RequestContext) else await admitted
            span.set_attribute("meshgate.auth", ctx.principal.auth)
            return ctx
        except GatewayError as err:
            failed(span, err.code, err.message)
            raise
        finally:
            span.end()

    async def _admit_later(
        self, ctx: RequestContext, principal: Awaitable[Principal], authz: Authz
    ) -> RequestContext:
        return self._admitted(ctx, await principal, authz)

    def _admitted(self, ctx: RequestContext, principal: Principal, authz: Authz) -> RequestContext:
        """`ctx` as `principal`'s, bound for the handler; a method that names no model is
        authorised here (PERMISSION_DENIED)."""
        if principal is not ctx.principal:
            ctx = ctx._replace(principal=principal)
            bind(ctx)
            seen = self.seen
            if len(seen) >= _MAX_SEEN and principal not in seen:
                seen.clear()
            seen[principal] = time.monotonic()
        if authz == "rules":
            if self._rules is not None:
                self._rules.check(principal, ctx.method, None)
        elif authz == "admin" and "admin" not in principal.roles and not self._admin_open:
            who = principal.user or principal.credential_id or "anonymous"
            raise GatewayError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{who} may not call {ctx.method}: the admin role is needed",
            )
        return ctx

    def _unary(
        self,
        method: str,
        message: str,
        inner: Callable[[Any, Context], Awaitable[Any]],
        authz: Authz = "rules",
        service: str = "",
    ) -> Any:
        async def handle(request: Any, context: Context) -> Any:
            start = time.monotonic()
            ctx, authorization = self._context(method, context, start)
            if self._tracing is not None:
                ctx = ctx._replace(trace=self._tracing.start(service, ctx))
            token = bind(ctx)
            code = grpc.StatusCode.UNKNOWN
            counted = False  # an error is counted before its status goes out: a caller that saw it finds it on /metrics
            try:
                if (self._admits or authz == "admin") and ctx.trace is not None:
                    ctx = await self._admit_traced(ctx, authorization, context, authz)
                elif self._admits or authz == "admin":
                    admitted = self._admit(ctx, authorization, context, authz)
                    ctx = admitted if isinstance(admitted, RequestContext) else await admitted
                if type(request) is Undecodable:
                    raise self._bodies.undecodable(method, message, request)
                response = await inner(request, context)
                code = _OK
                context.set_trailing_metadata(_trailers(ctx))
                if self._audit:  # sizes for the audit line (a stream's requests and answers: not counted)
                    ctx.record.bytes_in = _size(request)
                    ctx.record.bytes_out = _size(response)
                return response
            except GatewayError as err:
                code = err.code
                counted = self._done(ctx, code, start, err.message)
                await self._answer(context, err, ctx)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception:  # a bug: log it once, answer without its text
                code = grpc.StatusCode.INTERNAL
                log.exception("%s failed (request %s)", method, ctx.request_id)
                counted = self._done(ctx, code, start, "internal error")
                await abort(context, _internal(ctx), ((_REQUEST_ID, ctx.request_id),))
            finally:
                unbind(token)
                if not counted:
                    self._done(ctx, code, start)

        return handle

    @staticmethod
    async def _answer(context: Context, err: GatewayError, ctx: RequestContext) -> None:
        """End the call with `err`; quietly when the caller is already gone (its deadline passed
        or it cancelled as the error was raised): there is nobody left to tell."""
        if context.cancelled():
            raise asyncio.CancelledError
        try:
            await abort(context, err, _trailers(ctx))
        except grpc.aio.AbortError:
            raise
        except Exception:  # noqa: BLE001  (grpc's ExecuteBatchError: it could not send the status, the call ended under us)
            raise asyncio.CancelledError from None

    def _done(self, ctx: RequestContext, code: grpc.StatusCode, start: float, message: str = "") -> bool:
        """Count the call, end its span, write its access and audit lines (True: it is counted)."""
        seconds = time.monotonic() - start
        self._metrics.request_done(ctx.method, code, seconds)
        if ctx.trace is not None:
            ctx.trace.end(ctx, code, message)
        if self._audit and audit.isEnabledFor(logging.INFO):
            audit.info(audit_line(ctx, code, seconds), extra=call_fields(ctx))
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
                extra=call_fields(ctx),  # written after the call's context is gone (observe/logs.py)
            )
        return True


def _trailers(ctx: RequestContext) -> tuple[tuple[str, str], ...]:
    """The request id, and the tightest rate limit's state when one applied (the OpenAI
    x-ratelimit-* idea, in gRPC trailing metadata)."""
    limit, cache = ctx.record.ratelimit, ctx.record.cache
    if limit is None:
        return (
            ((_REQUEST_ID, ctx.request_id), ("x-meshgate-cache", cache))
            if cache
            else ((_REQUEST_ID, ctx.request_id),)
        )
    policy, burst, remaining, reset_s = limit
    return (
        (_REQUEST_ID, ctx.request_id),
        *((("x-meshgate-cache", cache),) if cache else ()),
        ("x-ratelimit-policy", policy),
        ("x-ratelimit-limit", f"{burst:g}"),
        ("x-ratelimit-remaining", str(max(0, int(remaining)))),
        ("x-ratelimit-reset", f"{reset_s:.3f}"),
    )


def _size(message: Any) -> int:
    size = getattr(message, "ByteSize", None)
    return int(size()) if size is not None else -1


def _internal(ctx: RequestContext) -> GatewayError:
    return GatewayError(grpc.StatusCode.INTERNAL, f"internal error in the gateway (request {ctx.request_id})")
