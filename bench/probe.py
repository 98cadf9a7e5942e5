#!/usr/bin/env python3
"""make bench-probe: what the load probe costs the gateway, per endpoint and per round.

nginx serves a Triton-format metrics page (20 models: pending count, request / failure /
compute / queue counters for each, plus nv_gpu_* and nv_cpu_* lines, ~9 KB) on one port; each
simulated endpoint scrapes it under its own loopback address (127.0.x.y), so every endpoint is
its own host and keeps its own connection, as in a fleet. For 200 and 1,000 endpoints, each
endpoint declaring 2 of the 20 models, this runs 5 scrape rounds in this process and reports:
CPU per endpoint scrape, wall time per round, failed scrapes, and the event loop's lag while a
round runs (what a call served by the same loop would wait: a 1 ms timer's overshoot, p99).

Side by side in one run:
  before   the probe as it was: httpx, one client (one connection pool) for every endpoint,
           every scrape at once, the page parsed for all 20 models
  now      the probe as it is: aiohttp, 32 scrapes at once, the page parsed for the endpoint's
           declared models
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx

from bench.overhead import free_port, nginx, stop
from discovery import Endpoint, ModelRef
from gateway.endpoints import EndpointState
from gateway.load import LoadProbe
from gateway.load import probe as probe_mod

MODELS = [f"model_{i}" for i in range(20)]


def page() -> str:
    lines = []
    for m in MODELS:
        for metric, value in (
            ("nv_inference_pending_request_count", 0),
            ("nv_inference_request_success", 12345),
            ("nv_inference_request_failure", 0),
            ("nv_inference_compute_infer_duration_us", 9876543),
            ("nv_inference_queue_duration_us", 12345),
            ("nv_inference_exec_count", 12000),
        ):
            lines.append(f"# HELP {metric} x\n# TYPE {metric} counter")
            lines.append(f'{metric}{{model="{m}",version="1"}} {value}')
    for g in range(2):
        lines.append(f'nv_gpu_utilization{{gpu_uuid="GPU-{g}"}} 0.42')
        lines.append(f'nv_gpu_memory_used_bytes{{gpu_uuid="GPU-{g}"}} 1.2e10')
        lines.append(f'nv_gpu_memory_total_bytes{{gpu_uuid="GPU-{g}"}} 8.0e10')
    lines += [f'nv_cpu_utilization{{core="{c}"}} 0.1' for c in range(40)]
    return "\n".join(lines) + "\n"


class HttpxOneClientProbe(LoadProbe):
    """The probe before: one httpx client for all, every scrape at once, all models parsed."""

    def __init__(self, states: Callable[[], Iterable[EndpointState]]) -> None:
        super().__init__(states, max_concurrent=1_000_000)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout_s), limits=httpx.Limits(max_keepalive_connections=256)
        )

    async def _get(self, url: str) -> str:
        resp = await self._client.get(url)
        resp.raise_for_status()
        return resp.text

    async def aclose(self) -> None:
        await self._client.aclose()
        await super().aclose()


def all_models_parse(text: str, specs: Any, at: float, previous: Any, models: Any = None) -> Any:
    """parse_page as it was: every model's lines."""
    return ORIGINAL_PARSE(text, specs, at, previous)


ORIGINAL_PARSE = probe_mod.parse_page


async def measure(variant: str, n: int, port: int, rounds: int) -> dict[str, float]:
    states = []
    for i in range(n):
        ep = Endpoint(
            id=f"e{i}",
            pool="p",
            host="h",
            port=1,
            backend="triton",
            models=(ModelRef(MODELS[i % 20]), ModelRef(MODELS[(i + 1) % 20])),
            metrics_url=f"http://127.0.{1 + i // 250}.{1 + i % 250}:{port}/metrics",
            slots=4,
        )
        states.append(EndpointState(ep, adapter=None))  # type: ignore[arg-type]
    failed = [0]
    probe_mod.parse_page = all_models_parse if variant == "before" else ORIGINAL_PARSE
    probe = HttpxOneClientProbe(lambda: states) if variant == "before" else LoadProbe(lambda: states)
    probe._on_scrape = lambda url, ok: failed.__setitem__(0, failed[0] + (not ok))
    try:
        await probe.scrape_once()  # connections opened
        failed[0] = 0
        lags: list[float] = []
        running = True

        async def ticker() -> None:
            while running:
                t = time.perf_counter()
                await asyncio.sleep(0.001)
                lags.append((time.perf_counter() - t - 0.001) * 1000)

        tick = asyncio.create_task(ticker())
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(rounds):
            await probe.scrape_once()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        running = False
        await tick
    finally:
        await probe.aclose()
        probe_mod.parse_page = ORIGINAL_PARSE
    lags.sort()
    return {
        "cpu_us": cpu / rounds / n * 1e6,
        "round_ms": wall / rounds * 1000,
        "failed": failed[0] / rounds,
        "lag_p99_ms": lags[int(len(lags) * 0.99)] if lags else 0.0,
        "lag_max_ms": lags[-1] if lags else 0.0,
        "lag_p50_ms": statistics.median(lags) if lags else 0.0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints", default="200,1000")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="meshgate-bench-probe-"))
    work.chmod(0o755)  # nginx's worker (nobody, when started as root) reads the page
    text = page()
    (work / "metrics").write_text(text)
    port = free_port()
    server = f"""
  server {{
    listen {port};
    location = /metrics {{ root {work}; default_type text/plain; try_files /metrics =404; }}
  }}
"""
    proc = nginx(work, "metrics", server)
    time.sleep(0.5)
    try:
        httpx.get(f"http://127.0.0.1:{port}/metrics").raise_for_status()
        lines = [
            f"page: {len(text)} bytes, {len(MODELS)} models; each endpoint declares 2; {args.rounds} rounds",
            "",
            "| endpoints | probe | CPU per endpoint scrape | round | failed scrapes per round"
            " | event-loop lag p50 / p99 / max |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        for n in (int(x) for x in args.endpoints.split(",")):
            for variant in ("before", "now"):
                r = asyncio.run(measure(variant, n, port, args.rounds))
                print(
                    f"  {n:5} {variant:6} {r['cpu_us']:7.0f} us/scrape  round {r['round_ms']:6.0f} ms"
                    f"  failed {r['failed']:5.0f}  lag p99 {r['lag_p99_ms']:6.1f} ms",
                    flush=True,
                )
                lines.append(
                    f"| {n} | {variant} | {r['cpu_us']:.0f} us | {r['round_ms']:.0f} ms | {r['failed']:.0f} |"
                    f" {r['lag_p50_ms']:.1f} / {r['lag_p99_ms']:.1f} / {r['lag_max_ms']:.0f} ms |"
                )
    finally:
        stop(proc)
    table = "\n".join(lines)
    print("\n" + table)
    out = Path(__file__).resolve().parent / "out" / "probe.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    sys.exit(main())
