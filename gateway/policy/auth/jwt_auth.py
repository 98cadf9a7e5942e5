"""JWT bearer tokens: verified against the issuer's JWKS, claims mapped to a Principal.

PyJWT (with `cryptography`) was chosen over joserfc: it is the most used JWT library in Python,
small, typed, and its `PyJWK` parses every JWKS key kind we accept; the JWKS itself is fetched
here with aiohttp (already a dependency) so that a fetch never blocks the event loop.

Checks, each refused as UNAUTHENTICATED naming the check (never the token):
- the header's `alg` is one of `auth.jwt.algorithms` (asymmetric only: `none` and HS256 with a
  public key as the secret are refused before any key is looked at);
- the `kid` names a key of the issuer's JWKS; an unknown kid refetches the JWKS (key rollover),
  at most once per `jwks_min_refresh_s`, all waiting callers sharing one fetch;
- the signature; `iss`, `aud`; `exp` (required) and `nbf`/`iat` with `leeway_s` of clock skew.

A verified token is cached until it expires (bounded), so repeated calls with one token cost a
dict lookup. The verification of a new token is synchronous (~50-150 us for RS256/ES256); only a
JWKS fetch makes `authenticate` return an awaitable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from ...pipeline.context import Principal
from .authenticate import Loop, unauthenticated
from .config import JwtConfig

log = logging.getLogger("meshgate.auth")
_MAX_CACHED = 50_000
_ERRORS = [
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid (nbf/iat in the future)"),
    (jwt.InvalidAudienceError, "token audience is not this gateway's"),
    (jwt.InvalidIssuerError, "token issuer is not the configured one"),
    (jwt.InvalidSignatureError, "token signature does not verify"),
    (jwt.MissingRequiredClaimError, "token lacks a required claim"),
]


def looks_like_jwt(token: str) -> bool:
    return token.startswith("eyJ") and token.count(".") == 2


class JwtAuthenticator:
    name = "jwt"

    def __init__(self, config: JwtConfig) -> None:
        self._config = config
        self._algorithms = list(config.algorithms)
        self._keys: dict[str, Any] = {}  # kid -> PyJWK
        self._fetched_at = 0.0
        self._fetch: asyncio.Future[None] | None = None
        self._cache: dict[str, tuple[Principal, float]] = {}
        self.fetches = 0
        if config.jwks_file:
            self._keys = _parse_jwks(Path(config.jwks_file).read_text(), config.jwks_file)

    def authenticate(
        self, bearer: str | None, context: Any, now: float, hints: list[str]
    ) -> Principal | Awaitable[Principal] | None:
        if bearer is None or not looks_like_jwt(bearer):
            return None
        cached = self._cache.get(bearer)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            header = jwt.get_unverified_header(bearer)
        except jwt.DecodeError:
            raise unauthenticated("malformed token: not a JWT") from None
        alg, kid = header.get("alg"), str(header.get("kid", ""))
        if alg not in self._algorithms:
            raise unauthenticated(
                f"token algorithm {alg!r} is not accepted (expected one of {', '.join(self._algorithms)})"
            )
        if not kid:  # an issuer with one key may leave kid out; with several, it must say which
            if len(self._keys) != 1:
                raise unauthenticated("token has no key id (kid) and the issuer has several keys")
            return self._verify(bearer, next(iter(self._keys.values())), now)
        key = self._keys.get(kid)
        if key is None:
            return self._after_refresh(bearer, kid, now)
        return self._verify(bearer, key, now)

    async def _after_refresh(self, token: str, kid: str, now: float) -> Principal:
        await self.refresh(forced=False)
        key = self._keys.get(kid)
        if key is None:
            raise unauthenticated(f"token signed with an unknown key id {kid[:40]!r}")
        return self._verify(token, key, now)

    def _verify(self, token: str, key: Any, now: float) -> Principal:
        cfg = self._config
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=cfg.audience,
                issuer=cfg.issuer,
                leeway=cfg.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as err:
            why = next((text for kind, text in _ERRORS if isinstance(err, kind)), "malformed token")
            raise unauthenticated(why) from None
        principal = self._principal(claims)
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[token] = (principal, float(claims["exp"]))
        return principal

    def _principal(self, claims: dict[str, Any]) -> Principal:
        names = self._config.claims
        roles: Any = claims.get(names.get("roles", "roles"), ())
        if isinstance(roles, str):
            roles = roles.split()
        sub = str(claims.get("sub", ""))
        return Principal(
            user=str(claims.get(names.get("user", "sub"), "")),
            project=str(claims.get(names.get("project", "project"), "")),
            department=str(claims.get(names.get("department", "department"), "")),
            roles=frozenset(str(r) for r in roles) if isinstance(roles, list | tuple) else frozenset(),
            auth="jwt",
            credential_id=str(claims.get("jti") or f"sub={sub}"),
        )

    async def refresh(self, forced: bool) -> None:
        """Refetch the JWKS: always when `forced` (the periodic loop), else at most once per
        jwks_min_refresh_s; concurrent callers share one fetch."""
        if self._config.jwks_url is None:
            return
        if self._fetch is not None:
            await asyncio.shield(self._fetch)
            return
        if not forced and time.monotonic() - self._fetched_at < self._config.jwks_min_refresh_s:
            return
        self._fetched_at = time.monotonic()
        self._fetch = asyncio.get_running_loop().create_future()
        try:
            self._keys = await self._download(self._config.jwks_url)
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            log.warning(
                "JWKS not refreshed from %s (%s); the keys already known stay", self._config.jwks_url, err
            )
        finally:
            self._fetch.set_result(None)
            self._fetch = None

    async def _download(self, url: str) -> dict[str, Any]:
        self.fetches += 1
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            return _parse_jwks(await resp.text(), url)

    def loops(self) -> list[Loop]:
        if self._config.jwks_url is None:
            return []

        async def periodic() -> None:
            while True:
                await self.refresh(forced=True)
                await asyncio.sleep(self._config.jwks_ttl_s)

        return [("jwks_refresh", periodic)]


def _parse_jwks(text: str, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
        keys = {str(k.get("kid", "")): jwt.PyJWK(k) for k in doc["keys"]}
    except (ValueError, KeyError, TypeError, jwt.PyJWTError) as err:
        raise ValueError(f"{where}: not a usable JWKS: {err}") from None
    return keys
