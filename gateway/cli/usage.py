"""`meshgate usage` and `meshgate budgets`: usage and cost from the gateway's ledger
(Admin/GetUsage), budgets in their current window (Admin/ListBudgets); admin role.

meshgate usage                              totals of the last 24 hours
meshgate usage --by project,model --since 7d
meshgate usage --by user --since 2026-12-01 --until 2026-12-02 --csv > december.csv
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
import time
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from meshgate.v1 import admin_pb2, admin_pb2_grpc

from .client import _fail, _metadata, add_connection_arguments, connect

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_COLUMNS = (
    "calls",
    "tokens_in",
    "tokens_out",
    "tokens_cached",
    "gpu_seconds",
    "cost",
    "cache_hits",
    "errors",
)


def add_arguments(sub: Any) -> None:
    q = sub.add_parser("usage", help="usage and cost from the ledger, grouped (admin role)")
    add_connection_arguments(q)
    q.add_argument(
        "--by",
        default="",
        help="comma-separated: user, project, department, credential_id, model, pool, endpoint, status, method",
    )
    q.add_argument(
        "--since", default="24h", help="7d, 12h, 30m; a date or time (ISO 8601, UTC); Unix seconds"
    )
    q.add_argument("--until", default="", help="as --since; default now")
    out = q.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="CSV for spreadsheets")
    out.add_argument("--json", action="store_true", help="print JSON")
    b = sub.add_parser("budgets", help="budgets in their current window: spent and remaining (admin role)")
    add_connection_arguments(b)
    b.add_argument("--budget", default="", help="only this budget")
    b.add_argument("--key", default="", help="also this scope value (a department, project, user or key id)")
    b.add_argument("--json", action="store_true", help="print JSON")


def budgets(args: argparse.Namespace) -> int:
    with connect(args) as channel:
        try:
            resp = admin_pb2_grpc.AdminStub(channel).ListBudgets(
                admin_pb2.ListBudgetsRequest(budget=args.budget, key=args.key),
                timeout=args.timeout,
                metadata=_metadata(args.api_key),
            )
        except grpc.RpcError as err:
            return _fail(err)
    if args.json:
        print(json.dumps(MessageToDict(resp, always_print_fields_with_no_presence=True), indent=2))
        return 0
    print(
        f"{'BUDGET':20} {'SCOPE':24} {'UNIT':6} {'LIMIT':>12} {'SPENT':>12} {'REMAINING':>12}  RESETS (UTC)"
    )
    for st in resp.budgets:
        unit = resp.currency if st.unit == "money" else "tokens"
        resets = dt.datetime.fromtimestamp(st.window_end, dt.UTC).strftime("%Y-%m-%d %H:%M")
        flag = "  over soft threshold" if st.over_soft_threshold else ""
        print(
            f"{st.name:20} {st.scope + '=' + st.key:24} {unit:6} {st.limit:>12.4g} {st.spent:>12.4g}"
            f" {st.remaining:>12.4g}  {resets}{flag}"
        )
    if not resp.budgets:
        print("(no budget has charged a call since this gateway started; ask for one with --key)")
    return 0


def when(text: str, now: float) -> float:
    """'7d' (ago), '2026-12-01', '2026-12-01T08:00', '1764547200' -> Unix seconds; ValueError."""
    text = text.strip()
    if text and text[-1] in _UNITS and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * _UNITS[text[-1]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use 7d, 12h, an ISO date (2026-12-01) or Unix seconds"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def run(args: argparse.Namespace) -> int:
    now = time.time()
    try:
        until = when(args.until, now) if args.until else now
        since = when(args.since, until)
    except ValueError as err:
        print(f"meshgate usage: {err}", file=sys.stderr)
        return 2
    group_by = [g.strip() for g in args.by.split(",") if g.strip()]
    with connect(args) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        try:
            resp = stub.GetUsage(
                admin_pb2.GetUsageRequest(since=since, until=until, group_by=group_by),
                timeout=args.timeout,
                metadata=_metadata(args.api_key),
            )
        except grpc.RpcError as err:
            return _fail(err)
    if args.json:
        print(json.dumps(MessageToDict(resp, always_print_fields_with_no_presence=True), indent=2))
        return 0
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow([*group_by, *_COLUMNS, "currency"])
        for row in resp.rows:
            writer.writerow([*row.group, *(_value(row, c) for c in _COLUMNS), resp.currency])
        return 0
    _table(resp, group_by)
    return 0


def _value(row: Any, column: str) -> Any:
    value = getattr(row, column)
    return round(value, 6) if isinstance(value, float) else value


def _table(resp: Any, group_by: list[str]) -> None:
    start = dt.datetime.fromtimestamp(resp.since, dt.UTC).strftime("%Y-%m-%d %H:%M")
    end = dt.datetime.fromtimestamp(resp.until, dt.UTC).strftime("%Y-%m-%d %H:%M")
    print(f"usage {start} .. {end} UTC, cost in {resp.currency}")
    headers = [g.upper() for g in group_by] + [c.upper().replace("_", " ") for c in _COLUMNS]
    lines = [
        [
            *row.group,
            *(
                f"{getattr(row, c):.4f}" if c in ("cost", "gpu_seconds") else str(getattr(row, c))
                for c in _COLUMNS
            ),
        ]
        for row in resp.rows
    ]
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(headers)
    ]
    groups = len(group_by)
    for line in [headers, *lines]:
        print(
            "  ".join(
                v.ljust(w) if i < groups else v.rjust(w)
                for i, (v, w) in enumerate(zip(line, widths, strict=True))
            )
        )
    if not lines:
        print("(no calls in this range)")
    if resp.unwritten:
        print(
            f"({resp.unwritten} records of this gateway are not written yet: the ledger database is unreachable)"
        )
