"""An OTLP/gRPC trace receiver for tests: the collector's TraceService from OpenTelemetry's own
proto package, keeping every span it is sent (the OpenTelemetry Collector does the same on the
wire; it is not on Debian or PyPI)."""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any, NamedTuple

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

from tests.procs import free_ports, wait_until

SERVER, CLIENT, INTERNAL = 2, 3, 1  # opentelemetry.proto.trace.v1.Span.SpanKind
ERROR = 2  # Status.StatusCode


class SpanSeen(NamedTuple):
    service: str  # the resource's service.name
    trace_id: str  # hex
    span_id: str
    parent_id: str  # "" for a root span
    name: str
    kind: int
    attributes: dict[str, Any]
    status: int
    status_message: str


def _value(v: common_pb2.AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return tuple(_value(x) for x in v.array_value.values)
    return getattr(v, which) if which else None


class OTLPCollector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.port = free_ports(1)[0]
        self.spans: list[SpanSeen] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        self._server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def Export(self, request: Any, context: Any) -> Any:
        seen = []
        for rs in request.resource_spans:
            attrs = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    seen.append(
                        SpanSeen(
                            str(attrs.get("service.name", "")),
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            s.name,
                            s.kind,
                            {a.key: _value(a.value) for a in s.attributes},
                            s.status.code,
                            s.status.message,
                        )
                    )
        with self._lock:
            self.spans.extend(seen)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str, count: int, timeout: float = 15.0) -> list[SpanSeen]:
        """The spans of `trace_id`, once at least `count` of them have arrived."""

        def arrived() -> bool:
            with self._lock:
                return sum(s.trace_id == trace_id for s in self.spans) >= count

        wait_until(arrived, timeout, f"{count} spans of trace {trace_id}")
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def close(self) -> None:
        self._server.stop(0)
