#!/usr/bin/env python3
"""A gRPC load generator that can present a client certificate (h2load cannot): `concurrency`
calls kept in flight on one grpc.aio channel, the same pre-encoded request each time, for
`seconds` after a 1 s warm-up. Prints JSON: calls, rps, p50_ms, p99_ms, errors.

Used by bench/auth.py, which runs it pinned to its own core so that every path it compares
pays the same client cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import grpc


async def run(args: argparse.Namespace) -> dict[str, float]:
    payload = Path(args.body).read_bytes()[5:]  # the gRPC frame's body
    metadata = tuple(tuple(h.split(": ", 1)) for h in args.header)
    if args.ca:
        creds = grpc.ssl_channel_credentials(
            Path(args.ca).read_bytes(),
            Path(args.key).read_bytes() if args.key else None,
            Path(args.cert).read_bytes() if args.cert else None,
        )
        channel = grpc.aio.secure_channel(args.target, creds)
    else:
        channel = grpc.aio.insecure_channel(args.target)
    call = channel.unary_unary(args.method)
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + 1.0
    stop_at = measure_from + args.seconds

    async def worker() -> None:
        nonlocal errors
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            try:
                await call(payload, timeout=10, metadata=metadata)
            except grpc.RpcError:
                errors += 1
                continue
            t1 = time.perf_counter()
            if t0 >= measure_from:
                latencies.append((t1 - t0) * 1000.0)

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    await channel.close()
    latencies.sort()
    if not latencies:
        return {"calls": 0, "rps": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "errors": max(errors, 1)}
    return {
        "calls": len(latencies),
        "rps": len(latencies) / args.seconds,
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)],
        "errors": errors,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--body", required=True)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--header", action="append", default=[], help="'name: value'")
    p.add_argument("--ca", default="")
    p.add_argument("--cert", default="")
    p.add_argument("--key", default="")
    print(json.dumps(asyncio.run(run(p.parse_args()))))


if __name__ == "__main__":
    main()
