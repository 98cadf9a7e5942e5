#!/usr/bin/env python3
"""make bench-ledger: sustained usage records per second into SQLite and into PostgreSQL, through
the gateway's own LedgerWriter (group commit: max_batch records or flush_interval_s, whichever
first), and what the request path pays: the time of append() (no await, no I/O), measured on
the event loop while batches are written.

Each run offers records at a fixed rate from the event loop (as settling calls would) for
`--seconds`, then waits for the buffer to drain. Reported per store and offered rate: records
written per second (sustained, offered until the buffer drains), append p50/p99/max in us, the
event loop's largest stall (a timer's lateness: what every call in flight would wait), and the
deepest buffer. Target: >= 20k records/s into each store; append never waits for the database.
A real PostgreSQL (tests/postgres_server.py: fsync on here) and a SQLite file in a temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.ledger.postgres import PostgresLedger
from gateway.ledger.records import LedgerStore, UsageRecord
from gateway.ledger.sqlite import SQLiteLedger
from gateway.ledger.writer import LedgerWriter

OUT = Path(__file__).resolve().parent / "results"


def _record(i: int) -> UsageRecord:
    return UsageRecord(
        uuid.uuid4().hex,
        time.time(),
        f"req-{i}",
        "Generate",
        f"user{i % 50}",
        f"proj{i % 7}",
        "eng",
        "key1",
        "llama-70b",
        "gpu-pool",
        "triton-a",
        812,
        240,
        0,
        0.35,
        0.00112,
        False,
        "OK",
    )


async def _run(store: LedgerStore, rate: float, seconds: float, batch: int) -> dict[str, float]:
    """rate 0: everything at once (seconds x 50k records), to measure how fast the store drains."""
    writer = LedgerWriter(
        store, CollectorRegistry(), flush_interval_s=0.5, max_batch=batch, max_buffered=10**7
    )
    await store.open()
    before = await store.count()
    writer.start()
    appends: list[float] = []
    stall = deepest = 0.0
    sent = 0
    tick = 0.005
    start = time.perf_counter()
    next_at = start
    if rate == 0:
        for _ in range(int(seconds * 50_000)):
            r = _record(sent)
            t0 = time.perf_counter_ns()
            writer.append(r)
            appends.append(time.perf_counter_ns() - t0)
            sent += 1
        start = time.perf_counter()
    while rate and (now := time.perf_counter()) - start < seconds:
        stall = max(stall, now - next_at)
        due = int((now - start) * rate) - sent
        for _ in range(due):
            r = _record(sent)
            t0 = time.perf_counter_ns()
            writer.append(r)
            appends.append(time.perf_counter_ns() - t0)
            sent += 1
        deepest = max(deepest, writer.buffered)
        next_at = time.perf_counter() + tick
        await asyncio.sleep(tick)
    while writer.buffered:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - start
    written = await store.count() - before
    await writer.aclose()
    appends.sort()
    return {
        "offered": sent / seconds if rate else 0.0,
        "written_per_s": written / elapsed,
        "lost": sent - written,
        "append_p50_us": appends[len(appends) // 2] / 1000,
        "append_p99_us": appends[int(len(appends) * 0.99)] / 1000,
        "append_max_us": appends[-1] / 1000,
        "stall_ms": stall * 1000,
        "deepest": deepest,
    }


async def _create_db(url: str, name: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(url)
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()
    return url.rsplit("/", 1)[0] + "/" + name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument(
        "--rates",
        default="0,20000,40000",
        help="records/s offered, comma-separated (0: all at once, drained flat out)",
    )
    ap.add_argument("--batch", type=int, default=1000, help="LedgerWriter max_batch")
    args = ap.parse_args()
    from tests.postgres_server import PostgresServer

    pg = PostgresServer()
    pg.start()
    rows: list[tuple[str, dict[str, Any]]] = []
    try:
        for rate in (float(r) for r in args.rates.split(",")):
            for name in ("sqlite", "postgres"):
                if name == "sqlite":
                    store: LedgerStore = SQLiteLedger(str(Path(tempfile.mkdtemp()) / "usage.db"))
                else:
                    url = asyncio.run(_create_db(pg.url, f"bench{uuid.uuid4().hex[:8]}"))
                    store = PostgresLedger(url)
                result = asyncio.run(_run(store, rate, args.seconds, args.batch))
                rows.append((name, result))
                print(
                    f"  {name:9} offered {result['offered']:8.0f}/s  written {result['written_per_s']:8.0f}/s"
                    f"  append p99 {result['append_p99_us']:.1f} us  stall {result['stall_ms']:.1f} ms",
                    flush=True,
                )
    finally:
        pg.remove()
    lines = [
        f"records of ~{len(','.join(map(str, _record(0))))} bytes; LedgerWriter max_batch {args.batch}, flush 0.5 s;"
        f" {args.seconds:g} s per run",
        "",
        "| store | offered/s | written/s (to the last record written) | lost | append p50 us | append p99 us | append max us"
        " | event loop stall ms | deepest buffer |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        offered = f"{r['offered']:.0f}" if r["offered"] else "all at once"
        lines.append(
            f"| {name} | {offered} | {r['written_per_s']:.0f} | {r['lost']} | {r['append_p50_us']:.2f}"
            f" | {r['append_p99_us']:.2f} | {r['append_max_us']:.0f} | {r['stall_ms']:.1f} | {r['deepest']:.0f} |"
        )
    text = "\n".join(lines)
    OUT.mkdir(exist_ok=True)
    (OUT / "ledger.md").write_text(text + "\n")
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
