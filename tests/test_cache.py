"""The response cache through the real front door, over both stores (memory, and a real Redis):
hit, miss, TTL expiry, byte-bound eviction, refresh, bypass, collapsed misses (one backend call), a
cached stream replayed as a stream, the KServe door's answer carrying the second caller's id,
non-deterministic calls never cached, and tenant B never receiving tenant A's answer. With Redis:
two replicas share one cache, and Redis stopped is a miss (never an error) until it returns."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from meshgate.v1 import generate_pb2, inference_pb2, inference_pb2_grpc, routing_pb2, tensor_pb2
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from tests.helpers import add_sub_request, llm_pool, metric_value, output
from tests.openai_standin import OpenAIStandIn
from tests.procs import Gateway, Triton, make_key
from tests.redis_server import RedisServer

TTL = 1.5


class World:
    def __init__(
        self,
        gw: Gateway,
        keys: dict[str, str],
        llm: OpenAIStandIn,
        config: dict[str, Any],
        redis: RedisServer | None,
    ) -> None:
        self.gw, self.keys, self.llm, self.config, self.redis = gw, keys, llm, config, redis

    def md(self, who: str = "bob") -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.keys[who]}"),)

    def backend_calls(self) -> float:
        page = self.gw.metrics_text()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in page.splitlines()
            if line.startswith("meshgate_backend_requests_total{")
        )


@pytest.fixture(scope="module", params=["memory", "redis"])
def world(
    request: pytest.FixtureRequest, triton_a: Triton, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    redis = RedisServer().start() if request.param == "redis" else None
    keys_file = tmp_path_factory.mktemp("cache") / "keys.yaml"
    keys = {
        "bob": make_key(keys_file, "--user", "bob", "--project", "ads"),
        "alice": make_key(keys_file, "--user", "alice", "--project", "search"),
    }
    llm = OpenAIStandIn()
    config = {
        "pools": {
            "tritons": {
                "endpoints": [
                    {
                        "id": "triton-a",
                        "address": triton_a.address,
                        "backend": "triton",
                        "models": ["add_sub", "sleep"],
                    }
                ]
            },
            "llm": llm_pool(llm.base_url),
        },
        "auth": {"authenticators": ["api_key"], "api_keys": {"file": str(keys_file)}},
        "cache": {"ttl_s": TTL, "max_bytes": 4096, "store": request.param},
    }
    if redis is not None:
        config["redis"] = {"url": redis.url, "timeout_s": 0.2, "retry_s": 0.3}
    gw = Gateway(config).start()
    try:
        gw.wait_serving("tritons")
        gw.wait_serving("llm")
        yield World(gw, keys, llm, config, redis)
    finally:
        gw.stop()
        llm.close()
        if redis is not None:
            redis.stop()


def _infer(world: World, req: Any, who: str = "bob") -> tuple[Any, str]:
    with grpc.insecure_channel(world.gw.address) as ch:
        resp, call = inference_pb2_grpc.InferenceStub(ch).Infer.with_call(
            req, timeout=10, metadata=world.md(who)
        )
    trailers = dict(call.trailing_metadata() or ())
    return resp, trailers.get("x-meshgate-cache", "")


def _mode(req: Any, mode: int) -> Any:
    req.routing.cache_mode = mode
    return req


def test_hit_miss_refresh_bypass_and_tenants(world: World) -> None:
    req = add_sub_request([1.0, 2.0], [3.0, 4.0])
    before = world.backend_calls()
    first, verdict = _infer(world, req)
    assert verdict == "miss" and not first.route.cache_hit
    second, verdict = _infer(world, req)
    assert verdict == "hit" and second.route.cache_hit
    assert (second.route.pool, second.route.endpoint, second.route.attempts) == ("tritons", "triton-a", 0)
    assert output(second, "OUTPUT0").tolist() == output(first, "OUTPUT0").tolist() == [4.0, 6.0]
    assert world.backend_calls() == before + 1  # the hit called no backend
    # another input, another entry
    assert _infer(world, add_sub_request([1.0, 2.0], [3.0, 5.0]))[1] == "miss"
    # another tenant never gets bob's answer
    assert _infer(world, req, who="alice")[1] == "miss"
    # bypass: neither read nor written; refresh: not read, written
    assert (
        _infer(world, _mode(add_sub_request([1.0, 2.0], [3.0, 4.0]), routing_pb2.CACHE_MODE_BYPASS))[1]
        == "bypass"
    )
    calls = world.backend_calls()
    assert _infer(world, _mode(add_sub_request([7.0], [1.0]), routing_pb2.CACHE_MODE_REFRESH))[1] == "refresh"
    assert _infer(world, add_sub_request([7.0], [1.0]))[1] == "hit"
    assert world.backend_calls() == calls + 1


def test_entries_expire_and_the_byte_bound_evicts(world: World) -> None:
    req = add_sub_request([9.0], [9.0])
    assert _infer(world, req)[1] == "miss"
    assert _infer(world, req)[1] == "hit"
    time.sleep(TTL + 0.1)
    assert _infer(world, req)[1] == "miss"  # expired
    # 4 KiB hold about a dozen small answers: 40 more push the first out
    for i in range(40):
        _infer(world, add_sub_request([float(i)], [0.5]))
    assert _infer(world, req)[1] == "miss"


def _sleep_request(ms: int) -> Any:
    t = tensor_pb2.Tensor(name="MS", datatype="DATA_TYPE_INT64", shape=[1], raw=np.int64([ms]).tobytes())
    return inference_pb2.InferRequest(model="sleep", inputs=[t])


def test_identical_misses_collapse_into_one_backend_call(world: World) -> None:
    before = world.backend_calls()
    verdicts: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        _, verdict = _infer(world, _sleep_request(400))
        with lock:
            verdicts.append(verdict)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(verdicts) == ["hit"] * 7 + ["miss"]
    assert world.backend_calls() == before + 1
    assert metric_value(world.gw.metrics_text(), "meshgate_cache_requests_total", result="collapsed") == 7


def _chat(temperature: float | None, text: str = "hello cache") -> Any:
    msg = generate_pb2.ChatMessage(role="user", content=[generate_pb2.ContentPart(text=text)])
    sampling = generate_pb2.SamplingParams()
    if temperature is not None:
        sampling.temperature = temperature
    return generate_pb2.GenerateRequest(model="echo", messages=[msg], sampling=sampling)


def _stream(world: World, req: Any) -> tuple[list[str], Any, str]:
    with grpc.insecure_channel(world.gw.address) as ch:
        call = inference_pb2_grpc.InferenceStub(ch).GenerateStream(req, timeout=10, metadata=world.md())
        deltas, end = [], None
        for msg in call:
            if msg.WhichOneof("event") == "delta":
                deltas.append(msg.delta)
            else:
                end = msg.end
        trailers = dict(call.trailing_metadata() or ())
    return deltas, end, trailers.get("x-meshgate-cache", "")


def test_a_cached_stream_is_replayed_as_a_stream(world: World) -> None:
    sent = len(world.llm.requests)
    deltas, end, verdict = _stream(world, _chat(0.0, "replay me please"))
    assert verdict == "miss" and "".join(deltas) == "echo: replay me please" and not end.route.cache_hit
    again, end2, verdict = _stream(world, _chat(0.0, "replay me please"))
    assert verdict == "hit" and again == deltas and end2.route.cache_hit
    assert end2.finish_reason == end.finish_reason
    assert len(world.llm.requests) == sent + 1
    # not deterministic: never cached
    for _ in range(2):
        assert _stream(world, _chat(0.7, "replay me please"))[2] == "uncacheable"
    assert len(world.llm.requests) == sent + 3


def test_the_kserve_door_answers_a_hit_with_the_callers_id(world: World) -> None:
    x = np.array([5.0], dtype=np.float32).tobytes()

    def request(rid: str) -> Any:
        req = kpb.ModelInferRequest(model_name="add_sub", id=rid, raw_input_contents=[x, x])
        req.inputs.add(name="INPUT0", datatype="FP32", shape=[1])
        req.inputs.add(name="INPUT1", datatype="FP32", shape=[1])
        return req

    with grpc.insecure_channel(world.gw.address) as ch:
        stub = kpb_grpc.GRPCInferenceServiceStub(ch)
        first, call1 = stub.ModelInfer.with_call(request("first"), timeout=10, metadata=world.md())
        second, call2 = stub.ModelInfer.with_call(request("second"), timeout=10, metadata=world.md())
    assert dict(call1.trailing_metadata())["x-meshgate-cache"] == "miss"
    assert dict(call2.trailing_metadata())["x-meshgate-cache"] == "hit"
    assert (first.id, second.id) == ("first", "second")
    assert second.raw_output_contents == first.raw_output_contents


@pytest.mark.parametrize("world", ["redis"], indirect=True)
def test_replicas_share_the_redis_cache_and_redis_down_is_a_miss(world: World) -> None:
    assert world.redis is not None
    req = add_sub_request([11.0], [12.0])
    assert _infer(world, req)[1] == "miss"
    second = Gateway(world.config).start()
    try:
        second.wait_serving("tritons")
        other = World(second, world.keys, world.llm, world.config, world.redis)
        resp, verdict = _infer(other, req)
        assert verdict == "hit" and resp.route.cache_hit and output(resp, "OUTPUT0").tolist() == [23.0]
        assert _infer(other, req, who="alice")[1] == "miss"  # shared by replicas, never by tenants
    finally:
        second.stop()
    world.redis.stop()
    try:
        resp, verdict = _infer(world, req)  # Redis is gone: a miss, answered by the backend
        assert verdict == "miss" and output(resp, "OUTPUT0").tolist() == [23.0]
        page = world.gw.metrics_text()
        assert metric_value(page, "meshgate_cache_store_errors_total", op="get") >= 1
    finally:
        world.redis.start()
    time.sleep(0.4)  # past redis.retry_s
    assert _infer(world, req)[1] == "miss"  # the restarted Redis is empty (no persistence)
    assert _infer(world, req)[1] == "hit"
