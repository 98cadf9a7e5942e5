"""Infer through the gateway to TensorFlow Serving's REST API (stand-in), with versions and labels."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import tritonclient.grpc as tc
from meshgate.v1 import inference_pb2, tensor_pb2
from tritonclient.utils import InferenceServerException

from tests.helpers import fp32, infer, output
from tests.procs import Gateway
from tests.tfserving_standin import TFServingStandIn


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    tfs = TFServingStandIn()
    ep = {"id": "tfs-1", "address": tfs.address, "backend": "tfserving", "models": ["half_plus_two"]}
    gw = Gateway({"pools": {"tf": {"endpoints": [ep]}}}).start()
    try:
        gw.wait_serving("tf")
        yield gw
    finally:
        gw.stop()
        tfs.close()


def _req(version: str = "", values: list[float] | None = None) -> inference_pb2.InferRequest:
    return inference_pb2.InferRequest(
        model="half_plus_two", model_version=version, inputs=[fp32("x", values or [1, 2, 4])]
    )


@pytest.mark.parametrize(
    ("version", "expected"),
    [("", [3.5, 4, 5]), ("1", [2.5, 3, 4]), ("stable", [2.5, 3, 4]), ("canary", [3.5, 4, 5])],
)
def test_predict_with_versions_and_labels(gateway: Gateway, version: str, expected: list[float]) -> None:
    with grpc.insecure_channel(gateway.address) as ch:
        resp = infer(ch, _req(version))
    assert resp.route.backend == "tfserving"
    assert output(resp, "outputs").tolist() == expected


def test_typed_contents_and_errors(gateway: Gateway) -> None:
    typed = inference_pb2.InferRequest(
        model="half_plus_two",
        inputs=[
            tensor_pb2.Tensor(
                name="x",
                datatype="DATA_TYPE_FP32",
                shape=[2],
                contents=tensor_pb2.TensorContents(fp32_contents=[0, 2]),
            )
        ],
    )
    with grpc.insecure_channel(gateway.address) as ch:
        resp = infer(ch, typed)
        assert list(resp.outputs[0].contents.fp32_contents) == [3.0, 4.0]  # typed in, typed out
        with pytest.raises(grpc.RpcError) as caught:
            infer(ch, _req("7"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "backend tfs-1 (tfserving at http://127.0.0.1:" in caught.value.details()
        assert "Servable not found" in caught.value.details()
        text = tensor_pb2.Tensor(name="x", datatype="DATA_TYPE_BYTES", shape=[1], raw=b"\x03\x00\x00\x00abc")
        with pytest.raises(grpc.RpcError) as bad:
            infer(ch, inference_pb2.InferRequest(model="half_plus_two", inputs=[text]))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not of expected type" in bad.value.details()


def test_model_metadata_from_the_signature_def(gateway: Gateway) -> None:
    client = tc.InferenceServerClient(url=gateway.address)
    meta = client.get_model_metadata("half_plus_two")
    assert (meta.name, list(meta.versions), meta.platform) == (
        "half_plus_two",
        ["2", "1"],
        "tensorflow_serving",
    )
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("y", "FP32", [-1, 1])]
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("half_plus_two", model_version="7")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    assert "Servable not found" in str(caught.value.message())
