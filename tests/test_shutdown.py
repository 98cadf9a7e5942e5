"""SIGTERM: health goes NOT_SERVING, new calls are refused, in-flight calls finish, exit 0."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from meshgate.v1 import inference_pb2, tensor_pb2

from tests.helpers import add_sub_request, infer
from tests.procs import Gateway, Triton, pool_config


def _sleep_request(ms: int) -> Any:
    raw = np.array([ms], dtype="<i8").tobytes()
    return inference_pb2.InferRequest(
        model="sleep", inputs=[tensor_pb2.Tensor(name="MS", datatype="DATA_TYPE_INT64", shape=[1], raw=raw)]
    )


def _gateway(triton: Triton, grace: float = 5.0, **server: Any) -> Gateway:
    config = pool_config({"p": [("triton-a", triton.address, ["add_sub", "sleep"])]})
    config["server"] = {"shutdown_grace_s": grace, **server}
    return Gateway(config).start().wait_serving("p")


def test_sigterm_drains_in_flight_calls(triton_a: Triton) -> None:
    gw = _gateway(triton_a)
    statuses: list[int] = []
    ch = grpc.insecure_channel(gw.address)
    watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""))

    def follow() -> None:
        try:
            for resp in watch:
                statuses.append(resp.status)
        except grpc.RpcError:
            pass  # the stream ends when the server stops

    watcher = threading.Thread(target=follow)
    watcher.start()
    try:
        with ThreadPoolExecutor(3) as pool:
            calls = [pool.submit(infer, ch, _sleep_request(500), 10) for _ in range(3)]
            time.sleep(0.3)
            gw.signal(signal.SIGTERM)
            time.sleep(0.2)
            with grpc.insecure_channel(gw.address) as fresh, pytest.raises(grpc.RpcError) as refused:
                infer(fresh, add_sub_request([1], [1]), timeout=2)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            results = [c.result(timeout=15) for c in calls]
        assert [r.outputs[0].raw for r in results] == [np.array([500], dtype="<i8").tobytes()] * 3
        assert gw.proc is not None and gw.proc.wait(timeout=10) == 0
        watcher.join(timeout=5)
        assert statuses[0] == health_pb2.HealthCheckResponse.SERVING
        assert statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        watch.cancel()
        ch.close()
        gw.stop()


def test_calls_outliving_the_grace_period_are_cut_and_exit_is_clean(triton_a: Triton) -> None:
    gw = _gateway(triton_a, grace=0.5)
    try:
        with grpc.insecure_channel(gw.address) as ch, ThreadPoolExecutor(1) as pool:
            call = pool.submit(infer, ch, _sleep_request(3000), 10)
            time.sleep(0.3)
            start = time.monotonic()
            gw.signal(signal.SIGTERM)
            assert gw.proc is not None and gw.proc.wait(timeout=10) == 0
            assert time.monotonic() - start < 2.5
            with pytest.raises(grpc.RpcError) as caught:
                call.result(timeout=10)
            assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    finally:
        gw.stop()
        time.sleep(3)  # let Triton's single sleep instance finish the abandoned call


def test_gateway_deadline_reaches_the_backend(triton_a: Triton) -> None:
    gw = _gateway(triton_a, max_timeout_s=0.3)
    try:
        with grpc.insecure_channel(gw.address) as ch, pytest.raises(grpc.RpcError) as caught:
            infer(ch, _sleep_request(1500), timeout=10)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "backend triton-a (triton at" in caught.value.details()
        assert "model 'sleep'" in caught.value.details()
    finally:
        gw.stop()
        time.sleep(1.5)
