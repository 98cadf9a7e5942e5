"""Load-aware routing end to end: real Tritons, their real queue metrics, GPU signals from a
DCGM-exporter-format page the test controls, through the gateway's front door."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from meshgate.v1 import inference_pb2, models_pb2, models_pb2_grpc, tensor_pb2

from tests.dcgm_standin import DCGMStandIn
from tests.flaky_backend import FlakyBackend
from tests.helpers import add_sub_request, infer
from tests.procs import Gateway, Triton, free_ports, wait_until

SCRAPE_S = 0.2


def _endpoint(name: str, triton: Triton, dcgm: DCGMStandIn, **extra: Any) -> dict[str, Any]:
    return {
        "id": name,
        "address": triton.address,
        "backend": "triton",
        "models": ["add_sub", "sleep"],
        # Triton's own page (queue) and the node's DCGM exporter (GPU), read as one.
        "metrics_url": f"http://127.0.0.1:{triton.metrics_port}/metrics,{dcgm.url}",
        **extra,
    }


@pytest.fixture(scope="module")
def dcgm() -> Iterator[tuple[DCGMStandIn, DCGMStandIn]]:
    a, b = DCGMStandIn(), DCGMStandIn()
    yield a, b
    a.close()
    b.close()


def _start(endpoints: list[dict[str, Any]], **routing: Any) -> Gateway:
    config = {
        "pools": {"gpu": {"endpoints": endpoints}},
        "routing": {"load_probe": {"interval_s": SCRAPE_S, "max_age_s": 1.0}, **routing},
    }
    gw = Gateway(config).start()
    gw.wait_serving("gpu")
    return gw


@pytest.fixture(scope="module")
def equal(triton_a: Triton, triton_b: Triton, dcgm: tuple[DCGMStandIn, DCGMStandIn]) -> Iterator[Gateway]:
    gw = _start([_endpoint("a", triton_a, dcgm[0]), _endpoint("b", triton_b, dcgm[1])])
    yield gw
    gw.stop()


def _routes(ch: grpc.Channel, n: int) -> Counter[str]:
    return Counter(infer(ch, add_sub_request([1.0], [2.0])).route.endpoint for _ in range(n))


def _sleep_request(ms: int) -> inference_pb2.InferRequest:
    ms_tensor = tensor_pb2.Tensor(
        name="MS", datatype="DATA_TYPE_INT64", shape=[1], raw=np.int64([ms]).tobytes()
    )
    return inference_pb2.InferRequest(model="sleep", inputs=[ms_tensor])


def _load(ch: grpc.Channel, endpoint: str, model: str = "add_sub") -> models_pb2.Endpoint:
    model_pb = (
        models_pb2_grpc.ModelsStub(ch).GetModel(models_pb2.GetModelRequest(name=model), timeout=5).model
    )
    return next(e for p in model_pb.pools for e in p.endpoints if e.id == endpoint)


def test_gpu_utilisation_shifts_traffic_and_stale_values_stop_steering(
    equal: Gateway, dcgm: tuple[DCGMStandIn, DCGMStandIn]
) -> None:
    """Idle, the two split by what the gateway measures (latency feedback may favour the faster
    one); a GPU taken by another tenant loses the traffic within two scrape intervals, either
    way round; an exporter that breaks stops steering once its values are older than max_age_s."""
    a, b = dcgm
    a.util_percent = b.util_percent = 0
    with grpc.insecure_channel(equal.address) as ch:
        time.sleep(3 * SCRAPE_S)
        assert sum(_routes(ch, 20).values()) == 20
        for busy, idle, name in ((a, b, "b"), (b, a, "a")):
            busy.util_percent, idle.util_percent = 90, 0
            time.sleep(2 * SCRAPE_S + 0.1)  # within two scrape intervals ...
            routed = _routes(ch, 40)
            assert routed[name] >= 38, routed  # ... traffic leaves the busy GPU
        shown = _load(ch, "b")
        assert shown.load.gpu_utilization == pytest.approx(0.9)
        assert shown.load.gpu_memory == pytest.approx(1000 / 80000)
        assert 0 <= shown.load.age_seconds < 1.0
        assert 0 <= shown.score < _load(ch, "a").score  # the operator sees why
        b.fail = True  # b's exporter breaks: the last value holds for max_age_s, then stops counting
        time.sleep(1.0 + 3 * SCRAPE_S)
        stale = _routes(ch, 40)
        assert stale["b"] >= 5, stale
        assert _load(ch, "b").load.age_seconds > 1.0
    b.fail = False
    b.util_percent = 0


def test_real_triton_queue_metrics_shift_traffic(equal: Gateway, triton_a: Triton) -> None:
    """Another client fills a's `sleep` queue behind the gateway's back: only Triton's
    nv_inference_pending_request_count shows it, and the gateway routes `sleep` calls to b."""
    direct = tc.InferenceServerClient(url=triton_a.address)
    ms = tc.InferInput("MS", [1], "INT64")
    ms.set_data_from_numpy(np.array([1500], dtype=np.int64))
    threads = [threading.Thread(target=direct.infer, args=("sleep", [ms])) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        with grpc.insecure_channel(equal.address) as ch:
            wait_until(lambda: _load(ch, "a", "sleep").load.queue_depth >= 2, 5, "a's queue in the scrape")
            routed = Counter(infer(ch, _sleep_request(10)).route.endpoint for _ in range(20))
            assert routed["b"] >= 19, routed
    finally:
        for t in threads:
            t.join()


def test_another_clients_running_requests_hold_the_slot(equal: Gateway, triton_a: Triton) -> None:
    """Another client keeps one `sleep` call executing on a at all times, one after another, so
    nothing ever queues there and the GPU page says idle. Only Triton's compute-time counter
    shows that a's one slot is taken by someone else: the operator sees it in GetModel, and the
    gateway's `sleep` calls go to b instead of waiting behind it."""
    direct = tc.InferenceServerClient(url=triton_a.address)
    ms = tc.InferInput("MS", [1], "INT64")
    ms.set_data_from_numpy(np.array([300], dtype=np.int64))
    stop = threading.Event()

    def keep_busy() -> None:
        while not stop.is_set():
            direct.infer("sleep", [ms])

    thread = threading.Thread(target=keep_busy)
    thread.start()
    try:
        with grpc.insecure_channel(equal.address) as ch:
            # Read over a window of 8 answers and 3 compute times (earlier tests' calls of ours
            # age out of it): the slot is someone else's, and so are most of a's answers.
            def taken() -> bool:
                load = _load(ch, "a", "sleep").load
                return load.others_running >= 0.4 and load.our_share < 0.5

            wait_until(taken, 10, "a's slot seen taken")
            shown = _load(ch, "a", "sleep").load
            assert shown.busy >= 0 and shown.queue_depth == 0
            assert shown.background_load == pytest.approx(0.0)  # occupancy, not a slower GPU
            assert (
                'meshgate_endpoint_load{endpoint="a",pool="gpu",signal="others_running"}'
                in equal.metrics_text()
            )
            routed = Counter(infer(ch, _sleep_request(10)).route.endpoint for _ in range(20))
            assert routed["b"] >= 19, routed
    finally:
        stop.set()
        thread.join()


def test_one_triton_in_two_pools_counts_all_its_answers_as_ours(
    triton_a: Triton, dcgm: tuple[DCGMStandIn, DCGMStandIn]
) -> None:
    """One Triton serves two pools of this gateway (one scrape for both): every answer it counts
    is ours, so our share is 1 on both, not half ours and half another replica's."""
    one = _endpoint("one", triton_a, dcgm[0])
    config = {
        "pools": {"gpu": {"endpoints": [one]}, "gpu2": {"endpoints": [{**one, "id": "two"}]}},
        "routing": {"load_probe": {"interval_s": SCRAPE_S, "max_age_s": 1.0}},
    }
    gw = Gateway(config).start()
    try:
        gw.wait_serving("gpu")
        with grpc.insecure_channel(gw.address) as ch:
            routed = _routes(ch, 40)
            assert routed["one"] > 0 and routed["two"] > 0, routed
            time.sleep(3 * SCRAPE_S)
            model = models_pb2_grpc.ModelsStub(ch).GetModel(
                models_pb2.GetModelRequest(name="add_sub"), timeout=5
            )
            shares = {e.id: e.load.our_share for p in model.model.pools for e in p.endpoints}
            # ~1: an answer the server counted before a scrape may reach us just after it.
            assert min(shares.values()) > 0.95 and set(shares) == {"one", "two"}, shares
    finally:
        gw.stop()


def test_heavy_work_goes_to_the_big_gpu_and_light_work_uses_free_slots(
    triton_a: Triton, triton_b: Triton, dcgm: tuple[DCGMStandIn, DCGMStandIn]
) -> None:
    """a is 4x b. A heavy call (cost 8) goes to a; while it runs, light calls (cost 1) go to b's
    free slot instead of queueing behind it (predicted 0.25 + 8/4 on a vs 1 on b)."""
    gw = _start(
        [_endpoint("a", triton_a, dcgm[0], capacity=4), _endpoint("b", triton_b, dcgm[1], capacity=1)],
        model_costs={"sleep": 8},
    )
    try:
        with grpc.insecure_channel(gw.address) as ch:
            assert Counter(infer(ch, _sleep_request(1)).route.endpoint for _ in range(5)) == {"a": 5}
            assert _routes(ch, 5) == {"a": 5}  # idle: light work too prefers the faster GPU
            heavy = ch.unary_unary(
                "/meshgate.v1.Inference/Infer",
                request_serializer=inference_pb2.InferRequest.SerializeToString,
                response_deserializer=inference_pb2.InferResponse.FromString,
            ).future(_sleep_request(1500), timeout=10)
            wait_until(lambda: _load(ch, "a", "sleep").outstanding_units == 8, 2, "heavy call in flight")
            assert _routes(ch, 10) == {"b": 10}
            assert heavy.result().route.endpoint == "a"
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def chained(triton_a: Triton, triton_b: Triton) -> Iterator[Gateway]:
    """Alias `sleepy`: pool primary (a, 1 slot) first, then pool backup (b); alias `rescue`: a
    pool whose only endpoint is down, then backup."""
    dead_port = free_ports(1)[0]
    config = {
        "pools": {
            "primary": {
                "endpoints": [
                    {"id": "a", "address": triton_a.address, "backend": "triton", "models": ["sleep"]}
                ]
            },
            "backup": {
                "endpoints": [
                    {"id": "b", "address": triton_b.address, "backend": "triton", "models": ["sleep"]}
                ]
            },
            "dead": {
                "endpoints": [
                    {
                        "id": "gone",
                        "address": f"127.0.0.1:{dead_port}",
                        "backend": "triton",
                        "models": ["sleep"],
                    }
                ]
            },
        },
        "routing": {
            "aliases": {
                "sleepy": {
                    "fallback": [{"model": "sleep", "pool": "primary"}, {"model": "sleep", "pool": "backup"}]
                },
                "rescue": {
                    "fallback": [{"model": "sleep", "pool": "dead"}, {"model": "sleep", "pool": "backup"}]
                },
            }
        },
    }
    gw = Gateway(config).start()
    gw.wait_serving("primary")
    gw.wait_serving("backup")
    yield gw
    gw.stop()


def _aliased(ms: int, alias: str) -> inference_pb2.InferRequest:
    req = _sleep_request(ms)
    req.model = alias
    return req


def test_fallback_chain_skips_a_pool_that_is_down(chained: Gateway) -> None:
    with grpc.insecure_channel(chained.address) as ch:
        resp = infer(ch, _aliased(1, "rescue"))
    assert (resp.route.pool, resp.route.endpoint, resp.route.model) == ("backup", "b", "sleep")
    assert list(resp.route.skipped) == ["sleep: down"]


def test_deadline_aware_spill_over_to_the_next_pool(chained: Gateway) -> None:
    """Primary runs one call at a time (300 ms each). With three queued there, a caller whose
    deadline cannot wait spills to backup; a patient caller still queues on primary."""
    with grpc.insecure_channel(chained.address) as ch:
        for _ in range(3):  # the gateway learns what a unit costs in seconds on this pool
            assert infer(ch, _aliased(300, "sleepy")).route.pool == "primary"
        call = ch.unary_unary(
            "/meshgate.v1.Inference/Infer",
            request_serializer=inference_pb2.InferRequest.SerializeToString,
            response_deserializer=inference_pb2.InferResponse.FromString,
        )
        fillers = [call.future(_aliased(300, "sleepy"), timeout=10) for _ in range(3)]
        wait_until(lambda: _load(ch, "a", "sleep").in_flight == 3, 2, "three calls queued on primary")
        hurried = infer(ch, _aliased(300, "sleepy"), timeout=0.8)
        assert (hurried.route.pool, list(hurried.route.skipped)) == ("backup", ["sleep: deadline"])
        patient = call.future(_aliased(300, "sleepy"), timeout=10)
        assert patient.result().route.pool == "primary"
        assert [f.result().route.pool for f in fillers] == ["primary"] * 3
        metrics = chained.metrics_text()
        assert 'meshgate_spills_total{pool="primary",reason="deadline"} 1.0' in metrics


def test_a_failing_endpoint_is_ejected_and_comes_back(triton_a: Triton) -> None:
    flaky = FlakyBackend()
    eps = [
        {"id": "a", "address": triton_a.address, "backend": "triton", "models": ["add_sub"]},
        {"id": "flaky", "address": flaky.address, "backend": "kserve_v2", "models": ["add_sub"]},
    ]
    outlier = {"consecutive_failures": 3, "base_ejection_s": 1.5}
    gw = Gateway({"pools": {"gpu": {"endpoints": eps}}, "routing": {"outlier": outlier}}).start()
    try:
        gw.wait_serving("gpu")
        flaky.failing = True
        with grpc.insecure_channel(gw.address) as ch:
            codes: Counter[str] = Counter()
            for _ in range(30):
                try:
                    codes[infer(ch, add_sub_request([1.0], [2.0])).route.endpoint] += 1
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.INTERNAL and "illegal memory access" in (
                        err.details() or ""
                    )
                    codes["failed"] += 1
            assert codes["failed"] == 3 and flaky.calls == 3, codes  # then ejected: a takes the rest
            shown = _load(ch, "flaky")
            assert shown.ejected and shown.ready  # ready by its own account, out by ours
            assert 'meshgate_outlier_ejections_total{endpoint="flaky",pool="gpu"} 1.0' in gw.metrics_text()
            flaky.failing = False
            time.sleep(1.6)  # the ejection runs out
            back = _routes(ch, 20)
            assert back["flaky"] >= 5, back
            assert not _load(ch, "flaky").ejected
    finally:
        gw.stop()
        flaky.close()
