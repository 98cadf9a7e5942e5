"""TLS and mutual TLS on the real gateway: SPIFFE peers mapped to principals, certificates from
another CA, expired or missing, certificate rotation without dropping an open channel, and
tritonclient over TLS with a bearer key."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.certs import CA, write
from tests.helpers import add_sub_request, infer
from tests.procs import Gateway, Triton, make_key, pool_config, wait_until

SPIFFE = "spiffe://mesh.test/ns/search/sa/ranker"


class Pki:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.ca, self.other = CA("meshgate test CA"), CA("someone else's CA")
        (d / "ca.crt").write_bytes(self.ca.pem())
        cert, key, self.server_serial = self.ca.issue(
            "gateway", dns=("localhost",), ips=("127.0.0.1",), server=True
        )
        self.server = write(d, "server", cert, key)
        self.ranker = write(d, "ranker", *self.ca.issue("ranker", uris=(SPIFFE,))[:2])
        self.billing = write(d, "billing", *self.ca.issue("billing-svc")[:2])
        self.stranger = write(d, "stranger", *self.ca.issue("x", uris=("spiffe://mesh.test/ns/x/sa/y",))[:2])
        self.expired = write(d, "expired", *self.ca.issue("ranker", uris=(SPIFFE,), expired=True)[:2])
        self.foreign = write(d, "foreign", *self.other.issue("ranker", uris=(SPIFFE,))[:2])

    def channel(self, address: str, client: tuple[Path, Path] | None) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=(self.dir / "ca.crt").read_bytes(),
            private_key=client[1].read_bytes() if client else None,
            certificate_chain=client[0].read_bytes() if client else None,
        )
        return grpc.secure_channel(address, creds)

    def served_serial(self, address: str, client: tuple[Path, Path]) -> int:
        host, port = address.rsplit(":", 1)
        ctx = ssl.create_default_context(cafile=str(self.dir / "ca.crt"))
        ctx.load_cert_chain(str(client[0]), str(client[1]))
        ctx.set_alpn_protocols(["h2"])
        with (
            socket.create_connection((host, int(port)), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return int(x509.load_der_x509_certificate(der).serial_number)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def tls_gateway(pki: Pki, triton: Triton, keys_file: Path | None = None) -> Gateway:
    """mTLS with SPIFFE/CN identities; with `keys_file`, TLS without client certificates and
    API keys instead."""
    auth: dict[str, object] = {
        "authenticators": ["api_key"] if keys_file else ["mtls"],
        "mtls": {
            "identities": [
                {"spiffe": SPIFFE, "user": "ranker", "project": "search", "roles": ["service"]},
                {"common_name": "billing-svc", "user": "billing", "project": "finance"},
            ]
        },
    }
    if keys_file:
        auth["api_keys"] = {"file": str(keys_file), "reload_s": 0.2}
    config = pool_config(
        {"tritons": [("triton-a", triton.address, ["add_sub"])]},
        server={
            "tls": {
                "cert_file": str(pki.server[0]),
                "key_file": str(pki.server[1]),
                **({} if keys_file else {"client_ca_file": str(pki.dir / "ca.crt")}),
            }
        },
        auth=auth,
    )
    gw = Gateway(config).start()
    with pki.channel(gw.address, None if keys_file else pki.ranker) as ch:
        wait_until(lambda: _ready(ch), 30, "the gateway over TLS")
    return gw


def _ready(ch: grpc.Channel) -> bool:
    try:
        status = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="tritons"), timeout=3
        )
    except grpc.RpcError:
        return False
    return bool(status.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture(scope="module")
def mtls_gw(pki: Pki, triton_a: Triton) -> Iterator[Gateway]:
    gw = tls_gateway(pki, triton_a)
    try:
        yield gw
    finally:
        gw.stop()


def test_spiffe_and_cn_peers_become_principals(pki: Pki, mtls_gw: Gateway) -> None:
    for client in (pki.ranker, pki.billing):
        with pki.channel(mtls_gw.address, client) as ch:
            resp = infer(ch, add_sub_request([1, 2], [3, 4]))
            assert np.frombuffer(resp.outputs[0].raw, dtype="<f4").tolist() == [4.0, 6.0]
    audit = [line for line in mtls_gw.log().splitlines() if "meshgate.audit" in line]
    assert any(
        '"user":"ranker"' in a and f'"credential_id":"{SPIFFE}"' in a and '"auth":"mtls"' in a for a in audit
    )
    assert any('"user":"billing"' in a and '"credential_id":"CN=billing-svc"' in a for a in audit)


def test_an_unmapped_certificate_is_unauthenticated(pki: Pki, mtls_gw: Gateway) -> None:
    with pki.channel(mtls_gw.address, pki.stranger) as ch, pytest.raises(grpc.RpcError) as err:
        infer(ch, add_sub_request([1], [2]))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "client certificate spiffe://mesh.test/ns/x/sa/y is not mapped to a principal" in (
        err.value.details() or ""
    )


@pytest.mark.parametrize("who", ["foreign", "expired", "none"])
def test_the_handshake_refuses_bad_or_missing_client_certificates(
    pki: Pki, mtls_gw: Gateway, who: str
) -> None:
    client = {"foreign": pki.foreign, "expired": pki.expired, "none": None}[who]
    with pki.channel(mtls_gw.address, client) as ch, pytest.raises(grpc.RpcError) as err:
        infer(ch, add_sub_request([1], [2]), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert "Traceback" not in mtls_gw.log()


def test_plaintext_callers_are_refused(mtls_gw: Gateway) -> None:
    with grpc.insecure_channel(mtls_gw.address) as ch, pytest.raises(grpc.RpcError) as err:
        infer(ch, add_sub_request([1], [2]), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_rotation_keeps_open_channels(pki: Pki, triton_a: Triton, tmp_path: Path) -> None:
    gw = tls_gateway(pki, triton_a)
    try:
        before = pki.served_serial(gw.address, pki.ranker)
        assert before == pki.server_serial
        with pki.channel(gw.address, pki.ranker) as open_channel:
            infer(open_channel, add_sub_request([1], [2]))
            # A half-done rotation (the new certificate, the old key) is refused; the old one stays.
            cert, key, serial = pki.ca.issue("gateway", dns=("localhost",), ips=("127.0.0.1",), server=True)
            pki.server[0].write_bytes(cert)
            time.sleep(1.2)
            assert pki.served_serial(gw.address, pki.ranker) == before
            wait_until(lambda: "TLS certificate not reloaded" in gw.log(), 5, "the bad pair to be refused")
            pki.server[1].write_bytes(key)  # the rotation completes
            time.sleep(1.2)
            wait_until(lambda: pki.served_serial(gw.address, pki.ranker) == serial, 5, "the new certificate")
            for _ in range(5):  # the channel opened before the rotation carries on
                infer(open_channel, add_sub_request([1], [2]))
        assert "TLS certificate reloaded" in gw.log()
    finally:
        gw.stop()


def test_tritonclient_over_tls_with_a_bearer_key(pki: Pki, triton_a: Triton, tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    key = make_key(keys, "--user", "nb")
    gw = tls_gateway(pki, triton_a, keys_file=keys)
    try:
        client = tc.InferenceServerClient(
            gw.address, ssl=True, root_certificates=str(pki.dir / "ca.crt")
        )  # TLS, no client certificate: the key is the credential
        a = tc.InferInput("INPUT0", [1], "FP32")
        a.set_data_from_numpy(np.array([2], dtype=np.float32))
        b = tc.InferInput("INPUT1", [1], "FP32")
        b.set_data_from_numpy(np.array([5], dtype=np.float32))
        result = client.infer("add_sub", [a, b], headers={"authorization": f"Bearer {key}"})
        assert result.as_numpy("OUTPUT0").tolist() == [7.0]
        client.close()
        assert '"user":"nb"' in gw.log() and '"auth":"api_key"' in gw.log()
    finally:
        gw.stop()


def test_unreadable_certificates_stop_start_up_with_their_name(
    pki: Pki, triton_a: Triton, tmp_path: Path
) -> None:
    config = pool_config(
        {"p": [("triton-a", triton_a.address, ["add_sub"])]},
        server={"tls": {"cert_file": str(tmp_path / "nope.crt"), "key_file": str(pki.server[1])}},
    )
    gw = Gateway(config)
    out = gw.serve_once()
    assert out.returncode == 1
    assert "server.tls:" in out.stderr and "nope.crt" in out.stderr
    assert "Traceback" not in out.stderr
