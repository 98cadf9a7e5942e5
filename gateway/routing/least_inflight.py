"""Least in-flight picker: the ready endpoint with the fewest calls outstanding.

Ties rotate (the scan starts one position later each call), so idle endpoints share traffic
evenly at low concurrency. O(n) in the candidates of one model, with n small per pool.
A preferred region narrows the choice to that region while it has a ready endpoint.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from ..endpoints import EndpointState


class LeastInFlightPicker:
    def __init__(self) -> None:
        self._turn = 0

    def pick(
        self,
        candidates: Sequence[EndpointState],
        model: str,
        version: str,
        exclude: Collection[EndpointState] = (),
        region: str = "",
    ) -> EndpointState | None:
        n = len(candidates)
        self._turn = (self._turn + 1) % max(n, 1)
        best: EndpointState | None = None
        best_in_region: EndpointState | None = None
        for k in range(n):
            state = candidates[(self._turn + k) % n]
            if state in exclude or not state.ready_for(model, version):
                continue
            if best is None or state.in_flight < best.in_flight:
                best = state
            if (
                region
                and state.endpoint.region == region
                and (best_in_region is None or state.in_flight < best_in_region.in_flight)
            ):
                best_in_region = state
        return best_in_region or best
