"""The Admin service through the real front door: admin role only, pools and endpoints, drain
verified by traffic (and kept across reloads), config reload (refused when broken, the old config
serving; applied under load with no failed call; SIGHUP), principals without secrets, and the
`meshgate admin` CLI."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml
from meshgate.v1 import admin_pb2, admin_pb2_grpc, inference_pb2, tensor_pb2
from pydantic import ValidationError

from gateway.config import Config
from gateway.server.reload import plan_reload
from tests.helpers import add_sub_request, infer
from tests.procs import ROOT, Gateway, Triton, free_ports, make_key, pool_config, wait_until


class World:
    def __init__(self, gw: Gateway, keys_file: Path, keys: dict[str, str]) -> None:
        self.gw, self.keys_file, self.keys = gw, keys_file, keys

    def admin(self, method: str, request: Any, key: str = "root") -> Any:
        with grpc.insecure_channel(self.gw.address) as ch:
            return getattr(admin_pb2_grpc.AdminStub(ch), method)(
                request, timeout=10, metadata=bearer(self.keys[key])
            )

    def write_config(self, **changes: Any) -> None:
        config = dict(self.gw.config)
        config.update(changes)
        self.gw.config_path.write_text(yaml.safe_dump(config))

    def reload(self) -> Any:
        return self.admin("ReloadConfig", admin_pb2.ReloadConfigRequest())


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture(scope="module")
def world(triton_a: Triton, triton_b: Triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    keys_file = tmp_path_factory.mktemp("admin") / "keys.yaml"
    keys = {
        "root": make_key(keys_file, "--user", "root", "--role", "admin"),
        "bob": make_key(keys_file, "--user", "bob", "--project", "ads", "--role", "ml-eng"),
    }
    config = pool_config(
        {
            "tritons": [
                ("triton-a", triton_a.address, ["add_sub", "sleep"]),
                ("triton-b", triton_b.address, ["add_sub", "sleep"]),
            ]
        },
        auth={"authenticators": ["api_key"], "api_keys": {"file": str(keys_file), "reload_s": 0.2}},
    )
    gw = Gateway(config).start()
    try:
        gw.wait_serving("tritons")
        world = World(gw, keys_file, keys)
        wait_until(lambda: all(e.ready for e in _endpoints(world)), 30, "both endpoints ready")
        yield world
    finally:
        gw.stop()


@pytest.fixture(autouse=True)
def _restore(world: World) -> Iterator[None]:
    """Each test starts from the fixture's config, nothing drained."""
    yield
    world.write_config()
    world.reload()
    for ep in _endpoints(world):
        if ep.drained:
            world.admin(
                "UndrainEndpoint", admin_pb2.UndrainEndpointRequest(pool="tritons", endpoint_id=ep.id)
            )


def _endpoints(world: World) -> list[Any]:
    resp = world.admin("ListPools", admin_pb2.ListPoolsRequest(pool="tritons"))
    return list(resp.pools[0].endpoints)


def _routes(world: World, n: int, key: str = "bob") -> Counter[str]:
    with grpc.insecure_channel(world.gw.address) as ch:
        return Counter(
            infer(ch, add_sub_request([1.0], [2.0]), metadata=bearer(world.keys[key])).route.endpoint
            for _ in range(n)
        )


def _sleep_request(ms: int) -> Any:
    ms_tensor = tensor_pb2.Tensor(
        name="MS", datatype="DATA_TYPE_INT64", shape=[1], raw=np.int64([ms]).tobytes()
    )
    return inference_pb2.InferRequest(model="sleep", inputs=[ms_tensor])


def test_admin_needs_the_admin_role(world: World) -> None:
    calls = [
        ("ListPools", admin_pb2.ListPoolsRequest()),
        ("DrainEndpoint", admin_pb2.DrainEndpointRequest(pool="tritons", endpoint_id="triton-a")),
        ("UndrainEndpoint", admin_pb2.UndrainEndpointRequest(pool="tritons", endpoint_id="triton-a")),
        ("ReloadConfig", admin_pb2.ReloadConfigRequest()),
        ("ListPrincipals", admin_pb2.ListPrincipalsRequest()),
    ]
    with grpc.insecure_channel(world.gw.address) as ch:
        stub = admin_pb2_grpc.AdminStub(ch)
        for method, request in calls:
            with pytest.raises(grpc.RpcError) as err:
                getattr(stub, method)(request, timeout=5, metadata=bearer(world.keys["bob"]))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
            assert err.value.details() == f"bob may not call {method}: the admin role is needed"
            with pytest.raises(grpc.RpcError) as err:
                getattr(stub, method)(request, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
    # bob's attempt to drain changed nothing
    assert not any(e.drained for e in _endpoints(world))


def test_list_pools_shows_endpoints_and_their_state(world: World) -> None:
    resp = world.admin("ListPools", admin_pb2.ListPoolsRequest())
    assert [p.name for p in resp.pools] == ["tritons"]
    pool = resp.pools[0]
    assert pool.ready and pool.profile == "default"
    assert [e.id for e in pool.endpoints] == ["triton-a", "triton-b"]
    assert all(e.ready and not e.drained and e.backend == "triton" for e in pool.endpoints)
    assert list(pool.endpoints[0].models) == ["add_sub", "sleep"]
    with pytest.raises(grpc.RpcError) as err:
        world.admin("ListPools", admin_pb2.ListPoolsRequest(pool="triton"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "did you mean" in (err.value.details() or "") and "tritons" in (err.value.details() or "")


def test_drain_finishes_calls_in_flight_and_takes_no_new_ones(world: World) -> None:
    # A slow call is under way on each endpoint when triton-a is drained.
    results: list[str] = []
    with grpc.insecure_channel(world.gw.address) as ch:
        futures = [infer_future(ch, _sleep_request(1500), world.keys["bob"]) for _ in range(2)]
        wait_until(lambda: sum(e.in_flight for e in _endpoints(world)) == 2, 5, "two slow calls in flight")
        drained = world.admin(
            "DrainEndpoint", admin_pb2.DrainEndpointRequest(pool="tritons", endpoint_id="triton-a")
        ).endpoint
        assert drained.drained and drained.id == "triton-a"
        results = [f.result(timeout=10).route.endpoint for f in futures]  # both finish: nothing cut
    assert sorted(results) == ["triton-a", "triton-b"]
    assert _routes(world, 30) == Counter({"triton-b": 30})
    state = {e.id: e for e in _endpoints(world)}
    assert state["triton-a"].drained and not state["triton-a"].ready and state["triton-a"].in_flight == 0

    # Kept across a config reload (and its static pool re-applied) ...
    world.write_config(routing={"aliases": {"sum": {"split": [{"model": "add_sub"}]}}})
    assert world.reload().applied == ["routing.aliases"]
    assert _routes(world, 20) == Counter({"triton-b": 20})

    # ... and both drained: UNAVAILABLE naming the drain, and the pool's health says so.
    world.admin("DrainEndpoint", admin_pb2.DrainEndpointRequest(pool="tritons", endpoint_id="triton-b"))
    with pytest.raises(grpc.RpcError) as err:
        _routes(world, 1)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "triton-a: drained by an operator" in (err.value.details() or "")
    world.gw.wait_serving("tritons", serving=False, timeout=5)

    world.admin("UndrainEndpoint", admin_pb2.UndrainEndpointRequest(pool="tritons", endpoint_id="triton-a"))
    world.admin("UndrainEndpoint", admin_pb2.UndrainEndpointRequest(pool="tritons", endpoint_id="triton-b"))
    world.gw.wait_serving("tritons", timeout=5)
    assert set(_routes(world, 30)) == {"triton-a", "triton-b"}


def infer_future(ch: grpc.Channel, request: Any, key: str) -> Any:
    from meshgate.v1 import inference_pb2_grpc

    return inference_pb2_grpc.InferenceStub(ch).Infer.future(request, timeout=10, metadata=bearer(key))


def test_drain_of_an_unknown_endpoint_is_not_found(world: World) -> None:
    for pool, endpoint, field in (("tritons", "triton-c", "endpoint_id"), ("nope", "triton-a", "pool")):
        with pytest.raises(grpc.RpcError) as err:
            world.admin("DrainEndpoint", admin_pb2.DrainEndpointRequest(pool=pool, endpoint_id=endpoint))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert (err.value.details() or "").startswith(f"{field}: ")
    with pytest.raises(grpc.RpcError) as err:
        world.admin("DrainEndpoint", admin_pb2.DrainEndpointRequest(pool="tritons"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "endpoint_id: required"


def test_a_broken_config_is_refused_and_the_old_one_keeps_serving(world: World) -> None:
    cases = {
        "routing: [not, a, mapping\n": "not valid YAML",
        "pools: {tritons: {endpoints: []}}\n": "pools.tritons.endpoints",
        "auth: {authenticators: [api_key]}\n": "authenticator api_key needs an api_keys section",
    }
    for text, expected in cases.items():
        world.gw.config_path.write_text(text)
        check = subprocess.run(
            [sys.executable, "-m", "gateway", "check-config", str(world.gw.config_path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        with pytest.raises(grpc.RpcError) as err:
            world.reload()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = err.value.details() or ""
        assert expected in details
        # the same text as at start-up (check-config prints what `serve` would)
        assert details.startswith("config not reloaded, the running config stays: ")
        assert details.removeprefix("config not reloaded, the running config stays: ") == check.stderr.strip()
        assert sum(_routes(world, 4).values()) == 4  # still serving, keys still checked
    # SIGHUP with a broken file: one log line, still serving
    world.gw.signal(signal.SIGHUP)
    wait_until(
        lambda: "config reload refused, the running config stays" in world.gw.log(), 5, "the refusal logged"
    )
    assert sum(_routes(world, 4).values()) == 4
    assert "Traceback" not in world.gw.log()


def test_reload_under_load_fails_no_call(world: World) -> None:
    """Calls run from 4 threads while the config changes six times (RPC and SIGHUP): an alias
    appears, rules tighten and relax, the default profile changes. No call fails."""
    stop = threading.Event()
    failures: list[str] = []
    done = Counter[str]()

    def load() -> None:
        with grpc.insecure_channel(world.gw.address) as ch:
            while not stop.is_set():
                try:
                    infer(ch, add_sub_request([1.0], [2.0]), metadata=bearer(world.keys["bob"]))
                    done["ok"] += 1
                except grpc.RpcError as err:
                    failures.append(f"{err.code().name}: {err.details()}")

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        base_auth = world.gw.config["auth"]
        steps: list[dict[str, Any]] = [
            {"routing": {"aliases": {"adder": {"split": [{"model": "add_sub"}]}}}},
            {"routing": {"profile": "least_inflight"}},
            {"auth": {**base_auth, "rules": [{"effect": "deny", "who": {"users": ["mallory"]}}]}},
            {"routing": {"profile": "p2c_inflight"}},
            {"limits": {"max_inputs": 8}, "log_level": "WARNING"},
            {},
        ]
        for i, step in enumerate(steps):
            time.sleep(0.3)
            world.write_config(**step)
            if i % 2:
                world.gw.signal(signal.SIGHUP)
            else:
                assert world.reload().applied
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert failures == []
    assert done["ok"] > 50
    wait_until(lambda: world.gw.log().count("config reloaded: applied") == 3, 5, "the SIGHUP reloads logged")


def test_a_reload_applies_aliases_rules_and_pools(world: World, triton_b: Triton) -> None:
    world.write_config(
        routing={"aliases": {"adder": {"split": [{"model": "add_sub"}]}}},
        auth={
            **world.gw.config["auth"],
            "rules": [{"effect": "deny", "who": {"users": ["bob"]}, "models": ["add_sub"]}],
        },
        pools={
            **world.gw.config["pools"],
            "spare": {
                "endpoints": [
                    {
                        "id": "spare-b",
                        "address": triton_b.address,
                        "backend": "triton",
                        "models": ["echo_text"],
                    }
                ]
            },
        },
    )
    resp = world.reload()
    assert resp.applied == ["auth", "pools", "routing.aliases"]
    assert resp.source == str(world.gw.config_path)
    with grpc.insecure_channel(world.gw.address) as ch:
        req = add_sub_request([1.0], [2.0])
        req.model = "adder"
        assert infer(ch, req, metadata=bearer(world.keys["bob"])).route.model == "add_sub"
        with pytest.raises(grpc.RpcError) as err:
            infer(ch, add_sub_request([1.0], [2.0]), metadata=bearer(world.keys["bob"]))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    world.gw.wait_serving("spare", timeout=10)
    # back to the fixture's file: the spare pool goes, its health with it
    world.write_config()
    assert world.reload().applied == ["auth", "pools", "routing.aliases"]
    world.gw.wait_serving("spare", serving=False, timeout=5)
    assert sum(_routes(world, 3).values()) == 3


def test_restart_only_settings_wait_and_cannot_open_the_door(world: World) -> None:
    port = free_ports(1)[0]
    world.write_config(server={**world.gw.config["server"], "listen": f"127.0.0.1:{port}"})
    resp = world.reload()
    assert list(resp.restart_required) == ["server.listen"] and list(resp.applied) == []
    assert sum(_routes(world, 2).values()) == 2  # still on the old port


def test_the_cache_store_waits_for_a_restart_and_the_rest_of_the_cache_applies() -> None:
    running = Config.model_validate({"cache": {"max_bytes": 4096}})
    new = Config.model_validate(
        {"cache": {"max_bytes": 8192, "store": "redis"}, "redis": {"url": "redis://127.0.0.1:1/0"}}
    )
    plan = plan_reload(running, new, "meshgate.yaml")
    assert plan.restart_required == ["cache.store", "redis"] and plan.applied == ["cache"]
    assert plan.config.cache is not None
    assert (plan.config.cache.store, plan.config.cache.max_bytes) == ("memory", 8192)


def test_tracing_waits_for_a_restart() -> None:
    running = Config.model_validate({})
    new = Config.model_validate({"tracing": {"enabled": True, "endpoint": "http://collector:4317"}})
    plan = plan_reload(running, new, "meshgate.yaml")
    assert plan.restart_required == ["tracing"] and not plan.config.tracing.enabled


def test_tracing_config_names_a_bad_field() -> None:
    with pytest.raises(ValidationError) as caught:
        Config.model_validate({"tracing": {"enabled": True, "endpoint": "collector:4317", "sample_ratio": 2}})
    where = {".".join(map(str, e["loc"])) for e in caught.value.errors()}
    assert where == {"tracing.endpoint", "tracing.sample_ratio"}


def test_reload_cannot_turn_auth_off_on_a_listener_others_reach(
    triton_a: Triton, tmp_path_factory: pytest.TempPathFactory
) -> None:
    keys_file = tmp_path_factory.mktemp("open") / "keys.yaml"
    root = make_key(keys_file, "--user", "root", "--role", "admin")
    port = free_ports(1)[0]
    config = pool_config(
        {"tritons": [("triton-a", triton_a.address, ["add_sub"])]},
        server={"listen": f"0.0.0.0:{port}"},
        auth={"authenticators": ["api_key"], "api_keys": {"file": str(keys_file)}},
    )
    gw = Gateway(config)
    gw.address = f"127.0.0.1:{port}"
    gw.start()
    try:
        # the file alone is valid (loopback, no auth) but the listener stays on 0.0.0.0
        opened = {**config, "server": {"listen": f"127.0.0.1:{port}"}, "auth": {}}
        gw.config_path.write_text(yaml.safe_dump(opened))
        with grpc.insecure_channel(gw.address) as ch:
            with pytest.raises(grpc.RpcError) as err:
                admin_pb2_grpc.AdminStub(ch).ReloadConfig(
                    admin_pb2.ReloadConfigRequest(), timeout=10, metadata=bearer(root)
                )
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "server.listen as running until a restart" in (err.value.details() or "")
            assert "no authenticator is configured" in (err.value.details() or "")
            with pytest.raises(grpc.RpcError) as err:
                infer(ch, add_sub_request([1.0], [2.0]))  # still needs a key
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        gw.stop()


def test_list_principals_without_secrets(world: World) -> None:
    _routes(world, 1, key="bob")
    resp = world.admin("ListPrincipals", admin_pb2.ListPrincipalsRequest())
    by_user = {p.user: p for p in resp.principals}
    assert set(by_user) == {"root", "bob"}
    bob = by_user["bob"]
    assert bob.auth == "api_key" and bob.project == "ads" and list(bob.roles) == ["ml-eng"]
    assert bob.credential_id == world.keys["bob"].split("_")[1]
    assert 0 <= bob.last_seen_seconds_ago < 30
    text = str(resp)
    for key in world.keys.values():
        assert key.split("_", 2)[2][:12] not in text
    assert "sha256" not in text


def test_the_admin_cli(world: World) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "admin",
                *args,
                "--target",
                world.gw.address,
                "--api-key",
                world.keys["root"],
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=30,
        )

    out = cli("pools")
    assert out.returncode == 0, out.stderr
    assert "tritons" in out.stdout and "triton-a" in out.stdout and "add_sub,sleep" in out.stdout
    out = cli("drain", "tritons", "triton-a", "--wait", "5")
    assert out.returncode == 0, out.stderr
    assert "tritons/triton-a: drained" in out.stdout and "idle" in out.stdout
    assert "drained" in cli("pools").stdout
    assert cli("undrain", "tritons", "triton-a").returncode == 0
    out = cli("reload")
    assert out.returncode == 0 and "applied: nothing (no change)" in out.stdout
    out = cli("principals")
    assert out.returncode == 0 and "root" in out.stdout and "admin" in out.stdout
    world.gw.config_path.write_text("pools: 3\n")
    out = cli("reload")
    assert out.returncode == 1
    assert "FAILED_PRECONDITION: config not reloaded" in out.stderr and "Traceback" not in out.stderr
