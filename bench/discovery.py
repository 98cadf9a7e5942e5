#!/usr/bin/env python3
"""make bench-discovery: how fast does a Consul change reach the routing, and what does a big
catalog cost?

1. Removal latency. Two fast KServe v2 backends (nginx answering fixed replies) in one pool,
   registered in the Consul stand-in; 16 concurrent callers through meshgate. Each trial
   re-registers backend B, waits until it takes traffic, deregisters it, and measures the time
   from the deregistration to the last call that reached B (from B's nginx access log, whose
   $msec timestamps share the clock with this process). 50 trials: p50 / p99 / max.
2. Scale. 1,000 endpoints across 100 services in the stand-in (addresses of the two backends),
   first steady, then with 10 changes a second (one instance's Meta changes each time): gateway
   RSS and CPU (whole process, and the readiness checks' share stated separately by running with
   readiness every 1 s and every 30 s).

The Consul stand-in is tests/consul_standin.py (no Consul binary exists on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from meshgate.v1 import inference_pb2, inference_pb2_grpc, tensor_pb2

from bench.overhead import (
    BACKEND_SERVER,
    NGINX_HEAD,
    ROOT,
    free_port,
    group_cpu_seconds,
    start,
    stop,
    write_payloads,
)
from tests.consul_standin import ConsulStandIn

ACCESS_LOG_SERVER = BACKEND_SERVER.replace("location / {{", "access_log {log} stamp;\n    location / {{")


def nginx_backend(work: Path, name: str, port: int) -> Any:
    import subprocess

    conf = work / f"{name}.conf"
    head = NGINX_HEAD.format(work=work, name=name) + "  log_format stamp '$msec $request_uri';\n"
    server = ACCESS_LOG_SERVER.format(port=port, root=work / "replies-1KiB", log=work / f"{name}-access.log")
    conf.write_text(head + server + "}\n")
    (work / f"tmp-{name}").mkdir(exist_ok=True)
    return subprocess.Popen(
        ["nginx", "-p", str(work), "-c", str(conf)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def registration(sid: str, pool: str, port: int, capacity: str = "1") -> dict[str, Any]:
    return {
        "Name": pool,
        "ID": sid,
        "Address": "127.0.0.1",
        "Port": port,
        "Tags": ["inference"],
        "Meta": {"backend": "kserve_v2", "models": "bench", "capacity": capacity},
        "Check": {"TTL": "1h", "Status": "passing"},
    }


def gateway(work: Path, consul: str, readiness_s: float) -> tuple[Any, int, int]:
    port, mport = free_port(), free_port()
    cfg = work / f"gw-{port}.yaml"
    cfg.write_text(
        json.dumps(
            {
                "log_level": "WARNING",
                "server": {"listen": f"127.0.0.1:{port}"},
                "metrics": {"listen": f"127.0.0.1:{mport}"},
                "readiness": {"interval_s": readiness_s},
                "discovery": {"consul": {"address": consul}},
            }
        )
    )
    proc = start([sys.executable, "-m", "gateway", "serve", "--config", str(cfg)], work / f"gw-{port}.log")
    return proc, port, mport


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def callers(address: str, stop_at: list[float], n: int = 16) -> int:
    data = b"\0" * 1024
    req = inference_pb2.InferRequest(
        model="bench",
        inputs=[tensor_pb2.Tensor(name="INPUT0", datatype="DATA_TYPE_FP32", shape=[256], raw=data)],
    )
    done = 0

    async def one() -> None:
        nonlocal done
        async with grpc.aio.insecure_channel(address) as ch:
            stub = inference_pb2_grpc.InferenceStub(ch)
            while time.time() < stop_at[0]:
                try:
                    await stub.Infer(req, timeout=5)
                    done += 1
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.01)

    await asyncio.gather(*(one() for _ in range(n)))
    return done


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def last_hit_after(log: Path, t0: float) -> float | None:
    last = None
    for line in _lines(log):
        stamp, _, uri = line.partition(" ")
        if uri.endswith("/ModelInfer") and float(stamp) >= t0:
            last = float(stamp)
    return last


def hits_since(log: Path, t0: float) -> int:
    return sum(1 for line in _lines(log) if line.endswith("/ModelInfer") and float(line.split()[0]) >= t0)


async def removal_latency(work: Path, standin: ConsulStandIn, trials: int) -> list[float]:
    a_port, b_port = free_port(), free_port()
    backends = [nginx_backend(work, "a", a_port), nginx_backend(work, "b", b_port)]
    standin.register(registration("a", "bench", a_port))
    gw, port, _ = gateway(work, standin.address, readiness_s=1.0)
    stop_at = [time.time() + 3600]
    load = asyncio.create_task(callers(f"127.0.0.1:{port}", stop_at))
    delays: list[float] = []
    try:
        b_log = work / "b-access.log"
        for i in range(trials):
            standin.register(registration("b", "bench", b_port))
            t_reg = time.time()
            while hits_since(b_log, t_reg) < 20:
                await asyncio.sleep(0.05)
            await asyncio.sleep(random.uniform(0.05, 0.2))
            t0 = time.time()
            standin.deregister("b")
            await asyncio.sleep(1.5)
            last = last_hit_after(b_log, t0)
            delays.append(max(0.0, (last - t0)) if last else 0.0)
            print(
                f"  trial {i + 1:2}: last call reached the removed endpoint {delays[-1] * 1000:6.1f} ms after"
                " deregistration",
                flush=True,
            )
    finally:
        stop_at[0] = 0
        await load
        stop(gw)
        for b in backends:
            stop(b)
    return delays


async def scale(work: Path, standin: ConsulStandIn, readiness_s: float, seconds: float) -> dict[str, float]:
    ports = [free_port(), free_port()]
    backends = [nginx_backend(work, f"s{i}-{readiness_s}", p) for i, p in enumerate(ports)]
    for s in range(100):
        for i in range(10):
            standin.register(registration(f"svc{s}-{i}", f"pool{s:03}", ports[i % 2]))
    gw, _, _ = gateway(work, standin.address, readiness_s)
    try:
        await asyncio.sleep(8)  # discovery + first readiness round of 1,000 endpoints
        out: dict[str, float] = {}
        for phase, rate in (("steady", 0.0), ("10 changes/s", 10.0)):
            cpu0, t0 = group_cpu_seconds(gw.pid), time.monotonic()
            end = t0 + seconds
            n = 0
            while time.monotonic() < end:
                if rate:
                    s, i = random.randrange(100), random.randrange(10)
                    standin.register(
                        registration(f"svc{s}-{i}", f"pool{s:03}", ports[i % 2], capacity=str(1 + n % 3))
                    )
                    n += 1
                    await asyncio.sleep(1 / rate)
                else:
                    await asyncio.sleep(0.5)
            cpu = (group_cpu_seconds(gw.pid) - cpu0) / (time.monotonic() - t0) * 100
            out[f"{phase} cpu %"] = cpu
            out[f"{phase} rss MiB"] = rss_mib(gw.pid)
            print(
                f"  readiness every {readiness_s:g}s, {phase:13}: gateway CPU {cpu:5.1f}% of a core,"
                f" RSS {out[f'{phase} rss MiB']:.0f} MiB",
                flush=True,
            )
        return out
    finally:
        stop(gw)
        for b in backends:
            stop(b)
        for s in range(100):
            for i in range(10):
                standin.deregister(f"svc{s}-{i}")


async def main_async(args: argparse.Namespace) -> str:
    work = Path(tempfile.mkdtemp(prefix="meshgate-bench-discovery-"))
    work.chmod(0o755)
    write_payloads(work, "1KiB", 1024)
    standin = ConsulStandIn()
    try:
        print(f"removal latency: {args.trials} trials under load (16 callers)", flush=True)
        delays = sorted(await removal_latency(work, standin, args.trials))
        p50, p99 = statistics.median(delays), delays[max(0, int(len(delays) * 0.99) - 1)]
        print("scale: 1,000 endpoints in 100 services", flush=True)
        fast = await scale(work, standin, 1.0, args.seconds)
        slow = await scale(work, standin, 30.0, args.seconds)
    finally:
        standin.close()
    lines = [
        "| removal: deregistration -> last call on that endpoint | p50 | p99 | max |",
        "|---|---:|---:|---:|",
        f"| {len(delays)} trials, 16 callers | {p50 * 1000:.1f} ms | {p99 * 1000:.1f} ms | {max(delays) * 1000:.1f} ms |",
        "",
        "| 1,000 endpoints in 100 services | gateway CPU (% of a core) | gateway RSS |",
        "|---|---:|---:|",
    ]
    for label, row in (("readiness every 1 s", fast), ("readiness every 30 s", slow)):
        for phase in ("steady", "10 changes/s"):
            lines.append(
                f"| {label}, {phase} | {row[phase + ' cpu %']:.1f} | {row[phase + ' rss MiB']:.0f} MiB |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each scale phase")
    args = ap.parse_args()
    os.chdir(ROOT)
    table = asyncio.run(main_async(args))
    print("\n" + table)
    out = ROOT / "bench" / "out" / "discovery.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
