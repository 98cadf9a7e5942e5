#!/usr/bin/env python3
"""make bench-http2: what would HTTP/2 to an external LLM API be worth to meshgate's adapters?

meshgate's HTTP adapters use aiohttp (HTTP/1.1 with a keep-alive pool per endpoint), which has no
HTTP/2. This measures, side by side in one run, the client costs that decide it, against one nginx
answering a fixed chat completion over TLS (HTTP/1.1 and HTTP/2 on the same port, by ALPN), the
way an external API would:

    aiohttp       HTTP/1.1, keep-alive pool (meshgate's adapters, adapters/http_client.py)
    httpx-h1      httpx, HTTP/1.1, keep-alive pool (what the adapters used before)
    httpx-h2      httpx with h2: one HTTP/2 connection, requests multiplexed on it

Each client runs in this process on uvloop (as the gateway does); the figures are what a gateway
process would pay per call:

  warm   c concurrent callers, connections already open: requests/s, p50 latency, client CPU
         per request (this process's CPU time over the requests)
  cold   a new client and c calls at once: the time until all have answered, the client CPU,
         and the TLS connections nginx saw opened (HTTP/1.1 opens one per concurrent call)

Rounds interleave the clients; figures are medians. Loopback has no round-trip time: over a real
network a cold HTTP/1.1 burst costs c handshakes in parallel (about the same wall time as one,
two round trips), a cold HTTP/2 burst one; warm calls cost the same round trips either way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx

from bench.overhead import ROOT, free_port, nginx, stop
from tests.certs import CA, write

SERVER = """
  log_format conn '$connection $server_protocol';
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    keepalive_requests 1000000;
    access_log {work}/access.log conn;
    location / {{
      root {root};
      default_type application/json;
      error_page 405 =200 $uri;
    }}
  }}
"""
BODY = {"model": "bench", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 20}
CLIENTS = ("aiohttp", "httpx-h1", "httpx-h2")


def backend(work: Path) -> tuple[int, Path, Path]:
    """A CA, nginx's certificate for 127.0.0.1, and the completion file; (port, cert, key)."""
    ca = CA("bench-ca")
    pem, key_pem, _ = ca.issue("localhost", ips=("127.0.0.1",), server=True)
    cert, key = write(work, "server", pem, key_pem)
    (work / "ca.pem").write_bytes(ca.pem())
    root = work / "api" / "v1" / "chat"
    root.mkdir(parents=True)
    completion = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": "bench",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok " * 20}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 20, "total_tokens": 32},
    }
    (root / "completions").write_text(json.dumps(completion))
    return free_port(), cert, key


class Client:
    """One client kind: `post()` makes one call; `close()` ends it."""

    def __init__(self, kind: str, base: str, ca: Path) -> None:
        context = ssl.create_default_context(cafile=str(ca))
        self.kind = kind
        if kind == "aiohttp":
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context, limit=1024, keepalive_timeout=60)
            )
            self._url = base + "/v1/chat/completions"
        else:
            self._httpx = httpx.AsyncClient(
                base_url=base,
                verify=context,
                http1=kind == "httpx-h1",
                http2=kind == "httpx-h2",
                limits=httpx.Limits(max_connections=1024, max_keepalive_connections=1024),
            )

    async def post(self) -> None:
        if self.kind == "aiohttp":
            async with self._session.post(self._url, json=BODY) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
        else:
            resp = await self._httpx.post("/v1/chat/completions", json=BODY)
            assert resp.status_code == 200, resp.status_code
            assert resp.http_version == ("HTTP/2" if self.kind == "httpx-h2" else "HTTP/1.1")

    async def close(self) -> None:
        if self.kind == "aiohttp":
            await self._session.close()
        else:
            await self._httpx.aclose()


async def _callers(call: Callable[[], Awaitable[None]], concurrency: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies


async def warm(kind: str, base: str, ca: Path, concurrency: int, seconds: float) -> dict[str, float]:
    client = Client(kind, base, ca)
    try:
        await asyncio.gather(*(client.post() for _ in range(concurrency)))  # open the connections
        cpu0, t0 = time.process_time(), time.perf_counter()
        latencies = await _callers(client.post, concurrency, seconds)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    finally:
        await client.close()
    return {
        "rps": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "cpu_us": cpu / len(latencies) * 1e6,
    }


async def cold(kind: str, base: str, ca: Path, concurrency: int, log: Path) -> dict[str, float]:
    before = _connections(log)
    client = Client(kind, base, ca)
    try:
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(client.post() for _ in range(concurrency)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    finally:
        await client.close()
    await asyncio.sleep(0.2)  # nginx writes the access log as each request ends
    return {
        "burst_ms": wall * 1000,
        "burst_cpu_ms": cpu * 1000,
        "connections": len(_connections(log) - before),
    }


def _connections(log: Path) -> set[str]:
    if not log.exists():
        return set()
    return {line.split()[0] for line in log.read_text().splitlines() if line}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "http2.md"))
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    work = Path(tempfile.mkdtemp(prefix="meshgate-bench-http2-"))
    work.chmod(0o755)
    port, cert, key = backend(work)
    proc = nginx(work, "api", SERVER.format(port=port, cert=cert, key=key, work=work, root=work / "api"))
    base, ca, log = f"https://127.0.0.1:{port}", work / "ca.pem", work / "access.log"
    time.sleep(0.5)
    samples: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        for _ in range(args.rounds):
            for c in args.concurrency:
                for kind in CLIENTS:
                    row = asyncio.run(warm(kind, base, ca, c, args.seconds))
                    row |= asyncio.run(cold(kind, base, ca, c, log))
                    samples.setdefault((kind, c), []).append(row)
    finally:
        stop(proc)
    table = report(samples, args.concurrency)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table + "\n")
    print(f"\nwrote {args.out}")
    return 0


def report(samples: dict[tuple[str, int], list[dict[str, float]]], concurrency: list[int]) -> str:
    def med(kind: str, c: int, key: str) -> float:
        return statistics.median(s[key] for s in samples[(kind, c)])

    lines = [
        "| client | c | req/s (warm) | p50 ms | client CPU us/call | cold burst: all answered ms | its CPU ms | TLS connections |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in concurrency:
        for kind in CLIENTS:
            lines.append(
                f"| {kind} | {c} | {med(kind, c, 'rps'):.0f} | {med(kind, c, 'p50_ms'):.2f} | {med(kind, c, 'cpu_us'):.0f}"
                f" | {med(kind, c, 'burst_ms'):.1f} | {med(kind, c, 'burst_cpu_ms'):.1f} | {med(kind, c, 'connections'):.0f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
