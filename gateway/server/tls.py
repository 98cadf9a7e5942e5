"""TLS on the gRPC listener, optionally mutual, with certificates reloaded from disk.

grpc's dynamic server credentials ask `_fetch` for a new certificate configuration at each TLS
handshake. It re-reads the files when their stat changed (checked at most once a second), so a
rotated certificate is served to new connections at once, and open connections keep theirs:
nothing is dropped. A rotation that cannot be loaded (a key that does not match, half-written
files) is logged and the certificate in use stays.

With `client_ca_file` the listener requires client certificates and verifies them against that
CA (mutual TLS): a certificate from another CA, an expired one, or none fails the handshake.
(grpc's Python API has no "request but do not require": without client_ca_file no client
certificate is asked for, and callers authenticate with bearer credentials over TLS.) Who a verified certificate stands for is the mtls
authenticator's business (policy/auth/mtls.py).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import grpc
from pydantic import BaseModel, ConfigDict

log = logging.getLogger("meshgate.tls")


class TLSConfig(BaseModel):
    """server.tls: serve TLS; with client_ca_file, mutual TLS."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # mutual TLS: every client presents a certificate from this CA


class ReloadingCredentials:
    def __init__(self, config: TLSConfig) -> None:
        self._config = config
        self._files = [Path(config.cert_file), Path(config.key_file)]
        if config.client_ca_file:
            self._files.append(Path(config.client_ca_file))
        self._stamp = self._stat()
        self._bad: tuple[tuple[int, int, int], ...] | None = None
        self._checked = time.monotonic()
        self._initial = self._load()  # raises OSError / ValueError: refused at start-up

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self._fetch,
            require_client_authentication=bool(self._config.client_ca_file),
        )

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for path in self._files:
            try:
                st = os.stat(path)
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append((0, 0, 0))
        return tuple(out)

    def _load(self) -> Any:
        cfg = self._config
        cert, key = Path(cfg.cert_file).read_bytes(), Path(cfg.key_file).read_bytes()
        if b"PRIVATE KEY" not in key or b"CERTIFICATE" not in cert:
            raise ValueError(
                f"{cfg.cert_file} / {cfg.key_file}: expected a PEM certificate and a PEM private key"
            )
        _check_pair(cert, key, cfg.cert_file)
        roots = Path(cfg.client_ca_file).read_bytes() if cfg.client_ca_file else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=roots)

    def _fetch(self) -> Any:
        """Called by grpc at a handshake: a new configuration, or None to keep the current one."""
        now = time.monotonic()
        if now - self._checked < 1.0:
            return None
        self._checked = now
        stamp = self._stat()
        if stamp == self._stamp:
            return None
        try:
            config = self._load()
        except (OSError, ValueError) as err:
            if stamp != self._bad:  # one line per bad version of the files
                log.error("TLS certificate not reloaded, the one in use stays: %s", err)
                self._bad = stamp
            return None
        self._stamp = stamp
        log.info("TLS certificate reloaded from %s", self._config.cert_file)
        return config


def _check_pair(cert_pem: bytes, key_pem: bytes, where: str) -> None:
    """ValueError unless the key is the certificate's (a rotation caught half-way through)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        cert_key = x509.load_pem_x509_certificate(cert_pem).public_key().public_bytes(der, spki)
        key = serialization.load_pem_private_key(key_pem, password=None).public_key().public_bytes(der, spki)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: cannot read the certificate or its key: {err}") from None
    if cert_key != key:
        raise ValueError(f"{where}: the private key does not belong to the certificate")
