"""End to end through the real gateway process, generated stubs and real model servers."""

from __future__ import annotations

import collections

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from meshgate.v1 import inference_pb2, models_pb2, models_pb2_grpc, tensor_pb2

from tests.helpers import add_sub_request, fp32, infer, metric_value, output
from tests.procs import Gateway


def test_infer_on_triton_raw_tensors(channel: grpc.Channel) -> None:
    resp = infer(channel, add_sub_request([1, 2, 3], [10, 20, 30], id="req-1"))
    assert resp.model == "add_sub"
    assert resp.id == "req-1"
    np.testing.assert_array_equal(output(resp, "OUTPUT0"), [11, 22, 33])
    np.testing.assert_array_equal(output(resp, "OUTPUT1"), [-9, -18, -27])
    assert resp.route.pool == "tritons"
    assert resp.route.endpoint in ("triton-a", "triton-b")
    assert resp.route.backend == "triton"
    assert resp.route.attempts == 1


def test_infer_typed_contents_and_requested_output(channel: grpc.Channel) -> None:
    contents_a = tensor_pb2.TensorContents(fp32_contents=[1.5, 2.5])
    contents_b = tensor_pb2.TensorContents(fp32_contents=[0.5, 0.5])
    req = inference_pb2.InferRequest(
        model="add_sub",
        inputs=[
            tensor_pb2.Tensor(name="INPUT0", datatype="DATA_TYPE_FP32", shape=[2], contents=contents_a),
            tensor_pb2.Tensor(name="INPUT1", datatype="DATA_TYPE_FP32", shape=[2], contents=contents_b),
        ],
        outputs=[inference_pb2.RequestedOutput(name="OUTPUT1")],
    )
    resp = infer(channel, req)
    assert [t.name for t in resp.outputs] == ["OUTPUT1"]
    (out,) = resp.outputs
    assert out.WhichOneof("data") == "contents"  # typed in, typed out
    assert list(out.contents.fp32_contents) == [1.0, 2.0]


def test_mixed_raw_and_typed_inputs(channel: grpc.Channel) -> None:
    """KServe v2 wants all-raw or all-typed: the gateway decodes the raw one for the backend."""
    req = inference_pb2.InferRequest(
        model="add_sub",
        inputs=[
            fp32("INPUT0", [1, 2]),
            tensor_pb2.Tensor(
                name="INPUT1",
                datatype="DATA_TYPE_FP32",
                shape=[2],
                contents=tensor_pb2.TensorContents(fp32_contents=[10, 20]),
            ),
        ],
    )
    np.testing.assert_array_equal(output(infer(channel, req), "OUTPUT0"), [11, 22])
    fp16 = tensor_pb2.Tensor(name="INPUT0", datatype="DATA_TYPE_FP16", shape=[1], raw=b"\0\0")
    bad = inference_pb2.InferRequest(model="add_sub", inputs=[fp16, req.inputs[1]])
    with np.testing.assert_raises(grpc.RpcError) as caught:
        infer(channel, bad)
    assert caught.exception.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "FP16 has no typed form" in caught.exception.details()


def test_infer_bytes_tensor(channel: grpc.Channel) -> None:
    raw = b"".join(len(s).to_bytes(4, "little") + s for s in (b"hello", b"mesh"))
    req = inference_pb2.InferRequest(
        model="echo_text",
        inputs=[tensor_pb2.Tensor(name="TEXT", datatype="DATA_TYPE_BYTES", shape=[2], raw=raw)],
    )
    resp = infer(channel, req)
    out = resp.outputs[0]
    assert out.datatype == tensor_pb2.DATA_TYPE_BYTES
    assert out.raw == b"".join(len(s).to_bytes(4, "little") + s for s in (b"HELLO", b"MESH"))


def test_infer_on_mlserver(channel: grpc.Channel) -> None:
    req = inference_pb2.InferRequest(
        model="sum",
        inputs=[
            tensor_pb2.Tensor(
                name="x",
                datatype="DATA_TYPE_FP32",
                shape=[4],
                contents=tensor_pb2.TensorContents(fp32_contents=[1, 2, 3, 4.5]),
            )
        ],
    )
    resp = infer(channel, req)
    assert resp.route.backend == "kserve_v2"
    assert resp.route.endpoint == "mlserver-1"
    (t,) = resp.outputs
    assert t.name == "total"
    values = (
        np.frombuffer(t.raw, dtype="<f4")
        if t.WhichOneof("data") == "raw"
        else np.asarray(t.contents.fp32_contents)
    )
    np.testing.assert_allclose(values, [10.5])


def test_both_endpoints_of_a_pool_receive_traffic(channel: grpc.Channel) -> None:
    seen = collections.Counter(infer(channel, add_sub_request([1], [2])).route.endpoint for _ in range(20))
    assert set(seen) == {"triton-a", "triton-b"}
    assert min(seen.values()) >= 5, seen


def test_tritonclient_works_unchanged_against_the_gateway(gateway: Gateway) -> None:
    client = tc.InferenceServerClient(url=gateway.address)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("add_sub")
    assert not client.is_model_ready("no_such_model")
    md = client.get_model_metadata("add_sub")
    assert md.name == "add_sub"
    assert {i.name for i in md.inputs} == {"INPUT0", "INPUT1"}
    a = tc.InferInput("INPUT0", [3], "FP32")
    a.set_data_from_numpy(np.array([1, 2, 3], dtype=np.float32))
    b = tc.InferInput("INPUT1", [3], "FP32")
    b.set_data_from_numpy(np.array([1, 1, 1], dtype=np.float32))
    result = client.infer("add_sub", [a, b], request_id="tc-1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [2, 3, 4])
    assert result.get_response().id == "tc-1"
    with np.testing.assert_raises(tc.InferenceServerException) as caught:
        client.infer("no_such_model", [a, b])
    assert caught.exception.status() == "StatusCode.NOT_FOUND"
    assert "no_such_model" in caught.exception.message()
    client.close()


def test_models_service_lists_pools_and_endpoints(channel: grpc.Channel) -> None:
    stub = models_pb2_grpc.ModelsStub(channel)
    listed = stub.ListModels(models_pb2.ListModelsRequest(), timeout=5)
    assert [m.name for m in listed.models] == ["add_sub", "echo_text", "sleep", "sum"]
    model = stub.GetModel(models_pb2.GetModelRequest(name="add_sub"), timeout=5).model
    assert model.ready
    assert model.backends == ["triton"]
    (pool,) = model.pools
    assert pool.name == "tritons"
    assert [e.id for e in pool.endpoints] == ["triton-a", "triton-b"]
    assert all(e.ready for e in pool.endpoints)
    with np.testing.assert_raises(grpc.RpcError) as caught:
        stub.GetModel(models_pb2.GetModelRequest(name="nope"), timeout=5)
    assert caught.exception.code() == grpc.StatusCode.NOT_FOUND


def test_health_for_server_and_pools(gateway: Gateway) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    assert gateway.health("") == serving
    assert gateway.health("tritons") == serving
    assert gateway.health("mlservers") == serving
    with np.testing.assert_raises(grpc.RpcError) as caught:
        gateway.health("no-such-pool")
    assert caught.exception.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_every_service(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {
        "meshgate.v1.Inference",
        "meshgate.v1.Models",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    } <= names


def test_metrics_page_counts_calls(gateway: Gateway, channel: grpc.Channel) -> None:
    before = gateway.metrics_text()
    for _ in range(5):
        infer(channel, add_sub_request([1], [1]))
    unknown = add_sub_request([1], [1])
    unknown.model = "no_such_model"
    with pytest.raises(grpc.RpcError):
        infer(channel, unknown)
    page = gateway.metrics_text()
    ok = ("meshgate_requests_total", {"code": "OK", "method": "Infer"})
    assert metric_value(page, ok[0], **ok[1]) - metric_value(before, ok[0], **ok[1]) == 5
    missing = ("meshgate_requests_total", {"code": "NOT_FOUND", "method": "Infer"})
    assert metric_value(page, missing[0], **missing[1]) - metric_value(before, missing[0], **missing[1]) == 1
    count = ("meshgate_request_duration_seconds_count", {"method": "Infer"})
    assert metric_value(page, count[0], **count[1]) - metric_value(before, count[0], **count[1]) == 6
    backend = sum(
        metric_value(page, "meshgate_backend_requests_total", code="OK", endpoint=e, pool="tritons")
        - metric_value(before, "meshgate_backend_requests_total", code="OK", endpoint=e, pool="tritons")
        for e in ("triton-a", "triton-b")
    )
    assert backend == 5  # the NOT_FOUND call never reached a backend
    assert metric_value(page, "meshgate_endpoint_ready", endpoint="triton-a", pool="tritons") == 1.0
