"""Pickers: choose one endpoint among those that passed the filters, given a score."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from ...endpoints import EndpointState


class Picker:
    """Chooses among the candidates that passed the filters, given a score function."""

    name = ""
    uses_scores = True

    def __init__(self) -> None:
        self._turn = 0
        self._rng = random.Random()

    def pick(
        self, states: Sequence[EndpointState], score: Callable[[EndpointState], float]
    ) -> EndpointState | None:
        raise NotImplementedError


def _best(states: Sequence[EndpointState], score: Callable[[EndpointState], float]) -> EndpointState | None:
    """The first highest-scoring state; each state keeps its score (shown to operators)."""
    best, best_score = None, -1.0
    for s in states:
        v = score(s)
        s.calls.score = v
        if v > best_score:
            best, best_score = s, v
    return best


class MaxScore(Picker):
    """The highest score; ties go to the first after a rotating start (spreads equal endpoints)."""

    name = "max_score"

    def pick(
        self, states: Sequence[EndpointState], score: Callable[[EndpointState], float]
    ) -> EndpointState | None:
        n = len(states)
        if not n:
            return None
        self._turn = turn = (self._turn + 1) % n
        return _best((*states[turn:], *states[:turn]) if turn else states, score)


class PowerOfTwo(Picker):
    """Two candidates drawn at random; the higher score wins (O(1); herds less across replicas)."""

    name = "p2c"

    def pick(
        self, states: Sequence[EndpointState], score: Callable[[EndpointState], float]
    ) -> EndpointState | None:
        n = len(states)
        if n <= 1:
            return states[0] if n else None
        i = self._rng.randrange(n)
        j = self._rng.randrange(n - 1)
        j += j >= i
        a, b = states[i], states[j]
        a.calls.score, b.calls.score = score(a), score(b)
        return a if a.calls.score >= b.calls.score else b


class BestOfK(Picker):
    """The highest score among k candidates drawn at random (all of them when n <= k).

    O(k) per decision however big the pool, and replicas deciding from the same scraped snapshot
    draw different samples, so they do not all pile onto the endpoint that looked best at the last
    scrape (max_score over a shared stale view herds; p2c gives up too much quality)."""

    name = "best_of_k"
    k = 8

    def pick(
        self, states: Sequence[EndpointState], score: Callable[[EndpointState], float]
    ) -> EndpointState | None:
        n = len(states)
        if n <= self.k:
            self._turn = turn = (self._turn + 1) % max(n, 1)
            return _best((*states[turn:], *states[:turn]) if turn else states, score)
        return _best(self._rng.sample(states, self.k), score)


class RoundRobin(Picker):
    """Each candidate in turn, scores ignored (reference policy)."""

    name = "round_robin"
    uses_scores = False

    def pick(
        self, states: Sequence[EndpointState], score: Callable[[EndpointState], float]
    ) -> EndpointState | None:
        if not states:
            return None
        self._turn += 1
        return states[self._turn % len(states)]
