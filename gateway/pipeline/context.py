"""RequestContext: one frozen record per call, made at the front door.

The server interceptor (server/interceptors.py) builds it from what gRPC knows before the request
body is read (metadata, deadline, peer) and sets it in a ContextVar for the handler; the servicer
adds the hints that travel in the request message (`with_hints`). Everything after that (policy
stages, the attempt loop, the access log) reads the same object instead of positional arguments.

`CallRecord` is the one mutable part: what the call learned on its way (model, route, usage),
written only by the pipeline (director and attempt loop) and read by the interceptor for the
access-log line.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any, NamedTuple

from adapters.llm import Usage
from discovery import Endpoint


class Principal(NamedTuple):
    """Who is calling. Anonymous until an authenticator (the identity issue) says otherwise."""

    user: str = ""
    project: str = ""
    department: str = ""
    roles: frozenset[str] = frozenset()
    auth: str = "anonymous"  # how it authenticated: anonymous | api_key | jwt | mtls
    credential_id: str = ""  # key id, token id or certificate serial for audit; never a secret

    @classmethod
    def of(cls, record: Any, auth: str, credential_id: str) -> Principal:
        """The principal a configured record stands for (a keys-file entry, an mTLS identity:
        anything with user, project, department and roles)."""
        return cls(
            record.user, record.project, record.department, frozenset(record.roles), auth, credential_id
        )


ANONYMOUS = Principal()


class CallRecord:
    """What a call learned on its way, for the access log and settlement."""

    __slots__ = (
        "attempts",
        "bytes_in",
        "bytes_out",
        "cache",
        "charge",
        "delivered",
        "endpoint",
        "finish",
        "first_at",
        "held",
        "model",
        "pool",
        "ratelimit",
        "requested",
        "usage",
    )

    def __init__(self) -> None:
        self.requested = ""  # the model the caller named (a model or an alias)
        self.model = ""  # the model that answered (an alias's target)
        self.pool = ""
        self.endpoint = ""
        self.attempts = 0
        self.delivered = 0  # stream events handed to the caller
        self.first_at = 0.0  # time.monotonic() when the first of them went out; 0: none yet
        self.bytes_in = -1  # request and response message sizes (the audit line; -1: not counted)
        self.bytes_out = -1
        # The tightest rate limit that applied: (policy, limit, remaining, seconds until full),
        # for the x-ratelimit-* trailing metadata (policy/limits/stage.py).
        self.ratelimit: tuple[str, float, float, float] | None = None
        self.usage: Usage | None = None
        self.finish = ""  # an LLM answer's finish reason (traces)
        self.cache = ""  # the response cache's verdict: hit | miss | refresh | bypass | uncacheable
        # Each backend attempt: (endpoint, seconds it held a slot there), for GPU-second charges.
        self.held: list[tuple[Endpoint, float]] = []
        self.charge: Any = None  # what the call cost (ledger.prices.Charge), worked out once at settlement


class RequestContext(NamedTuple):
    """One call. `deadline` is time.monotonic() by which the answer is due (the caller's gRPC
    deadline, defaulted and capped by server config)."""

    request_id: str
    method: str  # the RPC's short name: Infer, GenerateStream, ModelInfer, GetModel ...
    deadline: float
    record: CallRecord
    principal: Principal = ANONYMOUS
    peer: str = ""
    traceparent: str = ""  # W3C trace context from the caller's metadata, "" when none
    priority: str = ""  # priority class from `x-meshgate-priority` metadata; "" = the default
    region: str = ""  # RoutingHints.preferred_region (soft)
    prefer: str = ""  # "" | latency | cost (RoutingHints.prefer)
    cache_mode: str = ""  # "" | use | bypass | refresh (RoutingHints.cache_mode)
    tracestate: str = ""  # W3C tracestate from the caller's metadata (goes with traceparent)
    trace: Any = None  # observe.tracing.CallTrace: the call's spans, when tracing is on

    @classmethod
    def new(
        cls, request_id: str, method: str, timeout: float, *, start: float | None = None, **kw: Any
    ) -> RequestContext:
        """A context whose deadline is `timeout` seconds from `start` (now by default)."""
        at = time.monotonic() if start is None else start
        return cls(request_id, method, at + timeout, CallRecord(), **kw)

    def remaining(self) -> float:
        """Seconds left until the deadline (negative once it has passed)."""
        return self.deadline - time.monotonic()

    def with_hints(self, region: str, prefer: str, cache_mode: str = "") -> RequestContext:
        if not (region or prefer or cache_mode):
            return self
        return self._replace(region=region, prefer=prefer, cache_mode=cache_mode)


_current: ContextVar[RequestContext] = ContextVar("meshgate_request_context")


def current() -> RequestContext:
    """The context of the call being handled (set by the server interceptor)."""
    return _current.get()


def current_or_none() -> RequestContext | None:
    """The context of the call being handled, or None outside a call (logging asks)."""
    return _current.get(None)


def bind(ctx: RequestContext) -> Any:
    """Make `ctx` the current call's context; returns the token for `unbind`."""
    return _current.set(ctx)


def unbind(token: Any) -> None:
    _current.reset(token)
