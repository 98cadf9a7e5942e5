"""Every bad request is refused before a backend sees it, with the field named."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from meshgate.v1 import inference_pb2, tensor_pb2
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from tests.helpers import add_sub_request, field_violations, fp32, infer

T = tensor_pb2.Tensor
FP32 = "DATA_TYPE_FP32"


def _req(*inputs: Any, model: str = "add_sub", **kw: Any) -> Any:
    return inference_pb2.InferRequest(model=model, inputs=list(inputs), **kw)


CASES = [
    # (id, request, code, field, message fragment)
    ("no model", _req(fp32("INPUT0", [1]), model=""), "INVALID_ARGUMENT", "model", "required"),
    ("unknown model", _req(fp32("INPUT0", [1]), model="nope"), "NOT_FOUND", "model", "'nope' is not served"),
    ("unknown version", add_sub_request([1], [1], model_version="7"), "NOT_FOUND", "model_version", "'7'"),
    ("no inputs", _req(), "INVALID_ARGUMENT", "inputs", "at least one input"),
    (
        "unnamed input",
        _req(T(datatype=FP32, shape=[1], raw=b"\0" * 4)),
        "INVALID_ARGUMENT",
        "inputs[0].name",
        "required",
    ),
    (
        "duplicate name",
        _req(fp32("A", [1]), fp32("A", [2])),
        "INVALID_ARGUMENT",
        "inputs[1].name",
        "duplicate",
    ),
    (
        "no datatype",
        _req(T(name="A", shape=[1], raw=b"\0" * 4)),
        "INVALID_ARGUMENT",
        "inputs[0].datatype",
        "unsupported datatype",
    ),
    (
        "unknown datatype",
        _req(T(name="A", datatype=99, shape=[1], raw=b"\0" * 4)),
        "INVALID_ARGUMENT",
        "inputs[0].datatype",
        "unsupported datatype",
    ),
    (
        "empty shape",
        _req(T(name="A", datatype=FP32, raw=b"\0" * 4)),
        "INVALID_ARGUMENT",
        "inputs[0].shape",
        "at least one dimension",
    ),
    (
        "negative dim",
        _req(T(name="A", datatype=FP32, shape=[-1], raw=b"")),
        "INVALID_ARGUMENT",
        "inputs[0].shape",
        "must be >= 0",
    ),
    (
        "raw size mismatch",
        _req(T(name="A", datatype=FP32, shape=[2], raw=b"\0" * 4)),
        "INVALID_ARGUMENT",
        "inputs[0].raw",
        "needs 8 bytes, got 4",
    ),
    ("no data", _req(T(name="A", datatype=FP32, shape=[1])), "INVALID_ARGUMENT", "inputs[0].data", "no data"),
    (
        "contents count mismatch",
        _req(T(name="A", datatype=FP32, shape=[3], contents=tensor_pb2.TensorContents(fp32_contents=[1, 2]))),
        "INVALID_ARGUMENT",
        "inputs[0].contents",
        "holds 3 elements but contents has 2",
    ),
    (
        "contents in the wrong field",
        _req(T(name="A", datatype=FP32, shape=[1], contents=tensor_pb2.TensorContents(int_contents=[1]))),
        "INVALID_ARGUMENT",
        "inputs[0].contents",
        "values go in contents.fp32_contents",
    ),
    (
        "truncated BYTES",
        _req(T(name="A", datatype="DATA_TYPE_BYTES", shape=[1], raw=b"\x05\0\0\0ab")),
        "INVALID_ARGUMENT",
        "inputs[0].raw",
        "past the end",
    ),
    (
        "oversize payload",
        _req(T(name="A", datatype="DATA_TYPE_UINT8", shape=[300_000], raw=b"\0" * 300_000)),
        "INVALID_ARGUMENT",
        "inputs[0].data",
        "over the limit of 262144 bytes",
    ),
    (
        "unnamed output",
        add_sub_request([1], [1], outputs=[inference_pb2.RequestedOutput()]),
        "INVALID_ARGUMENT",
        "outputs[0].name",
        "required",
    ),
]


@pytest.fixture(scope="module")
def limited_gateway(triton_a: Any) -> Any:
    from tests.procs import Gateway, pool_config

    gw = Gateway(
        pool_config(
            {"p": [("triton-a", triton_a.address, ["add_sub:1"])]},
            limits={"max_request_bytes": 262144},
        )
    ).start()
    gw.wait_serving("p")
    yield gw
    gw.stop()


@pytest.mark.parametrize(
    ("request_", "code", "field", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_request_is_refused_with_field(
    limited_gateway: Any, request_: Any, code: str, field: str, fragment: str
) -> None:
    with grpc.insecure_channel(limited_gateway.address) as ch:
        with pytest.raises(grpc.RpcError) as caught:
            infer(ch, request_)
        err = caught.value
        assert err.code().name == code
        assert fragment in err.details()
        assert field in err.details()
        if code == "INVALID_ARGUMENT":
            assert [f for f, _ in field_violations(err)] == [field]
        # The server is still fine afterwards.
        assert infer(ch, add_sub_request([1], [2])).outputs


def test_kserve_door_validates_raw_contents_count(limited_gateway: Any) -> None:
    req = kpb.ModelInferRequest(model_name="add_sub")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1])
    req.inputs.add(name="INPUT1", datatype="FP32", shape=[1])
    req.raw_input_contents.append(b"\0" * 4)
    with grpc.insecure_channel(limited_gateway.address) as ch, pytest.raises(grpc.RpcError) as caught:
        kpb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents: 1 raw contents for 2 inputs" in caught.value.details()


def test_kserve_door_rejects_unsupported_datatype(limited_gateway: Any) -> None:
    req = kpb.ModelInferRequest(model_name="add_sub")
    req.inputs.add(name="INPUT0", datatype="FP8", shape=[1])
    req.raw_input_contents.append(b"\0")
    with grpc.insecure_channel(limited_gateway.address) as ch, pytest.raises(grpc.RpcError) as caught:
        kpb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[0].datatype: unsupported datatype FP8" in caught.value.details()


def test_message_over_transport_cap_is_refused_and_server_survives(limited_gateway: Any) -> None:
    big = T(name="A", datatype="DATA_TYPE_UINT8", shape=[70 * 1024 * 1024], raw=b"\0" * (70 * 1024 * 1024))
    with grpc.insecure_channel(limited_gateway.address, options=[("grpc.max_send_message_length", -1)]) as ch:
        with pytest.raises(grpc.RpcError) as caught:
            infer(ch, _req(big))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert infer(ch, add_sub_request([1], [2])).outputs
