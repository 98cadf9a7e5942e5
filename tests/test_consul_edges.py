"""Consul's edges: an agent that restarts with a lower index, a blocking query that simply waits,
and registration against an agent that answers 404 or nothing."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from discovery import PoolSnapshot
from discovery.consul import ConsulConfig, ConsulSource
from tests.consul_standin import ConsulStandIn
from tests.procs import Gateway, Triton, wait_until

PASSING = {"TTL": "1h", "Status": "passing"}


def instance(sid: str, port: int) -> dict[str, Any]:
    return {
        "Name": "tritons",
        "ID": sid,
        "Address": "127.0.0.1",
        "Port": port,
        "Tags": ["inference"],
        "Meta": {"backend": "triton", "models": "add_sub"},
        "Check": dict(PASSING),
    }


async def _next_with(snaps: AsyncIterator[PoolSnapshot], ids: set[str], timeout: float) -> float:
    """Seconds until a snapshot of pool tritons holds exactly `ids`."""
    start = time.monotonic()
    while True:
        snap = await asyncio.wait_for(anext(snaps), timeout - (time.monotonic() - start))
        if snap.pool == "tritons" and {e.id for e in snap.endpoints} == ids:
            return time.monotonic() - start


def test_a_restarted_agent_with_a_lower_index_is_followed_at_once() -> None:
    """The agent comes back with index 11 where the watchers last saw ~15: a watcher that kept
    its old index would block for the whole wait (20 s here) before seeing a new instance."""
    standin = ConsulStandIn()

    async def run() -> tuple[float, float, float]:
        source = ConsulSource(ConsulConfig(address=standin.address, wait_s=20, backoff_max_s=0.3), {"triton"})
        snaps = source.watch()
        try:
            standin.register(instance("a", 9001))
            await _next_with(snaps, {"a"}, 5)
            for i in range(4):  # move the indexes on, as a live cluster does
                standin.register(instance(f"tmp{i}", 9100 + i))
                standin.deregister(f"tmp{i}")
            await asyncio.sleep(1.5)  # the watchers are now blocked on the index they last saw
            waiting_age = source.stats.data_age(time.monotonic())
            standin.restart(index=11)
            await asyncio.sleep(0.5)
            standin.register(instance("b", 9002))
            seen_after = await _next_with(snaps, {"a", "b"}, 15)
            return waiting_age, seen_after, source.stats.data_age(time.monotonic())
        finally:
            await source.aclose()
            await snaps.aclose()

    try:
        waiting_age, seen_after, age_after = asyncio.run(run())
    finally:
        standin.close()
    assert waiting_age == 0.0  # a blocking query that waits on a healthy agent is not staleness
    assert seen_after < 3.0, seen_after  # was 24.6 s with wait_s 20 before the index reset
    assert age_after == 0.0


def test_data_age_grows_only_while_consul_fails() -> None:
    standin = ConsulStandIn()

    async def run() -> tuple[float, float]:
        source = ConsulSource(ConsulConfig(address=standin.address, wait_s=20, backoff_max_s=0.3), {"triton"})
        snaps = source.watch()
        try:
            standin.register(instance("a", 9001))
            await _next_with(snaps, {"a"}, 5)
            await asyncio.sleep(2.0)
            healthy = source.stats.data_age(time.monotonic())
            standin.stop()
            await asyncio.sleep(2.5)
            return healthy, source.stats.data_age(time.monotonic())
        finally:
            await source.aclose()
            await snaps.aclose()

    try:
        healthy, failing = asyncio.run(run())
    finally:
        standin.close()
    assert healthy == 0.0
    assert failing >= 2.0, failing


def test_registration_survives_an_agent_that_answers_404_or_nothing(triton_a: Triton) -> None:
    standin = ConsulStandIn(min_deregister_s=1.0, reap_interval_s=0.2)
    standin.not_found.add("/v1/agent/services")
    gw = Gateway(
        {
            "discovery": {
                "consul": {"address": standin.address, "backoff_max_s": 1.0},
                "register": {"enabled": True, "id": "gw-404", "check_interval_s": 0.2, "refresh_s": 0.3},
            },
            "pools": {
                "p": {
                    "endpoints": [{"address": triton_a.address, "backend": "triton", "models": ["add_sub"]}]
                }
            },
        }
    )
    gw.config_path.write_text(yaml.safe_dump(gw.config))
    gw.start()
    try:
        wait_until(lambda: "gave no service map (NoneType)" in gw.log(), 10, "the 404 to be seen")
        standin.not_found.clear()
        standin.empty.add("/v1/agent/services")
        wait_until(lambda: "Failed to decode JSON" in gw.log(), 10, "the empty answer to be seen")
        standin.empty.clear()
        standin.deregister("gw-404")  # a wiped agent: the refresh registers again
        wait_until(lambda: standin.service_ids("meshgate") == ["gw-404"], 10, "re-registration")
        page = (
            urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=5).read().decode()
        )
        assert 'meshgate_background_errors_total{loop="registration"}' not in page
        gw.signal(signal.SIGTERM)
        assert gw.proc is not None and gw.proc.wait(10) == 0
        assert standin.service_ids("meshgate") == []
        log = gw.log()
        assert "Traceback" not in log and "Unclosed client session" not in log, log[-3000:]
    finally:
        gw.stop()
        standin.close()


def test_the_consul_token_is_masked_like_a_provider_key(tmp_path: Path) -> None:
    from adapters.scrub import clean_message
    from gateway.config import parse_config
    from gateway.server.app import Gateway as GatewayApp

    token = "5e2c9f0a-41b7-4d3e-9c1f-0a7d2b6e8c41"
    (tmp_path / "token").write_text(token + "\n")
    config = parse_config(
        f"discovery: {{consul: {{address: '127.0.0.1:1', token_file: '{tmp_path / 'token'}'}}}}",
        "t.yaml",
        env={},
    )
    GatewayApp(config)  # reads the token as it wires the Consul source
    text = clean_message(f"consul answered 403 for X-Consul-Token {token} (prefix {token[:13]})")
    assert token[:8] not in text and token[-8:] not in text, text
