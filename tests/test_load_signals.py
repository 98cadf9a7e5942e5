"""Load signals that hold whatever the request duration (issue #15): requests that last longer
than the scrape interval, a background that arrives on a saturated GPU, latency feedback that
reacts within a few completions and fades with time. The pages are Triton's, built here."""

from __future__ import annotations

import pytest

from gateway.endpoints import EndpointState
from gateway.load import LoadSample, load_metric_names, observe, parse_page
from gateway.routing import plugins
from gateway.routing.plugins import Context
from gateway.routing.scheduler import Scheduler
from tests.test_scheduler import req, state

SPECS = load_metric_names()["any"] + load_metric_names()["triton"]


class Page:
    """A Triton with a DCGM exporter: cumulative answers and compute seconds for model m, and
    the GPU utilisation over the last window."""

    def __init__(self, s: EndpointState) -> None:
        self.state, self.answers, self.compute_s = s, 0, 0.0
        self.t0 = s.calls.busy_since
        self.last: LoadSample | None = None

    def scrape(self, t: float, util: float, queue: int = 0) -> LoadSample:
        text = (
            f'nv_inference_request_success{{model="m",version="1"}} {self.answers}\n'
            f'nv_inference_compute_infer_duration_us{{model="m",version="1"}} {self.compute_s * 1e6:.0f}\n'
            f'nv_inference_pending_request_count{{model="m",version="1"}} {queue}\n'
            f'DCGM_FI_DEV_GPU_UTIL{{gpu="0"}} {util * 100:.1f}\n'
        )
        self.last = parse_page(text, SPECS, self.t0 + t, self.last)
        observe(self.state, self.last)
        return self.last

    def ours(self, t: float, in_flight: int) -> None:
        """Our calls there change to `in_flight` at t (as Scheduler.started/finished do)."""
        self.state.calls.account(self.t0 + t, self.state.endpoint.slots)
        self.state.calls.in_flight = in_flight

    def answer(self, n: int, seconds_each: float, ours: bool = True) -> None:
        self.answers += n
        self.compute_s += n * seconds_each
        if ours:
            self.state.calls.completed += n


def background(page: Page, t: float) -> float:
    return plugins.background_util(page.state, Context(page.t0 + t, 5.0))


def test_long_requests_with_no_completion_in_the_window_are_not_background() -> None:
    """Two of our 30 s calls hold 2 of 4 slots on a GPU with no other work: it reports 50%.
    Triton's compute-time counter moves only when they finish, so a window says B = 0; the
    utilisation must be read against our own exact busy share, not that counter."""
    s = state("a", capacity=1, slots=4)
    page = Page(s)
    page.scrape(1.0, 0.0)
    page.ours(1.0, 2)
    for t in range(2, 30):
        page.scrape(float(t), 0.5)
        assert background(page, t) == pytest.approx(0.0, abs=1e-6), t
    # A real 50% background on top: g = 0.5 + 0.5 x 0.5 = 0.75 reads as x = 0.5.
    page.scrape(30.0, 0.75)
    assert background(page, 30.0) == pytest.approx(0.5)


def test_a_background_that_arrives_on_a_saturated_gpu_shows_in_the_compute_time() -> None:
    """All 4 slots are ours and full: utilisation is 100% whatever else runs, so it cannot say.
    While slots were free, x was known (0) and answers took 1 s of compute: the intrinsic time.
    Then a 60% background arrives: the same requests take 2.5 s, so x = 1 - 1 / 2.5 = 0.6, read
    while the GPU stays full; when it leaves, x goes back to 0."""
    s = state("a", capacity=4, slots=4)
    page = Page(s)
    page.scrape(1.0, 0.0)
    page.ours(1.0, 2)
    for t in range(2, 9):  # half the slots ours, nothing else: g = 0.5, x = 0, I = 1 s
        page.answer(2, 1.0)
        page.scrape(float(t), 0.5)
        assert background(page, t) == pytest.approx(0.0)
    page.ours(8.0, 4)
    page.answer(4, 1.0)
    page.scrape(9.0, 1.0)
    assert background(page, 9.0) == pytest.approx(0.0)
    for t in range(10, 14):  # full, and each answer took 2.5 s: the background came
        page.answer(2, 2.5)
        page.scrape(float(t), 1.0)
    assert background(page, 13.0) == pytest.approx(0.6)
    # rate = 4 x (1 - 0.6): a light call takes 1 / 1.6 (our calls there carry no units here)
    assert plugins.predicted_seconds(s, req(1), Context(page.t0 + 13.0, 5.0)) == pytest.approx(1 / (4 * 0.4))
    for t in range(14, 18):  # still full; the answers are back to 1 s
        page.answer(4, 1.0)
        page.scrape(float(t), 1.0)
    assert background(page, 17.0) == pytest.approx(0.0)


def test_other_callers_occupancy_is_read_over_a_window_that_holds_their_completions() -> None:
    """Another replica keeps 2 of 8 slots busy with 10 s calls, and we keep 1 busy with ours:
    the counters move in lumps (two answers every 10 s, and ours). Read over one scrape, the
    other callers' occupancy would swing between 0 and 10; over a window of 8 answers and 3
    compute times per request it stays near the truth, 2."""
    s = state("a", capacity=1, slots=8)
    page = Page(s)
    page.scrape(0.5, 0.0)
    page.ours(0.5, 1)
    readings = []
    for t in range(1, 121):
        if t % 10 == 0:
            page.answer(2, 10.0, ours=False)
            page.answer(1, 10.0)
        sample = page.scrape(float(t), 3 / 8)
        assert s.scrape.shared is not None
        if t > 40:
            readings.append(s.scrape.shared.others)
            assert background(page, t) < 0.1, t
        if t % 10 == 0:
            assert sample.busy == pytest.approx(30.0)  # one scrape's counter: 30 compute-s in 1 s
    assert min(readings) >= 1.5 and max(readings) <= 2.5, (min(readings), max(readings))
    assert s.scrape.shared is not None and s.scrape.shared.share == pytest.approx(1 / 3, abs=0.05)


def test_latency_feedback_takes_a_few_completions_weighs_units_and_fades_with_time() -> None:
    """A GPU twice as slow as predicted, with no metric saying why: one heavy answer (8 units)
    moves `slowdown` most of the way, a light one a fifth; there is no dead band, so 2x slower
    counts at once; and the evidence fades with time, over a half-life of 4 typical calls."""
    sched = Scheduler()
    base, slow = state("base", slots=8), state("slow", slots=8)
    for _ in range(20):  # the pool's baseline: calls that take what was predicted
        p = sched.started(base, req(1))
        sched.finished(base, req(1), p, p * 10.0, True, False)
    p = sched.started(slow, req(8))
    sched.finished(slow, req(8), p, p * 20.0, True, False)
    # r / base = 2 over the pool's baseline (which moves 0.5% toward an outlier's r)
    assert slow.calls.slowdown == pytest.approx(1 + (1 - 0.8**8) * (20 / 10.05 - 1))
    light = state("light", slots=8)
    p = sched.started(light, req(1))
    sched.finished(light, req(1), p, p * 20.0, True, False)
    assert light.calls.slowdown == pytest.approx(1 + 0.2 * (20 / sched.pool_slowness["p"] - 1), rel=1e-3)
    slow.calls.in_flight = 1  # ours running there: the feedback applies
    assert plugins.predicted_seconds(slow, req(1), Context(0.0, 5.0)) == pytest.approx(
        1 / (1 / slow.calls.slowdown)
    )
    d0 = slow.calls.slowdown
    half_life = max(2.0, 4 * max(slow.calls.latency.values()) * sched.pool_units["p"])
    slow.calls.faded_at -= half_life  # one half-life later, by the probe's clock
    sched.scraped(slow)
    assert slow.calls.slowdown == pytest.approx(1 + (d0 - 1) / 2, rel=1e-3)
