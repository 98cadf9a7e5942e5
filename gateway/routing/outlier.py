"""Passive outlier ejection and the per-pool retry budget.

Ejection (as Envoy's outlier detection, consecutive-failure kind): after `consecutive_failures`
endpoint faults in a row, an endpoint leaves rotation for base_ejection_s x 2^(k-1), k = how often
it was ejected recently, capped at max_ejection_s. At most max_ejected_percent of a pool is ejected
at once (at least one endpoint always stays, so an outage of everything is not hidden by an empty
pool). A success resets the failure count; k decays by one per max_ejection_s of good behaviour.

Retry budget: retries in a pool may add at most `percent` of its recent requests, plus
`min_per_s` per second, so that in an outage retries cannot multiply the load. Counts decay with
a 10 s time constant.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple

from ..endpoints import EndpointState


class OutlierPolicy(NamedTuple):
    consecutive_failures: int = 5
    base_ejection_s: float = 5.0
    max_ejection_s: float = 300.0
    max_ejected_percent: float = 50.0


class OutlierDetector:
    def __init__(
        self,
        policy: OutlierPolicy,
        pool_states: Callable[[str], list[EndpointState]] = lambda pool: [],
        on_eject: Callable[[EndpointState, float], None] = lambda state, seconds: None,
    ) -> None:
        """`pool_states`: a pool's endpoints (the endpoint table knows them), for the ejection
        cap; `on_eject`: told of each ejection and its length in seconds (log, metrics)."""
        self.policy = policy
        self.pool_states = pool_states
        self.on_eject = on_eject
        self._last_ejected: dict[int, float] = {}

    def success(self, state: EndpointState) -> None:
        state.ejection.consecutive_failures = 0
        if state.ejection.ejections:
            now = time.monotonic()
            since = self._last_ejected.get(id(state), 0.0)
            if now - since > self.policy.max_ejection_s:
                state.ejection.ejections -= 1
                self._last_ejected[id(state)] = now

    def failure(self, state: EndpointState) -> None:
        state.ejection.consecutive_failures += 1
        p = self.policy
        if state.ejection.consecutive_failures < p.consecutive_failures:
            return
        now = time.monotonic()
        if state.ejection.ejected_until > now:
            return
        peers = self.pool_states(state.endpoint.pool) or [state]
        ejected = sum(1 for s in peers if s.ejection.ejected_until > now)
        allowed = min(len(peers) - 1, math.floor(len(peers) * p.max_ejected_percent / 100))
        if ejected >= allowed:
            return
        state.ejection.ejections += 1
        seconds = min(p.max_ejection_s, p.base_ejection_s * 2 ** (state.ejection.ejections - 1))
        state.ejection.ejected_until = now + seconds
        state.ejection.consecutive_failures = 0
        self._last_ejected[id(state)] = now
        self.on_eject(state, seconds)


class RetryBudget:
    """Per pool: may this retry go out? Decaying counts of requests and retries."""

    TAU_S = 10.0

    def __init__(self, percent: float = 20.0, min_per_s: float = 3.0) -> None:
        self.percent = percent
        self.min_per_s = min_per_s
        self._counts: dict[str, list[float]] = {}  # pool -> [requests, retries, at]

    def _decayed(self, pool: str) -> list[float]:
        now = time.monotonic()
        c = self._counts.get(pool)
        if c is None:
            c = self._counts[pool] = [0.0, 0.0, now]
        else:
            f = math.exp(-(now - c[2]) / self.TAU_S)
            c[0] *= f
            c[1] *= f
            c[2] = now
        return c

    def request(self, pool: str) -> None:
        self._decayed(pool)[0] += 1.0

    def try_retry(self, pool: str) -> bool:
        c = self._decayed(pool)
        allowed = self.min_per_s * self.TAU_S + c[0] * self.percent / 100.0
        if c[1] + 1.0 > allowed:
            return False
        c[1] += 1.0
        return True
