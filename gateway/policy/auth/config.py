"""The `auth` section of the gateway config."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiKeysConfig(_Strict):
    """API keys (`authorization: Bearer mgk_...`), from a file `meshgate keys` writes: only
    hashes are stored. The file is re-read when it changes, so keys are added and revoked
    without a restart."""

    file: str
    reload_s: float = Field(default=1.0, gt=0)


class PeerIdentity(_Strict):
    """A client certificate and the principal it stands for. `spiffe` matches the certificate's
    SPIFFE ID (URI SAN, `spiffe://trust-domain/path`; a trailing `*` matches a prefix), or
    `common_name` its subject CN."""

    spiffe: str | None = None
    common_name: str | None = None
    user: str = ""
    project: str = ""
    department: str = ""
    roles: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_selector(self) -> PeerIdentity:
        if (self.spiffe is None) == (self.common_name is None):
            raise ValueError("give exactly one of spiffe and common_name")
        return self


class MtlsConfig(_Strict):
    """Principals of client certificates (server.tls.client_ca_file verifies them first)."""

    identities: list[PeerIdentity] = Field(default_factory=list)


ForwardField = Literal["user", "project", "department", "roles", "credential_id", "request_id"]
_HEADER = re.compile(r"[a-z0-9][a-z0-9-]*")
_RESERVED = frozenset({"authorization", "x-api-key", "cookie", "host", "content-type", "te", "user-agent"})
Algorithm = Literal["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]
ClaimField = Literal["user", "project", "department", "roles"]
_DEFAULT_ALGORITHMS: tuple[Algorithm, ...] = ("RS256", "ES256", "EdDSA")
_DEFAULT_CLAIMS: dict[ClaimField, str] = {
    "user": "sub",
    "project": "project",
    "department": "department",
    "roles": "roles",
}


class JwtConfig(_Strict):
    """JWT bearer tokens, verified against the issuer's JWKS (`jwks_url`, cached) or a JWKS file."""

    issuer: str
    audience: str
    jwks_url: str | None = None
    jwks_file: str | None = None
    # Asymmetric only: `none` and HMAC (the public-key-as-secret confusion) are never accepted.
    algorithms: list[Algorithm] = Field(default_factory=lambda: list(_DEFAULT_ALGORITHMS))
    leeway_s: float = Field(default=30.0, ge=0, le=300)  # clock skew allowed on exp, nbf, iat
    jwks_ttl_s: float = Field(default=300.0, gt=0)  # refetched this often
    # An unknown `kid` refetches the JWKS at most once per this interval: a flood of made-up
    # kids costs the issuer one request per interval, not one per call.
    jwks_min_refresh_s: float = Field(default=10.0, gt=0)
    # Claim names for the principal's fields (roles: a list or a space-separated string).
    claims: dict[ClaimField, str] = Field(default_factory=lambda: dict(_DEFAULT_CLAIMS))

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtConfig:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("give exactly one of jwks_url and jwks_file")
        return self


class Who(_Strict):
    """A principal matches when any listed value of any kind matches; empty = everybody."""

    users: list[str] = Field(default_factory=list)
    roles: list[str] = Field(default_factory=list)
    projects: list[str] = Field(default_factory=list)
    departments: list[str] = Field(default_factory=list)

    def matches(self, p: Any) -> bool:
        """Does principal `p` (user, project, department, roles) match? For rules looked up once
        per principal and cached (rate limits, admission classes); authorize.py compiles its own."""
        if not (self.users or self.roles or self.projects or self.departments):
            return True
        return (
            p.user in self.users
            or p.project in self.projects
            or p.department in self.departments
            or not p.roles.isdisjoint(self.roles)
        )


class Rule(_Strict):
    """One authorisation rule; the first rule that matches a call decides it.

    `models` and `methods` are shell-style globs (`llama-*`); models match the name the caller
    asked for (a model or an alias); methods are RPC short names (`Infer`, `Generate*`,
    `ModelInfer`, `ListModels`)."""

    effect: Literal["allow", "deny"] = "allow"
    who: Who = Field(default_factory=Who)
    models: list[str] = Field(default_factory=lambda: ["*"])
    methods: list[str] = Field(default_factory=lambda: ["*"])


class AuthConfig(_Strict):
    """Authentication and authorisation. With no authenticator every call is anonymous and
    allowed (and the gateway must listen on loopback, unless server.allow_unauthenticated)."""

    # Tried in this order; the first that recognises the credential decides.
    authenticators: list[Literal["api_key", "mtls", "jwt"]] = Field(default_factory=list)
    api_keys: ApiKeysConfig | None = None
    mtls: MtlsConfig | None = None
    jwt: JwtConfig | None = None
    # With authenticators configured: may a call without any credential go on, as anonymous?
    allow_anonymous: bool = False
    # What a call that matches no rule gets.
    default: Literal["allow", "deny"] = "allow"
    rules: list[Rule] = Field(default_factory=list)
    # One JSON line per call on logger meshgate.audit (with authenticators configured).
    audit_log: bool = True
    # The caller's identity sent to backends with each call, for their audit: gRPC metadata or
    # HTTP header -> principal field, e.g. {x-meshgate-user: user}. Empty fields are not sent;
    # the caller's credential never is.
    forward: dict[str, ForwardField] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _needs_their_settings(self) -> AuthConfig:
        if "api_key" in self.authenticators and self.api_keys is None:
            raise ValueError("authenticator api_key needs an api_keys section (api_keys: {file: keys.yaml})")
        if "mtls" in self.authenticators and self.mtls is None:
            raise ValueError("authenticator mtls needs an mtls section (mtls: {identities: [...]})")
        if "jwt" in self.authenticators and self.jwt is None:
            raise ValueError(
                "authenticator jwt needs a jwt section (issuer, audience, jwks_url or jwks_file)"
            )
        if len(set(self.authenticators)) != len(self.authenticators):
            raise ValueError("each authenticator may be listed once")
        for header in self.forward:
            if not _HEADER.fullmatch(header) or header in _RESERVED or header.startswith("grpc-"):
                raise ValueError(
                    f"forward: {header!r} cannot carry the identity: use a lowercase header name of"
                    " letters, digits and '-' (e.g. x-meshgate-user) that is not reserved"
                )
        return self
