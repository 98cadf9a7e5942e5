"""Time to first byte of chat streams, for make bench-peers: a client of each kind measures, per
stream, the time from sending the request to the first piece of the answer's body (HTTP peers:
the first body bytes of the SSE stream; meshgate: the first GenerateStream message). The backend
paces its stream (nginx `limit_rate`), so the whole stream lasts about a second and the first
byte is a different moment from the last; h2load reports only the whole request's time. The
paced backend is the OpenAI stand-in of the tests (tests/openai_standin.py, its own process: one
token every 30 ms, ~6 tokens a stream); nginx's limit_rate lets a second's worth of bytes out at
once, so a 15 KB stream would not be paced.

The clients run in the benchmark's process at 1 and 16 concurrent streams (far below what would
load them): aiohttp for HTTP, grpc.aio for meshgate.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc

PACED = """
import sys, threading
from tests.openai_standin import OpenAIStandIn
s = OpenAIStandIn()
s.model_ids = [*s.model_ids, "bench", "bench-paced"]
s.token_interval_s = 0.03
print(s.port, flush=True)
threading.Event().wait()
"""


def paced_backend(root: Path) -> tuple[subprocess.Popen[str], int]:
    """The paced stand-in, started; (its process, its port)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PACED], cwd=root, stdout=subprocess.PIPE, start_new_session=True, text=True
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


async def _http_stream(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> float:
    t0 = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as resp:
        assert resp.status == 200, resp.status
        first = 0.0
        async for chunk in resp.content.iter_any():
            if chunk and not first:
                first = time.perf_counter() - t0
        return first


async def _grpc_stream(call: Any, request: bytes) -> float:
    t0 = time.perf_counter()
    first = 0.0
    async for _ in call(request, timeout=60):
        if not first:
            first = time.perf_counter() - t0
    return first


async def _measure(
    kind: str, url: str, body: Path, headers: list[str], conns: int, seconds: float
) -> list[float]:
    payload = body.read_bytes()
    firsts: list[float] = []
    end = time.perf_counter() + seconds

    async def loop(one: Any) -> None:
        await one()  # a warm-up stream: connections open
        while time.perf_counter() < end:
            firsts.append(await one())

    if kind == "grpc":
        target, _, method = url.removeprefix("http://").partition("/")
        async with grpc.aio.insecure_channel(target) as channel:
            call = channel.unary_stream("/" + method)  # raw bytes in and out
            request = payload[5:]  # the body without its gRPC frame header
            await asyncio.gather(*(loop(lambda: _grpc_stream(call, request)) for _ in range(conns)))
    else:
        hdrs = {"content-type": "application/json", **dict(h.split(": ", 1) for h in headers)}
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(
                *(loop(lambda: _http_stream(session, url, payload, hdrs)) for _ in range(conns))
            )
    return firsts


def ttfb(kind: str, url: str, body: Path, headers: list[str], conns: int, seconds: float) -> dict[str, float]:
    """p50 and p99 time to first byte (ms) of paced streams at `conns` concurrent streams."""
    firsts = sorted(asyncio.run(_measure(kind, url, body, headers, conns, seconds)))
    return {
        "ttfb_p50_ms": statistics.median(firsts) * 1000,
        "ttfb_p99_ms": firsts[min(len(firsts) - 1, int(len(firsts) * 0.99))] * 1000,
        "streams": len(firsts),
    }
