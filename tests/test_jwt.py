"""JWT bearer tokens through the real front door: RS256, ES256 and EdDSA keys made with
`cryptography`, a JWKS served over HTTP on loopback with a key rollover, every refused token,
algorithm confusion, and the issuer's load under a flood of unknown key ids."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import grpc
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.helpers import add_sub_request, infer
from tests.procs import Gateway, Triton, pool_config
from tests.standin_server import ThreadedServer

ISSUER, AUDIENCE = "https://issuer.test", "meshgate"


class Issuer(ThreadedServer):
    """An OIDC issuer's JWKS endpoint; counts the requests it gets."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}  # kid -> private key
        self.published: list[str] = []
        self.requests = 0
        super().__init__("jwks")

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/jwks.json", self._jwks)

    async def _jwks(self, request: web.Request) -> web.Response:
        self.requests += 1
        jwks = []
        for kid in self.published:
            jwk = json.loads(
                jwt.algorithms.get_default_algorithms()[_alg(self.keys[kid])].to_jwk(
                    self.keys[kid].public_key()
                )
            )
            jwks.append({**jwk, "kid": kid, "use": "sig"})
        return web.json_response({"keys": jwks})

    def add(self, kid: str, key: Any, publish: bool = True) -> None:
        self.keys[kid] = key
        if publish:
            self.published.append(kid)

    def token(self, kid: str, key: Any = None, alg: str | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "carol", "exp": now + 300, "iat": now, **claims}
        key = key or self.keys[kid]
        return jwt.encode(body, key, algorithm=alg or _alg(key), headers={"kid": kid})


def _alg(key: Any) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ES256"
    return "EdDSA"


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    i = Issuer()
    i.add("rsa-1", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    i.add("ec-1", ec.generate_private_key(ec.SECP256R1()))
    i.add("ed-1", ed25519.Ed25519PrivateKey.generate())
    yield i
    i.close()


@pytest.fixture(scope="module")
def gw(issuer: Issuer, triton_a: Triton) -> Iterator[Gateway]:
    config = pool_config(
        {"tritons": [("triton-a", triton_a.address, ["add_sub"])]},
        auth={
            "authenticators": ["jwt"],
            "jwt": {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_url": f"http://127.0.0.1:{issuer.port}/jwks.json",
                "jwks_min_refresh_s": 2.0,
                "leeway_s": 5,
                "claims": {"user": "sub", "project": "team", "roles": "scope"},
            },
            "default": "deny",
            "rules": [{"who": {"roles": ["infer"]}, "methods": ["Infer"]}],
        },
    )
    g = Gateway(config).start()
    try:
        g.wait_serving("tritons")
        yield g
    finally:
        g.stop()


def call(g: Gateway, token: str) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(g.address) as ch:
        try:
            infer(ch, add_sub_request([1], [2]), metadata=(("authorization", f"Bearer {token}"),))
        except grpc.RpcError as err:
            return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def test_tokens_of_each_key_kind_are_accepted_and_mapped(issuer: Issuer, gw: Gateway) -> None:
    for kid in ("rsa-1", "ec-1", "ed-1"):
        assert call(gw, issuer.token(kid, team="search", scope="infer read", jti=f"t-{kid}")) == (
            grpc.StatusCode.OK,
            "",
        )
    log = gw.log()
    assert '"user":"carol","project":"search"' in log and '"auth":"jwt","credential_id":"t-ed-1"' in log
    code, details = call(gw, issuer.token("rsa-1", team="search", scope="read"))  # mapped, no role
    assert code == grpc.StatusCode.PERMISSION_DENIED and "carol may not call Infer" in details


@pytest.mark.parametrize(
    "case,why",
    [
        ("expired", "token expired"),
        ("not_yet", "token not yet valid"),
        ("issuer", "token issuer is not the configured one"),
        ("audience", "token audience is not this gateway's"),
        ("signature", "token signature does not verify"),
        ("no_exp", "token lacks a required claim"),
        ("none", "token algorithm 'none' is not accepted"),
        ("hmac", "token algorithm 'HS256' is not accepted"),
        ("garbage", "malformed token"),
        ("no_kid", "token has no key id (kid)"),
    ],
)
def test_every_bad_token_is_refused_naming_the_check(
    issuer: Issuer, gw: Gateway, case: str, why: str
) -> None:
    now = int(time.time())
    rsa_key = issuer.keys["rsa-1"]
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = {
        "expired": lambda: issuer.token("rsa-1", exp=now - 60, scope="infer"),
        "not_yet": lambda: issuer.token("rsa-1", nbf=now + 120, scope="infer"),
        "issuer": lambda: issuer.token("rsa-1", iss="https://evil.test", scope="infer"),
        "audience": lambda: issuer.token("rsa-1", aud="someone-else", scope="infer"),
        "signature": lambda: issuer.token(
            "rsa-1", key=rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ),
        "no_exp": lambda: jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": "x"}, rsa_key, "RS256", headers={"kid": "rsa-1"}
        ),
        "none": lambda: jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 60}, None, "none", headers={"kid": "rsa-1"}
        ),
        # The classic confusion: HS256 keyed with the issuer's public key.
        "hmac": lambda: _hs256_with(public_pem, now),
        "garbage": lambda: "eyJhbGciOi.bm90LWpzb24.c2ln",
        "no_kid": lambda: "eyJhbGciOiJSUzI1NiJ9.bm90LWpzb24.c2ln",
    }[case]()
    code, details = call(gw, token)
    assert code == grpc.StatusCode.UNAUTHENTICATED, (case, code, details)
    assert why in details, (case, details)
    assert token not in details and token[-20:] not in gw.log()


def _hs256_with(secret: bytes, now: int) -> str:
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    body = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 60}
    raw = json.dumps(body).encode()

    # PyJWT refuses PEM keys as HMAC secrets: sign by hand, as an attacker would.
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps(header).encode()) + "." + b64(raw)
    return head + "." + b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())


def test_key_rollover_and_a_flood_of_unknown_kids(issuer: Issuer, gw: Gateway) -> None:
    new = ec.generate_private_key(ec.SECP256R1())
    issuer.add("ec-2", new, publish=False)
    code, details = call(gw, issuer.token("ec-2", scope="infer"))  # not published yet
    assert code == grpc.StatusCode.UNAUTHENTICATED and "unknown key id 'ec-2'" in details
    issuer.published.append("ec-2")  # the issuer rolls its keys over
    time.sleep(2.1)  # past jwks_min_refresh_s
    assert call(gw, issuer.token("ec-2", scope="infer")) == (grpc.StatusCode.OK, "")
    # 200 tokens with made-up kids in ~2 s: the issuer sees about one request per 2 s, not 200.
    before, start = issuer.requests, time.monotonic()
    bogus = ec.generate_private_key(ec.SECP256R1())
    refused = 0
    for i in range(200):
        code, _ = call(gw, issuer.token(f"bogus-{i}", key=bogus, scope="infer"))
        refused += code == grpc.StatusCode.UNAUTHENTICATED
    elapsed = time.monotonic() - start
    fetched = issuer.requests - before
    assert refused == 200
    assert fetched <= elapsed / 2.0 + 2, (fetched, elapsed)
    assert call(gw, issuer.token("rsa-1", scope="infer")) == (grpc.StatusCode.OK, "")
