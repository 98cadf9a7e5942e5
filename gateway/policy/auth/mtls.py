"""mTLS peer identity: a verified client certificate -> a Principal.

The TLS layer (server.tls with client_ca_file) has already verified the chain and the dates; this
maps who the certificate names to a principal: its SPIFFE ID (the `spiffe://` URI SAN, as SPIRE
and service meshes issue them) or else its subject common name, against `auth.mtls.identities`
(first match). A certificate that maps to nothing is not recognised, and the call is refused
(UNAUTHENTICATED naming the identity) unless another authenticator recognises its credential.
Principals are cached per certificate (parsing one costs ~50 us; the lookup ~1 us).
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from ...pipeline.context import Principal
from .config import MtlsConfig

_MAX_CACHED = 10_000


def peer_identity(pem: bytes) -> tuple[str, str]:
    """(SPIFFE ID or "", common name or "") of a PEM certificate."""
    cert = x509.load_pem_x509_certificate(pem)
    spiffe = ""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = [
            u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")
        ]
        spiffe = uris[0] if uris else ""
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return spiffe, str(cns[0].value) if cns else ""


class MtlsAuthenticator:
    name = "mtls"

    def __init__(self, config: MtlsConfig) -> None:
        self._identities = config.identities
        self._cache: dict[bytes, tuple[Principal | None, str]] = {}

    def authenticate(
        self, bearer: str | None, context: Any, now: float, hints: list[str]
    ) -> Principal | None:
        pems = (context.auth_context() or {}).get("x509_pem_cert") if context is not None else None
        if not pems:
            return None
        pem = pems[0]
        cached = self._cache.get(pem)
        if cached is None:
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            cached = self._cache[pem] = self._map(pem)
        principal, shown = cached
        if principal is None:
            hints.append(f"client certificate {shown} is not mapped to a principal (auth.mtls.identities)")
        return principal

    def _map(self, pem: bytes) -> tuple[Principal | None, str]:
        spiffe, cn = peer_identity(pem)
        for ident in self._identities:
            if ident.spiffe is not None and spiffe and _matches(ident.spiffe, spiffe):
                return self._principal(ident, spiffe), spiffe
            if ident.common_name is not None and cn and ident.common_name == cn:
                return self._principal(ident, f"CN={cn}"), f"CN={cn}"
        return None, spiffe or f"CN={cn}"

    @staticmethod
    def _principal(ident: Any, credential_id: str) -> Principal:
        return Principal.of(ident, "mtls", credential_id)

    def loops(self) -> list[Any]:
        return []


def _matches(pattern: str, spiffe: str) -> bool:
    return spiffe.startswith(pattern[:-1]) if pattern.endswith("*") else spiffe == pattern
