"""The `auth` section of the gateway config."""

from __future__ import annotations

from typing import Literal

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


class Who(_Strict):
    """A principal matches when any listed value of any kind matches; empty = everybody."""

    users: list[str] = Field(default_factory=list)
    roles: list[str] = Field(default_factory=list)
    projects: list[str] = Field(default_factory=list)
    departments: list[str] = Field(default_factory=list)


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
    authenticators: list[Literal["api_key", "mtls"]] = Field(default_factory=list)
    api_keys: ApiKeysConfig | None = None
    mtls: MtlsConfig | None = None
    # With authenticators configured: may a call without any credential go on, as anonymous?
    allow_anonymous: bool = False
    # What a call that matches no rule gets.
    default: Literal["allow", "deny"] = "allow"
    rules: list[Rule] = Field(default_factory=list)
    # One JSON line per call on logger meshgate.audit (with authenticators configured).
    audit_log: bool = True

    @model_validator(mode="after")
    def _needs_their_settings(self) -> AuthConfig:
        if "api_key" in self.authenticators and self.api_keys is None:
            raise ValueError("authenticator api_key needs an api_keys section (api_keys: {file: keys.yaml})")
        if "mtls" in self.authenticators and self.mtls is None:
            raise ValueError("authenticator mtls needs an mtls section (mtls: {identities: [...]})")
        if len(set(self.authenticators)) != len(self.authenticators):
            raise ValueError("each authenticator may be listed once")
        return self
