"""Fair admission through the real front door, on a pool saturated on purpose (capacity 1: one
Triton slot, admission.per_slot 1): a flooding tenant and a polite one (the polite one keeps
its share), priority classes (critical goes first, sheddable is shed at once, a request may lower
its class but not raise it), a call whose deadline cannot be met refused at once, and the queue
depth exported."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from meshgate.v1 import inference_pb2, inference_pb2_grpc, tensor_pb2

from tests.helpers import metric_value
from tests.procs import Gateway, Triton, make_key

SLEEP_MS = 150


class World:
    def __init__(self, gw: Gateway, keys: dict[str, str]) -> None:
        self.gw, self.keys = gw, keys

    def md(self, who: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.keys[who]}"), *extra)

    def call(
        self, who: str, ms: int = SLEEP_MS, timeout: float = 30, extra: tuple[tuple[str, str], ...] = ()
    ) -> float:
        """One call; its latency in seconds. Raises grpc.RpcError."""
        with grpc.insecure_channel(self.gw.address) as ch:
            t0 = time.monotonic()
            inference_pb2_grpc.InferenceStub(ch).Infer(
                _sleep(ms), timeout=timeout, metadata=self.md(who, *extra)
            )
            return time.monotonic() - t0


def _sleep(ms: int) -> Any:
    t = tensor_pb2.Tensor(name="MS", datatype="DATA_TYPE_INT64", shape=[1], raw=np.int64([ms]).tobytes())
    return inference_pb2.InferRequest(model="sleep", inputs=[t])


@pytest.fixture(scope="module")
def world(triton_a: Triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    keys_file = tmp_path_factory.mktemp("admission") / "keys.yaml"
    keys = {
        "flood": make_key(keys_file, "--user", "flood", "--project", "flood"),
        "polite": make_key(keys_file, "--user", "polite", "--project", "polite"),
        "crit": make_key(keys_file, "--user", "crit", "--project", "ops", "--role", "oncall"),
        "batch": make_key(keys_file, "--user", "batch", "--project", "etl", "--role", "batch"),
    }
    config = {
        "pools": {
            "tritons": {
                "endpoints": [
                    {
                        "id": "triton-a",
                        "address": triton_a.address,
                        "backend": "triton",
                        "models": ["sleep"],
                        "slots": 1,
                    }
                ]
            }
        },
        "auth": {"authenticators": ["api_key"], "api_keys": {"file": str(keys_file)}},
        "admission": {
            "pools": ["trit*"],
            "per_slot": 1,
            "tenant": "project",
            "class_rules": [
                {"who": {"roles": ["oncall"]}, "priority": "critical"},
                {"who": {"roles": ["batch"]}, "priority": "sheddable"},
            ],
        },
    }
    gw = Gateway(config).start()
    try:
        gw.wait_serving("tritons")
        world = World(gw, keys)
        world.call("polite", 1)
        yield world
    finally:
        gw.stop()


class Flood:
    """`n` threads calling as fast as they are answered until stopped."""

    def __init__(self, world: World, n: int) -> None:
        self.world, self.done, self.errors = world, 0, []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(n)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.world.call("flood")
                self.done += 1
            except grpc.RpcError as err:
                self.errors.append(err.code().name)

    def __enter__(self) -> Flood:
        for t in self._threads:
            t.start()
        time.sleep(0.5)  # the queue fills
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def test_a_flooding_tenant_does_not_starve_a_polite_one(world: World) -> None:
    with Flood(world, 6) as flood:
        polite = [world.call("polite") for _ in range(5)]
        depth = metric_value(world.gw.metrics_text(), "meshgate_admission_queue_depth", pool="tritons")
    # FIFO would put each polite call behind ~6 flood calls (~1 s); fair share: behind ~1
    assert statistics.median(polite) < 4 * SLEEP_MS / 1000, polite
    assert flood.done >= 5 and flood.errors == []
    assert depth >= 3


def test_priority_classes(world: World) -> None:
    with Flood(world, 6):
        # critical goes ahead of the standard calls waiting
        crit = [world.call("crit") for _ in range(3)]
        assert statistics.median(crit) < 4 * SLEEP_MS / 1000, crit
        # sheddable is refused at once, never reaching a backend
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            world.call("batch")
        assert time.monotonic() - t0 < 0.1
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "pool tritons is at capacity" in (err.value.details() or "")
        assert "sheddable calls are shed" in (err.value.details() or "")
        # a request may lower its class ...
        with pytest.raises(grpc.RpcError) as err:
            world.call("crit", extra=(("x-meshgate-priority", "sheddable"),))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # ... but not raise it: a standard caller asking for critical waits its turn, not shed
        assert world.call("polite", extra=(("x-meshgate-priority", "critical"),)) > 0
        # a deadline that the expected wait would pass: refused at once
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            world.call("polite", timeout=0.05)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
        assert "past its deadline" in (err.value.details() or "")
        assert time.monotonic() - t0 < 0.05 + 0.05
    page = world.gw.metrics_text()
    assert (
        metric_value(
            page, "meshgate_admission_refusals_total", pool="tritons", priority="sheddable", reason="shed"
        )
        >= 2
    )
    assert "Traceback" not in world.gw.log()


def test_a_flooders_own_backlog_sets_its_expected_wait() -> None:
    """Unit: with 3 tenants busy, a tenant with 20 calls waiting expects its next call to wait
    for 21 of its own at a third of the pool; a tenant with none waiting, for one round."""
    import asyncio

    from gateway.policy.admission.queue import PoolQueue, Waiter

    async def check() -> None:
        q = PoolQueue(1, lambda: 4.0, lambda t: 1.0)
        q.hold_s = 0.1
        for tenant, n in (("flood", 20), ("a", 1), ("b", 1)):
            for _ in range(n):
                q.enqueue(Waiter(0, tenant))
        assert q.expected_wait(0, "flood") == pytest.approx(21 * 3 * 0.1 / 4)
        assert q.expected_wait(0, "a") == pytest.approx(
            3 * 0.1 / 4 * 2
        )  # a, b, flood ahead; own backlog 2 at 1/3
        assert q.expected_wait(0, "new") == pytest.approx(4 * 0.1 / 4)  # one round: a, b, flood, new

    asyncio.run(check())
