"""Autoscaling on inference queue depth: the per-pool signals on the metrics page, and KEDA's
external scaler served by the gateway, called over gRPC the way KEDA calls it, while a real
Triton is saturated with slow calls and after."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import grpc
import pytest
from meshgate.v1 import inference_pb2

from gateway.server.keda_proto import externalscaler_pb2 as pb
from gateway.server.keda_proto import externalscaler_pb2_grpc as pb_grpc
from tests.helpers import triton_pool
from tests.procs import Gateway, Triton, wait_until
from tests.test_balance import _sleep_request

COST = 4.0  # units per `sleep` call (routing.model_costs)
CALLS = 6


@pytest.fixture(scope="module")
def gw(triton_a: Triton) -> Iterator[Gateway]:
    config = {
        "pools": {
            "slow": triton_pool(
                triton_a.address,
                ["sleep"],
                id="t1",
                slots=1,
                metrics_url=f"http://127.0.0.1:{triton_a.metrics_port}/metrics",
            )
        },
        "routing": {"model_costs": {"sleep": COST}, "load_probe": {"interval_s": 0.2}},
        "autoscaling": {"target_units_per_replica": {"slow": 8}, "stream_interval_s": 0.1},
    }
    g = Gateway(config).start()
    g.wait_serving("slow")
    yield g
    g.stop()


def ref(**meta: str) -> pb.ScaledObjectRef:
    return pb.ScaledObjectRef(name="triton", namespace="inference", scalerMetadata=meta)


def pool_gauge(g: Gateway, name: str) -> float:
    m = re.search(rf'^meshgate_pool_{name}{{pool="slow"}} (\S+)$', g.metrics_text(), re.M)
    assert m is not None, name
    return float(m.group(1))


def saturate(g: Gateway, ms: int) -> list[threading.Thread]:
    """CALLS slow calls at once on a pool of one slot: one runs, the rest queue."""

    def one() -> None:
        with grpc.insecure_channel(g.address) as ch:
            call = ch.unary_unary(
                "/meshgate.v1.Inference/Infer",
                request_serializer=inference_pb2.InferRequest.SerializeToString,
                response_deserializer=inference_pb2.InferResponse.FromString,
            )
            call(_sleep_request(ms), timeout=30)

    threads = [threading.Thread(target=one) for _ in range(CALLS)]
    for t in threads:
        t.start()
    return threads


def test_keda_sees_the_queue_rise_while_saturated_and_fall_after(gw: Gateway) -> None:
    with grpc.insecure_channel(gw.address) as ch:
        keda = pb_grpc.ExternalScalerStub(ch)
        queue = ref(pool="slow", metric="queue_depth", target="2")
        spec = keda.GetMetricSpec(queue, timeout=5).metricSpecs
        assert [(s.metricName, s.targetSizeFloat) for s in spec] == [("meshgate-slow-queue-depth", 2.0)]
        idle = keda.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=queue, metricName=spec[0].metricName))
        assert [(v.metricName, v.metricValueFloat) for v in idle.metricValues] == [(spec[0].metricName, 0.0)]
        assert keda.IsActive(queue, timeout=5).result is False
        stream = keda.StreamIsActive(queue, timeout=60)
        assert next(stream).result is False  # the current answer at once

        threads = saturate(gw, 2500)
        # Sleep calls queue at Triton (it runs one at a time); our in-flight units are all of them.
        wait_until(lambda: keda.IsActive(queue, timeout=5).result, 10, "the pool to be active")
        assert next(stream).result is True  # pushed, not polled by KEDA
        wait_until(lambda: pool_gauge(gw, "outstanding_units") == CALLS * COST, 10, "every call counted")
        busy = keda.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=queue), timeout=5).metricValues[0]
        assert (
            CALLS - 1 - 1 <= busy.metricValueFloat <= CALLS
        )  # one runs; the rest wait (one may be starting)
        assert busy.metricValue == round(busy.metricValueFloat)
        replicas = ref(pool="slow", metric="desired_replicas")
        wanted = keda.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=replicas), timeout=5).metricValues[0]
        assert wanted.metricValueFloat == CALLS * COST / 8  # 24 units over 8 per replica
        assert keda.GetMetricSpec(replicas, timeout=5).metricSpecs[0].targetSizeFloat == 1.0
        units = ref(pool="slow", metric="outstanding_units")  # target: the pool's configured 8
        assert keda.GetMetricSpec(units, timeout=5).metricSpecs[0].targetSizeFloat == 8.0
        wait_until(lambda: pool_gauge(gw, "predicted_wait_seconds") > 0.5, 10, "a predicted wait")
        assert pool_gauge(gw, "queue_depth") >= CALLS - 2

        for t in threads:
            t.join()
        wait_until(lambda: not keda.IsActive(queue, timeout=5).result, 10, "the pool to be idle again")
        assert next(stream).result is False
        stream.cancel()
        assert (
            keda.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=units), timeout=5)
            .metricValues[0]
            .metricValueFloat
            == 0
        )
        assert pool_gauge(gw, "outstanding_units") == 0.0
        assert pool_gauge(gw, "replicas") == 1.0


@pytest.mark.parametrize(
    ("meta", "code", "text"),
    [
        ({}, grpc.StatusCode.INVALID_ARGUMENT, "scalerMetadata.pool is required"),
        ({"pool": "nope"}, grpc.StatusCode.NOT_FOUND, "pool 'nope' is not known (pools: slow)"),
        (
            {"pool": "slow", "metric": "cpu"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "scalerMetadata.metric: unknown 'cpu'",
        ),
        (
            {"pool": "slow", "target": "lots"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "scalerMetadata.target: 'lots'",
        ),
        (
            {"pool": "slow", "target": "-1"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "scalerMetadata.target must be > 0",
        ),
    ],
)
def test_a_scaled_object_with_bad_metadata_gets_a_clear_error(
    gw: Gateway, meta: dict[str, str], code: grpc.StatusCode, text: str
) -> None:
    with grpc.insecure_channel(gw.address) as ch:
        keda = pb_grpc.ExternalScalerStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            keda.GetMetricSpec(ref(**meta), timeout=5)
        assert err.value.code() == code
        assert text in (err.value.details() or "")
    assert "Traceback" not in gw.log()
