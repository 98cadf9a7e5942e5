"""inference.GRPCInferenceService: the Triton/KServe v2 compatible front door.

Code written against tritonclient works unchanged when pointed at the gateway. ModelInfer is
routed exactly like meshgate.v1.Inference/Infer; ModelMetadata is answered by a ready endpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from adapters import InferCall
from adapters.kserve_wire import call_from_request, response_from_result

from ...errors import invalid
from ...pipeline.director import Director
from .common import Context, request_context


def infer_call(request: Any) -> InferCall:
    """ModelInferRequest -> InferCall. Raw contents pair with inputs by position, so a count that
    matches neither all inputs nor none cannot be converted."""
    n_raw, n_inputs = len(request.raw_input_contents), len(request.inputs)
    if n_raw and n_raw != n_inputs:
        raise invalid(
            "raw_input_contents", f"{n_raw} raw contents for {n_inputs} inputs; send one per input or none"
        )
    return call_from_request(request)


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, director: Director, any_ready: Callable[[], bool]) -> None:
        self._director = director
        self._any_ready = any_ready

    async def ServerLive(self, request: Any, context: Context) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=bool(self._any_ready()))

    async def ModelReady(self, request: Any, context: Context) -> Any:
        return pb.ModelReadyResponse(ready=self._director.model_ready(request.name, request.version))

    async def ModelMetadata(self, request: Any, context: Context) -> Any:
        routed = await self._director.model_metadata(request_context(), request.name, request.version)
        md = routed.value
        resp = pb.ModelMetadataResponse(name=md.name, versions=md.versions, platform=md.platform)
        for spec in md.inputs:
            resp.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        for spec in md.outputs:
            resp.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        return resp

    async def ModelInfer(self, request: Any, context: Context) -> Any:
        routed = await self._director.infer(request_context(), infer_call(request))
        return response_from_result(routed.value)
