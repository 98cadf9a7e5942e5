"""`upstream_tls`: how the gateway connects to each pool's backends (adapters/tls.py does it).

    upstream_tls:
      tritons:                      # a pool name, or "*" for every pool not named
        ca_file: /etc/meshgate/backend-ca.pem
        cert_file: /etc/meshgate/gateway.crt   # mutual TLS: the gateway's client certificate
        key_file: /etc/meshgate/gateway.key
        server_name: triton.internal           # SNI / :authority and the name checked

The settings become the endpoint's adapter options (tls, tls_ca_file, ...). File paths come only
from here: the same keys in a discovery source's metadata are dropped, so a service registered
in Consul cannot make the gateway read a file of its choosing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

from adapters.tls import FILE_KEYS


class UpstreamTLS(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: str | None = None  # default: the system's CAs
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    @model_validator(mode="after")
    def _files(self) -> UpstreamTLS:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: {path} is not a readable file")
        return self

    def options(self) -> dict[str, str]:
        pairs = (
            ("tls_ca_file", self.ca_file),
            ("tls_cert_file", self.cert_file),
            ("tls_key_file", self.key_file),
            ("tls_server_name", self.server_name),
        )
        return {"tls": "true", **{k: v for k, v in pairs if v}}


def with_upstream(
    meta: Mapping[str, str], pool: str, upstream: Mapping[str, Mapping[str, str]]
) -> Mapping[str, str]:
    """An endpoint's adapter options: its metadata without file paths, plus its pool's TLS."""
    extra = upstream.get(pool, upstream.get("*"))
    if extra is None and not any(k in meta for k in FILE_KEYS):
        return meta
    return {k: v for k, v in meta.items() if k not in FILE_KEYS} | dict(extra or {})
