"""Generic KServe v2 / Open Inference Protocol gRPC adapter (MLServer, KServe runtimes, ...).

One grpc.aio channel per endpoint, shared by all calls. Uses the messages generated in
tritonclient (the same as KServe's grpc_predict_v2.proto). The service name is a class attribute:
servers that copy the protocol under another package name (TorchServe's
`org.pytorch.serve.grpc.openinference.GRPCInferenceService`) reuse this adapter unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import grpc
from tritonclient.grpc import service_pb2 as pb

from . import kserve_wire
from .base import BackendError, InferCall, InferResult, ModelMetadata, TensorSpec
from .tls import grpc_channel

# Codes that say "this endpoint cannot serve now; another one may".
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
# Backend codes passed to the caller as they are; the rest become INTERNAL.
# A call that races aclose() (an endpoint retired while a call or a check was under way) meets
# grpc's UsageError("Channel is closed"): answered like a connection that went away.
RPC_ERRORS = (grpc.aio.AioRpcError, grpc.aio.UsageError)
RpcError = grpc.aio.AioRpcError | grpc.aio.UsageError


def closed_error(where: str, what: str) -> BackendError:
    return BackendError(
        grpc.StatusCode.UNAVAILABLE, f"{where}, {what}: the connection is closed", retryable=True
    )


_PASS_THROUGH = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.CANCELLED,
    }
)


def channel_options(max_message_bytes: int) -> Sequence[tuple[str, Any]]:
    """gRPC channel options for a backend: message caps both ways, fast reconnects, no retries
    of gRPC's own (the director decides retries)."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Reconnect fast after a backend restart: the readiness loop probes every second.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.enable_retries", 0),
    ]


class _ServiceStub:
    """The KServe v2 methods the gateway calls, bound to `service` on `channel`."""

    def __init__(self, channel: grpc.aio.Channel, service: str) -> None:
        def method(name: str, request: Any, response: Any) -> Any:
            return channel.unary_unary(
                f"/{service}/{name}",
                request_serializer=request.SerializeToString,
                response_deserializer=response.FromString,
            )

        self.ServerLive = method("ServerLive", pb.ServerLiveRequest, pb.ServerLiveResponse)
        self.ModelReady = method("ModelReady", pb.ModelReadyRequest, pb.ModelReadyResponse)
        self.ModelMetadata = method("ModelMetadata", pb.ModelMetadataRequest, pb.ModelMetadataResponse)
        self.ModelInfer = method("ModelInfer", pb.ModelInferRequest, pb.ModelInferResponse)
        self.ModelConfig = method("ModelConfig", pb.ModelConfigRequest, pb.ModelConfigResponse)
        self.ModelStreamInfer = channel.stream_stream(
            f"/{service}/ModelStreamInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )


class KServeV2Adapter:
    """Adapter for any server that implements `inference.GRPCInferenceService`."""

    kind: ClassVar[str] = "kserve_v2"
    service: ClassVar[str] = "inference.GRPCInferenceService"
    # False for servers that ignore raw_input_contents: inputs are then sent as typed contents.
    raw_inputs: ClassVar[bool] = True

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
        self._channel = grpc_channel(address, options or {}, channel_options(max_message_bytes))
        self._stub = _ServiceStub(self._channel, self.service)

    # -- errors ---------------------------------------------------------------------------
    def _error(self, err: RpcError, model: str) -> BackendError:
        where = f"backend {self.endpoint_id} ({self.kind} at {self.address})"
        what = f"model '{model}'" if model else "server"
        if not isinstance(err, grpc.aio.AioRpcError):
            return closed_error(where, what)
        code = err.code()
        detail = err.details() or code.name
        if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
            code = self._classify_unknown(detail)
        if code not in _PASS_THROUGH:
            code = grpc.StatusCode.INTERNAL
        return BackendError(code, f"{where}, {what}: {detail}", retryable=code in _RETRYABLE)

    def _classify_unknown(self, detail: str) -> grpc.StatusCode:
        """Servers that answer UNKNOWN/INTERNAL for client mistakes: read the message."""
        lowered = detail.lower()
        if "not found" in lowered or "unknown model" in lowered:
            return grpc.StatusCode.NOT_FOUND
        return grpc.StatusCode.INTERNAL

    # -- Adapter --------------------------------------------------------------------------
    async def infer(self, call: InferCall, timeout: float | None) -> InferResult:
        try:
            req = kserve_wire.request_from_call(call, typed_only=not self.raw_inputs)
        except ValueError as err:  # a raw FP16/BF16 input mixed with typed ones: no typed form
            raise BackendError(
                grpc.StatusCode.INVALID_ARGUMENT, f"model '{call.model}': {err}", retryable=False
            ) from None
        try:
            resp = await self._stub.ModelInfer(req, timeout=timeout, metadata=call.headers or None)
        except RPC_ERRORS as err:
            raise self._error(err, call.model) from None
        return kserve_wire.result_from_response(resp)

    async def server_live(self, timeout: float) -> bool:
        try:
            resp = await self._stub.ServerLive(pb.ServerLiveRequest(), timeout=timeout)
        except RPC_ERRORS as err:
            raise self._error(err, "") from None
        return bool(resp.live)

    async def model_ready(self, model: str, version: str, timeout: float) -> bool:
        try:
            resp = await self._stub.ModelReady(
                pb.ModelReadyRequest(name=model, version=version), timeout=timeout
            )
        except RPC_ERRORS as err:
            mapped = self._error(err, model)
            if mapped.code == grpc.StatusCode.NOT_FOUND:
                return False  # MLServer raises for an unknown model where Triton says False
            raise mapped from None
        return bool(resp.ready)

    async def model_metadata(self, model: str, version: str, timeout: float | None) -> ModelMetadata:
        try:
            resp = await self._stub.ModelMetadata(
                pb.ModelMetadataRequest(name=model, version=version), timeout=timeout
            )
        except RPC_ERRORS as err:
            raise self._error(err, model) from None
        return ModelMetadata(
            name=resp.name,
            versions=tuple(resp.versions),
            platform=resp.platform,
            inputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in resp.inputs),
            outputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in resp.outputs),
        )

    async def model_config(self, model: str, version: str, timeout: float | None) -> bytes:
        """Triton's ModelConfig extension; servers without it answer UNIMPLEMENTED."""
        try:
            resp = await self._stub.ModelConfig(
                pb.ModelConfigRequest(name=model, version=version), timeout=timeout
            )
        except RPC_ERRORS as err:
            raise self._error(err, model) from None
        config: bytes = resp.config.SerializeToString()
        return config

    async def aclose(self) -> None:
        await self._channel.close(None)
