"""A real TorchServe behind the gateway, through both of its gRPC APIs.

One TorchServe process (TS_OPEN_INFERENCE_PROTOCOL=oip) serves the native `Predictions` API and
the Open Inference Protocol on the same port; the gateway reaches it as two endpoints in two
pools, one per protocol, so each test names the protocol it exercises.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from meshgate.v1 import inference_pb2, models_pb2, models_pb2_grpc, tensor_pb2

from adapters import BackendError, InferCall, Tensor
from adapters.torchserve import TorchServeOIPAdapter, TorchServePredictionsAdapter, torchserve_adapter
from tests.helpers import fp32, infer
from tests.procs import Gateway, TorchServe

MAX = 4 << 20


def _gateway(ts: TorchServe, protocol: str) -> Gateway:
    ep = {
        "id": f"ts-{protocol}",
        "address": ts.address,
        "backend": "torchserve",
        "models": ["add_sub"],
        "meta": {"protocol": protocol, "management_port": str(ts.management_port)},
    }
    return Gateway({"pools": {"torch": {"endpoints": [ep]}}}).start()


@pytest.fixture(scope="module")
def native(torchserve: TorchServe) -> Iterator[Gateway]:
    gw = _gateway(torchserve, "predictions")
    try:
        gw.wait_serving("torch")
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def oip(torchserve: TorchServe) -> Iterator[Gateway]:
    gw = _gateway(torchserve, "oip")
    try:
        gw.wait_serving("torch")
        yield gw
    finally:
        gw.stop()


def _prediction(resp: inference_pb2.InferResponse, name: str = "prediction") -> object:
    (out,) = resp.outputs
    assert (out.name, out.datatype, list(out.shape)) == (name, tensor_pb2.DATA_TYPE_BYTES, [1])
    assert out.raw[:4] == len(out.raw[4:]).to_bytes(4, "little")  # one length-prefixed element
    return json.loads(out.raw[4:])


def test_predictions_api_through_the_gateway(native: Gateway) -> None:
    req = inference_pb2.InferRequest(model="add_sub", inputs=[fp32("INPUT0", [1, 2]), fp32("INPUT1", [3, 5])])
    with grpc.insecure_channel(native.address) as ch:
        resp = infer(ch, req)
    assert resp.route.backend == "torchserve"
    assert resp.route.endpoint == "ts-predictions"
    assert _prediction(resp) == {"OUTPUT0": [4.0, 7.0], "OUTPUT1": [-2.0, -3.0]}


def test_predictions_api_sends_a_lone_bytes_element_as_is(native: Gateway) -> None:
    """A BYTES tensor with one element (an image, a text) reaches the model unchanged."""
    text = tensor_pb2.Tensor(
        name="INPUT0",
        datatype="DATA_TYPE_BYTES",
        shape=[1],
        contents=tensor_pb2.TensorContents(bytes_contents=[b"[10, 20]"]),
    )
    req = inference_pb2.InferRequest(
        model="add_sub",
        inputs=[text, fp32("INPUT1", [1, 2])],
        outputs=[inference_pb2.RequestedOutput(name="sums")],
    )
    with grpc.insecure_channel(native.address) as ch:
        resp = infer(ch, req)
    assert _prediction(resp, "sums") == {"OUTPUT0": [11.0, 22.0], "OUTPUT1": [9.0, 18.0]}


def test_a_model_that_raises_is_internal_and_leaves_the_endpoint_up(native: Gateway) -> None:
    broken = inference_pb2.InferRequest(model="add_sub", inputs=[fp32("fail", [1])])
    with grpc.insecure_channel(native.address) as ch:
        with pytest.raises(grpc.RpcError) as caught:
            infer(ch, broken)
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert "backend ts-predictions (torchserve at 127.0.0.1:" in caught.value.details()
        assert "Prediction failed" in caught.value.details()
        health = _endpoint(ch)
        assert (health.consecutive_failures, health.ejected) == (0, False)  # a model error, not a fault
        # Not the endpoint's fault: it stays in rotation and the next call succeeds at once.
        ok = infer(
            ch, inference_pb2.InferRequest(model="add_sub", inputs=[fp32("INPUT0", [1]), fp32("INPUT1", [1])])
        )
        assert _prediction(ok) == {"OUTPUT0": [2.0], "OUTPUT1": [0.0]}


def _endpoint(ch: grpc.Channel) -> models_pb2.Endpoint:
    model = (
        models_pb2_grpc.ModelsStub(ch).GetModel(models_pb2.GetModelRequest(name="add_sub"), timeout=5).model
    )
    return model.pools[0].endpoints[0]


def test_models_service_shows_torchserve_readiness_and_versions(native: Gateway) -> None:
    with grpc.insecure_channel(native.address) as ch:
        model = (
            models_pb2_grpc.ModelsStub(ch)
            .GetModel(models_pb2.GetModelRequest(name="add_sub"), timeout=5)
            .model
        )
        (pool,) = model.pools
        (ep,) = pool.endpoints
        assert (model.ready, list(model.backends)) == (True, ["torchserve"])
        assert (ep.id, ep.backend, ep.ready) == ("ts-predictions", "torchserve", True)
        meta = tc.InferenceServerClient(url=native.address).get_model_metadata("add_sub")
        assert (meta.name, list(meta.versions), meta.platform) == ("add_sub", ["1.0"], "torchserve")


def test_open_inference_protocol_with_tritonclient(oip: Gateway) -> None:
    """tritonclient cannot talk to TorchServe's OIP service (other service name); via meshgate it can."""
    client = tc.InferenceServerClient(url=oip.address)
    a, b = np.array([1, 2, 3], dtype=np.float32), np.array([4, 4, 4], dtype=np.float32)
    inputs = [tc.InferInput("INPUT0", [3], "FP32"), tc.InferInput("INPUT1", [3], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("add_sub", inputs)
    assert result.as_numpy("OUTPUT0").tolist() == [5, 6, 7]
    assert result.as_numpy("OUTPUT1").tolist() == [-3, -2, -1]
    assert client.is_model_ready("add_sub")
    assert list(client.get_model_metadata("add_sub").versions) == ["1.0"]


def test_open_inference_protocol_with_typed_api(oip: Gateway) -> None:
    req = inference_pb2.InferRequest(model="add_sub", inputs=[fp32("INPUT0", [1.5]), fp32("INPUT1", [0.5])])
    with grpc.insecure_channel(oip.address) as ch:
        resp = infer(ch, req)
    assert resp.route.endpoint == "ts-oip"
    # Raw in, typed out: TorchServe answers with typed contents, and the gateway passes them on.
    outputs = {t.name: list(t.contents.fp32_contents) for t in resp.outputs}
    assert outputs == {"OUTPUT0": [2.0], "OUTPUT1": [1.0]}


async def test_adapters_map_torchserve_errors(torchserve: TorchServe) -> None:
    """TorchServe answers INTERNAL "Model not found" for an unknown model: NOT_FOUND for the caller."""
    opts = {"management_port": str(torchserve.management_port)}
    native = torchserve_adapter("n", torchserve.address, max_message_bytes=MAX, options=opts)
    oip = torchserve_adapter("o", torchserve.address, max_message_bytes=MAX, options={"protocol": "oip"})
    assert isinstance(native, TorchServePredictionsAdapter)
    assert isinstance(oip, TorchServeOIPAdapter)
    try:
        assert await native.server_live(2) and await oip.server_live(2)
        assert await native.model_ready("add_sub", "", 2) and await oip.model_ready("add_sub", "", 2)
        assert not await native.model_ready("ghost", "", 2)
        assert not await oip.model_ready("ghost", "", 2)
        x = Tensor("INPUT0", "FP32", (1,), raw=np.float32([1]).tobytes())
        for adapter in (native, oip):
            for model, version in (("ghost", ""), ("add_sub", "9")):
                with pytest.raises(BackendError) as caught:
                    await adapter.infer(
                        InferCall(model=model, version=version, request_id="", inputs=(x,)), 5
                    )
                assert caught.value.code == grpc.StatusCode.NOT_FOUND, caught.value.message
                assert not caught.value.retryable
                assert "\n" not in caught.value.message  # no Java exception class names
    finally:
        await asyncio.gather(native.aclose(), oip.aclose())


def test_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="protocol must be 'predictions' or 'oip'"):
        torchserve_adapter("x", "127.0.0.1:1", max_message_bytes=MAX, options={"protocol": "rest"})
