"""`meshgate register` / `meshgate deregister`: put a model backend into Consul the way the
gateway expects it (service name = pool, tag `inference`, Meta conventions, a health check).

The Meta is checked with the same parser the gateway's ConsulSource uses, so what registers is
what the gateway will route to.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import consul
import requests

from adapters import REGISTRY
from discovery.consul import ConsulConfig, resolve_address, resolve_token
from discovery.consul_meta import InvalidEntry, endpoint_from_entry

NO_CHECK_KINDS = frozenset({"openai", "anthropic"})  # external APIs: nothing of ours to probe


def add_arguments(sub: Any) -> None:
    r = sub.add_parser("register", help="register a model backend (or external API) in Consul")
    r.add_argument("--name", required=True, help="service name = the pool")
    r.add_argument("--address", required=True, help="host the gateway connects to")
    r.add_argument("--port", type=int, required=True, help="its gRPC (or HTTP) port")
    r.add_argument("--backend", required=True, help=f"backend kind ({', '.join(sorted(REGISTRY))})")
    r.add_argument("--models", required=True, help="comma list of name or name:version")
    r.add_argument("--id", help="service id, unique on the agent (default NAME-ADDRESS-PORT)")
    r.add_argument("--metrics-url", default="")
    r.add_argument("--gpu", default="", help="GPU class, e.g. a100-80g")
    r.add_argument("--capacity", default="1", help="relative capacity units")
    r.add_argument("--region", default="")
    r.add_argument("--tag", action="append", default=[], help="extra tags (inference is always added)")
    r.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE", help="extra Meta, e.g. cost_per_hour=3.2"
    )
    r.add_argument(
        "--check",
        default="auto",
        help="auto | grpc | tcp | none | an http(s):// URL (auto: tcp, none for external APIs)",
    )
    r.add_argument("--interval", default="10s", help="check interval")
    r.add_argument("--deregister-after", default="10m", help="DeregisterCriticalServiceAfter")
    r.add_argument(
        "--force", action="store_true", help="accept a backend kind this gateway build does not know"
    )
    d = sub.add_parser("deregister", help="remove a backend from Consul")
    d.add_argument("--id", required=True)
    for p in (r, d):
        p.add_argument("--consul", help="Consul address (default $CONSUL_HTTP_ADDR or 127.0.0.1:8500)")
        p.add_argument("--token-file", help="ACL token file (default $CONSUL_HTTP_TOKEN)")


def _client(args: argparse.Namespace) -> consul.Consul:
    config = ConsulConfig(address=args.consul, token_file=args.token_file)
    scheme, host, port = resolve_address(config)
    client = consul.Consul(host=host, port=port, scheme=scheme)
    client.token = resolve_token(config)
    return client


def register(args: argparse.Namespace) -> int:
    meta = {"backend": args.backend, "models": args.models, "capacity": args.capacity}
    for key, value in (("metrics_url", args.metrics_url), ("gpu", args.gpu), ("region", args.region)):
        if value:
            meta[key] = value
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"error: --meta {item!r}: expected KEY=VALUE", file=sys.stderr)
            return 2
        meta[key] = value
    service_id = args.id or f"{args.name}-{args.address}-{args.port}"
    kinds = set(REGISTRY) | ({args.backend} if args.force else set())
    entry = {
        "Node": {},
        "Service": {"ID": service_id, "Address": args.address, "Port": args.port, "Meta": meta},
    }
    try:
        endpoint_from_entry(entry, args.name, kinds)
    except InvalidEntry as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    check = _check(args)
    try:
        _client(args).agent.service.register(
            args.name,
            service_id=service_id,
            address=args.address,
            port=args.port,
            tags=["inference", *args.tag],
            meta=meta,
            check=check,
        )
    except (consul.ConsulException, requests.RequestException) as err:
        print(f"error: Consul refused the registration: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(
        f"registered {service_id} in pool {args.name} ({args.backend} at {args.address}:{args.port},"
        f" check: {_describe(check)})"
    )
    return 0


def _check(args: argparse.Namespace) -> dict[str, Any] | None:
    kind = args.check
    if kind == "auto":
        kind = "none" if args.backend in NO_CHECK_KINDS else "tcp"
    target = f"{args.address}:{args.port}"
    if kind == "none":
        return None
    check: dict[str, Any]
    if kind == "grpc":
        check = consul.Check.grpc(target, args.interval, deregister=args.deregister_after)
    elif kind == "tcp":
        check = consul.Check.tcp(args.address, args.port, args.interval, deregister=args.deregister_after)
    elif kind.startswith(("http://", "https://")):
        check = consul.Check.http(kind, args.interval, deregister=args.deregister_after)
    else:
        raise SystemExit(f"error: --check {kind!r}: expected auto, grpc, tcp, none or an http(s):// URL")
    return check


def _describe(check: dict[str, Any] | None) -> str:
    if check is None:
        return "none"
    for key in ("grpc", "tcp", "http"):
        if key in check:
            return f"{key} {check[key]} every {check.get('interval')}"
    return "custom"


def deregister(args: argparse.Namespace) -> int:
    try:
        ok = _client(args).agent.service.deregister(args.id)
    except (consul.ConsulException, requests.RequestException) as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if not ok:
        print(f"error: Consul has no service with id {args.id!r}", file=sys.stderr)
        return 1
    print(f"deregistered {args.id}")
    return 0
