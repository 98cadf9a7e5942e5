"""`meshgate admin pools | drain | undrain | reload | principals`: the Admin service.

Each needs a principal with the `admin` role (`--api-key`, or a client certificate mapped to one);
with no authenticator configured, a gateway on loopback lets the local operator in.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from meshgate.v1 import admin_pb2, admin_pb2_grpc

from .client import _fail, _metadata, add_connection_arguments, connect


def add_arguments(sub: Any) -> None:
    a = sub.add_parser("admin", help="operate a running gateway (admin role)")
    asub = a.add_subparsers(dest="admin_command", required=True)
    for name, help_ in (
        ("pools", "pools and endpoints with their live state"),
        ("drain", "take an endpoint out of rotation: it finishes its calls and gets no new ones"),
        ("undrain", "put a drained endpoint back in rotation"),
        ("reload", "re-read the gateway's config file (validated first; a bad file changes nothing)"),
        ("principals", "API keys from the keys file and principals seen lately (no secrets)"),
    ):
        q = asub.add_parser(name, help=help_)
        add_connection_arguments(q)
        if name in ("pools", "principals"):
            q.add_argument("--json", action="store_true", help="print JSON")
        if name == "pools":
            q.add_argument("--pool", default="", help="only this pool")
        if name in ("drain", "undrain"):
            q.add_argument("pool")
            q.add_argument("endpoint_id")
        if name == "drain":
            q.add_argument(
                "--wait",
                type=float,
                default=0.0,
                metavar="S",
                help="wait up to S seconds for its calls to finish",
            )


def run(args: argparse.Namespace) -> int:
    with connect(args) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        meta = _metadata(args.api_key)
        try:
            if args.admin_command == "pools":
                resp = stub.ListPools(
                    admin_pb2.ListPoolsRequest(pool=args.pool), timeout=args.timeout, metadata=meta
                )
                return _print_pools(resp, args.json)
            if args.admin_command in ("drain", "undrain"):
                if args.admin_command == "drain":
                    req = admin_pb2.DrainEndpointRequest(pool=args.pool, endpoint_id=args.endpoint_id)
                    ep = stub.DrainEndpoint(req, timeout=args.timeout, metadata=meta).endpoint
                else:
                    undo = admin_pb2.UndrainEndpointRequest(pool=args.pool, endpoint_id=args.endpoint_id)
                    ep = stub.UndrainEndpoint(undo, timeout=args.timeout, metadata=meta).endpoint
                print(
                    f"{args.pool}/{ep.id}: {'drained' if ep.drained else 'in rotation'}, {ep.in_flight} call(s) in flight"
                )
                if args.admin_command == "drain" and args.wait > 0:
                    return _wait_idle(stub, args, meta)
                return 0
            if args.admin_command == "reload":
                r = stub.ReloadConfig(admin_pb2.ReloadConfigRequest(), timeout=args.timeout, metadata=meta)
                print(f"{r.source}: reloaded; applied: {', '.join(r.applied) or 'nothing (no change)'}")
                if r.restart_required:
                    print(f"changed, applied at the next start: {', '.join(r.restart_required)}")
                return 0
            found = stub.ListPrincipals(
                admin_pb2.ListPrincipalsRequest(), timeout=args.timeout, metadata=meta
            )
            return _print_principals(found, args.json)
        except grpc.RpcError as err:
            return _fail(err)


def _wait_idle(stub: Any, args: argparse.Namespace, meta: Any) -> int:
    """Poll until the drained endpoint has no call in flight (0), or say it still has some (1)."""
    deadline = time.monotonic() + args.wait
    while True:
        resp = stub.ListPools(admin_pb2.ListPoolsRequest(pool=args.pool), timeout=args.timeout, metadata=meta)
        left = sum(e.in_flight for p in resp.pools for e in p.endpoints if e.id == args.endpoint_id)
        if left == 0:
            print(f"{args.pool}/{args.endpoint_id}: idle")
            return 0
        if time.monotonic() >= deadline:
            print(
                f"{args.pool}/{args.endpoint_id}: still {left} call(s) in flight after {args.wait:g} s",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.2)


def _print_pools(resp: Any, as_json: bool) -> int:
    if as_json:
        print(json.dumps(MessageToDict(resp), indent=2))
        return 0
    print(
        f"{'POOL/ENDPOINT':34} {'STATE':10} {'BACKEND':10} {'IN FLIGHT':>9} {'UNITS':>7} {'SCORE':>6}  MODELS"
    )
    for pool in resp.pools:
        print(f"{pool.name:34} {'ready' if pool.ready else 'not ready':10} profile={pool.profile}")
        for e in pool.endpoints:
            state = "drained" if e.drained else "ejected" if e.ejected else "ready" if e.ready else "down"
            print(
                f"  {e.id:32} {state:10} {e.backend:10} {e.in_flight:>9} {e.outstanding_units:>7.1f}"
                f" {e.score:>6.2f}  {','.join(e.models)}"
            )
    return 0


def _print_principals(resp: Any, as_json: bool) -> int:
    if as_json:
        print(json.dumps(MessageToDict(resp), indent=2))
        return 0
    print(f"{'AUTH':8} {'CREDENTIAL':24} {'USER':16} {'PROJECT':12} {'DEPARTMENT':12} {'ROLES':16} STATUS")
    now = time.time()
    for p in resp.principals:
        status = (
            "revoked"
            if p.revoked
            else "expired"
            if p.expires_at and p.expires_at <= now
            else f"seen {p.last_seen_seconds_ago:.0f} s ago"
            if p.last_seen_seconds_ago >= 0
            else "not seen since start"
        )
        print(
            f"{p.auth:8} {p.credential_id[:24]:24} {p.user or '-':16} {p.project or '-':12}"
            f" {p.department or '-':12} {','.join(p.roles) or '-':16} {status}"
        )
    return 0
