"""What a scrape says beyond our own calls: occupancy by other callers, background GPU load,
our share of the server's answers and the herd factor across gateway replicas."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from ..endpoints import EndpointState, Shared
from .parse import LoadSample

WINDOW_ANSWERS = 8  # answers the occupancy window must hold...
WINDOW_SPAN = 3.0  # ...and at least this many mean compute times per request
RECENT_ANSWERS = 4  # answers the compute-time window must hold
NOISE = 0.15  # a compute-time slowdown below this is the noise of compute times


class Mark(NamedTuple):
    """Cumulative counts at one scrape: the server's (over the declared models) and ours."""

    at: float
    answers: float
    compute_s: float
    per_model: Mapping[str, tuple[float, float]]  # model -> (answers, compute seconds)
    ours: int  # our answered calls


def observe(
    state: EndpointState,
    sample: LoadSample,
    completed: int | None = None,
    models: frozenset[str] | None = None,
) -> None:
    """A fresh scrape of `state`'s metrics: keep it, and what it says beyond our own calls.

    When more than one endpoint state shares the page (one Triton serving two pools),
    `completed` is our answered calls to all of them and `models` all the models they declare."""
    state.scrape.load = sample
    # What of the scraped queue was ours: the scheduler counts ours exactly, and only the rest
    # (other replicas', other clients') is news; a stale total would double-count ours.
    state.scrape.queued_at_scrape = max(0, state.calls.in_flight - state.endpoint.slots)
    split_load(state, sample, completed, models)


def _mark(sample: LoadSample, models: frozenset[str], ours: int) -> Mark | None:
    """The page's request and compute-time counters over `models` (where it counts per model),
    else its totals; None without a request counter."""
    counters = sample.counters
    per_model = {
        m: (counters[("requests", m)], counters.get(("compute_us", m), 0.0) / 1e6)
        for m in models
        if ("requests", m) in counters
    }
    if per_model:
        answers = sum(a for a, _ in per_model.values())
        compute = sum(c for _, c in per_model.values())
    elif ("requests", "") in counters:
        answers, compute = counters[("requests", "")], counters.get(("compute_us", ""), 0.0) / 1e6
    else:
        return None
    return Mark(sample.at, answers, compute, per_model, ours)


def _since(marks: deque[Mark], answers: float, span: float) -> Mark | None:
    """The newest mark before the last that leaves at least `answers` answers and `span` seconds
    up to the last (the oldest kept when none does); None with fewer than two marks."""
    if len(marks) < 2:
        return None
    last = marks[-1]
    for i in range(len(marks) - 2, -1, -1):
        old = marks[i]
        if last.answers - old.answers >= answers and last.at - old.at >= span:
            return old
    return marks[0]


def _compute_times(last: Mark, old: Mark) -> dict[str, float]:
    """Compute seconds per answer, per model, between two marks."""
    out = {}
    for m, (answers, compute) in last.per_model.items():
        before = old.per_model.get(m)
        if before is not None and answers > before[0]:
            out[m] = (compute - before[1]) / (answers - before[0])
    return out


def split_load(
    state: EndpointState,
    sample: LoadSample,
    completed: int | None = None,
    models: frozenset[str] | None = None,
) -> None:
    """Split what a scrape says into ours and everyone else's: `state.scrape.shared`.

    Two different things hide in "the GPU is busy", and they cost a new request differently:
    - occupancy o: other callers' requests (other gateway replicas, other clients) hold batch
      slots. A new request waits for a slot but, once running, runs at full speed.
      o = B (1 - s), B the requests executing there, s our share of its answers. B is the
      running gauge where the server has one (vLLM: instantaneous), else Triton's compute-time
      counter over a window long enough to hold its completions: that counter moves only when a
      request completes, so one scrape's window says nothing while long requests run. The
      window reaches back (over the marks kept per scrape) to 8 answers and 3 mean compute times
      per request; s is counted over the same window. Without a request counter,
      o = B - ours.
    - background x: work outside the serving process (another tenant on the GPU) that slows
      every request. A GPU busy with n of its slots' worth of requests and x of other work
      reports g = x + (1 - x) n (utilisation is a windowed average too: DCGM samples over its
      collection interval), so x = (g - n) / (1 - n). n = ours + o / slots: ours always our own
      exact busy share over the scrape's window (Calls.busy_area), never the lumpy counter.
      While requests fill the GPU (n >= 0.95, or requests wait in its queue), g says nothing
      about x. Then the compute time per answer says it: per model, t now against the
      intrinsic time I learned while x was known (I = t (1 - x), averaged), x = 1 - I / t.
      That tells a slowed GPU even while it is saturated. Without a GPU signal, I is the
      fastest t seen (the endpoint's own baseline, drifting up slowly). Below 15% it is noise.

    Where the page counts per model (Triton), B and the answers count only the `models` the
    endpoint declares: an ensemble's composing models would count each call again, and other
    models' work is not in these slots (it shows in g as background). A counter that goes back
    (the server restarted) starts the window afresh.

    herd_factors sums our share of the answers per pool (counts decayed by 0.8 per scrape).
    """
    if models is None:
        models = frozenset(ref.name for ref in state.endpoint.models)
    if completed is None:
        completed = state.calls.completed
    now, slots = sample.at, state.endpoint.slots
    area, at = state.scrape.busy_mark
    area_now = state.calls.area_at(now, slots)
    ours = (area_now - area) / (now - at) if now > at else 0.0  # our busy share of the slots
    state.scrape.busy_mark = (area_now, now)
    marks = state.scrape.marks
    mark = _mark(sample, models, completed)
    if mark is not None:
        if marks and (mark.answers < marks[-1].answers or mark.compute_s < marks[-1].compute_s):
            marks.clear()  # the server restarted: its counters began again
        marks.append(mark)
    else:
        marks.clear()
    last = state.scrape.shared
    share, seen_ours, seen_all, x, herd = 1.0, 0.0, 0.0, 0.0, 0.0
    if last is not None:
        share, seen_ours, seen_all, x, herd = (
            last.share,
            last.seen_ours,
            last.seen_all,
            last.background,
            last.herd,
        )
    if mark is not None and len(marks) >= 2:
        seen_ours = 0.8 * seen_ours + (completed - marks[-2].ours)
        seen_all = 0.8 * seen_all + (mark.answers - marks[-2].answers)
    busy = sample.running
    others = 0.0
    first = marks[0] if marks else None
    if mark is not None and first is not None and mark.answers > first.answers:
        per_request = (mark.compute_s - first.compute_s) / (mark.answers - first.answers)
        old = _since(marks, WINDOW_ANSWERS, WINDOW_SPAN * per_request)
        if old is not None:
            if mark.answers > old.answers:
                share = min(1.0, (mark.ours - old.ours) / (mark.answers - old.answers))
            if busy is None and mark.compute_s > first.compute_s:
                busy = (mark.compute_s - old.compute_s) / (mark.at - old.at)
    elif mark is None:
        share = 1.0
    if busy is not None:
        others = busy * (1.0 - share) if mark is not None else max(0.0, busy - ours * slots)
    elif sample.gpu_util is None:
        return
    n = min(1.0, ours + others / slots)
    full = n >= 0.95 or bool(sample.queue)
    if sample.gpu_util is not None and not full:
        x = min(0.95, max(0.0, (sample.gpu_util - n) / (1.0 - n)))
    if mark is not None and len(marks) >= 2 and mark.answers > marks[-2].answers:
        x = _compute_slowdown(state, marks, x, full, sample.gpu_util is None)
    state.scrape.shared = Shared(
        x, others, now, share, state.calls.in_flight, completed, seen_ours, seen_all, herd
    )


def _compute_slowdown(state: EndpointState, marks: deque[Mark], x: float, full: bool, no_gpu: bool) -> float:
    """x from the compute time per answer against the intrinsic time where utilisation cannot
    say (a `full` GPU, or `no_gpu` signal on the page); else `x` stands and teaches the intrinsic
    time."""
    old = _since(marks, RECENT_ANSWERS, 0.0)
    if old is None:
        return x
    times = _compute_times(marks[-1], old)
    intrinsic = state.scrape.intrinsic
    if not (full or no_gpu):
        for m, t in times.items():
            base = intrinsic.get(m)
            intrinsic[m] = t * (1.0 - x) if base is None else base + 0.2 * (t * (1.0 - x) - base)
        return x
    spent = known = 0.0
    for m, t in times.items():
        base = intrinsic.get(m)
        if base is None or t < base:  # no utilisation signal: the fastest seen is the baseline
            base = intrinsic[m] = t
        elif no_gpu:
            intrinsic[m] = base + 0.002 * (t - base)  # drifts up: a lasting change becomes the norm
        spent += t
        known += base
    if spent <= 0:
        return x
    slowdown = 1.0 - known / spent
    return min(0.95, slowdown) if slowdown >= NOISE else 0.0


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
