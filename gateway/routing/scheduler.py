"""The scheduler: per pool, a profile of filters, weighted scorers and one picker.

    score(e) = sum_i w_i * scorer_i(e) / sum_i w_i        (each scorer in [0, 1])

Built-in profiles (a config `routing.profiles` entry with the same name replaces one):

    round_robin              reference only
    least_inflight           max 1/(1+a)
    p2c_inflight             two at random, fewer in flight wins (Envoy least_request default)
    weighted_least_request   max cap/(a+1) (Envoy least_request with weights)
    default                  best predicted completion (plugins.s_predicted: capacity, free batch
                             slots, complexity in flight, scraped queue, GPU background load,
                             latency feedback) among all candidates, or 8 drawn at random in
                             pools of more than 8 (best_of_k: O(1), and replicas do not herd)

Two hints the request carries apply under every profile, after its filters and before its picker:
a preferred region is a soft constraint (the best endpoint in that region wins while one passes
the filters; the `region` filter makes it hard), and prefer=cost takes half of each score from
the price scorer.

The scheduler also keeps what the request path learns: units in flight per endpoint, EWMA latency
per model, and passive outlier ejection (outlier.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from ..endpoints import EndpointState
from .outlier import OutlierDetector, OutlierPolicy
from .plugins import (
    FILTERS,
    PICKERS,
    SCORERS,
    Context,
    Filter,
    Picker,
    RequestInfo,
    Scorer,
    predicted_seconds,
    s_price,
)


class ProfileSpec(NamedTuple):
    filters: tuple[str, ...]
    scorers: Mapping[str, float]
    picker: str


BUILTIN_PROFILES: Mapping[str, ProfileSpec] = {
    "round_robin": ProfileSpec(("ready", "not_ejected"), {}, "round_robin"),
    "least_inflight": ProfileSpec(("ready", "not_ejected"), {"inflight": 1.0}, "max_score"),
    "p2c_inflight": ProfileSpec(("ready", "not_ejected"), {"inflight": 1.0}, "p2c"),
    "weighted_least_request": ProfileSpec(("ready", "not_ejected"), {"weighted_inflight": 1.0}, "max_score"),
    "default": ProfileSpec(("ready", "not_ejected"), {"predicted": 1.0}, "best_of_k"),
}


def check_profile(name: str, spec: ProfileSpec) -> None:
    """ValueError naming the unknown plugin."""
    for f in spec.filters:
        if f not in FILTERS:
            raise ValueError(f"profile {name!r}: unknown filter {f!r}; expected one of {', '.join(FILTERS)}")
    for s, w in spec.scorers.items():
        if s not in SCORERS:
            raise ValueError(f"profile {name!r}: unknown scorer {s!r}; expected one of {', '.join(SCORERS)}")
        if not w >= 0:
            raise ValueError(f"profile {name!r}: scorer {s!r} weight must be >= 0")
    if spec.picker not in PICKERS:
        raise ValueError(
            f"profile {name!r}: unknown picker {spec.picker!r}; expected one of {', '.join(PICKERS)}"
        )


class Profile:
    def __init__(self, name: str, spec: ProfileSpec) -> None:
        check_profile(name, spec)
        self.name = name
        self.filters: tuple[Filter, ...] = tuple(FILTERS[f] for f in spec.filters)
        # f_ready and f_not_ejected (in either order) are what every built-in profile runs.
        self._ready_not_ejected = sorted(spec.filters) == ["not_ejected", "ready"]
        total = sum(spec.scorers.values()) or 1.0
        self.scorers: tuple[tuple[Scorer, float], ...] = tuple(
            (SCORERS[s], w / total) for s, w in spec.scorers.items() if w > 0
        )
        self.picker: Picker = PICKERS[spec.picker]()

    def passing(
        self, candidates: Sequence[EndpointState], req: RequestInfo, ctx: Context
    ) -> list[EndpointState]:
        """The candidates every filter lets through. This runs per request over every candidate,
        so the usual one- and two-filter profiles avoid a generator per endpoint."""
        filters = self.filters
        if self._ready_not_ejected:  # the usual pair, fused and inlined (f_ready's O(1) case first)
            model, version, now = req.model, req.version, ctx.now
            return [
                s
                for s in candidates
                if s.ejection.ejected_until <= now
                and s.health.live
                and not s.drained
                and ((not version and model in s.health.ready_names) or s.ready_for(model, version))
            ]
        # An operator's drain holds under every profile.
        if len(filters) == 2:
            f1, f2 = filters
            return [s for s in candidates if not s.drained and f1(s, req, ctx) and f2(s, req, ctx)]
        if len(filters) == 1:
            f = filters[0]
            return [s for s in candidates if not s.drained and f(s, req, ctx)]
        return [s for s in candidates if not s.drained and all(f(s, req, ctx) for f in filters)]

    def score(self, state: EndpointState, req: RequestInfo, ctx: Context) -> float:
        if len(self.scorers) == 1:
            return self.scorers[0][0](state, req, ctx)
        return sum(w * fn(state, req, ctx) for fn, w in self.scorers)


class Scheduler:
    """Picks endpoints by the pool's profile and records what calls teach."""

    def __init__(
        self,
        profiles: Mapping[str, ProfileSpec] | None = None,
        default_profile: str = "default",
        pool_profiles: Mapping[str, str] | None = None,
        *,
        max_age_s: float = 5.0,
        outlier: OutlierPolicy | None = None,
        latency_alpha: float = 0.2,
        pool_states: Callable[[str], list[EndpointState]] = lambda pool: [],
        on_eject: Callable[[EndpointState, float], None] = lambda state, seconds: None,
    ) -> None:
        self.outliers = OutlierDetector(outlier or OutlierPolicy(), pool_states, on_eject)
        self.configure(profiles, default_profile, pool_profiles, max_age_s, outlier)
        self.latency_alpha = latency_alpha
        self.pool_slowness: dict[str, float] = {}  # pool -> slow EWMA of observed / predicted
        self.pool_units: dict[str, float] = {}  # pool -> EWMA of units per request

    def configure(
        self,
        profiles: Mapping[str, ProfileSpec] | None,
        default_profile: str,
        pool_profiles: Mapping[str, str] | None,
        max_age_s: float,
        outlier: OutlierPolicy | None,
    ) -> None:
        """Set (or, on a config reload, replace) the profiles; what calls taught stays.
        ValueError naming an unknown profile or plugin, and nothing changes."""
        specs = dict(BUILTIN_PROFILES) | dict(profiles or {})
        built = {name: Profile(name, spec) for name, spec in specs.items()}
        for pool, name in {"*": default_profile, **(pool_profiles or {})}.items():
            if name not in built:
                raise ValueError(
                    f"pool {pool!r}: unknown profile {name!r}; expected one of {', '.join(built)}"
                )
        self.profiles = built
        self.default_profile = default_profile
        self.pool_profiles = dict(pool_profiles or {})
        self.max_age_s = max_age_s
        self.outliers.policy = outlier or OutlierPolicy()
        self._profile_of_pool: dict[str, Profile] = {}

    def profile_for(self, pool: str) -> Profile:
        profile = self._profile_of_pool.get(pool)
        if profile is None:
            profile = self.profiles[self.pool_profiles.get(pool, self.default_profile)]
            self._profile_of_pool[pool] = profile
        return profile

    def pick(
        self,
        candidates: Sequence[EndpointState],
        req: RequestInfo,
        exclude: Sequence[EndpointState] = (),
    ) -> EndpointState | None:
        """The endpoint for `req` among `candidates` (one model's endpoints, any pools)."""
        if not candidates:
            return None
        now = time.monotonic()
        pool = candidates[0].endpoint.pool
        ctx = Context(now, self.max_age_s, self.pool_units.get(pool, 0.0))
        profile = self.profile_for(pool)
        passing = profile.passing(candidates, req, ctx)
        if exclude:
            passing = [s for s in passing if s not in exclude]
        if req.region:
            local = [s for s in passing if s.endpoint.region == req.region]
            passing = local or passing
        if req.prefer == "cost":  # half the score from price (RoutingHints.prefer)
            return profile.picker.pick(
                passing, lambda s: 0.5 * profile.score(s, req, ctx) + 0.5 * s_price(s, req, ctx)
            )
        if len(profile.scorers) == 1:
            fn = profile.scorers[0][0]
            return profile.picker.pick(passing, lambda s: fn(s, req, ctx))
        return profile.picker.pick(passing, lambda s: profile.score(s, req, ctx))

    # -- what the request path and the load probe report ---------------------------------
    def scraped(self, state: EndpointState) -> None:
        """The load probe took a fresh sample of `state`. Latency feedback fades with time, with a
        half-life of 4 typical calls there (at least 2 s), unless completions renew it: an
        endpoint judged slow gets little traffic, so it must not stay judged slow on old
        evidence, and evidence that a 30 s call brought must not fade before the next one."""
        calls = state.calls
        now = time.monotonic()
        elapsed, calls.faded_at = now - calls.faded_at, now
        if calls.slowdown == 1.0 or elapsed <= 0:
            return
        per_unit = max(calls.latency.values(), default=0.0)
        half_life = max(2.0, 4.0 * per_unit * self.pool_units.get(state.endpoint.pool, 1.0))
        calls.slowdown = 1.0 + (calls.slowdown - 1.0) * 0.5 ** (elapsed / half_life)

    def predicted_real_seconds(self, state: EndpointState, req: RequestInfo) -> float | None:
        """Predicted completion in seconds: predicted unit-time x the pool's observed seconds per
        unit-time. None until the pool has answered a call (nothing to scale by yet)."""
        scale = self.pool_slowness.get(state.endpoint.pool)
        if scale is None:
            return None
        return predicted_seconds(state, req, Context(time.monotonic(), self.max_age_s)) * scale

    def started(self, state: EndpointState, req: RequestInfo) -> float:
        """A call goes to `state`; returns its predicted completion (for `finished`)."""
        now = time.monotonic()
        pool = state.endpoint.pool
        m = self.pool_units.get(pool)
        self.pool_units[pool] = req.units if m is None else m + 0.01 * (req.units - m)
        predicted = predicted_seconds(state, req, Context(now, self.max_age_s, self.pool_units[pool]))
        state.calls.account(now, state.endpoint.slots)
        state.calls.in_flight += 1
        state.calls.units += req.units
        return predicted

    def finished(
        self,
        state: EndpointState,
        req: RequestInfo,
        predicted: float,
        seconds: float,
        ok: bool,
        endpoint_fault: bool,
    ) -> None:
        """`ok`: answered; `endpoint_fault`: failed in a way that says the endpoint is unwell
        (unavailable, internal error, timeout), as opposed to the caller's mistake.

        Latency feedback: r = seconds / predicted is what one predicted unit-time really took
        here; r over the pool's (slow) EWMA of r, averaged per endpoint (`slowdown`, from 1), is
        the slowdown that the metrics do not explain (a GPU whose own work hides another
        tenant's: utilisation is 100% either way). Each answer weighs by its units (a weight of
        1 - 0.8^units: a light call moves it 20%, a call of 8 units 83%), so a few completions
        are enough, and plugins.predicted_seconds divides the rate by it as it stands, with no
        dead band. `scraped` fades it with time."""
        state.calls.account(time.monotonic(), state.endpoint.slots)
        state.calls.in_flight -= 1
        state.calls.units = max(0.0, state.calls.units - req.units)
        if ok and req.units > 0:
            per_unit = seconds / req.units
            old = state.calls.latency.get(req.model)
            a = self.latency_alpha
            state.calls.latency[req.model] = per_unit if old is None else old + a * (per_unit - old)
            if predicted > 0:
                r = seconds / predicted
                pool = state.endpoint.pool
                base = self.pool_slowness.get(pool)
                if base is None:
                    base = self.pool_slowness[pool] = r
                # The pool's baseline learns from calls that went as predicted, and barely from
                # the outliers it exists to expose (a slowed GPU must not move it).
                ratio = r / base
                base = self.pool_slowness[pool] = base + (0.05 if 0.8 < ratio < 1.25 else 0.005) * (r - base)
                ratio = min(20.0, max(0.25, r / base))
                weight = 1.0 - (1.0 - a) ** min(req.units, 20.0)
                state.calls.slowdown += weight * (ratio - state.calls.slowdown)
        if ok:
            state.calls.completed += 1
            self.outliers.success(state)
        elif endpoint_fault:
            self.outliers.failure(state)
