#!/usr/bin/env python3
"""make bench-des: the routing policies at 1,000 backends and 3 gateway replicas, simulated.

A discrete-event simulation that runs meshgate's own scheduler and probe code (gateway/routing)
on a simulated clock. Backends as in bench-balance (capacity 1/1/2/4 drawn at random, 4 slots,
background load: 10% of backends carry 60% background load, and 5% toggle it every 2 s), 80%
cost-1 and 20% cost-8 requests, Poisson arrivals at 70% and 90% of total capacity, each request
to one of 3 replicas at random (as behind an L4 load balancer). Each replica sees only its own
in-flight calls, plus what every replica scrapes once per second from the same metrics page per
backend, parsed by probe.parse_page: DCGM's GPU utilisation averaged over the window, and
Triton's pending count and request / compute-time counters (counted when a request completes,
as Triton does).

What this shows: replicas deciding by max score from one stale snapshot herd onto the backends
that looked idle at the last scrape; sampling k candidates, and the herd factor (what we sent
since the scrape, the others sent too), counter it. Other replicas' calls fill slots without
slowing the GPU: the probe tells that occupancy from background load by Triton's counters.
Prints p50/p99 latency per policy, where heavy requests went, and the decision time per request
at this size. `--explain` prints the placement per capacity and background.
"""

from __future__ import annotations

import argparse
import collections
import heapq
import random
import sys
import time
from collections import deque
from typing import Any, NamedTuple

from discovery import Endpoint, ModelRef
from gateway.endpoints import EndpointState
from gateway.load import LoadSample, herd_factors, load_metric_names, observe, parse_page
from gateway.routing import scheduler as scheduler_mod
from gateway.routing.plugins import RequestInfo
from gateway.routing.scheduler import ProfileSpec, Scheduler

UNIT_S = 0.4  # one unit on a capacity-1 GPU (slower than bench-balance: fewer events per second)


class Clock:
    now = 0.0

    @classmethod
    def monotonic(cls) -> float:
        return cls.now


class Backend:
    def __init__(self, i: int, capacity: float, slots: int) -> None:
        self.i, self.capacity, self.slots = i, capacity, slots
        self.background = 0.0
        self.busy = 0
        self.queue: deque[tuple[float, int, Any]] = deque()
        self.area, self.since, self.mark = 0.0, 0.0, (0.0, 0.0)
        # Triton's counters, per model: requests done, and their compute microseconds (both
        # counted when a request completes, as Triton does).
        self.done = {"light": 0, "heavy": 0}
        self.compute_us = {"light": 0.0, "heavy": 0.0}
        self.waiting = {"light": 0, "heavy": 0}

    def account(self, now: float) -> None:
        self.area += (self.background + (1 - self.background) * self.busy / self.slots) * (now - self.since)
        self.since = now

    def page(self, now: float) -> str:
        """The metrics page a DCGM exporter and a Triton on this GPU would serve together."""
        self.account(now)
        area, at = self.mark
        util = (self.area - area) / (now - at) if now > at else 0.0
        self.mark = (self.area, now)
        lines = [f'DCGM_FI_DEV_GPU_UTIL{{gpu="0"}} {100 * util:.1f}']
        for m in ("light", "heavy"):
            lines.append(f'nv_inference_pending_request_count{{model="{m}",version="1"}} {self.waiting[m]}')
            lines.append(f'nv_inference_request_success{{model="{m}",version="1"}} {self.done[m]}')
            lines.append(
                f'nv_inference_compute_infer_duration_us{{model="{m}",version="1"}} {self.compute_us[m]:.0f}'
            )
        return "\n".join(lines) + "\n"


class World(NamedTuple):
    """The fleet and what happens to it during a run."""

    capacities: tuple[float, ...]
    slots: int = 4
    unit_s: float = UNIT_S  # one unit of work on an idle capacity-1 GPU
    loaded: tuple[int, ...] = ()  # backends carrying a 60% background from the start
    togglers: tuple[int, ...] = ()  # backends whose background flips 0 <-> 60% every 2 s
    jump: tuple[float, int, float] | None = None  # (at s, backend, background): a jump that stays

    @classmethod
    def fleet(cls, n: int, seed: int) -> World:
        """bench-des's 1,000-backend world: capacities 1/1/2/4 at random, 10% carry 60% background
        load and half of those toggle it every 2 s."""
        rng = random.Random(seed)
        caps = tuple(rng.choice([1.0, 1.0, 2.0, 4.0]) for _ in range(n))
        loaded = tuple(rng.sample(range(n), n // 10))
        return cls(caps, loaded=loaded, togglers=loaded[: n // 20])

    def rate(self, load: float) -> float:
        """Requests per second at `load` of the total capacity (mean request: 2.4 units)."""
        return load * sum(c * self.slots for c in self.capacities) / self.unit_s / MEAN_UNITS


MEAN_UNITS = 0.8 * 1.0 + 0.2 * 8.0


class EnvoyWlr:
    """Envoy's weighted least request as it implements it (EdfLoadBalancerBase): an earliest
    deadline first schedule over the hosts; a pick pops the earliest deadline and puts that host
    back with deadline = the popped one + 1 / w, w = capacity / (active + 1) read at that moment.
    Other hosts' weights are only re-read when they are picked (not greedy argmax)."""

    def __init__(self, states: list[EndpointState]) -> None:
        self.states = states
        self.heap = [(1.0 / s.endpoint.capacity, i, i) for i, s in enumerate(states)]
        heapq.heapify(self.heap)
        self.seq = len(states)

    def pick(self) -> EndpointState:
        deadline, _, i = heapq.heappop(self.heap)
        s = self.states[i]
        self.seq += 1
        w = s.endpoint.capacity / (s.calls.in_flight + 1.0)
        heapq.heappush(self.heap, (deadline + 1.0 / w, self.seq, i))
        return s


def simulate(
    policy: str,
    world: World,
    replicas: int,
    load: float,
    seconds: float,
    seed: int,
    explain: bool = False,
    scrape_s: float = 1.0,
) -> dict[str, float]:
    """One run. Common random numbers: arrivals, sizes and replicas come from `seed` alone, so
    every policy sees the same requests. Latencies of requests that arrived after the jump are
    also reported alone (jump_*)."""
    rng = random.Random(seed)
    unit_s = world.unit_s
    backends = [Backend(i, c, world.slots) for i, c in enumerate(world.capacities)]
    n = len(backends)
    for i in world.loaded:
        backends[i].background = 0.6
    rate = world.rate(load)
    scheduler_mod.time = Clock  # type: ignore[assignment]  # the scheduler reads the simulated clock
    Clock.now = 0.0
    profiles = {
        "predicted_max": ProfileSpec(("ready", "not_ejected"), {"predicted": 1.0}, "max_score"),
        "predicted_p2c": ProfileSpec(("ready", "not_ejected"), {"predicted": 1.0}, "p2c"),
        "predicted_best_of_k": ProfileSpec(("ready", "not_ejected"), {"predicted": 1.0}, "best_of_k"),
    }
    herding = policy.endswith("_no_herd")  # ablation: no herd factor (probe.herd_factors)
    policy = policy.removesuffix("_no_herd")
    views = []
    for _ in range(replicas):
        states = []
        for b in backends:
            ep = Endpoint(
                id=f"b{b.i}",
                pool="p",
                host="h",
                port=b.i + 1,
                backend="triton",
                models=(ModelRef("light"), ModelRef("heavy")),
                capacity=b.capacity,
                slots=b.slots,
            )
            s = EndpointState(ep, adapter=None)  # type: ignore[arg-type]
            s.health.live, s.health.ready_models = True, frozenset(ep.models)
            s.calls.busy_since, s.calls.faded_at, s.scrape.busy_mark = 0.0, 0.0, (0.0, 0.0)
            states.append(s)
        sched = Scheduler(profiles, default_profile="round_robin" if policy == "wlr_edf" else policy)
        for profile in sched.profiles.values():  # reproducible: each replica's picker seeded
            profile.picker._rng = random.Random(seed * 100 + len(views))
        views.append((sched, states, EnvoyWlr(states) if policy == "wlr_edf" else None))
    events: list[tuple[float, int, str, Any]] = []
    seq = 0

    def push(t: float, kind: str, data: Any) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, data))

    push(rng.expovariate(rate), "arrive", None)
    for k in range(1, int(seconds / scrape_s) + 1):
        push(k * scrape_s, "scrape", None)
    if world.togglers:
        for k in range(1, int(seconds / 2) + 1):
            push(2.0 * k, "toggle", None)
    jump_at = world.jump[0] if world.jump else float("inf")
    if world.jump:
        push(jump_at, "jump", None)
    specs = load_metric_names()["any"] + load_metric_names()["triton"]
    samples: list[LoadSample | None] = [None] * n
    records: list[tuple[str, float, float, float, float, float]] = []
    decide_ns: list[int] = []

    def start(b: Backend, now: float, job: Any) -> None:
        b.account(now)
        b.busy += 1
        job["started"] = now
        push(now + job["units"] * unit_s / (b.capacity * (1 - b.background)), "done", (b, job))

    while events:
        now, _, kind, data = heapq.heappop(events)
        Clock.now = now
        if kind == "arrive":
            if now < seconds:
                push(now + rng.expovariate(rate), "arrive", None)
            model, units = ("light", 1.0) if rng.random() < 0.8 else ("heavy", 8.0)
            r = rng.randrange(replicas)
            sched, states, edf = views[r]
            req = RequestInfo(model, "", units, "", 10.0)
            t0 = time.perf_counter_ns()
            state = edf.pick() if edf is not None else sched.pick(states, req)
            decide_ns.append(time.perf_counter_ns() - t0)
            assert state is not None
            predicted = sched.started(state, req)
            b = backends[int(state.endpoint.id[1:])]
            job = {
                "arrived": now,
                "units": units,
                "replica": r,
                "state": state,
                "req": req,
                "pred": predicted,
                "model": model,
            }
            if b.busy < b.slots:
                start(b, now, job)
            else:
                b.waiting[model] += 1
                b.queue.append((now, seq, job))
        elif kind == "done":
            b, job = data
            b.account(now)
            b.busy -= 1
            b.done[job["model"]] += 1
            b.compute_us[job["model"]] += (now - job["started"]) * 1e6
            if b.queue:
                _, _, nxt = b.queue.popleft()
                b.waiting[nxt["model"]] -= 1
                start(b, now, nxt)
            arrived = job["arrived"]
            records.append(
                (job["model"], b.capacity, b.background, job["started"] - arrived, now - arrived, arrived)
            )
            sched = views[job["replica"]][0]
            sched.finished(job["state"], job["req"], job["pred"], now - arrived, True, False)
        elif kind == "scrape":
            # Every replica scrapes the same pages at about the same time: one parse, shared.
            for b in backends:
                samples[b.i] = parse_page(b.page(now), specs, now, samples[b.i])
            for sched, states, _ in views:
                for s, sample in zip(states, samples, strict=True):
                    if sample is not None:
                        observe(s, sample)
                        sched.scraped(s)
                if not herding:
                    herd_factors(states)
        elif kind == "toggle":
            for i in world.togglers:
                backends[i].account(now)
                backends[i].background = 0.0 if backends[i].background else 0.6
        elif kind == "jump":
            assert world.jump is not None
            backends[world.jump[1]].account(now)
            backends[world.jump[1]].background = world.jump[2]
    decide_ns.sort()
    if explain:
        print(placement(records), flush=True)
    return summarise(records, decide_ns, jump_at)


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))] * 1000 if values else float("nan")


def summarise(
    records: list[tuple[str, float, float, float, float, float]], decide_ns: list[int], jump_at: float
) -> dict[str, float]:
    latencies = sorted(r[4] for r in records)
    heavy = sorted(r[4] for r in records if r[0] == "heavy")
    light = sorted(r[4] for r in records if r[0] == "light")
    after = sorted(r[4] for r in records if r[5] >= jump_at)
    return {
        "p50": _pct(latencies, 0.5),
        "p99": _pct(latencies, 0.99),
        "requests": len(latencies),
        "decide_p50_us": decide_ns[len(decide_ns) // 2] / 1000,
        "decide_p99_us": decide_ns[int(len(decide_ns) * 0.99)] / 1000,
        "light_p99": _pct(light, 0.99),
        "heavy_p99": _pct(heavy, 0.99),
        "heavy_on_slowest": sum(1 for r in records if r[0] == "heavy" and r[1] == 1.0) / len(heavy),
        "jump_p50": _pct(after, 0.5),
        "jump_p99": _pct(after, 0.99),
        "jump_heavy_on_jumped": (
            sum(1 for r in records if r[0] == "heavy" and r[5] >= jump_at and r[2] > 0)
            / max(1, sum(1 for r in records if r[0] == "heavy" and r[5] >= jump_at))
        ),
    }


def placement(records: list[tuple[str, float, float, float, float, float]]) -> str:
    """Where each kind of request went (capacity, background) and how it fared there."""
    out = ["    model  capacity  background  requests  waited  wait p99 ms  latency p50 ms  p99 ms"]
    for model in ("light", "heavy"):
        groups = collections.defaultdict(list)
        for r in records:
            if r[0] == model:
                groups[(r[1], r[2])].append(r)
        for (cap, bg), rs in sorted(groups.items()):
            waits = sorted(r[3] for r in rs)
            lat = sorted(r[4] for r in rs)
            out.append(
                f"    {model:5}  {cap:8g}  {bg:10.0%}  {len(rs):8}  {sum(w > 0 for w in waits) / len(rs):6.0%}"
                f"  {waits[int(len(waits) * 0.99)] * 1000:11.0f}  {lat[len(lat) // 2] * 1000:14.0f}"
                f"  {lat[int(len(lat) * 0.99)] * 1000:6.0f}"
            )
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", type=int, default=1000)
    ap.add_argument("--replicas", default="3", help="gateway replicas; a comma list runs each")
    ap.add_argument("--seconds", type=float, default=6.0, help="simulated seconds per run")
    ap.add_argument(
        "--policies",
        default="p2c_inflight,weighted_least_request,predicted_max,predicted_p2c,"
        "predicted_best_of_k_no_herd,predicted_best_of_k",
        help="comma list; predicted_* = the `predicted` scorer with that picker; a _no_herd suffix "
        "drops the herd factor (what replicas sent since the scrape)",
    )
    ap.add_argument("--explain", action="store_true", help="print where each kind of request went")
    ap.add_argument(
        "--scrape-s", type=float, default=1.0, help="seconds between scrapes (the probe's interval_s)"
    )
    args = ap.parse_args()
    lines = [
        f"{args.backends} backends, {args.seconds:g} simulated s per run, a scrape every {args.scrape_s:g} s",
        "",
        "| replicas | load | policy | p50 ms | p99 ms | light p99 | heavy p99 | heavy on cap 1 | requests"
        " | decision p50 | decision p99 |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    runs = [
        (int(replicas), load, policy)
        for replicas in args.replicas.split(",")
        for load in (0.7, 0.9)
        for policy in args.policies.split(",")
    ]
    for replicas, load, policy in runs:
        t0 = time.monotonic()
        if args.explain:
            print(f"  {replicas} replicas {load:.0%} {policy}")
        r = simulate(
            policy,
            World.fleet(args.backends, 7),
            replicas,
            load,
            args.seconds,
            seed=7,
            explain=args.explain,
            scrape_s=args.scrape_s,
        )
        print(
            f"  {replicas:2} x {load:.0%} {policy:28} p50 {r['p50']:7.0f} ms  p99 {r['p99']:7.0f} ms"
            f"  ({time.monotonic() - t0:.0f} s)",
            flush=True,
        )
        lines.append(
            f"| {replicas} | {load:.0%} | {policy} | {r['p50']:.0f} | {r['p99']:.0f} | {r['light_p99']:.0f} |"
            f" {r['heavy_p99']:.0f} | {r['heavy_on_slowest']:.0%} | {r['requests']} |"
            f" {r['decide_p50_us']:.0f} us | {r['decide_p99_us']:.0f} us |"
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
