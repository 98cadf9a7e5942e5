"""API keys: the format, the keys file and the store the gateway verifies against.

A key looks like `mgk_3f9a2c1d7e_<43 characters of base64url>`: a recognisable prefix (secret
scanners and people spot it), a key id (not secret: it names the key in logs, audit lines and
`meshgate keys`), and 32 random bytes. The keys file keeps only `sha256:<hex>` of the whole key
with the principal it stands for, an optional expiry and a revocation flag. A plain SHA-256 is
enough for 256 random bits (no dictionary to guess from; GitHub and Stripe tokens do the same),
and costs ~1 us where a password hash would cost milliseconds per call. The digest is compared
with hmac.compare_digest.

The file is written atomically (a temporary file renamed over it, under a lock file), so the
gateway, which re-reads it when its stat changes, never sees half a file; a file that does not
parse is refused with one log line, and the keys already loaded stay in force.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

PREFIX = "mgk_"
log = logging.getLogger("meshgate.auth")


class KeyFileError(Exception):
    """The keys file cannot be read or does not hold what it should; the message says where."""


@dataclass(frozen=True)
class KeyEntry:
    id: str
    hash: str  # "sha256:<hex>"
    user: str = ""
    project: str = ""
    department: str = ""
    roles: tuple[str, ...] = ()
    expires_at: float | None = None  # seconds since the epoch
    revoked: bool = False
    created_at: float = field(default_factory=time.time)

    def to_yaml(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.id, "hash": self.hash}
        for name in ("user", "project", "department"):
            if getattr(self, name):
                doc[name] = getattr(self, name)
        if self.roles:
            doc["roles"] = list(self.roles)
        if self.expires_at is not None:
            doc["expires"] = _iso(self.expires_at)
        if self.revoked:
            doc["revoked"] = True
        doc["created"] = _iso(self.created_at)
        return doc


def new_key() -> tuple[str, str]:
    """(key id, the whole key). The key is shown once; only its hash is kept."""
    key_id = secrets.token_hex(5)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The id inside a key, or None when `key` is not shaped like one of ours."""
    if not key.startswith(PREFIX):
        return None
    key_id, sep, rest = key[len(PREFIX) :].partition("_")
    if not sep or len(key_id) != 10 or len(rest) < 32:
        return None
    return key_id


# -- the file -------------------------------------------------------------------------------


def read_entries(path: Path) -> dict[str, KeyEntry]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise KeyFileError(f"{path}: cannot read the keys file: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise KeyFileError(f"{path}: not valid YAML: {getattr(err, 'problem', None) or err}") from None
    items = data.get("keys", []) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise KeyFileError(f"{path}: expected a mapping with a `keys` list")
    entries: dict[str, KeyEntry] = {}
    for i, item in enumerate(items):
        try:
            entry = KeyEntry(
                id=str(item["id"]),
                hash=str(item["hash"]),
                user=str(item.get("user", "")),
                project=str(item.get("project", "")),
                department=str(item.get("department", "")),
                roles=tuple(str(r) for r in item.get("roles", [])),
                expires_at=parse_time(item["expires"]) if item.get("expires") else None,
                revoked=bool(item.get("revoked", False)),
                created_at=parse_time(item["created"]) if item.get("created") else 0.0,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise KeyFileError(f"{path}: keys[{i}]: {type(err).__name__}: {err}") from None
        if not entry.hash.startswith("sha256:"):
            raise KeyFileError(f"{path}: keys[{i}]: hash must be sha256:<hex>")
        entries[entry.id] = entry
    return entries


@contextlib.contextmanager
def locked(path: Path) -> Iterator[dict[str, KeyEntry]]:
    """Read-modify-write of the keys file under a lock; the dict yielded is written back
    atomically when the block ends without an exception. A missing file starts empty."""
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = read_entries(path) if path.exists() else {}
        yield entries
        doc = {"keys": [e.to_yaml() for e in sorted(entries.values(), key=lambda e: e.created_at)]}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as out:
            out.write("# meshgate API keys: hashes only. Edit with `meshgate keys`.\n")
            yaml.safe_dump(doc, out, sort_keys=False)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)


def revoke(entries: dict[str, KeyEntry], key_id: str) -> KeyEntry:
    entry = entries.get(key_id)
    if entry is None:
        raise KeyFileError(f"no key with id {key_id!r}")
    entries[key_id] = replace(entry, revoked=True)
    return entries[key_id]


# -- the gateway's view -------------------------------------------------------------------------


class KeyStore:
    """The keys the gateway accepts, re-read when the file changes (`refresh`, called by a
    background loop every `reload_s`). Event loop thread only."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._stat: tuple[int, int, int] | None = None
        self.entries: dict[str, KeyEntry] = {}
        self.refresh(initial=True)

    def refresh(self, initial: bool = False) -> bool:
        """Re-read the file if it changed; True when new keys were loaded. At start-up a bad
        file raises KeyFileError; later it is logged and the loaded keys stay."""
        try:
            st = self.path.stat()
        except OSError as err:
            if initial:
                raise KeyFileError(f"{self.path}: cannot read the keys file: {err.strerror}") from None
            return False
        stat = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stat == self._stat:
            return False
        try:
            entries = read_entries(self.path)
        except KeyFileError as err:
            if initial:
                raise
            log.error("keys file not reloaded, the loaded keys stay in force: %s", err)
            self._stat = stat  # one line per bad version of the file
            return False
        self._stat, self.entries = stat, entries
        if not initial:
            log.info("keys file %s reloaded: %d key(s), %d revoked", self.path, len(entries), self.revoked())
        return True

    def revoked(self) -> int:
        return sum(e.revoked for e in self.entries.values())

    def check(self, key: str, now: float) -> tuple[KeyEntry | None, str]:
        """(the entry, "") for a good key, else (None, why it is refused)."""
        key_id = key_id_of(key)
        if key_id is None:
            return None, f"malformed API key: expected {PREFIX}<id>_<secret>"
        entry = self.entries.get(key_id)
        if entry is None or not hmac.compare_digest(entry.hash, digest(key)):
            return None, f"unknown API key {PREFIX}{key_id}_..."
        if entry.revoked:
            return None, f"API key {key_id} was revoked"
        if entry.expires_at is not None and now >= entry.expires_at:
            return None, f"API key {key_id} expired at {_iso(entry.expires_at)}"
        return entry, ""


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> float:
    """An ISO 8601 time (UTC unless it says otherwise) -> seconds since the epoch."""
    if isinstance(value, datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=UTC)
        return stamp.timestamp()
    text = str(value).replace("Z", "+00:00")
    parsed = datetime.fromisoformat(text)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
