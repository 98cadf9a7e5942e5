#!/usr/bin/env python3
"""Simulated GPU model servers for bench-balance: real KServe v2 gRPC servers on loopback.

Each backend has a capacity c (relative speed), k batch slots and a background utilisation x
(another tenant on the same GPU). A request for a model of cost u (units) waits for a free slot,
then takes u * UNIT_S / (c * (1 - x)) seconds. Each backend serves a metrics page with
  DCGM_FI_DEV_GPU_UTIL   = 100 * (x + (1 - x) * busy_slots / k), averaged since the previous
                           scrape, as DCGM averages over its collection interval
  (DCGM exporter format)
  nv_inference_pending_request_count{model}  = requests waiting for a slot (Triton format)
  nv_inference_request_success{model}, nv_inference_compute_infer_duration_us{model}
                         = Triton's counters: answers, and their microseconds in a slot
POST /control {"backend": i, "background": x} changes x while the bench runs.

    python -m bench.sim_gpu '{"unit_s": 0.04, "backends": [{"capacity": 1, "slots": 4}, ...]}'
prints one JSON line: [{"grpc": port, "metrics": port}, ...] and serves until killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import grpc
from aiohttp import web
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

COSTS = {"light": 1.0, "heavy": 8.0}


class SimGPU(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, capacity: float, slots: int, unit_s: float) -> None:
        self.capacity = capacity
        self.slots = slots
        self.unit_s = unit_s
        self._background = 0.0
        self.busy = 0
        self._area, self._since = 0.0, time.monotonic()
        self._mark = (0.0, self._since)
        self.waiting: dict[str, int] = dict.fromkeys(COSTS, 0)
        # Triton's counters, counted when a request completes: answers and compute microseconds.
        self.done: dict[str, int] = dict.fromkeys(COSTS, 0)
        self.compute_us: dict[str, float] = dict.fromkeys(COSTS, 0.0)
        self._slots = asyncio.Semaphore(slots)

    def _account(self) -> None:
        now = time.monotonic()
        util = self._background + (1 - self._background) * self.busy / self.slots
        self._area += util * (now - self._since)
        self._since = now

    @property
    def background(self) -> float:
        return self._background

    @background.setter
    def background(self, x: float) -> None:
        self._account()
        self._background = x

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        model = request.model_name
        cost = COSTS.get(model)
        if cost is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{model}' is not found"
            )
        shape = request.inputs[0].shape if request.inputs else []
        units = cost * (shape[0] if shape else 1)
        self.waiting[model] += 1
        try:
            await self._slots.acquire()
        finally:  # a call cancelled while it waits for a slot leaves the queue too
            self.waiting[model] -= 1
        try:
            self._account()
            self.busy += 1
            started = time.monotonic()
            try:
                # x is read when the work starts: a background jump slows what starts after it.
                await asyncio.sleep(units * self.unit_s / (self.capacity * (1.0 - self._background)))
            finally:
                self._account()
                self.busy -= 1
                self.done[model] += 1
                self.compute_us[model] += (time.monotonic() - started) * 1e6
        finally:
            self._slots.release()
        return pb.ModelInferResponse(model_name=model, id=request.id)

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=request.name in COSTS)

    def metrics(self) -> str:
        self._account()
        area, at = self._mark
        now = time.monotonic()
        util = (self._area - area) / (now - at) if now > at else 0.0
        self._mark = (self._area, now)
        lines = [f'DCGM_FI_DEV_GPU_UTIL{{gpu="0",modelName="SimGPU"}} {100 * util:.1f}']
        for m, n in self.waiting.items():
            lines.append(f'nv_inference_pending_request_count{{model="{m}",version="1"}} {n}')
            lines.append(f'nv_inference_request_success{{model="{m}",version="1"}} {self.done[m]}')
            lines.append(
                f'nv_inference_compute_infer_duration_us{{model="{m}",version="1"}} {self.compute_us[m]:.0f}'
            )
        return "\n".join(lines) + "\n"


async def main(spec: dict[str, Any]) -> None:
    sims: list[SimGPU] = []
    ports: list[dict[str, int]] = []
    servers = []
    for b in spec["backends"]:
        sim = SimGPU(float(b["capacity"]), int(b["slots"]), float(spec.get("unit_s", 0.04)))
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(sim, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        app = web.Application()
        app.router.add_get("/metrics", lambda r, s=sim: web.Response(text=s.metrics()))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None and site._server.sockets
        sims.append(sim)
        ports.append({"grpc": port, "metrics": site._server.sockets[0].getsockname()[1]})

    async def control(request: web.Request) -> web.Response:
        body = await request.json()
        sims[int(body["backend"])].background = min(0.95, max(0.0, float(body["background"])))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/control", control)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None and site._server.sockets
    control_port = site._server.sockets[0].getsockname()[1]
    print(json.dumps({"backends": ports, "control": control_port}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(json.loads(sys.argv[1])))
