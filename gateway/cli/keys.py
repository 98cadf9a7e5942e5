"""`meshgate keys create | list | revoke`: API keys in the keys file the gateway reads.

The key is printed once, by `create`; the file keeps only its hash. The gateway re-reads the file
when it changes (auth.api_keys.reload_s), so a key works, or stops working, within a second.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

from ..config import ConfigError, load_config
from ..policy.auth.keys import (
    KeyEntry,
    KeyFileError,
    digest,
    locked,
    new_key,
    parse_time,
    read_entries,
    revoke,
)

_DURATION = re.compile(r"^(\d+)([dhm])$")


def add_arguments(sub: Any) -> None:
    k = sub.add_parser("keys", help="create, list and revoke API keys (the keys file holds hashes only)")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    for name, help_ in (
        ("create", "make a key for a principal and print it once"),
        ("list", "the keys in the file, without secrets"),
        ("revoke", "revoke a key by its id (it stays listed, marked revoked)"),
    ):
        q = ksub.add_parser(name, help=help_)
        q.add_argument("--file", help="the keys file (default: auth.api_keys.file of --config)")
        q.add_argument("--config", help="gateway config naming the keys file")
        if name == "create":
            q.add_argument("--user", default="")
            q.add_argument("--project", default="")
            q.add_argument("--department", default="")
            q.add_argument("--role", action="append", default=[], help="repeat for several roles")
            q.add_argument("--expires", default="", help="30d, 12h, 90m, or an ISO 8601 time (UTC)")
        if name == "revoke":
            q.add_argument("id", help="the key id (the part after mgk_)")


def run(args: argparse.Namespace) -> int:
    try:
        path = _keys_file(args)
        if args.keys_command == "create":
            return _create(path, args)
        if args.keys_command == "list":
            return _list(path)
        with locked(path) as entries:
            entry = revoke(entries, args.id)
        print(f"revoked {entry.id} ({entry.user or '-'}); the gateway stops accepting it within a second")
        return 0
    except (KeyFileError, ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _keys_file(args: argparse.Namespace) -> Path:
    if args.file:
        return Path(args.file)
    if args.config:
        config, _ = load_config(args.config)
        if config.auth.api_keys is not None:
            return Path(config.auth.api_keys.file)
        raise ConfigError(f"{args.config}: no auth.api_keys.file")
    raise ValueError("say which keys file: --file F, or --config with auth.api_keys.file")


def _create(path: Path, args: argparse.Namespace) -> int:
    if not (args.user or args.project or args.department):
        raise ValueError("a key stands for someone: give --user, --project or --department")
    expires = _expiry(args.expires) if args.expires else None
    key_id, key = new_key()
    entry = KeyEntry(
        id=key_id,
        hash=digest(key),
        user=args.user,
        project=args.project,
        department=args.department,
        roles=tuple(args.role),
        expires_at=expires,
    )
    with locked(path) as entries:
        entries[key_id] = entry
    print(key)
    print(
        f"key {key_id} for {args.user or args.project or args.department}: shown once; {path} keeps its hash",
        file=sys.stderr,
    )
    return 0


def _list(path: Path) -> int:
    entries = read_entries(path)
    now = time.time()
    print(f"{'ID':11} {'USER':14} {'PROJECT':14} {'DEPARTMENT':12} {'ROLES':18} {'EXPIRES':21} STATUS")
    for e in sorted(entries.values(), key=lambda e: e.created_at):
        status = "revoked" if e.revoked else "expired" if e.expires_at and e.expires_at <= now else "active"
        expires = e.to_yaml().get("expires", "-")
        print(
            f"{e.id:11} {e.user or '-':14} {e.project or '-':14} {e.department or '-':12}"
            f" {','.join(e.roles) or '-':18} {expires:21} {status}"
        )
    return 0


def _expiry(text: str) -> float:
    m = _DURATION.match(text)
    if m:
        return time.time() + int(m.group(1)) * {"d": 86400, "h": 3600, "m": 60}[m.group(2)]
    return parse_time(text)
