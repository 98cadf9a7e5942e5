"""A gRPC health endpoint whose answer the test sets: what Consul's gRPC check probes."""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


class HealthServer:
    def __init__(self) -> None:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self._servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self.set(health_pb2.HealthCheckResponse.SERVING)

    def set(self, status: int) -> None:
        self._servicer.set("", status)

    def close(self) -> None:
        self._server.stop(0).wait()
