"""`log_format: json`: every log line of the real gateway is one JSON object, and the lines of a
call carry its request id and the caller's W3C trace id: the access log (written after the
call's context is gone) and any line logged while the call is handled."""

from __future__ import annotations

import json
import logging

import grpc
import pytest

from tests.helpers import add_sub_request, triton_pool
from tests.procs import Gateway, Triton

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_json_logs_carry_the_request_and_trace_ids(triton_a: Triton) -> None:
    config = {"pools": {"tritons": triton_pool(triton_a.address, ["add_sub"])}, "log_format": "json"}
    gw = Gateway(config).start()
    try:
        gw.wait_serving("tritons")
        md = (("traceparent", f"00-{TRACE}-00f067aa0ba902b7-01"), ("x-request-id", "req-42"))
        with grpc.insecure_channel(gw.address) as ch:
            stub = ch.unary_unary("/meshgate.v1.Inference/Infer")
            stub(add_sub_request([1.0], [2.0]).SerializeToString(), timeout=10, metadata=md)
            with pytest.raises(grpc.RpcError):
                stub(b"\xff\xff", timeout=10, metadata=(("x-request-id", "req-43"),))
    finally:
        gw.stop()
    lines = [
        line for line in gw.log().splitlines() if line.strip() and not line.startswith("meshgate: serving")
    ]
    docs = [json.loads(line) for line in lines]  # every log line is JSON
    assert all({"ts", "level", "logger", "message"} <= set(d) for d in docs)
    access = [d for d in docs if d["logger"] == "meshgate.access"]
    ours = next(d for d in access if d.get("request_id") == "req-42")
    assert ours["trace_id"] == TRACE
    assert "method=Infer code=OK" in ours["message"]
    other = next(d for d in access if d.get("request_id") == "req-43")
    assert "trace_id" not in other and "code=INVALID_ARGUMENT" in other["message"]


def test_a_line_logged_during_a_call_takes_its_ids_from_the_calls_context() -> None:
    from gateway.observe.logs import JsonFormatter, trace_id
    from gateway.pipeline.context import RequestContext, bind, unbind

    record = logging.LogRecord(
        "meshgate.director", logging.WARNING, __file__, 1, "backend %s slow", ("b1",), None
    )
    outside = json.loads(JsonFormatter().format(record))
    assert outside["message"] == "backend b1 slow" and "request_id" not in outside
    ctx = RequestContext.new("req-7", "Infer", 5.0, traceparent=f"00-{TRACE}-00f067aa0ba902b7-01")
    token = bind(ctx)
    try:
        inside = json.loads(JsonFormatter().format(record))
    finally:
        unbind(token)
    assert (inside["request_id"], inside["trace_id"], inside["level"]) == ("req-7", TRACE, "WARNING")
    assert trace_id("00-" + "0" * 32 + "-00f067aa0ba902b7-01") == ""  # the all-zero id is invalid
    assert trace_id("garbage") == trace_id("00-zz-1-01") == ""
