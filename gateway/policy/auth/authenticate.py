"""Authentication: a call's credential -> a Principal, or UNAUTHENTICATED saying which check failed.

The front door calls `Authentication.authenticate` with the call's `authorization` metadata and
its servicer context (for the TLS peer). The configured authenticators are tried in order; the
first that recognises the credential decides (an `mgk_` key goes to the API key authenticator, a
mapped client certificate to mtls). What is refused gets UNAUTHENTICATED
with the reason (missing, malformed, unknown, revoked, expired) and never the credential itself.
A key verified once is remembered (with its principal) until the keys file changes, so a call
with it costs a dict lookup; a new key costs a SHA-256 and two lookups.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import grpc

from ...errors import GatewayError
from ...pipeline.context import ANONYMOUS, Principal
from .config import AuthConfig
from .keys import PREFIX, KeyEntry, KeyStore
from .mtls import MtlsAuthenticator

_UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
_MAX_VERIFIED = 100_000
Loop = tuple[str, Callable[[], Coroutine[Any, Any, None]]]


def unauthenticated(why: str) -> GatewayError:
    return GatewayError(_UNAUTHENTICATED, why)


class Authenticator(Protocol):
    """One kind of credential. Called by the front door on the event loop, for every call."""

    name: str

    def authenticate(
        self, bearer: str | None, context: Any, now: float, hints: list[str]
    ) -> Principal | Awaitable[Principal] | None:
        """The principal for the call's credential (an awaitable of it when the authenticator
        must first fetch something, e.g. an issuer's new keys) (`bearer`: the Bearer token, None when the
        call sent none; `context`: the servicer context, for the TLS peer); None when there is
        no credential of this kind (a reason to show the caller may be added to `hints`); raises
        GatewayError(UNAUTHENTICATED) when there is one but it is refused."""
        ...

    def loops(self) -> list[Loop]:
        """Background loops it needs (named), e.g. re-reading its keys file."""
        ...


class ApiKeyAuthenticator:
    name = "api_key"

    def __init__(self, store: KeyStore, reload_s: float) -> None:
        self._store = store
        self._reload_s = reload_s
        self._verified: dict[str, tuple[Principal, float | None]] = {}  # key -> (principal, expiry)
        self._for: dict[str, Any] | None = None  # the entries those keys were verified against

    def authenticate(
        self, bearer: str | None, context: Any, now: float, hints: list[str]
    ) -> Principal | None:
        if bearer is None or not bearer.startswith(PREFIX):
            return None
        if self._for is not self._store.entries:  # the file was reloaded: forget what was verified
            self._verified, self._for = {}, self._store.entries
        # A key verified before is not hashed again until the file changes; its expiry is
        # still checked. (Keys are 256 random bits: a dict lookup on one reveals nothing.)
        seen = self._verified.get(bearer)
        if seen is not None and (seen[1] is None or now < seen[1]):
            return seen[0]
        entry, why = self._store.check(bearer, now)
        if entry is None:
            raise unauthenticated(why)
        principal = self.principal(entry)
        if len(self._verified) >= _MAX_VERIFIED:
            self._verified.clear()
        self._verified[bearer] = (principal, entry.expires_at)
        return principal

    @staticmethod
    def principal(entry: KeyEntry) -> Principal:
        return Principal.of(entry, "api_key", entry.id)

    @property
    def store(self) -> KeyStore:
        return self._store

    def loops(self) -> list[Loop]:
        async def reload() -> None:
            while True:
                await asyncio.sleep(self._reload_s)
                self._store.refresh()

        return [("api_keys_reload", reload)]


class Authentication:
    """The configured authenticators, in order, and what a call without a credential gets."""

    def __init__(self, authenticators: list[Authenticator], allow_anonymous: bool) -> None:
        self.authenticators = authenticators
        self._allow_anonymous = allow_anonymous
        ways = []
        if any(a.name == "api_key" for a in authenticators):
            ways.append(f"send metadata `authorization: Bearer <API key ({PREFIX}...)>`")
        if any(a.name == "jwt" for a in authenticators):
            ways.append("send metadata `authorization: Bearer <JWT>`")
        if any(a.name == "mtls" for a in authenticators):
            ways.append("connect with a client certificate mapped in auth.mtls.identities")
        self._expected = " or ".join(ways)

    def authenticate(self, authorization: str, context: Any = None) -> Principal | Awaitable[Principal]:
        """The caller's principal, or an awaitable of it (rarely: a JWKS fetch); raises
        GatewayError(UNAUTHENTICATED)."""
        bearer: str | None = None
        if authorization:
            scheme, _, credential = authorization.partition(" ")
            bearer = credential.strip()
            if scheme.lower() != "bearer" or not bearer:
                raise unauthenticated(f"malformed authorization metadata: {self._expected}")
        now = time.time()
        hints: list[str] = []
        for authenticator in self.authenticators:
            principal = authenticator.authenticate(bearer, context, now, hints)
            if principal is not None:
                return principal
        if hints:
            raise unauthenticated(hints[0])
        if bearer is None:
            if self._allow_anonymous:
                return ANONYMOUS
            raise unauthenticated(f"missing credential: {self._expected}")
        raise unauthenticated(f"credential not recognised: {self._expected}")

    def loops(self) -> list[Loop]:
        return [loop for a in self.authenticators for loop in a.loops()]

    def known(self) -> list[tuple[Principal, float, bool]]:
        """(principal, expiry or 0, revoked) of every key in the keys file, by key id."""
        rows = []
        for a in self.authenticators:
            if isinstance(a, ApiKeyAuthenticator):
                for entry in sorted(a.store.entries.values(), key=lambda e: e.id):
                    rows.append((a.principal(entry), entry.expires_at or 0.0, entry.revoked))
        return rows


def build_authentication(config: AuthConfig) -> Authentication | None:
    """The configured chain, or None when no authenticator is configured (every call anonymous).
    Raises KeyFileError when a keys file cannot be loaded."""
    if not config.authenticators:
        return None
    chain: list[Authenticator] = []
    for name in config.authenticators:
        if name == "api_key" and config.api_keys is not None:
            chain.append(ApiKeyAuthenticator(KeyStore(config.api_keys.file), config.api_keys.reload_s))
        elif name == "mtls" and config.mtls is not None:
            chain.append(MtlsAuthenticator(config.mtls))
        elif name == "jwt" and config.jwt is not None:
            from .jwt_auth import JwtAuthenticator  # it imports this module's helpers

            chain.append(JwtAuthenticator(config.jwt))
    return Authentication(chain, config.allow_anonymous)
