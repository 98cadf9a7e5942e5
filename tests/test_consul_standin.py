"""The Consul stand-in is only useful if it behaves like Consul: py-consul (sync and asyncio)
against it, through the documented behaviours meshgate relies on."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import consul
import consul.aio
import consul.exceptions
import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.consul_standin import ConsulStandIn


@pytest.fixture
def standin() -> Iterator[ConsulStandIn]:
    s = ConsulStandIn(min_deregister_s=1.0, reap_interval_s=0.2)
    yield s
    s.close()


def client(s: ConsulStandIn, token: str | None = None) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=s.port, token=token)


def test_register_defaults_and_critical_initial_status(standin: ConsulStandIn) -> None:
    c = client(standin)
    assert c.agent.service.register(
        "triton",
        address="10.0.0.1",
        port=8001,
        tags=["inference"],
        meta={"backend": "triton"},
        check=consul.Check.ttl("10s"),
    )
    services = c.agent.services()
    assert services["triton"]["ID"] == "triton"  # ID defaults to Name
    assert services["triton"]["Meta"] == {"backend": "triton"}
    checks = c.agent.checks()
    assert checks["service:triton"]["Status"] == "critical"  # default check id, critical at first
    index, nodes = c.health.service("triton", passing=True)
    assert nodes == []
    assert int(index) > 0
    index, nodes = c.health.service("triton")
    assert [n["Service"]["Address"] for n in nodes] == ["10.0.0.1"]
    assert {ch["CheckID"] for ch in nodes[0]["Checks"]} == {"serfHealth", "service:triton"}
    c.agent.check.ttl_pass("service:triton")
    _, nodes = c.health.service("triton", passing=True)
    assert len(nodes) == 1


def test_blocking_query_wakes_on_change_and_times_out(standin: ConsulStandIn) -> None:
    c = client(standin)
    c.agent.service.register("m", service_id="m-1", port=1, check=consul.Check.ttl("30s"))
    index, _ = c.health.service("m")
    start = time.monotonic()
    same, _ = c.health.service("m", index=index, wait="300ms")
    waited = time.monotonic() - start
    assert same == index
    assert 0.3 <= waited < 0.3 * 17 / 16 + 0.3  # wait plus at most wait/16 of jitter

    result: list[tuple[str, list[object]]] = []
    t = threading.Thread(target=lambda: result.append(c.health.service("m", index=index, wait="10s")))
    t.start()
    time.sleep(0.2)
    start = time.monotonic()
    c.agent.service.deregister("m-1")  # the last instance goes: the extinction index
    t.join(5)
    assert time.monotonic() - start < 1.0
    new_index, nodes = result[0]
    assert nodes == []
    assert int(new_index) > int(index)


def test_per_service_index_and_catalog(standin: ConsulStandIn) -> None:
    c = client(standin)
    c.agent.service.register("a", port=1, tags=["inference"])
    c.agent.service.register("b", port=2, tags=["other"])
    ia, _ = c.health.service("a")
    c.agent.service.register("b", service_id="b-2", port=3)
    ia2, _ = c.health.service("a")
    assert ia2 == ia  # a change to b does not move a's index
    _, services = c.catalog.services()
    assert services == {"consul": [], "a": ["inference"], "b": ["other"]}


def test_bad_index_and_wait_are_400(standin: ConsulStandIn) -> None:
    c = client(standin)
    with pytest.raises(consul.exceptions.BadRequest, match="Invalid index"):
        c.health.service("x", index="abc", wait="1s")
    with pytest.raises(consul.exceptions.BadRequest, match="Invalid wait time"):
        c.health.service("x", index="5", wait="soon")


def test_deregister_unknown_is_404(standin: ConsulStandIn) -> None:
    assert client(standin).agent.service.deregister("nope") is False  # py-consul: 404 -> False


def test_acl_token(standin: ConsulStandIn) -> None:
    standin.acl_token = "s3cret"
    with pytest.raises(consul.ACLPermissionDenied):
        client(standin).agent.services()
    assert client(standin, token="s3cret").agent.services() == {}


def test_grpc_check_really_probes_and_reaper_deregisters(standin: ConsulStandIn) -> None:
    async def scenario() -> None:
        server = grpc.aio.server()
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await servicer.set("pool", health_pb2.HealthCheckResponse.SERVING)
        c = consul.aio.Consul(host="127.0.0.1", port=standin.port)
        try:
            check = consul.Check.grpc(f"127.0.0.1:{port}/pool", "100ms", timeout="1s", deregister="1s")
            await c.agent.service.register("gw", service_id="gw-1", port=port, check=check)
            await _until(lambda: standin.check_status("service:gw-1") == "passing")
            await servicer.set("pool", health_pb2.HealthCheckResponse.NOT_SERVING)
            await _until(lambda: standin.check_status("service:gw-1") == "critical")
            _, nodes = await c.health.service("gw", passing=True)
            assert nodes == []
            await server.stop(0)  # dead: stays critical, then reaped after DeregisterCriticalServiceAfter
            await _until(lambda: standin.service_ids("gw") == [], timeout=5)
        finally:
            await c.http._session.close()
            await server.stop(0)

    asyncio.run(scenario())


def test_asyncio_client_blocking_and_outage(standin: ConsulStandIn) -> None:
    async def scenario() -> None:
        c = consul.aio.Consul(host="127.0.0.1", port=standin.port, connections_timeout=5)
        try:
            await c.agent.service.register("m", port=1, check=consul.Check.ttl("30s"))
            index, _ = await c.health.service("m")
            standin.stop()
            with pytest.raises(Exception) as caught:  # aiohttp.ClientConnectorError
                await c.health.service("m")
            assert "Connect" in type(caught.value).__name__
            standin.start()
            index2, nodes = await c.health.service("m")
            assert index2 == index and len(nodes) == 1  # state survives the outage
            standin.fail_next(500, 1)
            with pytest.raises(consul.ConsulException):
                await c.health.service("m")
        finally:
            await c.http._session.close()

    asyncio.run(scenario())


async def _until(predicate: object, timeout: float = 3.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.05)
