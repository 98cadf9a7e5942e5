"""Generate / GenerateStream / Embed end to end: gateway process -> OpenAI-compatible stand-in."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from meshgate.v1 import generate_pb2, inference_pb2_grpc

from tests.helpers import field_violations
from tests.openai_standin import OpenAIStandIn
from tests.procs import Gateway, wait_until

KEY = "sk-test-0123456789abcdef"


@pytest.fixture(scope="module")
def providers() -> Iterator[tuple[OpenAIStandIn, OpenAIStandIn]]:
    a, b = OpenAIStandIn(api_key=KEY), OpenAIStandIn(api_key=KEY)
    yield a, b
    a.close()
    b.close()


@pytest.fixture(autouse=True)
def reset(providers: tuple[OpenAIStandIn, OpenAIStandIn]) -> None:
    for p in providers:
        p.token_interval_s = p.first_token_delay_s = 0.0
        p.break_after = None
        p.fail_next(0, 0)
        p.api_key = KEY


@pytest.fixture(scope="module")
def gateway(
    providers: tuple[OpenAIStandIn, OpenAIStandIn], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    key_file = tmp_path_factory.mktemp("keys") / "openai.key"
    key_file.write_text(KEY + "\n")
    os.environ["MESHGATE_TEST_OPENAI_KEY"] = KEY  # the gateway process inherits it
    eps = [
        {
            "id": "llm-a",
            "address": "127.0.0.1:1",
            "backend": "openai",
            "models": ["echo", "embed-small"],
            "base_url": providers[0].base_url,
            "api_key_env": "MESHGATE_TEST_OPENAI_KEY",
        },
        {
            "id": "llm-b",
            "address": "127.0.0.1:1",
            "backend": "openai",
            "models": ["echo", "embed-small"],
            "base_url": providers[1].base_url,
            "api_key_file": str(key_file),
        },
    ]
    gw = Gateway({"pools": {"llm": {"endpoints": eps}}}).start()
    try:
        gw.wait_serving("llm")
        yield gw
    finally:
        gw.stop()


def request(text: str = "hello mesh gateway", **kw: Any) -> Any:
    msg = generate_pb2.ChatMessage(role="user", content=[generate_pb2.ContentPart(text=text)])
    return generate_pb2.GenerateRequest(model="echo", messages=[msg], **kw)


def stub(gw: Gateway) -> tuple[grpc.Channel, Any]:
    ch = grpc.insecure_channel(gw.address)
    return ch, inference_pb2_grpc.InferenceStub(ch)


def test_generate_unary(gateway: Gateway, providers: tuple[OpenAIStandIn, OpenAIStandIn]) -> None:
    ch, s = stub(gateway)
    with ch:
        resp = s.Generate(
            request(id="g-1", sampling=generate_pb2.SamplingParams(temperature=0.2, max_tokens=50)),
            timeout=10,
        )
    assert resp.text == "echo: hello mesh gateway"
    assert resp.finish_reason == generate_pb2.FINISH_REASON_STOP
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (3, 4)
    assert resp.id == "g-1" and resp.route.pool == "llm" and resp.route.backend == "openai"
    sent = [r for p in providers for r in p.requests if r.get("messages")][-1]
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 50 and sent["stream"] is False


def test_stream_delivers_tokens_as_they_come_and_ends_with_usage(
    gateway: Gateway, providers: tuple[OpenAIStandIn, OpenAIStandIn]
) -> None:
    for p in providers:
        p.token_interval_s = 0.2
    ch, s = stub(gateway)
    with ch:
        start = time.monotonic()
        arrivals, deltas, end = [], [], None
        for msg in s.GenerateStream(request("one two three four"), timeout=20):
            arrivals.append(time.monotonic() - start)
            if msg.WhichOneof("event") == "delta":
                deltas.append(msg.delta)
            else:
                end = msg.end
    assert "".join(deltas) == "echo: one two three four"
    assert arrivals[0] < 0.3  # the first token is not held back until the end
    assert arrivals[-1] > 0.8
    assert end is not None and end.finish_reason == generate_pb2.FINISH_REASON_STOP
    assert (end.usage.prompt_tokens, end.usage.completion_tokens) == (4, 5)
    assert end.route.endpoint in ("llm-a", "llm-b")
    sent = [r for p in providers for r in p.requests if r.get("stream")][-1]
    assert sent["stream_options"] == {"include_usage": True}


def test_cancelling_the_stream_cancels_upstream(
    gateway: Gateway, providers: tuple[OpenAIStandIn, OpenAIStandIn]
) -> None:
    for p in providers:
        p.token_interval_s = 0.3
    before = sum(p.cancelled for p in providers)
    ch, s = stub(gateway)
    with ch:
        call = s.GenerateStream(request("a b c d e f g h i j k l m n o p"), timeout=30)
        next(call)
        next(call)
        call.cancel()
    wait_until(
        lambda: sum(p.cancelled for p in providers) == before + 1, 5, "the upstream stream to be dropped"
    )


def test_stream_broken_before_first_token_is_retried_on_another_endpoint(
    gateway: Gateway, providers: tuple[OpenAIStandIn, OpenAIStandIn]
) -> None:
    providers[0].fail_next(503, 1)  # llm-a fails its next stream before any token
    ch, s = stub(gateway)
    ends = []
    with ch:
        for _ in range(2):  # one of the two streams lands on llm-a first, whichever is picked first
            msgs = list(s.GenerateStream(request("retry me"), timeout=10))
            assert "".join(m.delta for m in msgs[:-1]) == "echo: retry me"
            ends.append(msgs[-1].end)
    assert sorted(e.route.attempts for e in ends) == [1, 2]
    assert [e.route.endpoint for e in ends if e.route.attempts == 2] == ["llm-b"]


def _completion_tokens(gw: Gateway) -> float:
    import urllib.request

    page = urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=5).read().decode()
    prefix = 'meshgate_tokens_total{kind="completion",pool="llm"}'
    line = next((x for x in page.splitlines() if x.startswith(prefix)), "")
    return float(line.split()[-1]) if line else 0.0


def test_stream_broken_after_first_token_is_unavailable(
    gateway: Gateway, providers: tuple[OpenAIStandIn, OpenAIStandIn]
) -> None:
    tokens_before = _completion_tokens(gateway)
    for p in providers:
        p.break_after = 2
    ch, s = stub(gateway)
    got = []
    with ch, pytest.raises(grpc.RpcError) as caught:
        for msg in s.GenerateStream(request("x y z w"), timeout=10):
            got.append(msg.delta)
    assert "".join(got) == "echo: x"  # two deltas (one message when they arrive together)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _completion_tokens(gateway) == tokens_before + 2  # what the caller received is accounted
    assert (
        "stream ended before [DONE]" in caught.value.details()
        or "the connection closed before the response was complete" in caught.value.details()
    )


def test_embed(gateway: Gateway) -> None:
    ch, s = stub(gateway)
    with ch:
        resp = s.Embed(
            generate_pb2.EmbedRequest(model="embed-small", inputs=["a b", "c"], dimensions=3), timeout=10
        )
    assert len(resp.embeddings) == 2
    assert [round(v, 4) for v in resp.embeddings[1].values] == [
        round(b / 255, 4) for b in hashlib.sha256(b"c").digest()[:3]
    ]
    assert resp.usage.prompt_tokens == 3


@pytest.mark.parametrize(
    ("status", "code", "fragment"),
    [
        (404, grpc.StatusCode.NOT_FOUND, "model does not exist"),
        (403, grpc.StatusCode.PERMISSION_DENIED, "does not have access"),
    ],
)
def test_provider_errors_map_to_grpc_codes(
    gateway: Gateway,
    providers: tuple[OpenAIStandIn, OpenAIStandIn],
    status: int,
    code: grpc.StatusCode,
    fragment: str,
) -> None:
    for p in providers:
        p.fail_next(status, 1)
    ch, s = stub(gateway)
    with ch, pytest.raises(grpc.RpcError) as caught:
        s.Generate(request(), timeout=10)
    assert caught.value.code() == code
    assert f"HTTP {status}" in caught.value.details() and fragment in caught.value.details()


def test_rate_limit_carries_retry_info(
    gateway: Gateway, providers: tuple[OpenAIStandIn, OpenAIStandIn]
) -> None:
    for p in providers:
        p.fail_next(429, 1, retry_after="7")
    ch, s = stub(gateway)
    with ch, pytest.raises(grpc.RpcError) as caught:
        s.Generate(request(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(caught.value)
    info = error_details_pb2.RetryInfo()
    assert status is not None and any(d.Unpack(info) for d in status.details)
    assert info.retry_delay.seconds == 7


def test_server_errors_are_retried_on_the_other_endpoint(
    gateway: Gateway, providers: tuple[OpenAIStandIn, OpenAIStandIn]
) -> None:
    providers[0].fail_next(500, 1)
    ch, s = stub(gateway)
    with ch:
        answers = [s.Generate(request("second try"), timeout=10) for _ in range(2)]
    assert all(a.text == "echo: second try" for a in answers)
    assert sorted(a.route.attempts for a in answers) == [1, 2]


def test_wrong_key_is_failed_precondition_and_never_leaks(
    gateway: Gateway, providers: tuple[OpenAIStandIn, OpenAIStandIn]
) -> None:
    for p in providers:
        p.api_key = "sk-other-key-999999999999"
    ch, s = stub(gateway)
    with ch, pytest.raises(grpc.RpcError) as caught:
        s.Generate(request(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "HTTP 401" in caught.value.details()
    assert KEY not in caught.value.details() and KEY[:12] not in caught.value.details()
    assert KEY not in gateway.log()


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (generate_pb2.GenerateRequest(model="echo"), "messages"),
        (request(sampling=generate_pb2.SamplingParams(temperature=3)), "sampling.temperature"),
        (request(sampling=generate_pb2.SamplingParams(max_tokens=0)), "sampling.max_tokens"),
        (
            request(tools=[generate_pb2.ToolDefinition(name="f", parameters_json="[1")]),
            "tools[0].parameters_json",
        ),
        (
            generate_pb2.GenerateRequest(model="echo", messages=[generate_pb2.ChatMessage(role="wizard")]),
            "messages[0].role",
        ),
    ],
)
def test_bad_generate_requests(gateway: Gateway, req: Any, field: str) -> None:
    ch, s = stub(gateway)
    with ch, pytest.raises(grpc.RpcError) as caught:
        s.Generate(req, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(caught.value)] == [field]


def test_generate_on_a_tensor_model_is_refused(triton_a: Any) -> None:
    gw = Gateway(
        {
            "pools": {
                "p": {
                    "endpoints": [{"address": triton_a.address, "backend": "triton", "models": ["add_sub"]}]
                }
            }
        }
    )
    gw.start().wait_serving("p")
    try:
        ch, s = stub(gw)
        with ch, pytest.raises(grpc.RpcError) as caught:
            s.Generate(generate_pb2.GenerateRequest(model="add_sub", messages=request().messages), timeout=10)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "use Infer" in caught.value.details()
    finally:
        gw.stop()


def test_external_apis_are_probed_at_their_own_slower_interval(
    gateway: Gateway, providers: tuple[OpenAIStandIn, OpenAIStandIn]
) -> None:
    """Readiness rounds run every 0.3 s here, but `openai` endpoints are listed at 15 s by default
    (readiness.interval_by_backend): their model list is not fetched every round."""
    before = [p.model_list_calls for p in providers]
    time.sleep(1.5)
    after = [p.model_list_calls for p in providers]
    assert all(b - a <= 1 for a, b in zip(before, after, strict=True)), (before, after)
    assert all(a >= 1 for a in after)  # they were checked (at start)


def test_tracing_off_passes_the_callers_trace_context_on_unchanged(
    gateway: Gateway, providers: tuple[OpenAIStandIn, OpenAIStandIn]
) -> None:
    """W3C's rule for an intermediary that does not trace: the backend's trace joins the caller's.
    A malformed traceparent is not passed on."""
    for p in providers:
        p.headers_seen.clear()
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ch, s = stub(gateway)
    with ch:
        s.Generate(
            request(), timeout=10, metadata=(("traceparent", parent), ("tracestate", "rojo=00f067aa0ba902b7"))
        )
        s.Generate(request(), timeout=10, metadata=(("traceparent", "00-not-a-trace"),))
    seen = [{k.lower(): v for k, v in h.items()} for p in providers for h in p.headers_seen]
    assert len(seen) == 2
    passed = [h for h in seen if "traceparent" in h]
    assert len(passed) == 1
    assert (passed[0]["traceparent"], passed[0]["tracestate"]) == (parent, "rojo=00f067aa0ba902b7")
