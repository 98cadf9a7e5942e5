"""Scorers: each returns a value in [0, 1], higher is better; each docstring gives its formula.

Notation: for endpoint e, cap = capacity (relative speed, Meta `capacity`), slots = requests it
runs at once (Meta `slots`), a = requests in flight from this gateway, U = complexity units in
flight from this gateway, u = the request's units, q = scraped queue depth for the model,
g = scraped GPU utilisation. Scraped values count only while younger than `max_age_s`.
"""

from __future__ import annotations

from ...endpoints import EndpointState
from ...load.parse import LoadSample
from .base import Context, RequestInfo


def fresh_load(state: EndpointState, ctx: Context) -> LoadSample | None:
    load = state.scrape.load
    if load is None or ctx.now - load.at > ctx.max_age_s:
        return None
    return load


def s_inflight(state: EndpointState, req: RequestInfo, ctx: Context) -> float:
    """1 / (1 + a): least requests in flight."""
    return 1.0 / (1.0 + state.calls.in_flight)


def s_weighted_inflight(state: EndpointState, req: RequestInfo, ctx: Context) -> float:
    """Envoy's weighted least request: w = cap / (a + 1), as w / (1 + w) to stay in [0, 1)."""
    w = state.endpoint.capacity / (state.calls.in_flight + 1.0)
    return w / (1.0 + w)


def s_outstanding(state: EndpointState, req: RequestInfo, ctx: Context) -> float:
    """1 / (1 + U / cap): complexity in flight over capacity (counts units, not requests)."""
    return 1.0 / (1.0 + state.calls.units / state.endpoint.capacity)


def s_gpu_headroom(state: EndpointState, req: RequestInfo, ctx: Context) -> float:
    """1 - g; 0.5 (neutral) without a fresh GPU signal."""
    load = fresh_load(state, ctx)
    g = load.gpu_util if load is not None else None
    return 0.5 if g is None else min(1.0, max(0.0, 1.0 - g))


def s_queue(state: EndpointState, req: RequestInfo, ctx: Context) -> float:
    """1 / (1 + q) with q the scraped queue for the model (or the whole server); without a fresh
    scrape, this gateway's own excess over the slots, max(0, a - slots)."""
    load = fresh_load(state, ctx)
    q = load.queue_for(req.model) if load is not None else None
    if q is None:
        q = max(0, state.calls.in_flight - state.endpoint.slots)
    return 1.0 / (1.0 + q)


def s_region(state: EndpointState, req: RequestInfo, ctx: Context) -> float:
    """1 in the requested region (or when none is requested), else 0."""
    return 1.0 if not req.region or state.endpoint.region == req.region else 0.0


def background_util(state: EndpointState, ctx: Context) -> float:
    """x: the share of the GPU taken by work outside the server (another tenant), split from the
    scraped utilisation by probe.split_load; 0 when not fresh."""
    shared = state.scrape.shared
    if shared is None or ctx.now - shared.at > ctx.max_age_s:
        return 0.0
    return shared.background


def predicted_seconds(state: EndpointState, req: RequestInfo, ctx: Context) -> float:
    """Predicted completion of this request at e, in units of "one unit on an idle cap-1 GPU".

    rate = cap x (1 - x) / d                   (x: background, probe.split_load; d:
                                                state.calls.slowdown, latency feedback for what the
                                                metrics do not explain; 1 while nothing of ours
                                                runs there: idle, the GPU's utilisation shows
                                                its background itself, and equal idle endpoints
                                                share the traffic)
    service = u / rate
    t = o + (a - a0) h + q'                    (other callers' requests there, running or queued:
                                                o executing at the scrape, probe.split_load:
                                                other gateway replicas' calls hold slots but do
                                                not slow ours; a0: ours at the scrape; h: calls
                                                the other replicas send per call of ours,
                                                probe.herd_factors: replicas deciding from the
                                                same snapshot make the same choices, so what we
                                                sent since the scrape they sent too, h times
                                                over; this is what stops the herd. q': the
                                                scraped queue minus what of it was ours at the
                                                scrape)
    wait = 0 while a free slot exists (a + t < slots): light work must not queue behind a slow
           idle GPU's empty slots, nor skip them either;
         = (a + t - slots + 1) x m / (rate x slots)   otherwise, with m the mean units of the
           requests there: ours U / a, theirs the pool's mean units per request (ctx.mean_units,
           their calls come from the same callers as ours)

    On the request path for every candidate: written flat (no helper calls) for speed.
    """
    ep = state.endpoint
    slots = ep.slots
    a = state.calls.in_flight
    load = state.scrape.load
    x = 0.0
    theirs = 0.0  # other callers' requests there, running or queued
    shared = state.scrape.shared
    if shared is not None and ctx.now - shared.at <= ctx.max_age_s:
        x = shared.background
        theirs = shared.others
        if shared.herd:
            theirs += (a - shared.in_flight) * shared.herd
    if load is not None and ctx.now - load.at <= ctx.max_age_s:
        mq = load.model_queue
        q = mq.get(req.model, 0.0) if mq else (load.queue or 0.0)
        others = q - state.scrape.queued_at_scrape  # queued there, not by us (other replicas, clients)
        if others > 0:
            theirs += others
    if theirs < 0:
        theirs = 0.0
    ahead = a + theirs - slots + 1
    if ahead < 0:
        ahead = 0
    d = state.calls.slowdown
    if a == 0:  # idle: the metrics speak for it
        d = 1.0
    rate = ep.capacity * (1.0 - x) / d
    service = req.units / rate
    if ahead <= 0:
        return service
    m = ctx.mean_units or req.units
    mean_units = (state.calls.units + theirs * m) / (a + theirs) if a + theirs > 0 else req.units
    return service + ahead * mean_units / (rate * slots)


def service_seconds(state: EndpointState, req: RequestInfo, ctx: Context) -> float:
    """The part of predicted_seconds that is running, not waiting: u / rate."""
    x = background_util(state, ctx)
    d = state.calls.slowdown if state.calls.in_flight else 1.0
    return req.units * d / (state.endpoint.capacity * (1.0 - x))


def s_predicted(state: EndpointState, req: RequestInfo, ctx: Context) -> float:
    """t0 / (t0 + t): t predicted completion (predicted_seconds), t0 = u (idle cap-1 time).
    1 for an instant answer, 0.5 when e is as good as an idle cap-1 GPU, -> 0 as t grows."""
    t0 = req.units or 1.0
    return t0 / (t0 + predicted_seconds(state, req, ctx))


def s_latency(state: EndpointState, req: RequestInfo, ctx: Context) -> float:
    """1 / (1 + L / L*): L = EWMA seconds per unit for the model at e, L* = 10 ms per unit.
    Neutral 0.5 before the first sample."""
    lat = state.calls.latency.get(req.model)
    return 0.5 if lat is None else 1.0 / (1.0 + lat / 0.010)


def s_price(state: EndpointState, req: RequestInfo, ctx: Context) -> float:
    """1 / (1 + p): p = Meta price_in_per_1k + price_out_per_1k (or cost_per_hour / 100);
    free or self-hosted without a price: 1."""
    meta = state.endpoint.meta
    try:
        p = float(meta.get("price_in_per_1k", 0)) + float(meta.get("price_out_per_1k", 0))
        if not p:
            p = float(meta.get("cost_per_hour", 0)) / 100.0
    except ValueError:
        p = 0.0
    return 1.0 / (1.0 + max(0.0, p))
