"""One pool's admission queue: permits up to the pool's capacity, then waiting calls served by
class (strict priority: a higher class always first) and, within a class, by weighted fair share
across tenants (start-time fair queuing: each tenant has a virtual time that grows by 1/weight
per call served; the tenant with the smallest goes next, and a tenant that was idle starts at
most `idle_credit` calls behind the class's current virtual time: a tenant below its share can
have a short burst served at once, as a scheduler favours a task that slept, but cannot bank
more, so it can never starve the others).

Event loop thread only: every method runs without an await between reading and writing.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class Waiter:
    __slots__ = ("deadline", "future", "rank", "tenant")

    def __init__(self, rank: int, tenant: str, deadline: float = float("inf")) -> None:
        self.rank = rank
        self.tenant = tenant
        self.deadline = deadline  # time.monotonic() by which the caller needs its answer
        self.future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()


class _Class:
    __slots__ = ("clock", "queues", "vtime")

    def __init__(self) -> None:
        self.queues: dict[str, deque[Waiter]] = {}  # tenant -> its waiters, oldest first
        self.vtime: dict[str, float] = {}  # tenant -> virtual time of its next call
        self.clock = 0.0  # virtual time of the last call served


class PoolQueue:
    def __init__(
        self,
        classes: int,
        capacity: Callable[[], float],
        weight: Callable[[str], float],
        idle_credit: float = 0.0,
    ) -> None:
        self._classes = [_Class() for _ in range(classes)]
        self.idle_credit = idle_credit
        self._capacity = capacity
        self._weight = weight
        self.in_flight = 0
        self.waiting = 0
        self.hold_s = 0.05  # EWMA of how long a permit is held (for the expected wait)

    def capacity(self) -> float:
        return self._capacity()

    def try_admit(self) -> bool:
        """A permit now, if the pool has room and nobody waits for one."""
        if self.waiting == 0 and self.in_flight < self._capacity():
            self.in_flight += 1
            return True
        return False

    def expected_wait(self, rank: int, tenant: str) -> float:
        """About how long a new call of `tenant` in class `rank` would wait, in seconds: the
        larger of two counts of the calls served before it, at the pool's rate (capacity per
        hold_s). Fair share's order over the queues as they are: every call of the classes above
        and, in its class, each tenant's calls up to as many as this tenant has waiting, plus one.
        And its own backlog at its share: while others keep their queues busy, this tenant gets
        weight / (sum of the busy tenants' weights) of the pool, so a flooding tenant's call is
        refused at once when its own backlog is longer than its deadline, instead of waiting to
        miss it."""
        higher = sum(len(q) for c in self._classes[:rank] for q in c.queues.values())
        own_class = self._classes[rank].queues
        own = len(own_class.get(tenant, ()))
        in_order = sum(min(len(q), own + 1) for t, q in own_class.items() if t != tenant) + own + 1
        weights = sum(self._weight(t) for t in own_class if t != tenant) + self._weight(tenant)
        at_share = (own + 1) * weights / self._weight(tenant)
        return (higher + max(in_order, at_share)) * self.hold_s / max(self._capacity(), 1e-9)

    def enqueue(self, waiter: Waiter) -> None:
        c = self._classes[waiter.rank]
        queue = c.queues.get(waiter.tenant)
        if queue is None:
            queue = c.queues[waiter.tenant] = deque()
            credit = self.idle_credit / self._weight(waiter.tenant)
            c.vtime[waiter.tenant] = max(c.vtime.get(waiter.tenant, 0.0), c.clock - credit)
        queue.append(waiter)
        self.waiting += 1

    def remove(self, waiter: Waiter) -> None:
        """A waiter that gave up (deadline, cancellation) or was shed."""
        c = self._classes[waiter.rank]
        queue = c.queues.get(waiter.tenant)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            self.waiting -= 1
            if not queue:
                del c.queues[waiter.tenant]

    def lowest_below(self, rank: int) -> Waiter | None:
        """The newest waiter of the lowest class below `rank` (the one to shed for it)."""
        for c in reversed(self._classes[rank + 1 :]):
            newest = [q[-1] for q in c.queues.values() if q]
            if newest:
                return newest[-1]
        return None

    def release(self, held_s: float) -> None:
        self.in_flight -= 1
        self.hold_s += 0.1 * (held_s - self.hold_s)
        self.dispatch()

    def dispatch(self) -> None:
        """Grant permits to waiters, in order, while there is room. A waiter whose deadline is
        nearer than a call takes is told so instead: the backend would work for nobody."""
        now = time.monotonic()
        while self.waiting and self.in_flight < self._capacity():
            waiter = self._next()
            if waiter is None:
                return
            if waiter.future.done():
                continue
            if waiter.deadline - now < self.hold_s:
                waiter.future.set_result(False)
                continue
            self.in_flight += 1
            waiter.future.set_result(True)

    def _next(self) -> Waiter | None:
        for c in self._classes:
            if not c.queues:
                continue
            tenant = min(c.queues, key=lambda t: c.vtime[t])
            queue = c.queues[tenant]
            waiter = queue.popleft()
            self.waiting -= 1
            c.clock = c.vtime[tenant]
            c.vtime[tenant] += 1.0 / self._weight(tenant)
            if not queue:
                del c.queues[tenant]
            if len(c.vtime) > 10_000:  # forget idle tenants' virtual times
                c.vtime = {t: v for t, v in c.vtime.items() if t in c.queues}
            return waiter
        return None
