#!/usr/bin/env python3
"""make bench-stream: token streaming through meshgate vs straight from the backend.

N concurrent chat streams (default 100) of T tokens each (default 500) at R tokens/s per stream
(default 50) from the OpenAI-compatible stand-in (tests/openai_standin.py, in its own process),
consumed directly over HTTP SSE (aiohttp, the cheapest Python client measured: bench-http2) and
through meshgate's GenerateStream (grpc.aio). Prints delivered tokens/s,
time to first token p50/p99 (and what meshgate adds), inter-token gap p99, and the gateway's CPU.
Streams start spread over --stagger seconds (steady arrivals) and, separately, all at once (a
burst, where first tokens queue behind the gateway's work of opening every stream). Then the
relay ceiling: the same with no pacing (the backend sends as fast as it can). Each load runs
--rounds times, the paths interleaved; figures are medians (a burst's first tokens vary by tens
of milliseconds from one run to the next on a shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from meshgate.v1 import generate_pb2, inference_pb2_grpc

from bench.overhead import ROOT, baseline_tree, free_port, group_cpu_seconds, start, stop

STANDIN = """
import sys, threading
from tests.openai_standin import OpenAIStandIn
s = OpenAIStandIn()
s.token_interval_s = float(sys.argv[1])
print(s.port, flush=True)
threading.Event().wait()
"""


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


async def direct_stream(
    client: aiohttp.ClientSession, url: str, words: str, delay: float = 0.0
) -> tuple[float, list[float], int]:
    await asyncio.sleep(delay)
    body = {
        "model": "echo",
        "messages": [{"role": "user", "content": words}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first, stamps, n = 0.0, [], 0
    async with client.post(url + "/chat/completions", json=body) as resp:
        async for raw in resp.content:  # one SSE line at a time
            line = raw.decode().rstrip("\r\n")
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for c in chunk.get("choices") or ():
                if (c.get("delta") or {}).get("content"):
                    now = time.perf_counter()
                    first = first or now - t0
                    stamps.append(now)
                    n += 1
    return first, stamps, n


async def mesh_stream(stub: Any, words: str, delay: float = 0.0) -> tuple[float, list[float], int]:
    await asyncio.sleep(delay)
    msg = generate_pb2.ChatMessage(role="user", content=[generate_pb2.ContentPart(text=words)])
    req = generate_pb2.GenerateRequest(model="echo", messages=[msg])
    t0 = time.perf_counter()
    first, stamps, n = 0.0, [], 0
    async for event in stub.GenerateStream(req, timeout=600):
        if event.WhichOneof("event") == "delta":
            now = time.perf_counter()
            first = first or now - t0
            stamps.append(now)
            n += len(event.delta.split())  # tokens: deltas that arrived together are one message
    return first, stamps, n


async def run(mode: str, streams: int, words: str, target: str, stagger: float) -> dict[str, float]:
    t0 = time.perf_counter()
    if mode == "direct":
        connector = aiohttp.TCPConnector(limit=streams + 10)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None)
        ) as client:
            results = await asyncio.gather(
                *(direct_stream(client, target, words, i * stagger / streams) for i in range(streams))
            )
    else:
        async with grpc.aio.insecure_channel(target) as ch:
            stub = inference_pb2_grpc.InferenceStub(ch)
            results = await asyncio.gather(
                *(mesh_stream(stub, words, i * stagger / streams) for i in range(streams))
            )
    elapsed = time.perf_counter() - t0
    ttft = [r[0] * 1000 for r in results]
    gaps = [(b - a) * 1000 for r in results for a, b in zip(r[1], r[1][1:], strict=False)]
    tokens = sum(r[2] for r in results)
    return {
        "tokens_per_s": tokens / elapsed,
        "tokens": tokens,
        "ttft_p50_ms": statistics.median(ttft),
        "ttft_p99_ms": pct(ttft, 0.99),
        "gap_p99_ms": pct(gaps, 0.99),
    }


def _gateway_config(port: int, backend_port: int) -> dict[str, Any]:
    return {
        "log_level": "WARNING",
        "server": {"listen": f"127.0.0.1:{port}"},
        "metrics": {"listen": None},
        "pools": {
            "llm": {
                "endpoints": [
                    {
                        "id": "standin",
                        "address": f"127.0.0.1:{backend_port}",
                        "backend": "openai",
                        "models": ["echo"],
                    }
                ]
            }
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=500)
    ap.add_argument("--rate", type=float, default=50.0, help="tokens/s per stream")
    ap.add_argument(
        "--stagger",
        type=float,
        default=2.0,
        help="seconds over which the streams start (0 = all at once, a burst)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="runs per path and load; figures are medians")
    ap.add_argument(
        "--baseline",
        default="",
        metavar="REV",
        help="also run the gateway of git revision REV (a worktree), side by side: meshgate-before",
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="meshgate-bench-stream-"))
    trees = [("meshgate", ROOT)]
    if args.baseline:
        trees.append(("meshgate-before", baseline_tree(work, args.baseline)))
    words = " ".join(["tok"] * (args.tokens - 1))  # the stand-in echoes: "echo:" + the words
    rows: list[tuple[str, str, dict[str, float]]] = []
    loads = (
        (f"{args.rate:g} tok/s per stream, starts over {args.stagger:g} s", 1 / args.rate, args.stagger),
        (f"{args.rate:g} tok/s per stream, all start at once", 1 / args.rate, 0.0),
        ("unpaced (relay ceiling)", 0.0, 0.0),
    )
    for label, interval, stagger in loads:
        backend = subprocess.Popen(
            [sys.executable, "-c", STANDIN, str(interval)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            start_new_session=True,
            text=True,
        )
        assert backend.stdout is not None
        port = int(backend.stdout.readline())
        try:
            targets = [("direct", f"http://127.0.0.1:{port}/v1", None)]
            for name, tree in trees:
                gw_port = free_port()
                cfg = work / f"gw-{gw_port}.yaml"
                cfg.write_text(json.dumps(_gateway_config(gw_port, port)))
                gw = start(
                    [sys.executable, "-m", "gateway", "serve", "--config", str(cfg)],
                    work / f"{name}.log",
                    cwd=tree,
                )
                targets.append((name, f"127.0.0.1:{gw_port}", gw))
            time.sleep(3)
            runs: dict[str, list[dict[str, float]]] = {}
            for _ in range(args.rounds):  # interleaved: drift hits every path alike
                for mode, target, gw in targets:
                    cpu0 = group_cpu_seconds(gw.pid) if gw is not None else 0.0
                    t0 = time.monotonic()
                    one = asyncio.run(run(mode, args.streams, words, target, stagger))
                    if gw is not None:
                        one["gateway_cpu_pct"] = (
                            (group_cpu_seconds(gw.pid) - cpu0) / (time.monotonic() - t0) * 100
                        )
                    runs.setdefault(mode, []).append(one)
            for mode, _target, gw in targets:
                stats = {k: statistics.median(r[k] for r in runs[mode]) for k in runs[mode][0]}
                rows.append((label, mode, stats))
                cpu = f"  gateway CPU {stats['gateway_cpu_pct']:5.1f}%" if gw is not None else ""
                print(
                    f"  {label:28} {mode:15} {stats['tokens_per_s']:8.0f} tok/s  TTFT p50 {stats['ttft_p50_ms']:7.1f} ms"
                    f"  p99 {stats['ttft_p99_ms']:7.1f} ms  gap p99 {stats['gap_p99_ms']:6.1f} ms{cpu}",
                    flush=True,
                )
        finally:
            for _, _, gw in targets:
                if gw is not None:
                    stop(gw)
            stop(backend)
    lines = [
        "| load | path | tokens/s | TTFT p50 | TTFT p99 | inter-token p99 | gateway CPU |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, mode, st in rows:
        cpu = f"{st['gateway_cpu_pct']:.0f}%" if "gateway_cpu_pct" in st else ""
        lines.append(
            f"| {label} | {mode} | {st['tokens_per_s']:.0f} | {st['ttft_p50_ms']:.1f} ms | {st['ttft_p99_ms']:.1f} ms"
            f" | {st['gap_p99_ms']:.1f} ms | {cpu} |"
        )
    paced = [st for label, mode, st in rows if "starts over" in label and mode in ("direct", "meshgate")]
    if len(paced) == 2:
        lines += [
            "",
            f"At {args.rate:g} tok/s x {args.streams} streams: meshgate delivers "
            f"{paced[1]['tokens_per_s'] / paced[0]['tokens_per_s'] * 100:.1f}% of the direct token rate and adds "
            f"{paced[1]['ttft_p50_ms'] - paced[0]['ttft_p50_ms']:.1f} ms to p50 time to first token.",
        ]
    if args.baseline:
        by = {(label, mode): st for label, mode, st in rows}
        for label, _, _ in loads:
            now, before = by.get((label, "meshgate")), by.get((label, "meshgate-before"))
            if now and before:
                lines.append(
                    f"{label}: tokens/s {now['tokens_per_s'] / before['tokens_per_s']:.2f}x {args.baseline},"
                    f" gateway CPU {now['gateway_cpu_pct'] / before['gateway_cpu_pct']:.2f}x,"
                    f" TTFT p50 {now['ttft_p50_ms'] - before['ttft_p50_ms']:+.1f} ms"
                )
    table = "\n".join(lines)
    print("\n" + table)
    out = ROOT / "bench" / "out" / "stream.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
