#!/usr/bin/env python3
"""make bench-balance: does load-aware routing pay? The same workload through meshgate per policy.

Backends: simulated GPU servers (bench/sim_gpu.py; real KServe v2 gRPC on loopback) with
heterogeneous capacities (default 1, 1, 2, 4), 4 batch slots each, and a background utilisation
they report in DCGM format (and their queue in Triton format). Models: 80% `light` (cost 1),
20% `heavy` (cost 8); one unit takes 40 ms on a capacity-1 GPU. Open-loop Poisson arrivals at
50%, 70% and 90% of the total capacity, each request with a 2 s deadline. Two more phases at 70%:
`jump` (the fastest backend's background load goes 0 -> 60% a third of the way in) and
`toggle` (it flips 0 <-> 60% every 2 s).

Policies: meshgate scheduler profiles round_robin (reference), least_inflight, p2c_inflight
(Envoy least_request default), weighted_least_request (Envoy's weight/(active+1) with capacity
weights), and default (meshgate). Prints p50/p99 latency, throughput and deadline misses per
policy and phase, the ratios the issue sets targets on, the scheduler's decision time with 100
endpoints, and writes bench/out/balance.png (latency CDFs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
from tritonclient.grpc import service_pb2 as pb

from bench.overhead import ROOT, free_port, start, stop

POLICIES = ("round_robin", "least_inflight", "p2c_inflight", "weighted_least_request", "default")
MIX = (("light", 1.0, 0.8), ("heavy", 8.0, 0.2))
DEADLINE_S = 2.0
OUT = ROOT / "bench" / "out"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


def gateway_config(
    work: Path, port: int, policy: str, backends: list[dict[str, int]], spec: dict[str, Any]
) -> Path:
    endpoints = [
        {
            "id": f"gpu{i}-x{b['capacity']:g}",
            "address": f"127.0.0.1:{ports['grpc']}",
            # KServe v2 servers; `triton` so that the probe reads their Triton-format queue gauge.
            "backend": "triton",
            "models": ["light", "heavy"],
            "capacity": b["capacity"],
            "slots": b["slots"],
            "metrics_url": f"http://127.0.0.1:{ports['metrics']}/metrics",
        }
        for i, (b, ports) in enumerate(zip(spec["backends"], backends, strict=True))
    ]
    cfg = {
        "log_level": "WARNING",
        "server": {"listen": f"127.0.0.1:{port}"},
        "metrics": {"listen": None},
        "routing": {"profile": policy, "model_costs": {"light": 1, "heavy": 8}},
        "pools": {"sim": {"endpoints": endpoints}},
    }
    path = work / f"gw-{policy}.json"
    path.write_text(json.dumps(cfg))
    return path


async def control(client: httpx.AsyncClient, backend: int, background: float) -> None:
    await client.post("/control", json={"backend": backend, "background": background})


async def run_phase(
    target: str,
    rate: float,
    seconds: float,
    seed: int,
    events: list[tuple[float, int, float]],
    control_port: int,
) -> dict[str, Any]:
    """Open loop: Poisson arrivals at `rate`/s for `seconds`; `events` = (at_s, backend, bg)."""
    rng = random.Random(seed)
    lat: dict[str, list[float]] = {"light": [], "heavy": [], "all": []}
    misses = errors = 0
    async with (
        grpc.aio.insecure_channel(target) as ch,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{control_port}") as ctl,
    ):
        call = ch.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        reqs = {}
        for model, _, _ in MIX:
            r = pb.ModelInferRequest(model_name=model)
            t = r.inputs.add(name="x", datatype="FP32", shape=[1])
            r.raw_input_contents.append(b"\0\0\0\0")
            del t
            reqs[model] = r

        async def one(model: str) -> None:
            nonlocal misses, errors
            t0 = time.perf_counter()
            try:
                await call(reqs[model], timeout=DEADLINE_S)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    misses += 1
                    lat[model].append(DEADLINE_S)
                    lat["all"].append(DEADLINE_S)
                else:
                    errors += 1
                return
            dt = time.perf_counter() - t0
            lat[model].append(dt)
            lat["all"].append(dt)

        async def fire_events() -> None:
            t0 = time.monotonic()
            for at, backend, bg in events:
                await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
                await control(ctl, backend, bg)

        tasks = []
        ev = asyncio.create_task(fire_events())
        start_t = time.monotonic()
        next_t = start_t
        while True:
            next_t += rng.expovariate(rate)
            if next_t - start_t > seconds:
                break
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))
            x = rng.random()
            model = "light" if x < MIX[0][2] else "heavy"
            tasks.append(asyncio.create_task(one(model)))
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - start_t
        await ev
        for b in {b for _, b, _ in events}:
            await control(ctl, b, 0.0)
    done = len(lat["all"]) - misses
    return {
        "p50": pct(lat["all"], 0.5) * 1000,
        "p99": pct(lat["all"], 0.99) * 1000,
        "light_p99": pct(lat["light"], 0.99) * 1000,
        "heavy_p99": pct(lat["heavy"], 0.99) * 1000,
        "throughput": done / elapsed,
        "misses": misses,
        "errors": errors,
        "sent": len(tasks),
        "latencies": lat["all"],
    }


def decision_cost(n: int = 100, calls: int = 20000) -> dict[str, tuple[float, float]]:
    """Scheduler.pick over n endpoints with live-looking state, per profile: p50/p99 in us."""
    from discovery import Endpoint, ModelRef
    from gateway.endpoints import EndpointState
    from gateway.load import LoadSample
    from gateway.routing.plugins import RequestInfo
    from gateway.routing.scheduler import Scheduler

    rng = random.Random(1)
    now = time.monotonic()
    states = []
    for i in range(n):
        ep = Endpoint(
            id=f"e{i}",
            pool="p",
            host="h",
            port=i + 1,
            backend="triton",
            models=(ModelRef("m"),),
            capacity=rng.choice([1, 2, 4]),
            slots=4,
        )
        s = EndpointState(ep, adapter=None)  # type: ignore[arg-type]
        s.health.live, s.health.ready_models = True, frozenset({ModelRef("m")})
        s.calls.in_flight = rng.randrange(6)
        s.calls.units = s.calls.in_flight * 2.4
        s.scrape.load = LoadSample(at=now, gpu_util=rng.random(), queue=float(rng.randrange(3)))
        states.append(s)
    out = {}
    for policy in POLICIES:
        sched = Scheduler(default_profile=policy)
        req = RequestInfo("m", "", 1.0, "", 1.0)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            sched.pick(states, req)
            times.append((time.perf_counter_ns() - t0) / 1000)
        out[policy] = (pct(times, 0.5), pct(times, 0.99))
    return out


def plot(results: dict[tuple[str, str], dict[str, Any]], phases: list[str], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "(matplotlib not installed: no plot)"
    fig, axes = plt.subplots(1, len(phases), figsize=(4.2 * len(phases), 3.6), sharey=True)
    for ax, phase in zip(axes, phases, strict=True):
        for policy in POLICIES:
            lat = sorted(results[(policy, phase)]["latencies"])
            if not lat:
                continue
            ys = [(i + 1) / len(lat) for i in range(len(lat))]
            ax.plot([x * 1000 for x in lat], ys, label=policy, lw=1.2)
        ax.set_xscale("log")
        ax.set_title(phase)
        ax.set_xlabel("latency (ms)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of requests")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return f"plot: {path.relative_to(ROOT)}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="per phase and policy")
    ap.add_argument("--capacities", default="1,1,2,4")
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--unit-ms", type=float, default=40.0)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--phases", default="", help="comma list of phase names to run (default: all)")
    args = ap.parse_args()
    caps = [float(c) for c in args.capacities.split(",")]
    spec = {"unit_s": args.unit_ms / 1000, "backends": [{"capacity": c, "slots": args.slots} for c in caps]}
    mean_units = sum(cost * share for _, cost, share in MIX)
    capacity_rps = sum(c * args.slots for c in caps) / (args.unit_ms / 1000) / mean_units
    fast = max(range(len(caps)), key=lambda i: caps[i])
    s = args.seconds
    phases: dict[str, tuple[float, list[tuple[float, int, float]]]] = {
        "50%": (0.5, []),
        "70%": (0.7, []),
        "90%": (0.9, []),
        "70% jump": (0.7, [(s / 3, fast, 0.6)]),
        "70% toggle": (0.7, [(t, fast, 0.6 if k % 2 == 0 else 0.0) for k, t in enumerate(_steps(2.0, s))]),
    }
    if args.phases:
        phases = {k: v for k, v in phases.items() if k in args.phases.split(",")}
    policies = args.policies.split(",")
    print(
        f"backends: capacities {caps}, {args.slots} slots, {args.unit_ms:g} ms per unit; mix 80% cost 1 / 20% cost 8;"
        f" total capacity {capacity_rps:.0f} req/s; {s:g} s per phase",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="meshgate-bench-balance-"))
    sim = subprocess.Popen(
        [sys.executable, "-m", "bench.sim_gpu", json.dumps(spec)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        start_new_session=True,
        text=True,
    )
    results: dict[tuple[str, str], dict[str, Any]] = {}
    try:
        assert sim.stdout is not None
        info = json.loads(sim.stdout.readline())
        for policy in policies:
            port = free_port()
            cfg = gateway_config(work, port, policy, info["backends"], spec)
            gw = start(
                [sys.executable, "-m", "gateway", "serve", "--config", str(cfg)], work / f"gw-{policy}.log"
            )
            try:
                time.sleep(3)
                asyncio.run(run_phase(f"127.0.0.1:{port}", capacity_rps * 0.3, 2.0, 0, [], info["control"]))
                for k, (phase, (load, events)) in enumerate(phases.items()):
                    r = asyncio.run(
                        run_phase(
                            f"127.0.0.1:{port}", capacity_rps * load, s, 100 + k, events, info["control"]
                        )
                    )
                    results[(policy, phase)] = r
                    print(
                        f"  {policy:24} {phase:11} p50 {r['p50']:7.1f} ms  p99 {r['p99']:7.1f} ms"
                        f"  {r['throughput']:6.1f} req/s  misses {r['misses']:4d}  errors {r['errors']}",
                        flush=True,
                    )
                    time.sleep(1.0)
            finally:
                stop(gw)
    finally:
        stop(sim)
    report = _report(results, list(phases), policies, decision_cost())
    OUT.mkdir(parents=True, exist_ok=True)
    if set(POLICIES) <= set(policies):
        shown = [p for p in ("70%", "90%", "70% toggle") if p in phases]
        report += "\n" + plot(results, shown, OUT / "balance.png") + "\n"
    (OUT / "balance.md").write_text(report)
    print(report)
    return 0


def _steps(every: float, total: float) -> list[float]:
    out, t = [], every
    while t < total:
        out.append(t)
        t += every
    return out


def _report(
    results: dict[tuple[str, str], dict[str, Any]],
    phases: list[str],
    policies: list[str],
    cost: dict[str, tuple[float, float]],
) -> str:
    lines = [
        "| phase | policy | p50 ms | p99 ms | light p99 | heavy p99 | req/s | deadline misses |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in phases:
        for policy in policies:
            r = results.get((policy, phase))
            if r:
                lines.append(
                    f"| {phase} | {policy} | {r['p50']:.0f} | {r['p99']:.0f} | {r['light_p99']:.0f} | {r['heavy_p99']:.0f}"
                    f" | {r['throughput']:.1f} | {r['misses']} |"
                )
    if {"default", "weighted_least_request", "p2c_inflight"} <= set(policies) and phases:
        lines += [
            "",
            "| phase | p99 vs WLR (<= 0.85) | p99 vs P2C (<= 0.75) | p50 vs WLR (<= 1.1) | throughput vs WLR |",
            "|---|---:|---:|---:|---:|",
        ]
        for phase in phases:
            m, w, p = (results[(x, phase)] for x in ("default", "weighted_least_request", "p2c_inflight"))
            lines.append(
                f"| {phase} | {m['p99'] / w['p99']:.2f} | {m['p99'] / p['p99']:.2f} | {m['p50'] / w['p50']:.2f}"
                f" | {m['throughput'] / w['throughput']:.2f} |"
            )
    lines += ["", "| policy | decision p50 (100 endpoints) | p99 |", "|---|---:|---:|"]
    lines += [f"| {k} | {v[0]:.1f} us | {v[1]:.1f} us |" for k, v in cost.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
