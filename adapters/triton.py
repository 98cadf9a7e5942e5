"""Triton Inference Server adapter.

Triton speaks KServe v2 gRPC (plus extensions), so this adapter is the generic one with Triton's
error vocabulary: Triton reports an unknown model as NOT_FOUND or UNAVAILABLE ("Request for unknown
model"), a model that is loading as UNAVAILABLE, and bad tensors as INVALID_ARGUMENT.

It also streams (`infer_stream`, Triton's ModelStreamInfer): one backend stream per request,
which a decoupled model (token streaming, TensorRT-LLM) answers with any number of responses.
Triton sends no end marker unless asked, so every forwarded request asks for one
(`triton_enable_empty_final_response`) and the stream ends at the response flagged
`triton_final_response`; the caller's own request is copied, never modified.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, ClassVar

import grpc
from tritonclient.grpc import service_pb2 as pb

from . import kserve_wire
from .base import BackendError, InferCall, InferResult
from .kserve_v2 import RPC_ERRORS, KServeV2Adapter

FINAL_ASK = "triton_enable_empty_final_response"
FINAL_FLAG = "triton_final_response"


class TritonAdapter(KServeV2Adapter):
    kind: ClassVar[str] = "triton"

    def _classify_unknown(self, detail: str) -> grpc.StatusCode:
        lowered = detail.lower()
        if "unknown model" in lowered or "is not found" in lowered:
            return grpc.StatusCode.NOT_FOUND
        if "unexpected shape" in lowered or "unexpected datatype" in lowered:
            return grpc.StatusCode.INVALID_ARGUMENT
        return grpc.StatusCode.INTERNAL

    async def infer_stream(self, call: InferCall, timeout: float | None) -> AsyncGenerator[InferResult, None]:
        req = pb.ModelInferRequest()
        if call.wire is not None and type(call.wire) is pb.ModelInferRequest:
            req.CopyFrom(call.wire)
        else:
            req = kserve_wire.request_from_call(call)
        req.parameters[FINAL_ASK].bool_param = True
        rpc = self._stub.ModelStreamInfer(  # type: ignore[call-arg]  # the write/read API
            timeout=timeout, metadata=call.headers or None
        )
        try:
            await rpc.write(req)
            while True:
                resp: Any = await rpc.read()
                if resp is grpc.aio.EOF:  # type: ignore[attr-defined]
                    return
                if resp.error_message:
                    code = self._classify_unknown(resp.error_message)
                    where = (
                        f"backend {self.endpoint_id} ({self.kind} at {self.address}), model '{call.model}'"
                    )
                    raise BackendError(
                        code, f"{where}: {resp.error_message}", retryable=code == grpc.StatusCode.UNAVAILABLE
                    )
                final = resp.infer_response.parameters.get(FINAL_FLAG)
                yield kserve_wire.result_from_response(resp.infer_response)
                if final is not None and final.bool_param:
                    await rpc.done_writing()  # Triton then ends the stream: read its end
                    await rpc.read()
                    return
        except RPC_ERRORS as err:
            raise self._error(err, call.model) from None
        finally:
            if not rpc.done():
                rpc.cancel()  # an early exit (the caller went away, an error): close the stream
