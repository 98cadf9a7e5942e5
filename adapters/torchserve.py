"""TorchServe adapters: its native gRPC `Predictions` API, or the Open Inference Protocol.

Consul Meta (or endpoint `meta` in config) `protocol` picks one:

- `predictions` (default): `org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions`.
  TorchServe models take named byte strings and return one byte string, so each input tensor
  becomes one entry of the `input` map: a BYTES tensor with one element is sent as that element
  (an image, a text), any other tensor as JSON of its nested values. The model's reply comes back
  as one BYTES tensor of shape [1], named after the first requested output or `prediction`.
  Readiness and metadata come from the gRPC management API (`DescribeModel`), on Meta
  `management_port` or, as in TorchServe's defaults (7070/7071), the inference port + 1.
- `oip`: the server runs with TS_OPEN_INFERENCE_PROTOCOL=oip and serves KServe v2 under the
  service name `org.pytorch.serve.grpc.openinference.GRPCInferenceService`. Tensors go as typed
  contents (TorchServe ignores raw_input_contents, so raw inputs are converted; FP16/BF16, which
  have no typed form, are refused as INVALID_ARGUMENT).

TorchServe's error vocabulary: an unknown model or version is INTERNAL "Model not found" /
"Model version: 9 does not exist" (-> NOT_FOUND). A model that raises is UNAVAILABLE
"Prediction failed": that says nothing about the endpoint, and retrying it elsewhere or marking
the endpoint down would let one bad input take healthy endpoints out, so it becomes INTERNAL,
not retried. A dead worker ("Worker died") is UNAVAILABLE and retried elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

import grpc
from google.protobuf import empty_pb2

from .base import BackendError, InferCall, InferResult, ModelMetadata, Tensor
from .kserve_v2 import RPC_ERRORS, KServeV2Adapter, RpcError, channel_options, closed_error
from .tensor_codec import join_bytes_elements, tensor_to_list, tensor_values
from .tls import grpc_channel
from .torchserve_proto import inference_pb2, inference_pb2_grpc, management_pb2, management_pb2_grpc

_NOT_FOUND_HINTS = ("model not found", "does not exist for model")


def _classify(code: grpc.StatusCode, detail: str) -> tuple[grpc.StatusCode, bool]:
    """TorchServe (code, message) -> (code for the caller, retry on another endpoint?)."""
    lowered = detail.lower()
    if any(hint in lowered for hint in _NOT_FOUND_HINTS):
        return grpc.StatusCode.NOT_FOUND, False
    if "worker died" in lowered:
        return grpc.StatusCode.UNAVAILABLE, True
    if "prediction failed" in lowered:
        return grpc.StatusCode.INTERNAL, False
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return code, code == grpc.StatusCode.UNAVAILABLE
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNIMPLEMENTED):
        return code, False
    return grpc.StatusCode.INTERNAL, False


def _model_error(err: grpc.aio.AioRpcError) -> bool:
    """The model's handler raised on this input ("Prediction failed"): not the endpoint's fault."""
    return "prediction failed" in (err.details() or "").lower()


class TorchServeOIPAdapter(KServeV2Adapter):
    """TorchServe with TS_OPEN_INFERENCE_PROTOCOL=oip: KServe v2 under TorchServe's service name."""

    kind: ClassVar[str] = "torchserve"
    service: ClassVar[str] = "org.pytorch.serve.grpc.openinference.GRPCInferenceService"
    # TorchServe's OIP frontend reads only typed contents: raw_input_contents arrive as empty data.
    raw_inputs: ClassVar[bool] = False

    def _error(self, err: RpcError, model: str) -> BackendError:
        where = f"backend {self.endpoint_id} ({self.kind} at {self.address})"
        what = f"model '{model}'" if model else "server"
        if not isinstance(err, grpc.aio.AioRpcError):
            return closed_error(where, what)
        code, retryable = _classify(err.code(), err.details() or "")
        detail = (err.details() or err.code().name).split("\n", 1)[0]
        return BackendError(
            code, f"{where}, {what}: {detail}", retryable=retryable, model_error=_model_error(err)
        )


class TorchServePredictionsAdapter:
    """TorchServe's native gRPC inference and management APIs."""

    kind: ClassVar[str] = "torchserve"

    def __init__(
        self,
        endpoint_id: str,
        address: str,
        *,
        max_message_bytes: int,
        options: Mapping[str, str] | None = None,
    ) -> None:
        self.endpoint_id = endpoint_id
        self.address = address
        host, _, port = address.rpartition(":")
        meta = options or {}
        self.management_address = f"{host}:{meta.get('management_port') or int(port) + 1}"
        options_ = channel_options(max_message_bytes)
        self._channel = grpc_channel(address, meta, options_)
        self._mgmt_channel = grpc_channel(self.management_address, meta, options_)
        self._stub = inference_pb2_grpc.InferenceAPIsServiceStub(self._channel)
        self._mgmt = management_pb2_grpc.ManagementAPIsServiceStub(self._mgmt_channel)

    def _error(self, err: RpcError, model: str, where: str | None = None) -> BackendError:
        what = f"model '{model}'" if model else "server"
        if not isinstance(err, grpc.aio.AioRpcError):
            return closed_error(f"backend {self.endpoint_id} ({self.kind} at {where or self.address})", what)
        code, retryable = _classify(err.code(), err.details() or "")
        detail = (err.details() or err.code().name).split("\n", 1)[0]
        return BackendError(
            code,
            f"backend {self.endpoint_id} ({self.kind} at {where or self.address}), {what}: {detail}",
            retryable=retryable,
            model_error=_model_error(err),
        )

    async def infer(self, call: InferCall, timeout: float | None) -> InferResult:
        try:
            inputs = {t.name: _input_bytes(t) for t in call.inputs}
        except ValueError as err:
            raise BackendError(
                grpc.StatusCode.INVALID_ARGUMENT, f"model '{call.model}': {err}", retryable=False
            ) from None
        request = inference_pb2.PredictionsRequest(
            model_name=call.model, model_version=call.version, input=inputs
        )
        try:
            resp = await self._stub.Predictions(request, timeout=timeout, metadata=call.headers or None)
        except RPC_ERRORS as err:
            raise self._error(err, call.model) from None
        name = call.outputs[0].name if call.outputs else "prediction"
        output = Tensor(name, "BYTES", (1,), raw=join_bytes_elements([resp.prediction]))
        return InferResult(call.model, call.version, call.request_id, (output,))

    async def server_live(self, timeout: float) -> bool:
        try:
            resp = await self._stub.Ping(empty_pb2.Empty(), timeout=timeout)
        except RPC_ERRORS as err:
            raise self._error(err, "") from None
        try:
            return str(json.loads(resp.health).get("status", "")).lower() == "healthy"
        except (ValueError, AttributeError):
            return False

    async def _describe(self, model: str, version: str, timeout: float | None) -> list[dict[str, Any]]:
        request = management_pb2.DescribeModelRequest(model_name=model, model_version=version)
        try:
            resp = await self._mgmt.DescribeModel(request, timeout=timeout)
        except RPC_ERRORS as err:
            raise self._error(err, model, self.management_address) from None
        try:
            described = json.loads(resp.msg)
        except ValueError:
            described = None
        if not isinstance(described, list):
            raise BackendError(
                grpc.StatusCode.INTERNAL,
                f"backend {self.endpoint_id} ({self.kind} at {self.management_address}), "
                f"model '{model}': DescribeModel answered something other than a JSON list",
                retryable=False,
            )
        return [d for d in described if isinstance(d, dict)]

    async def model_ready(self, model: str, version: str, timeout: float) -> bool:
        """Ready when a worker of the model is READY: /ping says Healthy even with dead workers."""
        try:
            described = await self._describe(model, version, timeout)
        except BackendError as err:
            if err.code == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return any(w.get("status") == "READY" for d in described for w in d.get("workers", ()))

    async def model_metadata(self, model: str, version: str, timeout: float | None) -> ModelMetadata:
        described = await self._describe(model, version, timeout)
        versions = tuple(str(d.get("modelVersion", "")) for d in described if d.get("modelVersion"))
        return ModelMetadata(name=model, versions=versions, platform="torchserve", inputs=(), outputs=())

    async def aclose(self) -> None:
        await self._channel.close(None)
        await self._mgmt_channel.close(None)


def _input_bytes(t: Tensor) -> bytes:
    """One tensor -> one TorchServe input: a lone BYTES element as is, anything else as JSON."""
    if t.datatype == "BYTES":
        values = tensor_values(t)
        if len(values) == 1:
            return bytes(values[0])
    return json.dumps(tensor_to_list(t), separators=(",", ":")).encode()


def torchserve_adapter(
    endpoint_id: str,
    address: str,
    *,
    max_message_bytes: int,
    options: Mapping[str, str] | None = None,
) -> TorchServePredictionsAdapter | TorchServeOIPAdapter:
    """The registry's factory for `torchserve`: Meta `protocol` is `predictions` (default) or `oip`."""
    protocol = (options or {}).get("protocol", "predictions")
    if protocol == "oip":
        return TorchServeOIPAdapter(
            endpoint_id, address, max_message_bytes=max_message_bytes, options=options
        )
    if protocol != "predictions":
        raise ValueError(f"torchserve: protocol must be 'predictions' or 'oip', got {protocol!r}")
    return TorchServePredictionsAdapter(
        endpoint_id, address, max_message_bytes=max_message_bytes, options=options
    )
