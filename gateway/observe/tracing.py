"""Traces (config `tracing`, off by default): an OpenTelemetry span tree per call, exported in
batches to an OTLP/gRPC collector (the OpenTelemetry Collector, Jaeger, Tempo ...) from the SDK's
background thread, so a slow collector never holds a call.

    meshgate.v1.Inference/Generate   SERVER: the front door (server/interceptors.py); its parent
                                     is the caller's W3C `traceparent` when it sent one
      auth                           authentication and the caller's rules
      authorize | rate_limit | cache | budget | admission | ledger
                                     one per policy stage's admit (pipeline/director.py)
      schedule                       the scheduler's pick (pipeline/attempts.py)
      chat llama-3-8b                CLIENT, one per backend attempt: its own traceparent (with the
                                     caller's tracestate) goes to the backend as gRPC metadata or
                                     HTTP headers, so the backend's spans are its children
      settle                         the stages' settles (ledger write, budget charge)

With tracing off, a caller's traceparent and tracestate are passed to backends unchanged (W3C's
rule for an intermediary that does not trace), so a backend's trace still joins the caller's.

Attributes follow OpenTelemetry's RPC and GenAI conventions (rpc.system, rpc.service, rpc.method,
rpc.grpc.status_code; gen_ai.operation.name, gen_ai.request.model, gen_ai.response.model,
gen_ai.usage.input_tokens / output_tokens, gen_ai.response.finish_reasons; server.address /
server.port; error.type), plus meshgate.request_id, .pool, .endpoint, .backend, .attempt, .cache,
.project. A server span is an error only where the gateway or a backend failed (UNAVAILABLE,
INTERNAL, DEADLINE_EXCEEDED ...), not for a caller's mistake; an attempt or a stage that raised is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..errors import GatewayError

if TYPE_CHECKING:
    from discovery import Endpoint

    from ..pipeline.context import RequestContext

Span = trace.Span
_PROPAGATOR = TraceContextTextMapPropagator()
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_ZERO_TRACE = "0" * 32
# The codes that say the server side failed (OpenTelemetry's gRPC server-span rule).
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
# Call kind (pipeline Call.kind) -> gen_ai.operation.name, also the attempt span's first word.
_OPERATION = {"generate": "chat", "embed": "embeddings", "infer": "infer", "metadata": "metadata"}
_PROVIDERS = {"openai": "openai", "anthropic": "anthropic"}  # backend -> gen_ai.provider.name
_GENAI_METHODS = {"Generate": "chat", "GenerateStream": "chat", "Embed": "embeddings"}


class TracingConfig(BaseModel):
    """OpenTelemetry traces over OTLP/gRPC (restart-only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    # The collector's OTLP/gRPC endpoint: http:// is plaintext, https:// TLS (system roots).
    endpoint: str = Field(default="http://127.0.0.1:4317", pattern=r"^https?://[^\s/]+")
    headers: dict[str, str] = Field(default_factory=dict)  # e.g. a SaaS collector's key: ${OTLP_KEY}
    sample_ratio: float = Field(default=1.0, ge=0, le=1)  # of calls whose caller sent no traceparent
    service_name: str = Field(default="meshgate", min_length=1)
    export_interval_s: float = Field(default=2.0, gt=0)  # batches go at least this often
    max_queue: int = Field(
        default=8192, ge=64
    )  # spans waiting for export; more are dropped (and counted by the SDK)
    timeout_s: float = Field(default=10.0, gt=0)  # one export


class Tracing:
    """The gateway's tracer: one per process, built when `tracing.enabled`. Spans exported and
    lost are counted in meshgate_trace_spans_total{result} (exported | failed: the collector
    refused or could not be reached); the exporter's own log lines (a retry, a failed batch) are
    let through at most once a minute, with the count of those left out."""

    def __init__(self, config: TracingConfig, registry: CollectorRegistry | None = None) -> None:
        # The SDK and the exporter (~100 ms to import) only when tracing is on.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON

        resource = Resource.create(
            {
                "service.name": config.service_name,
                "service.version": __version__,
                "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
            }
        )
        # Sampling is decided before a span exists (`start`): a call not sampled costs no span.
        self._provider = TracerProvider(resource=resource, sampler=ALWAYS_ON)
        self._ratio = config.sample_ratio
        exporter = OTLPSpanExporter(
            endpoint=config.endpoint,
            insecure=config.endpoint.startswith("http://"),
            headers=dict(config.headers) or None,
            timeout=config.timeout_s,
        )
        spans = Counter(
            "meshgate_trace_spans",
            "Spans handed to the OTLP exporter, by result (exported | failed).",
            ["result"],
            registry=registry,
        )
        logging.getLogger("opentelemetry.exporter.otlp.proto.grpc.exporter").addFilter(_OncePer(60.0))
        self._provider.add_span_processor(
            BatchSpanProcessor(
                cast(Any, _Counted(exporter, spans)),
                max_queue_size=config.max_queue,
                schedule_delay_millis=config.export_interval_s * 1000.0,
            )
        )
        self._tracer = self._provider.get_tracer("meshgate", __version__)

    def start(self, service: str, ctx: RequestContext) -> CallTrace | None:
        """The server span of a call to `service`/`ctx.method`, a child of the caller's trace;
        None when the call is not sampled: the caller's sampled flag decides (W3C), else
        `sample_ratio`. The SDK costs ~50 us of CPU to make and end a span and ~55 us to
        encode it for export (5-7 spans a call); an unsampled call costs next to nothing."""
        parent = None
        if trace_id(ctx.traceparent):
            if not int(ctx.traceparent[-2:], 16) & 1:
                return None  # the caller decided; its context is passed on unchanged
            parent = _PROPAGATOR.extract({"traceparent": ctx.traceparent, "tracestate": ctx.tracestate})
        elif self._ratio < 1.0 and random.random() >= self._ratio:
            return None
        span = self._tracer.start_span(
            f"{service}/{ctx.method}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": ctx.method,
                "meshgate.request_id": ctx.request_id,
            },
        )
        return CallTrace(self._tracer, span)

    def shutdown(self) -> None:
        """Export what is queued, then stop (blocking: run it off the event loop)."""
        self._provider.shutdown()


class CallTrace:
    """One call's spans: the server span and what hangs under it (RequestContext.trace)."""

    __slots__ = ("_parent", "_tracer", "span")

    def __init__(self, tracer: trace.Tracer, span: Span) -> None:
        self._tracer = tracer
        self.span = span
        self._parent = trace.set_span_in_context(span)

    def child(self, name: str, attributes: dict[str, Any] | None = None) -> Span:
        return self._tracer.start_span(name, context=self._parent, attributes=attributes)

    def attempt(self, kind: str, model: str, endpoint: Endpoint, number: int) -> Span:
        """The CLIENT span of one backend attempt."""
        operation = _OPERATION.get(kind, kind)
        host, port = _host_port(endpoint.address)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": model,
            "server.address": host,
            "meshgate.pool": endpoint.pool,
            "meshgate.endpoint": endpoint.id,
            "meshgate.backend": endpoint.backend,
            "meshgate.attempt": number,
        }
        if port:
            attributes["server.port"] = port
        if endpoint.backend in _PROVIDERS:
            attributes["gen_ai.provider.name"] = _PROVIDERS[endpoint.backend]
        return self._tracer.start_span(
            f"{operation} {model}", context=self._parent, kind=SpanKind.CLIENT, attributes=attributes
        )

    def ids(self) -> tuple[str, str]:
        """The server span's trace id and span id, in hex (log lines carry them)."""
        sc = self.span.get_span_context()
        return format(sc.trace_id, "032x"), format(sc.span_id, "016x")

    @staticmethod
    def headers(span: Span) -> tuple[tuple[str, str], ...]:
        """What tells a backend that `span` is its parent: traceparent (and tracestate)."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        return tuple(carrier.items())

    def end(self, ctx: RequestContext, code: grpc.StatusCode, message: str = "") -> None:
        """End the server span with what the call learned on its way."""
        span, record = self.span, ctx.record
        if span.is_recording():
            attributes: dict[str, Any] = {"rpc.grpc.status_code": code.value[0]}
            operation = _GENAI_METHODS.get(ctx.method)
            if operation is not None:
                attributes["gen_ai.operation.name"] = operation
            for key, value in (
                ("gen_ai.request.model", record.requested),
                ("gen_ai.response.model", record.model),
                ("meshgate.pool", record.pool),
                ("meshgate.endpoint", record.endpoint),
                ("meshgate.cache", record.cache),
                ("meshgate.project", ctx.principal.project),
            ):
                if value:
                    attributes[key] = value
            if record.attempts:
                attributes["meshgate.attempts"] = record.attempts
            if record.usage is not None:
                attributes["gen_ai.usage.input_tokens"] = record.usage.prompt_tokens
                attributes["gen_ai.usage.output_tokens"] = record.usage.completion_tokens
            if record.finish:
                attributes["gen_ai.response.finish_reasons"] = (record.finish,)
            span.set_attributes(attributes)
            if code in _SERVER_FAULTS:
                failed(span, code, message)
        span.end()


class _Counted:
    """The OTLP exporter, its results counted (BatchSpanProcessor calls these three)."""

    def __init__(self, inner: Any, spans: Counter) -> None:
        self._inner = inner
        self._exported, self._failed = spans.labels("exported"), spans.labels("failed")

    def export(self, batch: Any) -> Any:
        result = self._inner.export(batch)
        (self._exported if result.name == "SUCCESS" else self._failed).inc(len(batch))
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self._inner.force_flush(timeout_millis))


class _OncePer(logging.Filter):
    """Lets a logger's records through at most once per `every_s` (the exporter logs every retry
    while a collector is down), saying how many were left out."""

    def __init__(self, every_s: float) -> None:
        super().__init__()
        self._every_s = every_s
        self._last = float("-inf")
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._last < self._every_s:
            self._dropped += 1
            return False
        if self._dropped:
            record.msg = (
                f"{record.getMessage()} ({self._dropped} more like it in the last {now - self._last:.0f} s)"
            )
            record.args = None
        self._last, self._dropped = now, 0
        return True


def failed(span: Span, code: grpc.StatusCode, message: str) -> None:
    """Mark `span` as ended by `code`."""
    span.set_attribute("error.type", code.name)
    span.set_status(Status(StatusCode.ERROR, message or code.name))


def trace_id(traceparent: str) -> str:
    """The trace id of a well-formed W3C traceparent (version-<32 hex>-<16 hex>-flags, lower
    case, the trace id not all zeros); "" otherwise. The one check of a caller's traceparent:
    what is traced, passed on to backends, and written in log lines."""
    if _TRACEPARENT.fullmatch(traceparent) is None or traceparent[3:35] == _ZERO_TRACE:
        return ""
    return traceparent[3:35]


def passed_on(ctx: RequestContext) -> tuple[tuple[str, str], ...]:
    """With tracing off: the caller's trace context, for the backend as it came (when well formed)."""
    if not trace_id(ctx.traceparent):
        return ()
    if ctx.tracestate and len(ctx.tracestate) <= 512 and ctx.tracestate.isprintable():
        return (("traceparent", ctx.traceparent), ("tracestate", ctx.tracestate))
    return (("traceparent", ctx.traceparent),)


def _host_port(address: str) -> tuple[str, int]:
    """host and port of an endpoint address (host:port, or a URL for HTTP APIs)."""
    if "://" in address:
        url = urllib.parse.urlsplit(address)
        return url.hostname or address, url.port or (443 if url.scheme == "https" else 80)
    host, _, port = address.rpartition(":")
    return (host.strip("[]"), int(port)) if port.isdigit() else (address, 0)


# The policy stages whose admit gets a span (pipeline/stages.py `plan`); the rest are local checks.
TRACED_STAGES = frozenset({"authorize", "rate_limit", "cache", "budget", "admission", "ledger"})


def traced_admit(name: str, admit: Callable[[Any], Any], is_async: bool) -> Callable[[Any], Any]:
    """A stage's admit (of a pipeline Call) in a span named after the stage."""
    if is_async:

        async def admit_async(call: Any) -> Any:
            with _stage_span(name, call):
                return await admit(call)

        return admit_async

    def admit_sync(call: Any) -> Any:
        with _stage_span(name, call):
            return admit(call)

    return admit_sync


@contextlib.contextmanager
def _stage_span(name: str, call: Any) -> Iterator[None]:
    span = call.ctx.trace.child(name)
    try:
        yield
    except GatewayError as err:
        failed(span, err.code, err.message)
        raise
    finally:
        _stage_end(span, name, call)


def _stage_end(span: Span, name: str, call: Any) -> None:
    if name == "cache" and call.ctx.record.cache:
        span.set_attribute("meshgate.cache", call.ctx.record.cache)
    span.end()
