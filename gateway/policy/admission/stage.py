"""AdmissionStage: fair admission to saturated pools (admission.pools), before routing.

A pool's capacity is the slots of its usable endpoints (live, not drained, not ejected) times
admission.per_slot. Below it, a call is admitted at once (one dict lookup and a comparison).
At it, the call waits in the pool's queue (queue.py): classes in priority order, tenants in
weighted fair share, so one tenant flooding a pool cannot starve the others. A call is refused
at once, never reaching a backend, when:
    its class does not wait (sheddable: max_wait_s 0),
    its expected wait is past its deadline (queue.py's expected_wait: the calls ahead in fair
        share's order, or its own backlog at its share when that is longer: a flooding tenant
        is refused at once rather than left to wait until its deadline passes),
    the queue is full and no lower-class call can be shed to make room for it.
A lower-class call waiting is shed for a higher-class arrival when the queue is full. All of
these are RESOURCE_EXHAUSTED naming the pool, with RetryInfo; counted in
meshgate_admission_refusals_total{pool,priority,reason}. Queue depth, calls in flight and
capacity per pool are exported (meshgate_admission_*), the autoscaling signal.

A call's class: the first admission.class_rules entry that matches its principal, else
admission.default_class; a request may ask for a lower class (metadata `x-meshgate-priority`),
never a higher one. Cache hits need no permit. The queues live as long as the process: a config
reload changes the rules, and calls already waiting keep their place.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import grpc
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ...endpoints import EndpointState
from ...errors import GatewayError
from ...observe.hist import Histogram, histogram_family, observe
from ...pipeline.context import Principal
from ...pipeline.stages import Call, Outcome
from .config import AdmissionConfig
from .queue import PoolQueue, Waiter

_ADMITTED_KINDS = frozenset({"infer", "generate", "embed"})
_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


class Permit(NamedTuple):
    queue: PoolQueue
    since: float


class AdmissionStage:
    name = "admission"

    def __init__(
        self,
        pools_for: Callable[[str, str], set[str]],
        pool_states: Callable[[str], list[EndpointState]],
        registry: CollectorRegistry,
    ) -> None:
        self._pools_for = pools_for
        self._pool_states = pool_states
        self._queues: dict[str, PoolQueue] = {}
        self._waited: dict[tuple[str], Histogram] = {}  # pool -> seconds calls waited for a permit
        self._capacity: dict[str, tuple[float, float]] = {}  # pool -> (capacity, computed at)
        self._pressure: dict[str, tuple[float, float]] = {}  # pool -> (pressure, computed at)
        self._refusals = Counter(
            "meshgate_admission_refusals_total",
            "Calls refused by fair admission without reaching a backend, by pool, priority class and"
            " reason (shed: its class does not wait; deadline: the expected wait is past its deadline;"
            " full: the queue is full; displaced: shed for a higher class; timeout: waited its class's"
            " max_wait_s).",
            ["pool", "priority", "reason"],
            registry=registry,
        )
        registry.register(_QueueCollector(self._queues, self._waited))
        self.configure(AdmissionConfig())

    def configure(self, config: AdmissionConfig) -> None:
        """At start and on a config reload (waiting calls keep their place and class)."""
        self._config = config
        self._pools = re.compile("|".join(fnmatch.translate(p) for p in config.pools) or "(?!)")
        self._rank = {c.name: i for i, c in enumerate(config.classes)}
        self._class_of: dict[Principal, int] = {}
        self._capacity.clear()
        for queue in self._queues.values():
            queue.idle_credit = config.idle_credit

    @property
    def enabled(self) -> bool:
        return bool(self._config.pools)

    async def admit(self, call: Call) -> Permit | None:
        if call.kind not in _ADMITTED_KINDS or call.hit is not None:
            return None
        pools = self._pools_for(call.model, call.version)
        if len(pools) != 1:
            return None  # unknown model (the attempt loop says so), or spread over several pools
        pool = next(iter(pools))
        if not self._pools.fullmatch(pool):
            return None
        queue = self._queues.get(pool)
        if queue is None:
            queue = self._queues[pool] = PoolQueue(
                len(self._config.classes), lambda: self._cap(pool), self._weight, self._config.idle_credit
            )
        if queue.try_admit():
            observe(self._waited, (pool,), 0.0)
            return Permit(queue, time.monotonic())
        if queue.capacity() <= 0:
            return None  # nothing usable: the attempt loop answers UNAVAILABLE at once
        start = time.monotonic()
        permit = await self._wait(call, pool, queue)
        observe(self._waited, (pool,), permit.since - start)
        return permit

    async def _wait(self, call: Call, pool: str, queue: PoolQueue) -> Permit:
        ctx = call.ctx
        rank = self._rank_of(ctx.principal, ctx.priority)
        cls = self._config.classes[rank]
        start = time.monotonic()
        remaining = ctx.deadline - start
        tenant = self._tenant(ctx.principal)
        expected = queue.expected_wait(rank, tenant)
        if cls.max_wait_s == 0:
            raise self._refuse(pool, cls.name, "shed", f"{cls.name} calls are shed", queue.hold_s, queue)
        if expected > remaining:
            raise self._refuse(
                pool,
                cls.name,
                "deadline",
                f"this call would wait ~{expected:.2f} s, past its deadline ({max(remaining, 0):.2f} s left)",
                expected,
                queue,
            )
        if queue.waiting >= self._config.max_queued:
            self._make_room(pool, queue, rank, expected)
        waiter = Waiter(rank, tenant, ctx.deadline)
        queue.enqueue(waiter)
        try:
            # Give up a little before the caller does, so that it hears why.
            patience = min(remaining - 0.01, cls.max_wait_s)
            granted = await asyncio.wait_for(asyncio.shield(waiter.future), max(patience, 0.0))
        except TimeoutError:
            queue.remove(waiter)
            if waiter.future.done() and not waiter.future.exception() and waiter.future.result():
                return Permit(queue, time.monotonic())  # granted as time ran out
            if start + cls.max_wait_s < ctx.deadline:
                raise self._refuse(
                    pool,
                    cls.name,
                    "timeout",
                    f"waited {cls.max_wait_s:g} s, the most for {cls.name} calls",
                    1.0,
                    queue,
                ) from None
            raise GatewayError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"deadline exceeded while waiting for capacity in pool {pool}",
            ) from None
        except asyncio.CancelledError:
            queue.remove(waiter)
            future = waiter.future
            if future.done() and not future.cancelled() and not future.exception() and future.result():
                queue.release(0.0)  # granted just as the caller left: pass it on
            raise
        if not granted:
            raise GatewayError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"pool {pool}: capacity came too late for this call's deadline ({ctx.deadline - time.monotonic():.2f} s"
                f" left, a call takes ~{queue.hold_s:.2f} s); not sent",
            )
        return Permit(queue, time.monotonic())

    def _make_room(self, pool: str, queue: PoolQueue, rank: int, expected: float) -> None:
        """The queue is full: shed the newest waiter of a lower class than `rank`, or refuse."""
        cls = self._config.classes[rank]
        victim = queue.lowest_below(rank)
        if victim is None:
            raise self._refuse(pool, cls.name, "full", f"{queue.waiting} calls wait already", expected, queue)
        queue.remove(victim)
        victim_class = self._config.classes[victim.rank].name
        self._refusals.labels(pool, victim_class, "displaced").inc()
        victim.future.set_exception(
            GatewayError(
                _EXHAUSTED,
                f"pool {pool} is at capacity: this {victim_class} call was shed for a higher-priority one",
                retry_after=queue.hold_s,
            )
        )

    def settle(self, call: Call, permit: Permit | None, outcome: Outcome) -> None:
        if permit is not None:
            permit.queue.release(time.monotonic() - permit.since)

    # -- helpers ---------------------------------------------------------------------------------
    def _refuse(
        self, pool: str, cls: str, reason: str, why: str, retry_after: float, queue: PoolQueue
    ) -> GatewayError:
        self._refusals.labels(pool, cls, reason).inc()
        return GatewayError(
            _EXHAUSTED,
            f"pool {pool} is at capacity ({queue.in_flight} calls in flight, {queue.waiting} waiting): {why}",
            retry_after=max(retry_after, 0.001),
        )

    def _cap(self, pool: str) -> float:
        now = time.monotonic()
        cached = self._capacity.get(pool)
        if cached is not None and now - cached[1] < 0.1:
            return cached[0]
        slots = sum(
            s.endpoint.slots
            for s in self._pool_states(pool)
            if s.health.live and not s.drained and s.ejection.ejected_until <= now
        )
        capacity = slots * self._config.per_slot
        self._capacity[pool] = (capacity, now)
        return capacity

    def queue_of(self, pool: str) -> PoolQueue | None:
        """The pool's admission queue; None before admission saw a call for it."""
        return self._queues.get(pool)

    def pressure(self, model: str, version: str) -> float:
        """How loaded the pool serving `model` is: (calls running there + calls queued at its
        servers by other callers + calls waiting here) per usable endpoint slot; 0 when the model
        is unknown or spread over several pools. For adaptive rate limits; cached 100 ms."""
        pools = self._pools_for(model, version)
        if len(pools) != 1:
            return 0.0
        pool = next(iter(pools))
        now = time.monotonic()
        cached = self._pressure.get(pool)
        if cached is not None and now - cached[1] < 0.1:
            return cached[0]
        slots, busy = 0, 0.0
        for s in self._pool_states(pool):
            if not s.health.live or s.drained:
                continue
            slots += s.endpoint.slots
            busy += s.calls.in_flight
            load = s.scrape.load
            if load is not None and load.queue is not None and now - load.at < 5.0:
                busy += max(0.0, load.queue - s.scrape.queued_at_scrape)  # others' waiting calls
        queue = self._queues.get(pool)
        if queue is not None:
            busy += queue.waiting
        value = busy / slots if slots else 0.0
        self._pressure[pool] = (value, now)
        return value

    def _weight(self, tenant: str) -> float:
        return self._config.weights.get(tenant, 1.0)

    def _tenant(self, p: Principal) -> str:
        value: str = getattr(p, self._config.tenant)
        return value

    def _rank_of(self, p: Principal, asked: str) -> int:
        rank = self._class_of.get(p)
        if rank is None:
            name = self._config.default_class
            for rule in self._config.class_rules:
                if rule.who.matches(p):
                    name = rule.priority
                    break
            rank = self._class_of[p] = self._rank[name]
        asked_rank = self._rank.get(asked, -1)
        return asked_rank if asked_rank > rank else rank  # a request may only lower its class


class _QueueCollector(Collector):
    def __init__(self, queues: dict[str, PoolQueue], waited: dict[tuple[str], Histogram]) -> None:
        self._queues = queues
        self._waited = waited

    def collect(self) -> Iterator[Any]:
        depth = GaugeMetricFamily(
            "meshgate_admission_queue_depth",
            "Calls waiting in the gateway for capacity, by pool.",
            labels=["pool"],
        )
        in_flight = GaugeMetricFamily(
            "meshgate_admission_in_flight", "Calls holding an admission permit, by pool.", labels=["pool"]
        )
        capacity = GaugeMetricFamily(
            "meshgate_admission_capacity",
            "Calls a pool takes before calls queue: usable endpoint slots x admission.per_slot.",
            labels=["pool"],
        )
        for pool, q in sorted(self._queues.items()):
            depth.add_metric([pool], q.waiting)
            in_flight.add_metric([pool], q.in_flight)
            capacity.add_metric([pool], q.capacity())
        yield depth
        yield in_flight
        yield capacity
        yield histogram_family(
            "meshgate_admission_wait_seconds",
            "Seconds admitted calls waited in the gateway's admission queue for a permit (0 when"
            " the pool had room), by pool.",
            ["pool"],
            self._waited,
        )
