"""Outbound TLS and mutual TLS to backends, per pool (upstream_tls), and the caller's identity
forwarded to backends as configured (auth.forward), never with the caller's credential.

The gRPC backend is a second real gateway with a TLS listener that requires client certificates
(it serves the KServe v2 protocol, with Triton behind it); its certificate names only
`backend.internal`, so the server name override is what makes the handshake pass. The HTTP
backend is the OpenAI stand-in over HTTPS, requiring a client certificate and recording headers.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from meshgate.v1 import admin_pb2, admin_pb2_grpc, generate_pb2, inference_pb2_grpc

from tests.certs import CA, write
from tests.helpers import add_sub_request, infer
from tests.openai_standin import OpenAIStandIn
from tests.procs import Gateway, Triton, make_key, pool_config, wait_until


class Pki:
    def __init__(self, d: Path) -> None:
        self.ca = CA("backend CA")
        self.ca_file = d / "backend-ca.crt"
        self.ca_file.write_bytes(self.ca.pem())
        self.backend = write(
            d, "backend", *self.ca.issue("backend", dns=("backend.internal",), server=True)[:2]
        )
        self.gateway = write(d, "gateway", *self.ca.issue("gateway-a")[:2])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("upstream"))


@pytest.fixture(scope="module")
def backend_gw(pki: Pki, triton_a: Triton) -> Iterator[Gateway]:
    """A gateway as a KServe v2 backend: TLS, client certificate required, gateway-a mapped."""
    config = pool_config(
        {"tritons": [("triton-a", triton_a.address, ["add_sub"])]},
        server={
            "tls": {
                "cert_file": str(pki.backend[0]),
                "key_file": str(pki.backend[1]),
                "client_ca_file": str(pki.ca_file),
            }
        },
        auth={
            "authenticators": ["mtls"],
            "mtls": {"identities": [{"common_name": "gateway-a", "user": "gateway-a"}]},
        },
    )
    gw = Gateway(config).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def https_llm(pki: Pki) -> Iterator[OpenAIStandIn]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_file))
    ctx.load_cert_chain(str(pki.backend[0]), str(pki.backend[1]))
    ctx.verify_mode = ssl.CERT_REQUIRED
    server = OpenAIStandIn(ssl_context=ctx)
    yield server
    server.close()


class Front:
    def __init__(self, gw: Gateway, keys: dict[str, str]) -> None:
        self.gw, self.keys = gw, keys

    def metadata(self, who: str = "bob") -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.keys[who]}"),)

    def rewrite(self, **changes: Any) -> None:
        config = dict(self.gw.config)
        config.update(changes)
        self.gw.config_path.write_text(yaml.safe_dump(config))
        with grpc.insecure_channel(self.gw.address) as ch:
            admin_pb2_grpc.AdminStub(ch).ReloadConfig(
                admin_pb2.ReloadConfigRequest(), timeout=10, metadata=self.metadata("root")
            )


def _upstream(pki: Pki, **changes: Any) -> dict[str, Any]:
    tls = {
        "ca_file": str(pki.ca_file),
        "cert_file": str(pki.gateway[0]),
        "key_file": str(pki.gateway[1]),
        "server_name": "backend.internal",
        **changes,
    }
    return {
        "remote": {k: v for k, v in tls.items() if v is not None},
        "llm": {k: v for k, v in tls.items() if v is not None},
    }


@pytest.fixture(scope="module")
def front(
    pki: Pki, backend_gw: Gateway, https_llm: OpenAIStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Front]:
    keys_file = tmp_path_factory.mktemp("front") / "keys.yaml"
    keys = {
        "bob": make_key(keys_file, "--user", "bob", "--project", "ads", "--department", "Verkäufe"),
        "root": make_key(keys_file, "--user", "root", "--role", "admin"),
    }
    config: dict[str, Any] = {
        "pools": {
            "remote": {
                "endpoints": [
                    {
                        "id": "backend-gw",
                        "address": backend_gw.address,
                        "backend": "kserve_v2",
                        "models": ["add_sub"],
                    }
                ]
            },
            "llm": {
                "endpoints": [
                    {
                        "id": "https-llm",
                        "address": f"127.0.0.1:{https_llm.port}",
                        "backend": "openai",
                        "models": ["echo"],
                    }
                ]
            },
        },
        "upstream_tls": _upstream(pki),
        "auth": {
            "authenticators": ["api_key"],
            "api_keys": {"file": str(keys_file), "reload_s": 0.2},
            "forward": {
                "x-meshgate-user": "user",
                "x-meshgate-project": "project",
                "x-meshgate-department": "department",
                "x-request-id": "request_id",
            },
        },
    }
    gw = Gateway(config).start()
    try:
        gw.wait_serving("remote")
        gw.wait_serving("llm")
        yield Front(gw, keys)
    finally:
        gw.stop()


def _audit(gw: Gateway) -> list[dict[str, Any]]:
    return [
        json.loads(line.split("meshgate.audit: ", 1)[1])
        for line in gw.log().splitlines()
        if "meshgate.audit: " in line
    ]


def test_grpc_backend_over_mutual_tls_with_a_server_name(front: Front, backend_gw: Gateway) -> None:
    with grpc.insecure_channel(front.gw.address) as ch:
        resp = infer(
            ch, add_sub_request([1.0], [2.0]), metadata=(*front.metadata(), ("x-request-id", "via-mtls"))
        )
    assert (resp.route.pool, resp.route.endpoint) == ("remote", "backend-gw")
    # The backend saw the front gateway's client certificate, and the forwarded request id.
    seen = [e for e in _audit(backend_gw) if e["method"] == "ModelInfer"]
    assert seen and seen[-1]["auth"] == "mtls" and seen[-1]["user"] == "gateway-a"
    assert seen[-1]["request_id"] == "via-mtls"


def test_http_backend_over_mutual_tls_gets_the_identity_not_the_credential(
    front: Front, https_llm: OpenAIStandIn
) -> None:
    with grpc.insecure_channel(front.gw.address) as ch:
        msg = generate_pb2.ChatMessage(role="user", content=[generate_pb2.ContentPart(text="hi")])
        resp = inference_pb2_grpc.InferenceStub(ch).Generate(
            generate_pb2.GenerateRequest(model="echo", messages=[msg]),
            timeout=10,
            metadata=front.metadata(),
        )
    assert "echo" in str(resp)
    headers = {k.lower(): v for k, v in https_llm.headers_seen[-1].items()}
    assert headers["x-meshgate-user"] == "bob" and headers["x-meshgate-project"] == "ads"
    assert headers["x-meshgate-department"] == "Verk%C3%A4ufe"  # UTF-8, percent-encoded
    assert "authorization" not in headers  # no provider key configured, and never the caller's
    assert all(front.keys["bob"] not in v for v in headers.values())
    cert = https_llm.peer_certs[-1]
    assert cert is not None and dict(x[0] for x in cert["subject"])["commonName"] == "gateway-a"


def test_a_reload_that_drops_the_client_certificate_rebuilds_the_connection(front: Front, pki: Pki) -> None:
    front.rewrite(upstream_tls=_upstream(pki, cert_file=None, key_file=None))
    with grpc.insecure_channel(front.gw.address) as ch:
        with pytest.raises(grpc.RpcError) as err:
            infer(ch, add_sub_request([1.0], [2.0]), metadata=front.metadata())
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        front.rewrite()  # the fixture's file: the certificate is back
        wait_until(lambda: _works(ch, front), 15, "the remote pool over mTLS again")


def test_the_wrong_server_name_fails_the_handshake(front: Front, pki: Pki) -> None:
    front.rewrite(upstream_tls=_upstream(pki, server_name=None))  # 127.0.0.1 is not in the certificate
    try:
        with grpc.insecure_channel(front.gw.address) as ch:
            with pytest.raises(grpc.RpcError) as err:
                infer(ch, add_sub_request([1.0], [2.0]), metadata=front.metadata())
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        front.rewrite()


def _works(ch: grpc.Channel, front: Front) -> bool:
    try:
        infer(ch, add_sub_request([1.0], [2.0]), metadata=front.metadata())
        return True
    except grpc.RpcError:
        return False


def test_upstream_tls_files_are_checked_and_never_taken_from_discovery(pki: Pki) -> None:
    from gateway.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config("upstream_tls: {p: {cert_file: /nope.crt}}", "t.yaml", env={})
    assert "cert_file and key_file go together" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config("upstream_tls: {p: {ca_file: /nope/ca.pem}}", "t.yaml", env={})
    assert "upstream_tls.p: Value error, ca_file: /nope/ca.pem is not a readable file" in str(err.value) or (
        "ca_file: /nope/ca.pem is not a readable file" in str(err.value)
    )
    from gateway.endpoints.upstream import with_upstream

    meta = {"tls": "true", "tls_ca_file": "/etc/shadow", "region": "eu"}
    assert with_upstream(meta, "p", {}) == {"tls": "true", "region": "eu"}
    assert with_upstream(meta, "p", {"*": {"tls": "true", "tls_ca_file": str(pki.ca_file)}})[
        "tls_ca_file"
    ] == str(pki.ca_file)
