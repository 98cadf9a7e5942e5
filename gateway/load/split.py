"""What a scrape says beyond our own calls: occupancy by other callers, background GPU load,
our share of the server's answers and the herd factor across gateway replicas."""

from __future__ import annotations

from collections.abc import Iterable

from ..endpoints import EndpointState, Shared
from .parse import LoadSample


def observe(
    state: EndpointState,
    sample: LoadSample,
    completed: int | None = None,
    models: frozenset[str] | None = None,
) -> None:
    """A fresh scrape of `state`'s metrics: keep it, and what it says beyond our own calls.

    When more than one endpoint state shares the page (one Triton serving two pools),
    `completed` is our answered calls to all of them and `models` all the models they declare."""
    previous, state.scrape.load = state.scrape.load, sample
    # What of the scraped queue was ours: the scheduler counts ours exactly, and only the rest
    # (other replicas', other clients') is news; a stale total would double-count ours.
    state.scrape.queued_at_scrape = max(0, state.calls.in_flight - state.endpoint.slots)
    split_load(state, sample, previous, completed, models)


def _declared(sample: LoadSample, previous: LoadSample, signal: str, models: frozenset[str]) -> float | None:
    """A counter's growth since `previous`, summed over `models` where the page counts per
    model; None where it does not, or a counter went back (the server restarted)."""
    total, seen = 0.0, False
    for m in models:
        now_v, old_v = sample.counters.get((signal, m)), previous.counters.get((signal, m))
        if now_v is None or old_v is None:
            continue
        if now_v < old_v:
            return None
        total += now_v - old_v
        seen = True
    return total if seen else None


def split_load(
    state: EndpointState,
    sample: LoadSample,
    previous: LoadSample | None = None,
    completed: int | None = None,
    models: frozenset[str] | None = None,
) -> None:
    """Split what a scrape says into ours and everyone else's: `state.scrape.shared`.

    Two different things hide in "the GPU is busy", and they cost a new request differently:
    - occupancy: other callers' requests (other gateway replicas, other clients) hold batch
      slots. A new request waits for a slot but, once running, runs at full speed. Measured as
      o = B (1 - s): B the requests executing on average over the window (`busy`: Triton's
      compute-time counter over elapsed time, or vLLM's running gauge), s our share of the
      requests the endpoint answered over recent windows (ours / its request counter). Without a
      request counter, o = B - ours, ours our own busy share (Calls.busy_area) times
      the slots.
    - background x: work outside the serving process (another tenant on the GPU) that slows
      every request. A GPU busy with n of its slots' worth of requests and x of other work
      reports g = x + (1 - x) n / slots (utilisation is a windowed average too: DCGM samples
      over its collection interval), so x = (g - n / slots) / (1 - n / slots), n = B where the
      page says B, else ours (all the rest then shows as background). Clamped to [0, 0.95].
      When requests fill the GPU (n / slots >= 0.95, or requests wait in its queue), g says
      nothing about x: keep the last.

    Where the page counts per model (Triton), B and the answers count only the `models` the
    endpoint declares: an ensemble's composing models would count each call again, and other
    models' work is not in these slots (it shows in g as background).

    o is smoothed over scrapes (half per scrape, `previous` being the last sample): compute-time
    counters move when a request completes, so one long request lands in one window. s counts
    answers over recent windows (both counts decay by 0.8 per scrape); herd_factors sums them
    per pool.
    """
    gpu_util, busy, done, now = sample.gpu_util, sample.busy, sample.completed, sample.at
    if models is None:
        models = frozenset(ref.name for ref in state.endpoint.models)
    if previous is not None and models and now > previous.at:
        declared = _declared(sample, previous, "requests", models)
        if declared is not None:
            done = declared
        declared = _declared(sample, previous, "compute_us", models)
        if declared is not None:
            busy = declared / 1e6 / (now - previous.at)
    if gpu_util is None and busy is None:
        return
    if completed is None:
        completed = state.calls.completed
    area, at = state.scrape.busy_mark
    area_now = state.calls.area_at(now, state.endpoint.slots)
    b = (area_now - area) / (now - at) if now > at else 0.0
    state.scrape.busy_mark = (area_now, now)
    slots = state.endpoint.slots
    last = state.scrape.shared
    share, seen_ours, seen_all, others, x = 1.0, 0.0, 0.0, 0.0, 0.0
    if last is not None:
        share, seen_ours, seen_all, others, x = (
            last.share,
            last.seen_ours,
            last.seen_all,
            last.others,
            last.background,
        )
        if done is not None:
            seen_ours = 0.8 * seen_ours + (completed - last.completed)
            seen_all = 0.8 * seen_all + done
            if seen_all >= 1.0:
                share = min(1.0, seen_ours / seen_all)
    n = b
    if busy is not None:
        fresh = busy * (1.0 - share) if done is not None else max(0.0, busy - b * slots)
        smooth = previous is not None and previous.busy is not None
        others = 0.5 * (others + fresh) if smooth else fresh
        n = min(1.0, busy / slots)
    if sample.queue:  # requests wait: every slot is taken
        n = 1.0
    if gpu_util is not None and n < 0.95:
        x = min(0.95, max(0.0, (gpu_util - n) / (1.0 - n)))
    herd = last.herd if last is not None else 0.0
    state.scrape.shared = Shared(
        x, others, now, share, state.calls.in_flight, completed, seen_ours, seen_all, herd
    )


def herd_factors(states: Iterable[EndpointState]) -> None:
    """Per pool, how many calls other gateway replicas send per call of ours: h = 1 / S - 1, S
    our share of the answers of all the pool's scraped endpoints over recent windows (capped at
    h = 19, S = 5%). Pool-wide, not per endpoint: replicas behind one load balancer see the same
    traffic and react alike to the same scraped snapshot, which is what predicted_seconds
    extrapolates; a client calling one endpoint directly lowers our share there but does not
    herd with us. 0 where we are the only caller, or before the counters say."""
    by_pool: dict[str, list[EndpointState]] = {}
    for s in states:
        if s.scrape.shared is not None:
            by_pool.setdefault(s.endpoint.pool, []).append(s)
    for members in by_pool.values():
        ours = sum(s.scrape.shared.seen_ours for s in members if s.scrape.shared is not None)
        seen = sum(s.scrape.shared.seen_all for s in members if s.scrape.shared is not None)
        herd = 1.0 / max(0.05, min(1.0, ours / seen)) - 1.0 if seen >= 1.0 else 0.0
        for s in members:
            if s.scrape.shared is not None and s.scrape.shared.herd != herd:
                s.scrape.shared = s.scrape.shared._replace(herd=herd)
