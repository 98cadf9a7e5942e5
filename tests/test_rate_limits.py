"""Rate limits through the real front door: requests per second with a burst, tokens per minute
reserved at admission and settled from usage (a cancelled stream pays for what it streamed),
calls in flight, RESOURCE_EXHAUSTED with RetryInfo naming the limit, x-ratelimit-* trailing
metadata, tenants kept apart; two gateways sharing one limit in a real Redis; Redis stopped and
restarted under fail-open and fail-closed limits."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from meshgate.v1 import generate_pb2, inference_pb2, inference_pb2_grpc, tensor_pb2

from tests.helpers import add_sub_request, infer, llm_pool, metric_value
from tests.openai_standin import OpenAIStandIn
from tests.procs import Gateway, Triton, make_key, wait_until
from tests.redis_server import RedisServer

LIMITS = [
    {"name": "per-user", "key": ["user"], "models": ["add_sub"], "requests_per_s": 2, "burst": 3},
    {
        "name": "llm-tokens",
        "key": ["project"],
        "models": ["echo"],
        "tokens_per_min": 0.001,  # no refill worth speaking of during a test
        "tokens_burst": 1000,
    },
    {"name": "one-at-a-time", "who": {"users": ["carol"]}, "models": ["sleep"], "concurrent": 1},
    {
        "name": "adaptive",
        "who": {"users": ["dave"]},
        "models": ["sleep"],
        "requests_per_s": 40,
        "burst": 40,
        "adaptive": {"pressure": 1.0, "min_factor": 0.1},
    },
]


class World:
    def __init__(self, gw: Gateway, keys: dict[str, str], llm: OpenAIStandIn) -> None:
        self.gw, self.keys, self.llm = gw, keys, llm

    def md(self, who: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.keys[who]}"),)


def _config(triton: Triton, llm: OpenAIStandIn, keys_file: Path, **extra: Any) -> dict[str, Any]:
    return {
        "pools": {
            "tritons": {
                "endpoints": [
                    {
                        "id": "triton-a",
                        "address": triton.address,
                        "backend": "triton",
                        "models": ["add_sub", "sleep"],
                    }
                ]
            },
            "llm": llm_pool(llm.base_url),
        },
        "auth": {"authenticators": ["api_key"], "api_keys": {"file": str(keys_file), "reload_s": 0.2}},
        **extra,
    }


@pytest.fixture(scope="module")
def llm() -> Iterator[OpenAIStandIn]:
    server = OpenAIStandIn()
    yield server
    server.close()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    keys_file = tmp_path_factory.mktemp("limits") / "keys.yaml"
    made = {
        who: make_key(keys_file, "--user", who, "--project", project)
        for who, project in (
            ("bob", "ads"),
            ("alice", "search"),
            ("carol", "ads"),
            ("dave", "vision"),
            ("erin", "media"),
        )
    }
    return keys_file, made


@pytest.fixture(scope="module")
def world(triton_a: Triton, llm: OpenAIStandIn, keys: tuple[Path, dict[str, str]]) -> Iterator[World]:
    gw = Gateway(_config(triton_a, llm, keys[0], rate_limits={"limits": LIMITS})).start()
    try:
        gw.wait_serving("tritons")
        gw.wait_serving("llm")
        yield World(gw, keys[1], llm)
    finally:
        gw.stop()


def _trailers(call: Any) -> dict[str, str]:
    return {k: v for k, v in call.trailing_metadata() or ()}


def _retry_delay(err: grpc.RpcError) -> float | None:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status else []:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToNanoseconds() / 1e9
    return None


def test_requests_per_second_with_a_burst_per_user(world: World) -> None:
    with grpc.insecure_channel(world.gw.address) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        remaining = []
        for _ in range(3):
            _, call = stub.Infer.with_call(
                add_sub_request([1.0], [2.0]), timeout=10, metadata=world.md("bob")
            )
            t = _trailers(call)
            assert t["x-ratelimit-policy"] == "per-user/requests" and t["x-ratelimit-limit"] == "3"
            remaining.append(int(t["x-ratelimit-remaining"]))
        assert remaining == [2, 1, 0]
        with pytest.raises(grpc.RpcError) as err:
            stub.Infer(add_sub_request([1.0], [2.0]), timeout=10, metadata=world.md("bob"))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = err.value.details() or ""
        assert details.startswith("rate limit per-user: 2 requests/s (burst 3) for user=bob; retry in 0.")
        delay = _retry_delay(err.value)
        assert delay is not None and 0.2 < delay <= 0.5
        assert _trailers(err.value)["x-ratelimit-remaining"] == "0"
        # another user has a budget of their own
        assert infer(ch, add_sub_request([1.0], [2.0]), metadata=world.md("alice")).outputs
        time.sleep(delay + 0.05)  # the wait it named is enough
        assert infer(ch, add_sub_request([1.0], [2.0]), metadata=world.md("bob")).outputs
    page = world.gw.metrics_text()
    assert metric_value(page, "meshgate_ratelimit_refusals_total", kind="requests", limit="per-user") >= 1


def _chat(text: str, max_tokens: int) -> Any:
    msg = generate_pb2.ChatMessage(role="user", content=[generate_pb2.ContentPart(text=text)])
    return generate_pb2.GenerateRequest(
        model="echo", messages=[msg], sampling=generate_pb2.SamplingParams(max_tokens=max_tokens)
    )


def _tokens_left(call: Any) -> int:
    t = _trailers(call)
    assert t["x-ratelimit-policy"] == "llm-tokens/tokens"
    return int(t["x-ratelimit-remaining"])


def test_tokens_are_reserved_then_settled_from_usage(world: World) -> None:
    """Project vision has 1,000 tokens. A call reserves prompt + max_tokens and is charged what it
    used, so three calls reserving 400 each fit; one reserving more than 1,000 never will."""
    with grpc.insecure_channel(world.gw.address) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        left = []
        for _ in range(3):
            resp, call = stub.Generate.with_call(
                _chat("hello there", 396), timeout=10, metadata=world.md("dave")
            )
            left.append(_tokens_left(call))  # the level after this call's reservation
            used = resp.usage.prompt_tokens + resp.usage.completion_tokens
            assert 0 < used < 20
        # each reservation (2 prompt + 396) was settled to the few tokens used before the next
        assert left[0] == 1000 - 398
        assert left[1] >= 1000 - 398 - 20 and left[2] >= 1000 - 398 - 40
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(_chat("hello there", 1200), timeout=10, metadata=world.md("dave"))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than the limit allows" in (err.value.details() or "")
        assert _retry_delay(err.value) is None  # waiting would not help


def test_a_cancelled_stream_pays_for_what_it_streamed(world: World) -> None:
    world.llm.token_interval_s = 0.05
    try:
        with grpc.insecure_channel(world.gw.address) as ch:
            stub = inference_pb2_grpc.InferenceStub(ch)
            first, before = stub.Generate.with_call(_chat("hi", 1), timeout=10, metadata=world.md("carol"))
            level = _tokens_left(before)
            first_used = first.usage.prompt_tokens + first.usage.completion_tokens
            words = " ".join(f"w{i}" for i in range(200))
            stream = stub.GenerateStream(_chat(words, 600), timeout=30, metadata=world.md("carol"))
            got = 0
            for msg in stream:
                if msg.WhichOneof("event") == "delta":
                    got += len(msg.delta.split())  # words: deltas that came together are one message
                if got >= 3:
                    stream.cancel()
                    break
            time.sleep(0.3)  # settlement happens as the gateway sees the cancellation
            _, after = stub.Generate.with_call(_chat("hi", 1), timeout=10, metadata=world.md("carol"))
            # Both "hi" calls reserve the same 1 token: the levels differ by what the first call
            # and the stream were charged.
            charged = level - _tokens_left(after) - first_used
            prompt = len(words) // 4
            # charged the prompt and the few deltas it got (~1 token each), not its 600 reserved
            assert prompt + 3 <= charged <= prompt + 30, charged
    finally:
        world.llm.token_interval_s = 0.0


def test_a_long_stream_spends_its_limit_while_it_runs(world: World) -> None:
    """No max_tokens: the stream reserves its prompt and routing.expected_output_tokens (256),
    then outgrows that. Its excess is taken as deltas arrive (every 8), so while it still runs a
    second call of the same project already finds the 1,000-token limit spent."""
    world.llm.token_interval_s = 0.005
    words = " ".join(f"w{i}" for i in range(500))  # ~597 tokens estimated; 501 deltas come back
    try:
        with grpc.insecure_channel(world.gw.address) as ch:
            stub = inference_pb2_grpc.InferenceStub(ch)
            req = _chat(words, 0)
            req.sampling.ClearField("max_tokens")
            stream = stub.GenerateStream(req, timeout=30, metadata=world.md("erin"))
            got, checked = 0, set()
            for msg in stream:
                if msg.WhichOneof("event") == "delta":
                    got += len(msg.delta.split())  # words: deltas that came together are one message
                if got >= 30 and "early" not in checked:  # within its reservation: a small call passes
                    checked.add("early")
                    stub.Generate(_chat("hi", 1), timeout=10, metadata=world.md("erin"))
                if got >= 460 and "late" not in checked:  # 597 + 460 > 1000: the excess is charged
                    checked.add("late")
                    with pytest.raises(grpc.RpcError) as err:
                        stub.Generate(_chat("hi", 1), timeout=10, metadata=world.md("erin"))
                    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert "llm-tokens" in (err.value.details() or "")
            assert got == 501 and checked == {"early", "late"}  # the stream itself is not cut
    finally:
        world.llm.token_interval_s = 0.0


def _sleep_request(ms: int) -> Any:
    t = tensor_pb2.Tensor(name="MS", datatype="DATA_TYPE_INT64", shape=[1], raw=np.int64([ms]).tobytes())
    return inference_pb2.InferRequest(model="sleep", inputs=[t])


def test_calls_in_flight(world: World) -> None:
    with grpc.insecure_channel(world.gw.address) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        slow = stub.Infer.future(_sleep_request(800), timeout=10, metadata=world.md("carol"))
        time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as err:
            stub.Infer(_sleep_request(1), timeout=10, metadata=world.md("carol"))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "rate limit one-at-a-time: 1 calls in flight for" in (err.value.details() or "")
        assert stub.Infer(
            _sleep_request(1), timeout=10, metadata=world.md("bob")
        ).outputs  # not carol's limit
        assert slow.result().outputs
        assert stub.Infer(
            _sleep_request(1), timeout=10, metadata=world.md("carol")
        ).outputs  # the slot came back


def test_adaptive_limits_tighten_while_the_pool_is_loaded(world: World) -> None:
    """dave's limit on `sleep` is 40/s; while 4 calls run on the pool's one slot (pressure 4),
    it is a quarter of that, and it relaxes once they are done."""

    def dave_limit() -> str:
        with grpc.insecure_channel(world.gw.address) as ch:
            _, call = inference_pb2_grpc.InferenceStub(ch).Infer.with_call(
                _sleep_request(1), timeout=10, metadata=world.md("dave")
            )
        t = _trailers(call)
        assert t["x-ratelimit-policy"] == "adaptive/requests"
        return t["x-ratelimit-limit"]

    assert dave_limit() == "40"
    with grpc.insecure_channel(world.gw.address) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        load = [
            stub.Infer.future(_sleep_request(1500), timeout=10, metadata=world.md("bob")) for _ in range(4)
        ]
        time.sleep(0.3)
        assert dave_limit() in ("10", "8")  # 40 x 1/4 (or x 1/5, counting dave's own call)
        for f in load:
            f.result()
    time.sleep(0.2)
    assert dave_limit() == "40"


# -- several replicas, one Redis ---------------------------------------------------------------


SHARED = [
    {"name": "project-cap", "key": ["project"], "models": ["add_sub"], "requests_per_s": 0.001, "burst": 10},
    {
        "name": "strict",
        "who": {"users": ["alice"]},
        "models": ["add_sub"],
        "requests_per_s": 0.001,
        "burst": 1000,
        "on_store_error": "closed",
    },
]


@pytest.fixture(scope="module")
def replicas(
    triton_a: Triton, llm: OpenAIStandIn, keys: tuple[Path, dict[str, str]], redis_server: RedisServer
) -> Iterator[list[Gateway]]:
    extra = {
        "rate_limits": {"store": "redis", "limits": SHARED},
        "redis": {"url": redis_server.url, "timeout_s": 0.2, "retry_s": 0.5},
    }
    gws = [Gateway(_config(triton_a, llm, keys[0], **extra)).start() for _ in range(2)]
    try:
        for gw in gws:
            gw.wait_serving("tritons")
        yield gws
    finally:
        for gw in gws:
            gw.stop()


def _burst(gws: list[Gateway], md: Any, n: int) -> tuple[int, int, list[str]]:
    """n calls at once, spread over the gateways: (allowed, refused, other errors)."""
    results: list[str] = []
    lock = threading.Lock()

    def one(gw: Gateway) -> None:
        with grpc.insecure_channel(gw.address) as ch:
            try:
                infer(ch, add_sub_request([1.0], [2.0]), metadata=md)
                out = "ok"
            except grpc.RpcError as err:
                out = err.code().name
        with lock:
            results.append(out)

    threads = [threading.Thread(target=one, args=(gws[i % len(gws)],)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    other = [r for r in results if r not in ("ok", "RESOURCE_EXHAUSTED")]
    return results.count("ok"), results.count("RESOURCE_EXHAUSTED"), other


def test_two_gateways_enforce_one_limit(replicas: list[Gateway], keys: tuple[Path, dict[str, str]]) -> None:
    md = (("authorization", f"Bearer {keys[1]['bob']}"),)
    allowed, refused, other = _burst(replicas, md, 30)
    assert other == []
    assert allowed == 10 and refused == 20  # not 10 per replica


def test_redis_down_fails_open_or_closed_per_limit_and_recovers(
    replicas: list[Gateway], keys: tuple[Path, dict[str, str]], redis_server: RedisServer
) -> None:
    carol = (("authorization", f"Bearer {keys[1]['carol']}"),)  # project ads: open limit only
    alice = (("authorization", f"Bearer {keys[1]['alice']}"),)  # also the closed one
    gw = replicas[0]
    redis_server.stop()
    try:
        with grpc.insecure_channel(gw.address) as ch:
            for _ in range(3):  # fail open: through, even past project ads' spent budget
                assert infer(ch, add_sub_request([1.0], [2.0]), metadata=carol).outputs
            with pytest.raises(grpc.RpcError) as err:
                infer(ch, add_sub_request([1.0], [2.0]), metadata=alice)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "rate limit strict cannot be checked now" in (err.value.details() or "")
    finally:
        redis_server.start()
    page = gw.metrics_text()
    assert metric_value(page, "meshgate_ratelimit_store_errors_total", policy="open") >= 1
    assert metric_value(page, "meshgate_ratelimit_store_errors_total", policy="closed") >= 1
    assert gw.log().count("rate-limit store unreachable") <= 2  # rate-limited, not one per call
    assert "Traceback" not in gw.log()
    # Redis is back (empty: budgets start full): limits are enforced again, no restart

    def enforced() -> bool:
        _, refused, other = _burst(replicas, carol, 12)
        return not other and refused >= 2

    wait_until(enforced, 10, "limits enforced again once Redis is back")
