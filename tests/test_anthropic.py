"""Generate / GenerateStream through the gateway to an Anthropic Messages API stand-in."""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import pytest
from meshgate.v1 import generate_pb2, inference_pb2_grpc

from tests.anthropic_standin import AnthropicStandIn
from tests.procs import Gateway, wait_until

KEY = "sk-ant-test-abcdef0123456789"


@pytest.fixture(scope="module")
def provider() -> Iterator[AnthropicStandIn]:
    p = AnthropicStandIn(api_key=KEY)
    p.model_ids = ["claude-echo"]
    yield p
    p.close()


@pytest.fixture(scope="module")
def gateway(provider: AnthropicStandIn) -> Iterator[Gateway]:
    os.environ["MESHGATE_TEST_ANTHROPIC_KEY"] = KEY
    ep = {
        "id": "claude",
        "address": "127.0.0.1:1",
        "backend": "anthropic",
        "models": ["claude-echo"],
        "base_url": provider.base_url,
        "api_key_env": "MESHGATE_TEST_ANTHROPIC_KEY",
    }
    gw = Gateway({"pools": {"anthropic": {"endpoints": [ep]}}}).start()
    try:
        gw.wait_serving("anthropic")
        yield gw
    finally:
        gw.stop()


def _req(text: str, **kw: object) -> generate_pb2.GenerateRequest:
    msgs = [
        generate_pb2.ChatMessage(role="system", content=[generate_pb2.ContentPart(text="be brief")]),
        generate_pb2.ChatMessage(role="user", content=[generate_pb2.ContentPart(text=text)]),
    ]
    return generate_pb2.GenerateRequest(model="claude-echo", messages=msgs, **kw)  # type: ignore[arg-type]


def test_generate(gateway: Gateway, provider: AnthropicStandIn) -> None:
    with grpc.insecure_channel(gateway.address) as ch:
        resp = inference_pb2_grpc.InferenceStub(ch).Generate(_req("hi there"), timeout=10)
    assert resp.text == "echo: hi there"
    assert resp.finish_reason == generate_pb2.FINISH_REASON_STOP
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.cached_tokens) == (4, 3, 2)
    sent = provider.requests[-1]
    assert sent["system"] == "be brief" and sent["max_tokens"] == 1024  # required by the API: defaulted
    assert [m["role"] for m in sent["messages"]] == ["user"]


def test_stream_and_max_tokens(gateway: Gateway) -> None:
    with grpc.insecure_channel(gateway.address) as ch:
        msgs = list(
            inference_pb2_grpc.InferenceStub(ch).GenerateStream(
                _req("a b c d e", sampling=generate_pb2.SamplingParams(max_tokens=3)), timeout=10
            )
        )
    assert "".join(m.delta for m in msgs[:-1]) == "echo: a b"
    end = msgs[-1].end
    assert end.finish_reason == generate_pb2.FINISH_REASON_LENGTH
    assert (end.usage.prompt_tokens, end.usage.completion_tokens) == (7, 3)


def _answers(stub: inference_pb2_grpc.InferenceStub) -> bool:
    try:
        return bool(stub.Generate(_req("ok"), timeout=5).text)
    except grpc.RpcError:
        return False


def test_errors(gateway: Gateway, provider: AnthropicStandIn) -> None:
    stub_errors = [
        (529, grpc.StatusCode.UNAVAILABLE),
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (400, grpc.StatusCode.INVALID_ARGUMENT),
    ]
    with grpc.insecure_channel(gateway.address) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        for status, code in stub_errors:
            provider.fail_next(status, 2)  # both the call and a retry, where one happens
            with pytest.raises(grpc.RpcError) as caught:
                stub.Generate(_req("x"), timeout=10)
            assert caught.value.code() == code, (status, caught.value.details())
            assert f"HTTP {status}" in caught.value.details()
            provider.fail_next(0, 0)
            # A 529 marks the endpoint down until its next readiness check: wait for it to be back.
            wait_until(lambda: _answers(stub), 5, "the endpoint to be ready again")
        provider.api_key = "sk-ant-other-000000000000"
        try:
            with pytest.raises(grpc.RpcError) as caught:
                stub.Generate(_req("x"), timeout=10)
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert KEY not in caught.value.details()
        finally:
            provider.api_key = KEY
        with pytest.raises(grpc.RpcError) as caught:
            stub.Embed(generate_pb2.EmbedRequest(model="claude-echo", inputs=["x"]), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
