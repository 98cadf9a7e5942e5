"""Authentication: a call's credential -> a Principal, or UNAUTHENTICATED saying which check failed.

The front door calls `Authentication.authenticate` with the call's `authorization` metadata. The
configured authenticators are tried in order; the first that recognises the credential's kind
decides (an `mgk_` key goes to the API key authenticator). What is refused gets UNAUTHENTICATED
with the reason (missing, malformed, unknown, revoked, expired) and never the credential itself.
Principals are built once per key and reused, so a verified call costs a SHA-256 and two dict
lookups.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import grpc

from ...errors import GatewayError
from ...pipeline.context import ANONYMOUS, Principal
from .config import AuthConfig
from .keys import PREFIX, KeyStore

_UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
Loop = tuple[str, Callable[[], Coroutine[Any, Any, None]]]


def unauthenticated(why: str) -> GatewayError:
    return GatewayError(_UNAUTHENTICATED, why)


class Authenticator(Protocol):
    """One kind of credential. Called by the front door on the event loop, for every call."""

    name: str

    def authenticate(self, credential: str, now: float) -> Principal | None:
        """The principal for `credential`; None when the credential is not of this kind; raises
        GatewayError(UNAUTHENTICATED) when it is of this kind but refused."""
        ...

    def loops(self) -> list[Loop]:
        """Background loops it needs (named), e.g. re-reading its keys file."""
        ...


class ApiKeyAuthenticator:
    name = "api_key"

    def __init__(self, store: KeyStore, reload_s: float) -> None:
        self._store = store
        self._reload_s = reload_s
        self._principals: dict[str, Principal] = {}
        self._for: dict[str, Any] | None = None  # the entries the principals were built from

    def authenticate(self, credential: str, now: float) -> Principal | None:
        if not credential.startswith(PREFIX):
            return None
        entry, why = self._store.check(credential, now)
        if entry is None:
            raise unauthenticated(why)
        if self._for is not self._store.entries:
            self._principals, self._for = {}, self._store.entries
        principal = self._principals.get(entry.id)
        if principal is None:
            principal = self._principals[entry.id] = Principal(
                user=entry.user,
                project=entry.project,
                department=entry.department,
                roles=frozenset(entry.roles),
                auth="api_key",
                credential_id=entry.id,
            )
        return principal

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
        kinds = " or ".join(_KINDS.get(a.name, a.name) for a in authenticators)
        self._expected = f"send metadata `authorization: Bearer <{kinds}>`"

    def authenticate(self, authorization: str) -> Principal:
        if not authorization:
            if self._allow_anonymous:
                return ANONYMOUS
            raise unauthenticated(f"missing credential: {self._expected}")
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise unauthenticated(f"malformed authorization metadata: {self._expected}")
        now = time.time()
        for authenticator in self.authenticators:
            principal = authenticator.authenticate(credential, now)
            if principal is not None:
                return principal
        raise unauthenticated(f"credential not recognised: {self._expected}")

    def loops(self) -> list[Loop]:
        return [loop for a in self.authenticators for loop in a.loops()]


_KINDS = {"api_key": f"API key ({PREFIX}...)"}


def build_authentication(config: AuthConfig) -> Authentication | None:
    """The configured chain, or None when no authenticator is configured (every call anonymous).
    Raises KeyFileError when a keys file cannot be loaded."""
    if not config.authenticators:
        return None
    chain: list[Authenticator] = []
    for name in config.authenticators:
        if name == "api_key" and config.api_keys is not None:
            chain.append(ApiKeyAuthenticator(KeyStore(config.api_keys.file), config.api_keys.reload_s))
    return Authentication(chain, config.allow_anonymous)
