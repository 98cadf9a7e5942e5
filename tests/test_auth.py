"""Identity and access through the real front door: API keys made with `meshgate keys`, every way
a credential is refused, revocation and new keys without a restart on an open channel, an
authorisation matrix, the audit log, secure defaults, and no key material in any log."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from meshgate.v1 import models_pb2, models_pb2_grpc
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc
from tritonclient.utils import InferenceServerException

from gateway.config import ConfigError, parse_config
from tests.helpers import add_sub_request, infer, metric_value
from tests.procs import Gateway, Triton, keys_cli, make_key, pool_config, wait_until

RULES = [
    {"who": {"roles": ["ml-eng"]}},  # everything
    {"who": {"projects": ["ads"]}, "models": ["add_sub"], "methods": ["Infer", "ModelInfer"]},
    {"who": {"projects": ["ads"]}, "methods": ["ListModels"]},
    {
        "who": {"projects": ["vision"]},
        "models": ["echo_*"],
        "methods": ["ListModels", "GetModel", "ModelReady", "RepositoryIndex", "ModelStatistics"],
    },
    {"effect": "deny", "who": {"departments": ["sales"]}},
]


class World:
    def __init__(self, gw: Gateway, keys_file: Path, keys: dict[str, str]) -> None:
        self.gw, self.keys_file, self.keys = gw, keys_file, keys


@pytest.fixture(scope="module")
def world(triton_a: Triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    keys_file = tmp_path_factory.mktemp("auth") / "keys.yaml"
    keys = {
        "alice": make_key(keys_file, "--user", "alice", "--project", "search", "--role", "ml-eng"),
        "bob": make_key(keys_file, "--user", "bob", "--project", "ads"),
        "sam": make_key(keys_file, "--user", "sam", "--project", "ads", "--department", "sales"),
        "erin": make_key(keys_file, "--user", "erin", "--project", "search"),
        "dana": make_key(keys_file, "--user", "dana", "--project", "vision"),
        "old": make_key(keys_file, "--user", "old", "--role", "ml-eng", "--expires", "2020-01-01T00:00:00Z"),
    }
    config = pool_config(
        {"tritons": [("triton-a", triton_a.address, ["add_sub", "echo_text", "fail"])]},
        auth={
            "authenticators": ["api_key"],
            "api_keys": {"file": str(keys_file), "reload_s": 0.2},
            "default": "deny",
            "rules": RULES,
        },
    )
    gw = Gateway(config).start()
    try:
        gw.wait_serving("tritons")
        yield World(gw, keys_file, keys)
    finally:
        gw.stop()


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def refused(fn: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code(), err.value.details() or ""


def test_every_refused_credential_says_why_and_reaches_no_backend(world: World) -> None:
    gw, keys = world.gw, world.keys
    alice_id = keys["alice"].split("_")[1]
    sent_before = metric_value(
        gw.metrics_text(), "meshgate_backend_requests_total", pool="tritons", endpoint="triton-a", code="OK"
    )
    cases = [
        ((), "missing credential: send metadata `authorization: Bearer <API key (mgk_...)>`"),
        ((("authorization", "Basic YWxpY2U6cHc="),), "malformed authorization metadata"),
        (bearer("not-a-key"), "credential not recognised"),
        (bearer("mgk_short"), "malformed API key: expected mgk_<id>_<secret>"),
        (bearer(keys["alice"][:-4] + "AAAA"), f"unknown API key mgk_{alice_id}_..."),
        (bearer(keys["old"]), "expired at 2020-01-01T00:00:00Z"),
    ]
    with grpc.insecure_channel(gw.address) as ch:
        for metadata, why in cases:
            code, details = refused(lambda md=metadata: infer(ch, add_sub_request([1], [2]), metadata=md))
            assert code == grpc.StatusCode.UNAUTHENTICATED, (metadata, details)
            assert why in details, (why, details)
            assert keys["alice"][-20:] not in details
    page = gw.metrics_text()
    assert (
        metric_value(page, "meshgate_backend_requests_total", pool="tritons", endpoint="triton-a", code="OK")
        == sent_before
    )
    assert metric_value(page, "meshgate_requests_total", method="Infer", code="UNAUTHENTICATED") >= len(cases)


def _six_calls(ch: grpc.Channel, md: tuple[tuple[str, str], ...]) -> list[Any]:
    """Infer add_sub, Infer fail, ModelInfer add_sub, ListModels, GetModel, ServerLive."""
    kserve = kpb_grpc.GRPCInferenceServiceStub(ch)
    models = models_pb2_grpc.ModelsStub(ch)
    x = np.array([1.0], dtype=np.float32).tobytes()
    kreq = kpb.ModelInferRequest(model_name="add_sub", raw_input_contents=[x, x])
    kreq.inputs.add(name="INPUT0", datatype="FP32", shape=[1])
    kreq.inputs.add(name="INPUT1", datatype="FP32", shape=[1])
    fail = add_sub_request([1], [2])
    fail.model = "fail"
    return [
        lambda: infer(ch, add_sub_request([1], [2]), metadata=md),
        lambda: infer(ch, fail, metadata=md),
        lambda: kserve.ModelInfer(kreq, timeout=10, metadata=md),
        lambda: models.ListModels(models_pb2.ListModelsRequest(), timeout=10, metadata=md),
        lambda: models.GetModel(models_pb2.GetModelRequest(name="add_sub"), timeout=10, metadata=md),
        lambda: kserve.ServerLive(kpb.ServerLiveRequest(), timeout=10, metadata=md),
    ]


def _allowed(fn: Any, who: str) -> bool:
    """Did the call get past authorisation? (A backend's own error means it did.)"""
    try:
        fn()
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.PERMISSION_DENIED:
            assert f"{who} may not call" in (err.details() or ""), err.details()
            return False
        assert err.code() != grpc.StatusCode.UNAUTHENTICATED, err.details()
    return True


def test_authorisation_matrix(world: World) -> None:
    bob = (True, False, True, True, False, False)  # project ads: add_sub and the model list only
    expected = {
        "alice": (True,) * 6,  # role ml-eng: everything
        "bob": bob,
        "sam": bob,  # ads and sales: the ads rules come before the sales deny; the first match decides
        "erin": (False,) * 6,  # no rule matches: default deny
    }
    with grpc.insecure_channel(world.gw.address) as ch:
        for who, want in expected.items():
            got = tuple(_allowed(fn, who) for fn in _six_calls(ch, bearer(world.keys[who])))
            assert got == want, (who, got)


def test_model_listings_show_only_what_the_caller_may_use(world: World) -> None:
    """dana may see the echo_* models only: the lists leave the others out, and the calls that
    name one are refused, without a hint that it exists."""
    md = bearer(world.keys["dana"])
    with grpc.insecure_channel(world.gw.address) as ch:
        models = models_pb2_grpc.ModelsStub(ch)
        kserve = kpb_grpc.GRPCInferenceServiceStub(ch)
        listed = models.ListModels(models_pb2.ListModelsRequest(), timeout=10, metadata=md)
        assert [m.name for m in listed.models] == ["echo_text"]
        index = kserve.RepositoryIndex(kpb.RepositoryIndexRequest(), timeout=10, metadata=md)
        assert [m.name for m in index.models] == ["echo_text"]
        stats = kserve.ModelStatistics(kpb.ModelStatisticsRequest(), timeout=10, metadata=md)
        assert {s.name for s in stats.model_stats} == {"echo_text"}
        assert kserve.ModelReady(kpb.ModelReadyRequest(name="echo_text"), timeout=10, metadata=md).ready
        assert models.GetModel(
            models_pb2.GetModelRequest(name="echo_text"), timeout=10, metadata=md
        ).model.ready
        for call in (
            lambda: models.GetModel(models_pb2.GetModelRequest(name="add_sub"), timeout=10, metadata=md),
            lambda: kserve.ModelReady(kpb.ModelReadyRequest(name="add_sub"), timeout=10, metadata=md),
            lambda: kserve.ModelStatistics(
                kpb.ModelStatisticsRequest(name="add_sub"), timeout=10, metadata=md
            ),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "dana may not call" in (err.value.details() or "") and "add_sub" in (
                err.value.details() or ""
            )
        # a misspelt name gets no hint of a model dana may not see
        with pytest.raises(grpc.RpcError) as err:
            models.GetModel(models_pb2.GetModelRequest(name="echo_txt"), timeout=10, metadata=md)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "add_sub" not in (err.value.details() or "")
        # erin may see nothing: refused, as before
        with pytest.raises(grpc.RpcError) as err:
            models.ListModels(models_pb2.ListModelsRequest(), timeout=10, metadata=bearer(world.keys["erin"]))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_health_and_reflection_stay_open(world: World) -> None:
    with grpc.insecure_channel(world.gw.address) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="tritons"), timeout=5
        )
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_tritonclient_sends_its_key_in_headers(world: World) -> None:
    client = tc.InferenceServerClient(world.gw.address)
    a = tc.InferInput("INPUT0", [1], "FP32")
    a.set_data_from_numpy(np.array([2], dtype=np.float32))
    b = tc.InferInput("INPUT1", [1], "FP32")
    b.set_data_from_numpy(np.array([3], dtype=np.float32))
    result = client.infer("add_sub", [a, b], headers={"authorization": f"Bearer {world.keys['bob']}"})
    assert result.as_numpy("OUTPUT0").tolist() == [5.0]
    with pytest.raises(InferenceServerException) as err:
        client.infer("add_sub", [a, b])
    assert "UNAUTHENTICATED" in str(err.value)
    client.close()


def test_revoke_and_add_keys_without_a_restart_on_an_open_channel(world: World) -> None:
    dave = make_key(world.keys_file, "--user", "dave", "--role", "ml-eng")
    with grpc.insecure_channel(world.gw.address) as ch:

        def answer() -> grpc.StatusCode:
            try:
                infer(ch, add_sub_request([1], [2]), metadata=bearer(dave))
                return grpc.StatusCode.OK
            except grpc.RpcError as err:
                return err.code()

        wait_until(lambda: answer() == grpc.StatusCode.OK, 5, "the new key to be accepted")
        out = keys_cli("revoke", "--file", str(world.keys_file), dave.split("_")[1])
        assert out.returncode == 0, out.stderr
        revoked_at = time.monotonic()
        wait_until(lambda: answer() == grpc.StatusCode.UNAUTHENTICATED, 5, "the revoked key to be refused")
        assert time.monotonic() - revoked_at < 2.0
        _, details = refused(lambda: infer(ch, add_sub_request([1], [2]), metadata=bearer(dave)))
        assert f"API key {dave.split('_')[1]} was revoked" in details
    listed = keys_cli("list", "--file", str(world.keys_file))
    assert listed.returncode == 0
    row = next(line for line in listed.stdout.splitlines() if line.startswith(dave.split("_")[1]))
    assert row.split()[1] == "dave" and row.endswith("revoked")


def test_a_broken_keys_file_keeps_the_loaded_keys(world: World) -> None:
    good = world.keys_file.read_text()
    try:
        world.keys_file.write_text("keys: [this is {not yaml")
        wait_until(lambda: "keys file not reloaded" in world.gw.log(), 5, "the bad file to be refused")
        with grpc.insecure_channel(world.gw.address) as ch:
            infer(ch, add_sub_request([1], [2]), metadata=bearer(world.keys["alice"]))
    finally:
        world.keys_file.write_text(good)


def test_audit_lines_and_no_key_material_in_any_log(world: World) -> None:
    with grpc.insecure_channel(world.gw.address) as ch:
        infer(ch, add_sub_request([1], [2], id="audited-1"), metadata=bearer(world.keys["bob"]))
    lines = [
        json.loads(line.split("meshgate.audit: ", 1)[1])
        for line in world.gw.log().splitlines()
        if "meshgate.audit: " in line
    ]
    bob = [
        entry
        for entry in lines
        if entry["user"] == "bob" and entry["method"] == "Infer" and entry["code"] == "OK"
    ]
    assert bob, lines[-5:]
    entry = bob[-1]
    assert entry["project"] == "ads" and entry["auth"] == "api_key"
    assert entry["credential_id"] == world.keys["bob"].split("_")[1]
    assert entry["model"] == "add_sub" and entry["pool"] == "tritons"
    request = add_sub_request([1], [2], id="audited-1")
    assert entry["request_bytes"] == request.ByteSize()
    assert entry["response_bytes"] > 2 * 4  # two FP32 outputs at least
    text = world.gw.log() + world.keys_file.read_text()
    for key in world.keys.values():
        secret = key.split("_", 2)[2]
        assert secret[:12] not in text and key not in text


def test_secure_defaults() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("server: {listen: '0.0.0.0:8700'}", "t.yaml", env={})
    assert "reachable from other hosts and no authenticator is configured" in str(err.value)
    assert "server.allow_unauthenticated: true" in str(err.value)
    parse_config("server: {listen: '0.0.0.0:8700', allow_unauthenticated: true}", "t.yaml", env={})
    parse_config("server: {listen: '[::1]:8700'}", "t.yaml", env={})
    with pytest.raises(ConfigError) as env_err:  # the environment override is checked the same way
        parse_config("{}", "t.yaml", env={"MESHGATE_LISTEN": "10.1.2.3:8700"})
    assert "10.1.2.3:8700" in str(env_err.value)
    with pytest.raises(ConfigError) as keys:
        parse_config("auth: {authenticators: [api_key]}", "t.yaml", env={})
    assert "api_key needs an api_keys section" in str(keys.value)


def test_keys_cli_errors_are_plain(tmp_path: Path) -> None:
    path = tmp_path / "k.yaml"
    out = keys_cli("create", "--file", str(path))
    assert out.returncode == 2 and "give --user, --project or --department" in out.stderr
    make_key(path, "--user", "x")
    out = keys_cli("revoke", "--file", str(path), "nope")
    assert out.returncode == 2 and "no key with id 'nope'" in out.stderr
    assert "Traceback" not in out.stderr
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_missing_keys_file_stops_start_up_with_its_name(tmp_path: Path, triton_a: Triton) -> None:
    config = pool_config(
        {"p": [("triton-a", triton_a.address, ["add_sub"])]},
        auth={"authenticators": ["api_key"], "api_keys": {"file": str(tmp_path / "missing.yaml")}},
    )
    gw = Gateway(config)
    out = gw.serve_once()
    assert out.returncode == 1
    assert f"meshgate: {tmp_path / 'missing.yaml'}: cannot read the keys file" in out.stderr
    assert "Traceback" not in out.stderr
