"""Hostile input through both doors of the real gateway: undecodable bodies, mutated messages,
extreme names, shapes and parameters over every RPC, Admin's included (a hypothesis fuzz, ~30 s), and a provider
that echoes the gateway's key in odd shapes.

What must hold: no UNKNOWN, no INTERNAL unless a backend said so (its message names it), no
traceback in the log, the junk counted and logged at most once per 10 s per method, no piece of
a configured key in any answer or log line, and a correct call still works at the end.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor as FD
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshgate.v1 import admin_pb2, generate_pb2, inference_pb2, inference_pb2_grpc, models_pb2
from tritonclient.grpc import service_pb2 as kpb

from adapters.scrub import PIECE
from tests.helpers import add_sub_request, infer, metric_value
from tests.openai_standin import OpenAIStandIn
from tests.procs import Gateway, Triton

SERVICES = [
    inference_pb2.DESCRIPTOR.services_by_name["Inference"],
    models_pb2.DESCRIPTOR.services_by_name["Models"],
    kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    admin_pb2.DESCRIPTOR.services_by_name["Admin"],
]
METHODS = [(f"/{svc.full_name}/{m.name}", m) for svc in SERVICES for m in svc.methods]
NAMES = [
    "add_sub",
    "echo_text",
    "fail",
    "echo",
    "embed-small",
    "",
    "x" * 9000,
    "add_sub\n",
    "../../etc/passwd",
    "\x00\x01",
]
INTS = [0, 1, -1, 2, 3, 2**31 - 1, -(2**31), 2**62, -(2**63), 2**63 - 1]
KEY = "sk-fuzz-0123456789abcdef"


@pytest.fixture(scope="module")
def provider() -> Iterator[OpenAIStandIn]:
    p = OpenAIStandIn(api_key=KEY)
    yield p
    p.close()


@pytest.fixture(scope="module")
def target(
    triton_a: Triton, provider: OpenAIStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    key_file = tmp_path_factory.mktemp("keys") / "key"
    key_file.write_text(KEY)
    gw = Gateway(
        {
            "pools": {
                # no decoupled model here: a fuzzed countdown could keep Triton's instance busy
                "tritons": {
                    "endpoints": [
                        {
                            "id": "triton-a",
                            "address": triton_a.address,
                            "backend": "triton",
                            "models": ["add_sub", "echo_text", "fail"],
                        }
                    ]
                },
                "llm": {
                    "endpoints": [
                        {
                            "id": "llm-a",
                            "address": "127.0.0.1:1",
                            "backend": "openai",
                            "models": ["echo", "embed-small"],
                            "base_url": provider.base_url,
                            "api_key_file": str(key_file),
                        }
                    ]
                },
            }
        }
    ).start()
    try:
        gw.wait_serving("tritons").wait_serving("llm")
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def channel(target: Gateway) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(target.address) as ch:
        yield ch


def call(ch: grpc.Channel, path: str, method: Any, body: bytes) -> tuple[grpc.StatusCode, str]:
    """One raw call; (code, details)."""
    try:
        if method.client_streaming:
            list(ch.stream_stream(path)(iter([body]), timeout=5))
        elif method.server_streaming:
            list(ch.unary_stream(path)(body, timeout=5))
        else:
            ch.unary_unary(path)(body, timeout=5)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def check_answer(code: grpc.StatusCode, details: str, path: str) -> None:
    assert code != grpc.StatusCode.UNKNOWN, (path, details)
    if code == grpc.StatusCode.INTERNAL:  # only a backend's own failure, named as such
        assert details.startswith("backend "), (path, details)
    assert "Traceback" not in details and "Exception calling application" not in details, (path, details)


@st.composite
def messages(draw: st.DrawFn, descriptor: Any, depth: int = 0) -> Any:
    """A message of `descriptor`'s type with every field drawn from extreme values."""
    msg = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            for _ in range(draw(st.integers(0, 2))):
                key = draw(_scalar(key_field))
                if value_field.message_type is not None:
                    if depth < 3:
                        getattr(msg, field.name)[key].CopyFrom(
                            draw(messages(value_field.message_type, depth + 1))
                        )
                else:
                    getattr(msg, field.name)[key] = draw(_scalar(value_field))
            continue
        repeated = field.label == FD.LABEL_REPEATED
        count = draw(st.integers(0, 3)) if repeated else 1
        for _ in range(count):
            if field.message_type is not None:
                if depth >= 3:
                    break
                value = draw(messages(field.message_type, depth + 1))
                if repeated:
                    getattr(msg, field.name).add().CopyFrom(value)
                else:
                    getattr(msg, field.name).CopyFrom(value)
            elif repeated:
                getattr(msg, field.name).append(draw(_scalar(field)))
            else:
                setattr(msg, field.name, draw(_scalar(field)))
    return msg


def _scalar(field: Any) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FD.TYPE_STRING:
        if field.name in ("datatype",):
            return st.sampled_from(["FP32", "BYTES", "INT64", "FP16", "BOOL", "NOPE", ""])
        return st.sampled_from(NAMES) | st.text(max_size=12)
    if t == FD.TYPE_BYTES:
        return st.binary(max_size=48)
    if t == FD.TYPE_BOOL:
        return st.booleans()
    if t in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        return st.sampled_from([0.0, -1.0, 1e30, math.inf, -math.inf, math.nan]) | st.floats(width=32)
    if t == FD.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values] + [99])
    lo, hi = {
        FD.TYPE_INT32: (-(2**31), 2**31 - 1),
        FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
        FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
        FD.TYPE_UINT32: (0, 2**32 - 1),
        FD.TYPE_FIXED32: (0, 2**32 - 1),
        FD.TYPE_UINT64: (0, 2**64 - 1),
        FD.TYPE_FIXED64: (0, 2**64 - 1),
    }.get(t, (-(2**63), 2**63 - 1))
    return st.sampled_from([i for i in INTS if lo <= i <= hi]) | st.integers(lo, hi)


FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    database=None,
)


@FUZZ
@given(data=st.data())
def test_fuzz_structured_messages(channel: grpc.Channel, data: st.DataObject) -> None:
    path, method = data.draw(st.sampled_from(METHODS))
    body = data.draw(messages(method.input_type)).SerializeToString()
    check_answer(*call(channel, path, method, body), path)


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_and_garbage_bodies(channel: grpc.Channel, data: st.DataObject) -> None:
    path, method = data.draw(st.sampled_from(METHODS))
    body = bytearray(data.draw(messages(method.input_type)).SerializeToString())
    how = data.draw(st.sampled_from(["garbage", "truncate", "flip", "append"]))
    if how == "garbage":
        body = bytearray(data.draw(st.binary(min_size=1, max_size=200)))
    elif how == "truncate" and body:
        body = body[: data.draw(st.integers(0, len(body) - 1))]
    elif how == "flip" and body:
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] ^= data.draw(st.integers(1, 255))
    else:
        body += data.draw(st.binary(min_size=1, max_size=16))
    check_answer(*call(channel, path, method, bytes(body)), path)


def test_after_the_fuzz(target: Gateway, channel: grpc.Channel) -> None:
    """Runs after the fuzz tests (file order): the gateway is alive, answers correctly, kept the
    junk out of its log, and counted it."""
    resp = infer(channel, add_sub_request([1, 2], [3, 4]))
    assert np.frombuffer(resp.outputs[0].raw, dtype="<f4").tolist() == [4.0, 6.0]
    msg = generate_pb2.ChatMessage(role="user", content=[generate_pb2.ContentPart(text="still here")])
    out = inference_pb2_grpc.InferenceStub(channel).Generate(
        generate_pb2.GenerateRequest(model="echo", messages=[msg]), timeout=10
    )
    assert "still here" in out.text
    log = target.log()
    assert "Traceback" not in log, log[-4000:]
    assert "internal error in the gateway" not in log
    page = target.metrics_text()
    junk = sum(metric_value(page, "meshgate_undecodable_requests_total", method=m.name) for _, m in METHODS)
    assert junk > 20
    # Logged at most once per method per 10 s (the fuzz runs well under a minute).
    lines = re.findall(r"(\w+): request body did not parse", log)
    assert lines and all(lines.count(m) <= 6 for m in set(lines)), lines


def test_undecodable_body_is_invalid_argument_on_every_door(channel: grpc.Channel, target: Gateway) -> None:
    for path, method in [*METHODS, ("/grpc.health.v1.Health/Check", None)]:
        if method is None:
            code, details = _raw_unary(channel, path)
        else:
            code, details = call(channel, path, method, b"\xff\xff\xff\xff\x0f")
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (path, code, details)
        assert "request body is not a valid" in details, details


def _raw_unary(ch: grpc.Channel, path: str) -> tuple[grpc.StatusCode, str]:
    try:
        ch.unary_unary(path)(b"\xff\xff\xff\xff\x0f", timeout=5)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def test_a_key_echoed_in_odd_shapes_never_leaves_the_gateway(
    triton_a: Triton, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The gateway's key is wrong; the provider's 401 echoes it whole, after `Bearer`, without
    its prefix and cut in two. No piece of PIECE characters of it reaches a caller or the log
    (DEBUG included: the full backend text is logged there)."""
    ours = "0123456789abcdefSECRET123"
    provider = OpenAIStandIn(api_key="sk-the-right-one-000000")
    provider.echo_key_oddly = True
    key_file = tmp_path_factory.mktemp("keys") / "wrong"
    key_file.write_text(ours)
    ep = {
        "id": "llm-x",
        "address": "127.0.0.1:1",
        "backend": "openai",
        "models": ["echo"],
        "base_url": provider.base_url,
        "api_key_file": str(key_file),
    }
    gw = Gateway({"log_level": "DEBUG", "pools": {"llm": {"endpoints": [ep]}}}).start()
    answers: list[str] = []
    try:
        msg = generate_pb2.ChatMessage(role="user", content=[generate_pb2.ContentPart(text="hi")])
        with grpc.insecure_channel(gw.address) as ch:
            stub = inference_pb2_grpc.InferenceStub(ch)
            for rpc in (stub.Generate, stub.GenerateStream):
                for _ in range(3):
                    with pytest.raises(grpc.RpcError) as err:
                        result = rpc(generate_pb2.GenerateRequest(model="echo", messages=[msg]), timeout=10)
                        list(result) if rpc is stub.GenerateStream else None
                    answers.append(err.value.details() or "")
                    answers.extend(repr(v) for _, v in (err.value.trailing_metadata() or ()))
        assert all("HTTP 401" in a for a in answers[::1] if "Incorrect" in a)
        assert any("Incorrect API key provided" in a for a in answers)
    finally:
        gw.stop()
        provider.close()
    text = "\n".join(answers) + "\n" + gw.log()
    assert "backend message in full" in text  # DEBUG was on, and the full text was logged (scrubbed)
    pieces = {ours[i : i + PIECE] for i in range(len(ours) - PIECE + 1)}
    leaked = sorted(p for p in pieces if p in text)
    assert leaked == [], leaked


def test_a_message_over_the_transport_cap_is_refused_cleanly(triton_a: Triton) -> None:
    """Above server.max_message_bytes gRPC itself refuses the message (RESOURCE_EXHAUSTED, the
    code gRPC defines for it, naming both sizes) before any handler runs: nothing is logged."""
    ep = {"id": "triton-a", "address": triton_a.address, "backend": "triton", "models": ["add_sub"]}
    gw = Gateway({"server": {"max_message_bytes": 65536}, "pools": {"p": {"endpoints": [ep]}}}).start()
    try:
        gw.wait_serving("p")
        with grpc.insecure_channel(gw.address) as ch:
            with pytest.raises(grpc.RpcError) as big:
                infer(ch, add_sub_request([1.0] * 20000, [1.0] * 20000))
            assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "65536" in (big.value.details() or "")
            resp = infer(ch, add_sub_request([1.0], [2.0]))  # the connection and gateway carry on
            assert np.frombuffer(resp.outputs[0].raw, dtype="<f4").tolist() == [3.0]
        assert "Traceback" not in gw.log()
    finally:
        gw.stop()
