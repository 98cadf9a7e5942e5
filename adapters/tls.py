"""Outbound TLS to a backend, from the endpoint's options.

    tls              "true": connect with TLS, trusting the system CAs (or tls_ca_file)
    tls_ca_file      PEM CA bundle that signs the backend's certificate (implies tls)
    tls_cert_file    PEM client certificate for mutual TLS (with tls_key_file)
    tls_key_file     its private key
    tls_server_name  the name the backend's certificate must carry, sent as SNI (gRPC: also
                     the :authority), when the address is an IP or a load balancer's name

The gateway fills these per pool from its config (`upstream_tls`); a discovery source may set
`tls` and `tls_server_name` (Consul Meta) but never the file paths. The files are read when the
endpoint's adapter is built: a config reload that changes them, or a rediscovery, rebuilds it.
An unreadable file is OSError (the endpoint is skipped with that reason and tried again).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import grpc

KEYS = ("tls", "tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name")
FILE_KEYS = ("tls_ca_file", "tls_cert_file", "tls_key_file")


class ClientTLS(NamedTuple):
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(_read(self.ca_file), _read(self.key_file), _read(self.cert_file))

    def grpc_options(self) -> Sequence[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file or None)
        if self.cert_file:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except ssl.SSLError as err:
                raise ValueError(
                    f"tls_cert_file/tls_key_file: not a certificate and its key: {err}"
                ) from None
        return ctx


def client_tls(options: Mapping[str, str]) -> ClientTLS | None:
    """The endpoint's TLS settings, or None for plaintext. ValueError for a half-given pair."""
    on = options.get("tls", "").lower() in ("1", "true", "yes", "on")
    tls = ClientTLS(
        *(options.get(k, "") for k in ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name"))
    )
    if not (on or tls.ca_file or tls.cert_file):
        return None
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ValueError("tls_cert_file and tls_key_file go together (mutual TLS)")
    return tls


def grpc_channel(
    address: str, options: Mapping[str, str], channel_options: Sequence[tuple[str, Any]]
) -> grpc.aio.Channel:
    """A channel to a gRPC backend: TLS when its options say so, else plaintext."""
    tls = client_tls(options)
    if tls is None:
        return grpc.aio.insecure_channel(address, options=channel_options)
    return grpc.aio.secure_channel(
        address, tls.grpc_credentials(), options=[*channel_options, *tls.grpc_options()]
    )


def _read(path: str) -> bytes | None:
    return Path(path).read_bytes() if path else None
