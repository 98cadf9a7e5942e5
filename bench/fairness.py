#!/usr/bin/env python3
"""make bench-fairness: one saturated GPU pool, several tenants, with and without fair admission.

The pool: simulated GPU servers (bench/sim_gpu.py: real KServe v2 gRPC on loopback; 2 backends
x 2 slots, one call = 100 ms), so 40 calls/s. Tenants (API keys, one project each), open-loop
Poisson arrivals, 2 s deadline per call:

    flood      standard class, 3x its fair share (40/s)
    polite-a   standard class, its fair share (13.3/s)
    polite-b   standard class, its fair share
    batch      sheddable class, its fair share

The total offered is 2x the pool. Runs, each `--seconds` long, against the same backends:
    alone       each polite tenant by itself (its p99 without contention)
    admission   everyone, meshgate with admission.pools set (per_slot 1)
    fifo        everyone, meshgate without admission (calls go straight to the backends' queues)
Reports each tenant's goodput (answers/s), p50/p99 of its answers, refusals (RESOURCE_EXHAUSTED:
shed or queue, never reaching a backend) and deadline misses, the largest backend queue seen,
and the targets: polite p99 within 1.5x of alone; the flooder at least its fair share;
sheddable shed before standard. Writes bench/out/fairness.{md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as pb

from bench.balance import pct
from bench.overhead import ROOT, free_port, start, stop

OUT = ROOT / "bench" / "out"
UNIT_S = 0.1  # 40 calls/s for the pool: the load generator, gateway and simulator share 2 cores
SPEC = {"unit_s": UNIT_S, "backends": [{"capacity": 1, "slots": 2}, {"capacity": 1, "slots": 2}]}
CAPACITY = 4 / UNIT_S  # calls/s the pool can answer
DEADLINE_S = 2.0
FAIR = CAPACITY / 3  # three standard tenants share the pool
TENANTS = {"flood": 3 * FAIR, "polite-a": FAIR, "polite-b": FAIR, "batch": FAIR}


def keys(work: Path) -> dict[str, str]:
    from gateway.policy.auth.keys import KeyEntry, digest, locked, new_key

    out = {}
    with locked(work / "keys.yaml") as entries:
        for tenant in TENANTS:
            key_id, key = new_key()
            roles = ("batch",) if tenant == "batch" else ()
            entries[key_id] = KeyEntry(id=key_id, hash=digest(key), user=tenant, project=tenant, roles=roles)
            out[tenant] = key
    return out


def config(work: Path, port: int, backends: list[dict[str, int]], admission: bool, per_slot: float) -> Path:
    endpoints = [
        {
            "id": f"gpu{i}",
            "address": f"127.0.0.1:{b['grpc']}",
            "backend": "triton",
            "models": ["light"],
            "slots": 2,
            "metrics_url": f"http://127.0.0.1:{b['metrics']}/metrics",
        }
        for i, b in enumerate(backends)
    ]
    cfg: dict[str, Any] = {
        "log_level": "WARNING",
        "server": {"listen": f"127.0.0.1:{port}", "access_log": False},
        "metrics": {"listen": None},
        "auth": {
            "authenticators": ["api_key"],
            "api_keys": {"file": str(work / "keys.yaml")},
            "audit_log": False,
        },
        "pools": {"sim": {"endpoints": endpoints}},
    }
    if admission:
        cfg["admission"] = {
            "pools": ["sim"],
            "per_slot": per_slot,
            "tenant": "project",
            "class_rules": [{"who": {"roles": ["batch"]}, "priority": "sheddable"}],
        }
    path = work / f"gw-{'admission' if admission else 'fifo'}.json"
    path.write_text(json.dumps(cfg))
    return path


async def load(
    target: str, tenants: dict[str, float], keys: dict[str, str], seconds: float, seed: int
) -> dict[str, Any]:
    """Open-loop Poisson arrivals per tenant; per tenant: latencies of answers, refusals, misses."""
    out: dict[str, dict[str, Any]] = {t: {"lat": [], "refused": 0, "missed": 0, "errors": 0} for t in tenants}
    req = pb.ModelInferRequest(model_name="light")
    req.inputs.add(name="x", datatype="FP32", shape=[1])
    req.raw_input_contents.append(b"\0\0\0\0")
    async with grpc.aio.insecure_channel(target) as ch:
        call = ch.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )

        async def one(tenant: str) -> None:
            t0 = time.perf_counter()
            try:
                await call(req, timeout=DEADLINE_S, metadata=(("authorization", f"Bearer {keys[tenant]}"),))
            except grpc.aio.AioRpcError as err:
                kind = {
                    grpc.StatusCode.RESOURCE_EXHAUSTED: "refused",
                    grpc.StatusCode.DEADLINE_EXCEEDED: "missed",
                }.get(err.code(), "errors")
                out[tenant][kind] += 1
                return
            out[tenant]["lat"].append(time.perf_counter() - t0)

        async def arrivals(tenant: str, rate: float, rng: random.Random) -> None:
            tasks = []
            stop_at = time.monotonic() + seconds
            while (now := time.monotonic()) < stop_at:
                tasks.append(asyncio.create_task(one(tenant)))
                await asyncio.sleep(max(0.0, rng.expovariate(rate) - (time.monotonic() - now)))
            await asyncio.gather(*tasks)

        await asyncio.gather(
            *(arrivals(t, rate, random.Random(seed + i)) for i, (t, rate) in enumerate(tenants.items()))
        )
    return {
        t: {
            "goodput": len(r["lat"]) / seconds,
            "p50_ms": pct(r["lat"], 0.5) * 1000,
            "p99_ms": pct(r["lat"], 0.99) * 1000,
            "refused": r["refused"],
            "missed": r["missed"],
            "errors": r["errors"],
        }
        for t, r in out.items()
    }


async def watch_queues(metrics_ports: list[int], stop_at: float) -> float:
    """The largest backend queue (nv_inference_pending_request_count) seen, polled every 250 ms."""
    worst = 0.0
    pending = re.compile(r"^nv_inference_pending_request_count\{[^}]*\} (\S+)$", re.M)
    while time.monotonic() < stop_at:
        for port in metrics_ports:
            text = await asyncio.to_thread(
                lambda p=port: (
                    urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics", timeout=1).read().decode()
                )
            )
            worst = max([worst, *(float(v) for v in pending.findall(text))])
        await asyncio.sleep(0.25)
    return worst


async def measured(
    target: str, tenants: dict[str, float], keys: dict[str, str], seconds: float, ports: list[int]
) -> dict[str, Any]:
    stats, worst = await asyncio.gather(
        load(target, tenants, keys, seconds, 7), watch_queues(ports, time.monotonic() + seconds)
    )
    return {"tenants": stats, "max_backend_queue": worst}


def report(alone: dict[str, Any], runs: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"pool: {CAPACITY:.0f} calls/s; offered {sum(TENANTS.values()):.0f}/s; fair share {FAIR:.1f}/s; deadline {DEADLINE_S:g} s",
        "",
        "| run | tenant | offered/s | goodput/s | p50 ms | p99 ms | p99 vs alone | refused | deadline missed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run, r in runs.items():
        for t, s in r["tenants"].items():
            base = alone.get(t)
            vs = f"{s['p99_ms'] / base['p99_ms']:.2f}" if base else ""
            lines.append(
                f"| {run} | {t} | {TENANTS[t]:.1f} | {s['goodput']:.1f} | {s['p50_ms']:.0f} | {s['p99_ms']:.0f} | {vs} |"
                f" {s['refused']} | {s['missed']} |"
            )
    for t, s in alone.items():
        lines.append(
            f"| alone | {t} | {TENANTS[t]:.1f} | {s['goodput']:.1f} | {s['p50_ms']:.0f} | {s['p99_ms']:.0f} | 1.00 | {s['refused']} | {s['missed']} |"
        )
    lines += ["", "| run | largest backend queue seen |", "|---|---:|"]
    lines += [f"| {run} | {r['max_backend_queue']:.0f} |" for run, r in runs.items()]
    adm = runs["admission"]["tenants"]
    polite = max(adm[t]["p99_ms"] / alone[t]["p99_ms"] for t in ("polite-a", "polite-b"))
    lines += [
        "",
        "| target (admission run) | measured | met |",
        "|---|---:|---|",
        f"| polite p99 within 1.5x of alone | {polite:.2f}x | {'yes' if polite <= 1.5 else 'no'} |",
        f"| flooder gets at least its fair share ({FAIR:.1f}/s) | {adm['flood']['goodput']:.1f}/s |"
        f" {'yes' if adm['flood']['goodput'] >= FAIR * 0.95 else 'no'} |",
        f"| sheddable shed before standard | batch refused {adm['batch']['refused']}, standard refused"
        f" {sum(adm[t]['refused'] for t in ('flood', 'polite-a', 'polite-b'))} |"
        f" {'yes' if adm['batch']['goodput'] <= min(adm[t]['goodput'] for t in ('polite-a', 'polite-b')) else 'no'} |",
    ]
    return "\n".join(lines)


def plot(runs: dict[str, dict[str, Any]], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "(no plot: matplotlib is not installed; pip install -e '.[bench]')"
    tenants = list(TENANTS)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.38
    for k, (run, r) in enumerate(runs.items()):
        xs = [i + (k - 0.5) * width for i in range(len(tenants))]
        axes[0].bar(xs, [r["tenants"][t]["goodput"] for t in tenants], width, label=run)
        axes[1].bar(xs, [r["tenants"][t]["p99_ms"] for t in tenants], width, label=run)
    axes[0].axhline(FAIR, color="grey", linestyle="--", linewidth=1, label="fair share")
    for ax, title in zip(axes, ("goodput (answers/s)", "p99 of answers (ms)"), strict=True):
        ax.set_xticks(range(len(tenants)), tenants)
        ax.set_title(title)
        ax.legend()
    fig.suptitle("one pool at 2x overload: fair admission vs backend FIFO")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"plot: {path}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument(
        "--per-slot",
        type=float,
        default=1.5,
        help="admission.per_slot (1.5: one call waits at each server while another's answer travels"
        " back; on 2 shared cores that round trip is ~25%% of a 100 ms call)",
    )
    ap.add_argument(
        "--polite-share",
        type=float,
        default=1.0,
        help="what the polite tenants offer, as a fraction of their fair share",
    )
    args = ap.parse_args()
    for t in ("polite-a", "polite-b"):
        TENANTS[t] = FAIR * args.polite_share
    work = Path(tempfile.mkdtemp(prefix="meshgate-bench-fairness-"))
    tenant_keys = keys(work)
    sim = subprocess.Popen(
        [sys.executable, "-m", "bench.sim_gpu", json.dumps(SPEC)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        start_new_session=True,
        text=True,
    )
    runs: dict[str, dict[str, Any]] = {}
    alone: dict[str, Any] = {}
    try:
        assert sim.stdout is not None
        backends = json.loads(sim.stdout.readline())["backends"]
        metrics_ports = [b["metrics"] for b in backends]
        for admission in (True, False):
            port = free_port()
            gw = start(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "serve",
                    "--config",
                    str(config(work, port, backends, admission, args.per_slot)),
                ],
                work / f"gw-{admission}.log",
            )
            target = f"127.0.0.1:{port}"
            try:
                time.sleep(3)
                asyncio.run(load(target, {"polite-a": 10.0}, tenant_keys, 1.0, 1))  # warm-up
                if admission:
                    for t in ("polite-a", "polite-b"):
                        alone[t] = asyncio.run(
                            measured(target, {t: TENANTS[t]}, tenant_keys, args.seconds, metrics_ports)
                        )["tenants"][t]
                        print(f"  alone      {t:9} p99 {alone[t]['p99_ms']:6.0f} ms", flush=True)
                name = "admission" if admission else "fifo"
                runs[name] = asyncio.run(measured(target, TENANTS, tenant_keys, args.seconds, metrics_ports))
                for t, s in runs[name]["tenants"].items():
                    print(
                        f"  {name:10} {t:9} goodput {s['goodput']:5.1f}/s  p99 {s['p99_ms']:6.0f} ms"
                        f"  refused {s['refused']:4d}  missed {s['missed']:4d}  errors {s['errors']}",
                        flush=True,
                    )
                time.sleep(1.0)
            finally:
                stop(gw)
    finally:
        stop(sim)
    text = report(alone, runs)
    OUT.mkdir(parents=True, exist_ok=True)
    text += "\n\n" + plot(runs, OUT / "fairness.png") + "\n"
    (OUT / "fairness.md").write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
