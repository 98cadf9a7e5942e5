"""Traces (tracing.enabled): real gateways export their spans over OTLP/gRPC to an in-test
collector. The span tree and its links, the GenAI attributes, and the W3C trace context reaching
backends: over gRPC metadata (a second meshgate as a KServe v2 backend, tracing to the same
collector: its server span must be the child of the front's attempt span) and over HTTP headers
(the OpenAI stand-in records them)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import pytest
from meshgate.v1 import generate_pb2, inference_pb2_grpc

from tests.helpers import add_sub_request, api_key_auth, infer, llm_pool, metric_value, triton_pool
from tests.openai_standin import OpenAIStandIn
from tests.otlp_collector import CLIENT, ERROR, INTERNAL, SERVER, OTLPCollector, SpanSeen
from tests.procs import Gateway, Triton, free_ports, make_key, wait_until


class Traced(NamedTuple):
    front: Gateway
    backend: Gateway
    key: str
    llm: OpenAIStandIn
    collector: OTLPCollector


def _tracing(collector: OTLPCollector, name: str) -> dict[str, Any]:
    return {"enabled": True, "endpoint": collector.endpoint, "export_interval_s": 0.1, "service_name": name}


@pytest.fixture(scope="module")
def traced(triton_a: Triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    tmp: Path = tmp_path_factory.mktemp("tracing")
    keys_file = tmp / "keys.yaml"
    key = make_key(keys_file, "--user", "ann", "--project", "search")
    collector, llm = OTLPCollector(), OpenAIStandIn()
    backend = Gateway(
        {
            "pools": {"tritons": triton_pool(triton_a.address, ["add_sub"])},
            "routing": {"aliases": {"remote_add_sub": {"split": [{"model": "add_sub"}]}}},
            "tracing": _tracing(collector, "meshgate-backend"),
        }
    ).start()
    front = Gateway(
        {
            "pools": {
                "tritons": triton_pool(triton_a.address, ["add_sub"]),
                "remote": {
                    "endpoints": [
                        {
                            "id": "backend-gw",
                            "address": backend.address,
                            "backend": "kserve_v2",
                            "models": ["remote_add_sub"],
                        }
                    ]
                },
                "llm": llm_pool(llm.base_url),
            },
            "auth": api_key_auth(keys_file),
            "rate_limits": {"limits": [{"name": "per-user", "key": ["user"], "requests_per_s": 1000}]},
            "cache": {},
            # Only calls whose caller sent a sampled traceparent are traced (the W3C flag decides).
            "tracing": {**_tracing(collector, "meshgate"), "sample_ratio": 0.0},
            "server": {"access_log": True},
            "log_format": "json",
        }
    ).start()
    try:
        backend.wait_serving("tritons")
        for pool in ("tritons", "remote", "llm"):
            front.wait_serving(pool)
        yield Traced(front, backend, key, llm, collector)
    finally:
        front.stop()
        backend.stop()
        llm.close()
        collector.close()


def _caller(key: str) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """A caller's trace: (trace id, its span id, the metadata that carries them)."""
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return (
        trace_id,
        parent,
        (
            ("authorization", f"Bearer {key}"),
            ("traceparent", f"00-{trace_id}-{parent}-01"),
            ("tracestate", "vendor=abc"),
        ),
    )


def _one(spans: list[SpanSeen], name: str, service: str = "meshgate") -> SpanSeen:
    found = [s for s in spans if s.name == name and s.service == service]
    assert len(found) == 1, (name, [(s.service, s.name) for s in spans])
    return found[0]


def _traced_infer(traced: Traced) -> tuple[Any, str, str, str, list[SpanSeen]]:
    """An Infer call (a new input: a cache miss) under a caller's span; (its answer, request id,
    trace id, the caller's span id, the trace's spans: server, auth, rate_limit, cache, schedule,
    the attempt, settle)."""
    trace_id, parent, metadata = _caller(traced.key)
    with grpc.insecure_channel(traced.front.address) as ch:
        resp, call = inference_pb2_grpc.InferenceStub(ch).Infer.with_call(
            add_sub_request([1.5], [float(secrets.randbelow(10**6))]), timeout=10, metadata=metadata
        )
    request_id = dict(call.trailing_metadata())["x-request-id"]
    return resp, request_id, trace_id, parent, traced.collector.trace(trace_id, 7)


def test_an_infer_call_is_one_span_tree_under_the_callers_span(traced: Traced) -> None:
    resp, request_id, _, parent, spans = _traced_infer(traced)
    server = _one(spans, "meshgate.v1.Inference/Infer")
    assert (server.kind, server.parent_id) == (SERVER, parent)
    assert server.attributes["rpc.system"] == "grpc"
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.attributes["meshgate.request_id"] == request_id
    assert server.attributes["gen_ai.request.model"] == "add_sub"
    assert server.attributes["meshgate.project"] == "search"
    assert server.status != ERROR
    children = {s.name: s for s in spans if s.parent_id == server.span_id}
    assert set(children) == {"auth", "rate_limit", "cache", "schedule", "infer add_sub", "settle"}
    assert all(s.kind == INTERNAL for n, s in children.items() if n != "infer add_sub")
    assert children["auth"].attributes["meshgate.auth"] == "api_key"
    assert children["cache"].attributes["meshgate.cache"] == "miss"
    assert children["schedule"].attributes["meshgate.endpoint"] == resp.route.endpoint == "triton-a"
    attempt = children["infer add_sub"]
    assert attempt.kind == CLIENT
    assert attempt.attributes["server.address"] == "127.0.0.1"
    assert attempt.attributes["meshgate.backend"] == "triton"
    assert attempt.attributes["meshgate.attempt"] == 1


def test_a_cache_hit_has_no_backend_attempt(traced: Traced) -> None:
    request = add_sub_request([2.5], [float(secrets.randbelow(10**6))])
    with grpc.insecure_channel(traced.front.address) as ch:
        infer(ch, request, metadata=_caller(traced.key)[2])
        trace_id, _, metadata = _caller(traced.key)
        infer(ch, request, metadata=metadata)
    spans = traced.collector.trace(trace_id, 5)  # server, auth, rate_limit, cache, settle
    assert _one(spans, "cache").attributes["meshgate.cache"] == "hit"
    assert _one(spans, "meshgate.v1.Inference/Infer").attributes["meshgate.cache"] == "hit"
    assert not [s for s in spans if s.kind == CLIENT]


def test_a_grpc_backend_joins_the_trace_under_the_attempt(traced: Traced) -> None:
    trace_id, _, metadata = _caller(traced.key)
    with grpc.insecure_channel(traced.front.address) as ch:
        infer(
            ch,
            add_sub_request([1.0], [float(secrets.randbelow(10**6))], model="remote_add_sub"),
            metadata=metadata,
        )
    spans = traced.collector.trace(trace_id, 9)
    attempt = _one(spans, "infer remote_add_sub")
    assert attempt.attributes["meshgate.endpoint"] == "backend-gw"
    behind = _one(spans, "inference.GRPCInferenceService/ModelInfer", service="meshgate-backend")
    assert (behind.kind, behind.parent_id) == (SERVER, attempt.span_id)
    # ... and the backend's own attempt at its Triton hangs under its server span
    inner = _one(spans, "infer add_sub", service="meshgate-backend")
    assert inner.parent_id == behind.span_id


def test_a_chat_stream_carries_genai_attributes_and_the_http_backend_gets_the_context(traced: Traced) -> None:
    trace_id, _, metadata = _caller(traced.key)
    traced.llm.headers_seen.clear()
    msg = generate_pb2.ChatMessage(role="user", content=[generate_pb2.ContentPart(text="tell me a story")])
    with grpc.insecure_channel(traced.front.address) as ch:
        events = list(
            inference_pb2_grpc.InferenceStub(ch).GenerateStream(
                generate_pb2.GenerateRequest(model="echo", messages=[msg]), timeout=10, metadata=metadata
            )
        )
    end = events[-1].end
    spans = traced.collector.trace(trace_id, 7)
    server = _one(spans, "meshgate.v1.Inference/GenerateStream")
    a = server.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert (a["gen_ai.request.model"], a["gen_ai.response.model"]) == ("echo", "echo")
    assert a["gen_ai.usage.input_tokens"] == end.usage.prompt_tokens > 0
    assert a["gen_ai.usage.output_tokens"] == end.usage.completion_tokens > 0
    assert a["gen_ai.response.finish_reasons"] == ("stop",)  # the backend's own word (the proto has an enum)
    attempt = _one(spans, "chat echo")
    assert attempt.attributes["gen_ai.provider.name"] == "openai"
    sent = {k.lower(): v for k, v in traced.llm.headers_seen[-1].items()}
    assert sent["traceparent"] == f"00-{trace_id}-{attempt.span_id}-01"
    assert sent["tracestate"] == "vendor=abc"  # the caller's, passed on


def test_a_callers_mistake_is_not_a_server_error_but_a_backend_failure_is(traced: Traced) -> None:
    trace_id, _, metadata = _caller("mgk_not_a_key")
    with grpc.insecure_channel(traced.front.address) as ch, pytest.raises(grpc.RpcError) as caught:
        infer(ch, add_sub_request([1], [1]), metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    spans = traced.collector.trace(trace_id, 2)
    server = _one(spans, "meshgate.v1.Inference/Infer")
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert server.status != ERROR  # the caller's mistake
    auth = _one(spans, "auth")
    assert (auth.status, auth.attributes["error.type"]) == (ERROR, "UNAUTHENTICATED")

    traced.llm.fail_next(500)  # the stand-in's 500: the attempt failed, and so did the call
    trace_id, _, metadata = _caller(traced.key)
    msg = generate_pb2.ChatMessage(role="user", content=[generate_pb2.ContentPart(text="hi")])
    with grpc.insecure_channel(traced.front.address) as ch, pytest.raises(grpc.RpcError):
        inference_pb2_grpc.InferenceStub(ch).Generate(
            generate_pb2.GenerateRequest(model="echo", messages=[msg]), timeout=10, metadata=metadata
        )
    spans = traced.collector.trace(trace_id, 6)
    attempts = [s for s in spans if s.name == "chat echo"]
    assert attempts and all(s.status == ERROR and s.attributes["error.type"] for s in attempts)
    assert _one(spans, "meshgate.v1.Inference/Generate").status == ERROR


def test_sampling_the_callers_flag_decides_and_unsampled_calls_make_no_spans(traced: Traced) -> None:
    unsampled_trace = secrets.token_hex(16)
    unsampled = f"00-{unsampled_trace}-{secrets.token_hex(8)}-00"
    traced.llm.headers_seen.clear()
    msg = generate_pb2.ChatMessage(role="user", content=[generate_pb2.ContentPart(text="hi")])
    auth = (("authorization", f"Bearer {traced.key}"),)
    with grpc.insecure_channel(traced.front.address) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        request = generate_pb2.GenerateRequest(model="echo", messages=[msg])
        _, untraced = stub.Generate.with_call(request, timeout=10, metadata=auth)  # sample_ratio 0
        stub.Generate(request, timeout=10, metadata=(*auth, ("traceparent", unsampled)))
        trace_id, _, metadata = _caller(traced.key)
        stub.Generate(request, timeout=10, metadata=metadata)
    traced.collector.trace(trace_id, 6)  # spans go out in the order they ended: the two before had theirs
    assert not [s for s in traced.collector.spans if s.trace_id == unsampled_trace]
    untraced_id = dict(untraced.trailing_metadata())["x-request-id"]
    assert not [s for s in traced.collector.spans if s.attributes.get("meshgate.request_id") == untraced_id]
    sent = [{k.lower(): v for k, v in h.items()} for h in traced.llm.headers_seen]
    assert "traceparent" not in sent[0]
    assert sent[1]["traceparent"] == unsampled  # passed on as the caller sent it
    assert sent[2]["traceparent"].startswith(f"00-{trace_id}-")


def test_the_access_log_line_carries_the_trace_and_span_ids(traced: Traced) -> None:
    _, request_id, trace_id, _, spans = _traced_infer(traced)
    server = _one(spans, "meshgate.v1.Inference/Infer")
    lines = [json.loads(line) for line in traced.front.log().splitlines() if line.startswith("{")]
    access = [d for d in lines if d.get("logger") == "meshgate.access" and d.get("request_id") == request_id]
    assert len(access) == 1
    assert (access[0]["trace_id"], access[0]["span_id"]) == (trace_id, server.span_id)


def test_spans_exported_are_counted(traced: Traced) -> None:
    _traced_infer(traced)
    page = traced.front.metrics_text()
    assert metric_value(page, "meshgate_trace_spans_total", result="exported") >= 7
    assert metric_value(page, "meshgate_trace_spans_total", result="failed") == 0


def test_a_collector_that_is_down_costs_counted_spans_and_one_log_line(triton_a: Triton) -> None:
    gw = Gateway(
        {
            "pools": {"tritons": triton_pool(triton_a.address, ["add_sub"])},
            "tracing": {
                "enabled": True,
                "endpoint": f"http://127.0.0.1:{free_ports(1)[0]}",
                "export_interval_s": 0.1,
                "timeout_s": 0.5,
            },
        }
    ).start()
    try:
        gw.wait_serving("tritons")
        with grpc.insecure_channel(gw.address) as ch:
            for _ in range(3):  # calls answer as usual: export happens off the request path
                infer(ch, add_sub_request([1], [2]))
                time.sleep(0.6)
        wait_until(
            lambda: metric_value(gw.metrics_text(), "meshgate_trace_spans_total", result="failed") >= 3,
            20,
            "the failed exports counted",
        )
        exporter_lines = [line for line in gw.log().splitlines() if "opentelemetry.exporter" in line]
        assert len(exporter_lines) == 1, exporter_lines  # not one per retry and per batch
    finally:
        gw.stop()
