"""Endpoints dying and coming back, with traffic flowing: calls keep succeeding, health follows."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.helpers import add_sub_request, infer
from tests.procs import Gateway, Triton, pool_config


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Triton, Triton]]:
    c, d = Triton(("add_sub",)), Triton(("add_sub",))
    try:
        c.start()
        d.start()
        c.wait_ready()
        d.wait_ready()
        yield c, d
    finally:
        c.stop()
        d.stop()


def _restart(t: Triton) -> None:
    if not t.alive():
        t.start().wait_ready()


def test_endpoint_killed_mid_run_calls_keep_succeeding(pair: tuple[Triton, Triton]) -> None:
    c, d = pair
    _restart(d)
    gw = Gateway(
        pool_config({"p": [("triton-c", c.address, ["add_sub"]), ("triton-d", d.address, ["add_sub"])]})
    )
    gw.start().wait_serving("p")
    errors: list[str] = []
    served: collections.Counter[tuple[str, bool]] = collections.Counter()
    killed = threading.Event()
    stop = threading.Event()

    def client() -> None:
        with grpc.insecure_channel(gw.address) as ch:
            while not stop.is_set():
                after_kill = killed.is_set()
                try:
                    resp = infer(ch, add_sub_request([1, 2], [3, 4]), timeout=5)
                    served[(resp.route.endpoint, after_kill)] += 1
                except grpc.RpcError as err:
                    errors.append(f"{err.code().name}: {err.details()}")

    threads = [threading.Thread(target=client) for _ in range(6)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.5)
        d.kill()
        killed.set()
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join(timeout=10)
        assert errors == []
        assert served[("triton-c", False)] > 0 and served[("triton-d", False)] > 0, served
        assert served[("triton-c", True)] > 20, served
        assert gw.health("p") == 1  # SERVING: triton-c is still there
    finally:
        stop.set()
        gw.stop()


def test_pool_health_flips_when_its_only_endpoint_dies_and_returns(pair: tuple[Triton, Triton]) -> None:
    _, d = pair
    _restart(d)
    gw = Gateway(pool_config({"solo": [("triton-d", d.address, ["add_sub"])]})).start()
    try:
        gw.wait_serving("solo").wait_serving("")
        d.kill()
        gw.wait_serving("solo", timeout=5, serving=False)
        assert gw.health("") == 2  # NOT_SERVING overall: no pool can serve
        with grpc.insecure_channel(gw.address) as ch, pytest.raises(grpc.RpcError) as caught:
            infer(ch, add_sub_request([1], [1]))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no ready endpoint for model 'add_sub' in pool(s) solo" in caught.value.details()
        assert "triton-d" in caught.value.details()
        d.start().wait_ready()
        gw.wait_serving("solo", timeout=10).wait_serving("")
        with grpc.insecure_channel(gw.address) as ch:
            assert infer(ch, add_sub_request([1], [1])).route.endpoint == "triton-d"
    finally:
        gw.stop()
