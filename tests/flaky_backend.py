"""A KServe v2 gRPC server that looks healthy (live, models ready) but whose inferences fail
when the test says so, as a GPU with broken memory does: what passive outlier ejection is for."""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc


class FlakyBackend(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, models: tuple[str, ...] = ("add_sub",)) -> None:
        self.models = models
        self.failing = False
        self.fail_code = grpc.StatusCode.INTERNAL
        self.calls = 0
        self.live_checks = 0  # ServerLive calls: the gateway's readiness checks
        self.live = True
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ServerLive(self, request: Any, context: Any) -> Any:
        self.live_checks += 1
        return pb.ServerLiveResponse(live=self.live)

    def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request: Any, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=request.name in self.models)

    def ModelInfer(self, request: Any, context: Any) -> Any:
        self.calls += 1
        if self.failing:
            message = "CUDA error: an illegal memory access was encountered"
            if self.fail_code == grpc.StatusCode.UNAVAILABLE:
                message = "failed to connect to all addresses"
            context.abort(self.fail_code, message)
        resp = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        for name in ("OUTPUT0", "OUTPUT1"):
            resp.outputs.add(name=name, datatype="FP32", shape=[1])
            resp.raw_output_contents.append(b"\0\0\0\0")
        return resp

    def close(self) -> None:
        self._server.stop(0).wait()
