"""Scheduler plugins, profiles, outlier ejection, retry budget and the metrics parser, with fakes."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter

import pytest

from discovery import Endpoint, ModelRef
from gateway.config import Config
from gateway.endpoints import EndpointState, Shared
from gateway.load import LoadSample, herd_factors, load_metric_names, observe, parse_page, split_load
from gateway.routing import plugins
from gateway.routing.outlier import OutlierDetector, OutlierPolicy, RetryBudget
from gateway.routing.plugins import Context, RequestInfo
from gateway.routing.scheduler import Scheduler

NOW = 1000.0
CTX = Context(NOW, 5.0)


def state(
    name: str,
    capacity: float = 1.0,
    slots: int = 1,
    in_flight: int = 0,
    units: float = 0.0,
    region: str = "",
    load: LoadSample | None = None,
) -> EndpointState:
    ep = Endpoint(
        id=name,
        pool="p",
        host="127.0.0.1",
        port=1,
        backend="triton",
        models=(ModelRef("m"),),
        region=region,
        capacity=capacity,
        slots=slots,
    )
    s = EndpointState(ep, adapter=None)  # type: ignore[arg-type]
    s.health.live = True
    s.health.ready_models = frozenset({ModelRef("m")})
    s.calls.in_flight = in_flight
    s.calls.units = units
    s.scrape.load = load
    return s


def req(units: float = 1.0, region: str = "") -> RequestInfo:
    return RequestInfo("m", "", units, region, 1.0)


# -- formulas ---------------------------------------------------------------------------------


def test_predicted_counts_free_slots_so_light_work_uses_an_idle_slow_gpu() -> None:
    slow_idle = state("slow", capacity=1, slots=4)
    fast_busy = state("fast", capacity=4, slots=1, in_flight=1, units=8)
    # light: slow idle = 1/1 = 1; fast busy = 1/4 + 1 ahead x 8 units / (4 x 1) = 2.25
    assert plugins.predicted_seconds(slow_idle, req(1), CTX) == pytest.approx(1.0)
    assert plugins.predicted_seconds(fast_busy, req(1), CTX) == pytest.approx(2.25)
    # heavy: slow idle = 8; fast busy = 2 + 2 = 4
    assert plugins.predicted_seconds(slow_idle, req(8), CTX) == pytest.approx(8.0)
    assert plugins.predicted_seconds(fast_busy, req(8), CTX) == pytest.approx(4.0)
    sched = Scheduler()
    assert sched.pick([slow_idle, fast_busy], req(1)) is slow_idle
    assert sched.pick([slow_idle, fast_busy], req(8)) is fast_busy


def test_background_gpu_load_slows_the_predicted_rate_and_stale_values_stop_counting() -> None:
    s = state("a", capacity=2, slots=2)
    t0 = s.calls.busy_since
    split_load(s, LoadSample(at=t0 + 1.0, gpu_util=0.8))  # nothing of ours ran: all 80% is someone else's
    ctx = Context(t0 + 1.0, 5.0)
    assert plugins.background_util(s, ctx) == pytest.approx(0.8)
    assert plugins.predicted_seconds(s, req(1), ctx) == pytest.approx(1 / (2 * 0.2))
    # One of two slots ours for the whole next window: g = x + (1 - x) * 0.5 -> x = (0.8 - 0.5) / 0.5
    s.calls.account(t0 + 1.0, 2)  # as the scheduler does before in_flight changes
    s.calls.in_flight = 1
    split_load(s, LoadSample(at=t0 + 2.0, gpu_util=0.8))
    assert plugins.background_util(s, Context(t0 + 2.0, 5.0)) == pytest.approx(0.6)
    # All slots ours: g says nothing about x, the last estimate stays.
    s.calls.account(t0 + 2.0, 2)  # as the scheduler does before in_flight changes
    s.calls.in_flight = 2
    split_load(s, LoadSample(at=t0 + 3.0, gpu_util=1.0))
    assert plugins.background_util(s, Context(t0 + 3.0, 5.0)) == pytest.approx(0.6)
    assert plugins.background_util(s, Context(t0 + 9.0, 5.0)) == 0.0  # older than max_age_s
    # Requests waiting in its queue: every slot is taken, so g says nothing about x either.
    s.calls.account(t0 + 3.0, 2)  # as the scheduler does before in_flight changes
    s.calls.in_flight = 0
    split_load(s, LoadSample(at=t0 + 4.0, gpu_util=0.2, queue=2.0))
    assert plugins.background_util(s, Context(t0 + 4.0, 5.0)) == pytest.approx(0.6)
    s.scrape.load = LoadSample(at=t0 + 3.0, gpu_util=0.8)
    assert plugins.s_gpu_headroom(s, req(), Context(t0 + 3.5, 5.0)) == pytest.approx(0.2)
    assert plugins.s_gpu_headroom(s, req(), Context(t0 + 9.0, 5.0)) == 0.5


def triton_page(done: int, compute_s: float, util: float) -> str:
    return (
        f'nv_inference_request_success{{model="m",version="1"}} {done}\n'
        f'nv_inference_compute_infer_duration_us{{model="m",version="1"}} {compute_s * 1e6:.0f}\n'
        f'DCGM_FI_DEV_GPU_UTIL{{gpu="0"}} {util * 100:.0f}\n'
    )


def test_other_callers_requests_hold_slots_without_slowing_the_gpu() -> None:
    """Another gateway replica keeps 3 of 4 slots busy: the GPU reports 75% utilisation. That is
    occupancy (Triton's compute-time counter says 3 requests ran on average), not a slower GPU:
    one slot is free and a new request runs at full speed; a second one of ours would wait."""
    specs = load_metric_names()["any"] + load_metric_names()["triton"]
    s = state("a", capacity=2, slots=4)
    t0 = s.calls.busy_since
    first = parse_page(triton_page(0, 0.0, 0.0), specs, t0 + 1.0, None)
    observe(s, first)
    page = parse_page(triton_page(30, 3.0, 0.75), specs, t0 + 2.0, first)  # 30 answers, none ours
    assert (page.busy, page.completed) == (pytest.approx(3.0), 30)
    observe(s, page)
    ctx = Context(t0 + 2.0, 5.0)
    assert s.scrape.shared is not None
    assert s.scrape.shared.others == pytest.approx(3.0)
    assert plugins.background_util(s, ctx) == pytest.approx(0.0)
    assert plugins.predicted_seconds(s, req(1), ctx) == pytest.approx(1 / 2)  # the free slot, full speed
    s.calls.in_flight, s.calls.units = 1, 1.0
    # busy = 1 + 3 = slots: one ahead, of 1 unit, on 4 slots at rate 2
    assert plugins.predicted_seconds(s, req(1), ctx) == pytest.approx(1 / 2 + 1 / (2 * 4))
    # Without the compute counter, the same 75% would all read as background load.
    t = state("b", capacity=2, slots=4)
    split_load(t, LoadSample(at=t.calls.busy_since + 1.0, gpu_util=0.75))
    assert plugins.background_util(t, Context(t.calls.busy_since + 1.0, 5.0)) == pytest.approx(0.75)


def test_replicas_share_extrapolates_what_the_others_sent_since_the_scrape() -> None:
    """We answered 10 of its 30 requests: our share is 1/3. Two more calls of ours since the
    scrape mean about four more from the other replicas, deciding from the same snapshot."""
    specs = load_metric_names()["any"] + load_metric_names()["triton"]
    s = state("a", capacity=1, slots=8)
    t0 = s.calls.busy_since
    first = parse_page(triton_page(0, 0.0, 0.0), specs, t0 + 1.0, None)
    observe(s, first)
    s.calls.completed = 10
    observe(s, parse_page(triton_page(30, 0.0, 0.0), specs, t0 + 2.0, first))
    herd_factors([s])
    assert s.scrape.shared is not None and s.scrape.shared.share == pytest.approx(1 / 3)
    assert s.scrape.shared.herd == pytest.approx(2.0)
    ctx = Context(t0 + 2.0, 5.0)
    s.calls.in_flight, s.calls.units = 5, 5.0  # 5 more since the scrape: 5 + 10 others = 15 busy
    # ahead = 5 + 10 - 8 + 1 = 8, each 1 unit, on 8 slots at rate 1
    assert plugins.predicted_seconds(s, req(1), ctx) == pytest.approx(1 + 8 / 8)
    assert plugins.predicted_seconds(state("alone", slots=8, in_flight=5, units=5), req(1), ctx) == 1


def test_scraped_queue_counts_as_work_ahead() -> None:
    q = LoadSample(at=NOW, queue=9.0, model_queue={"m": 3.0})
    s = state("a", capacity=1, slots=1, load=q)
    assert plugins.s_queue(s, req(), CTX) == pytest.approx(1 / (1 + 3))  # the model's own queue
    assert plugins.predicted_seconds(s, req(2), CTX) == pytest.approx(2 + 3 * 2)
    assert plugins.s_queue(state("b", slots=2, in_flight=5), req(), CTX) == pytest.approx(1 / 4)


def test_simple_scorers() -> None:
    assert plugins.s_inflight(state("a", in_flight=3), req(), CTX) == pytest.approx(0.25)
    w = 4 / (1 + 1)
    assert plugins.s_weighted_inflight(state("a", capacity=4, in_flight=1), req(), CTX) == pytest.approx(
        w / (1 + w)
    )
    assert plugins.s_outstanding(state("a", capacity=2, units=6), req(), CTX) == pytest.approx(0.25)
    assert plugins.s_region(state("a", region="eu"), req(region="us"), CTX) == 0.0
    assert plugins.s_region(state("a", region="eu"), req(region="eu"), CTX) == 1.0
    s = state("a")
    assert plugins.s_latency(s, req(), CTX) == 0.5  # neutral before the first sample
    s.calls.latency["m"] = 0.030  # 30 ms per unit: 1 / (1 + 3)
    assert plugins.s_latency(s, req(), CTX) == pytest.approx(0.25)
    fast = state("b")
    fast.calls.latency["m"] = 0.005  # 5 ms per unit: 1 / (1 + 0.5)
    assert plugins.s_latency(fast, req(), CTX) == pytest.approx(2 / 3)
    assert plugins.s_latency(fast, req(), CTX) > plugins.s_latency(s, req(), CTX)
    for v in (
        plugins.s_predicted(state("x", in_flight=50, units=400), req(), CTX),
        plugins.s_gpu_headroom(s, req(), CTX),
    ):
        assert 0.0 <= v <= 1.0


# -- profiles and pickers ---------------------------------------------------------------------


def test_weighted_profile_normalises_weights() -> None:
    from gateway.routing.scheduler import Profile, ProfileSpec

    p = Profile("mix", ProfileSpec(("ready",), {"inflight": 3.0, "region": 1.0}, "max_score"))
    s = state("a", in_flight=1, region="eu")
    assert p.score(s, req(region="eu"), CTX) == pytest.approx(0.75 * 0.5 + 0.25 * 1.0)


def test_max_score_rotates_between_equals_and_p2c_compares_two_distinct() -> None:
    sched = Scheduler(default_profile="least_inflight")
    a, b, c = state("a"), state("b"), state("c")
    picks = Counter(sched.pick([a, b, c], req()).endpoint.id for _ in range(300))  # type: ignore[union-attr]
    assert set(picks) == {"a", "b", "c"} and min(picks.values()) >= 90
    sched = Scheduler(default_profile="p2c_inflight")
    busy, idle = state("busy", in_flight=5), state("idle")
    assert all(sched.pick([busy, idle], req()) is idle for _ in range(50))
    three = [state("x", in_flight=9), state("y", in_flight=1), state("z", in_flight=0)]
    never = Counter(sched.pick(three, req()).endpoint.id for _ in range(600))  # type: ignore[union-attr]
    assert never["x"] == 0  # x loses every pair it is drawn in


def test_filters_exclude_not_ready_ejected_and_tried() -> None:
    sched = Scheduler()
    a, b, c = state("a"), state("b"), state("c")
    b.health.live = False
    c.ejection.ejected_until = time.monotonic() + 60
    assert sched.pick([a, b, c], req()) is a
    assert sched.pick([a, b, c], req(), exclude=[a]) is None
    region_sched = Scheduler()
    eu, us = state("eu", region="eu", in_flight=3), state("us", region="us")
    assert region_sched.pick([eu, us], req(region="eu")) is eu  # soft: the region wins while it can
    eu.health.live = False
    assert region_sched.pick([eu, us], req(region="eu")) is us


def test_unknown_plugins_and_profiles_are_config_errors() -> None:
    with pytest.raises(ValueError, match="unknown scorer 'gpu'"):
        Config.model_validate({"routing": {"profiles": {"x": {"scorers": {"gpu": 1}}}}})
    with pytest.raises(ValueError, match=r"pool_profiles\.llm: unknown profile 'fast'"):
        Config.model_validate({"routing": {"pool_profiles": {"llm": "fast"}}})
    cfg = Config.model_validate(
        {
            "routing": {
                "profile": "mine",
                "profiles": {"mine": {"scorers": {"predicted": 2, "gpu_headroom": 1}, "picker": "p2c"}},
            }
        }
    )
    assert cfg.routing.profiles["mine"].picker == "p2c"


# -- outlier ejection and retry budget --------------------------------------------------------


def test_consecutive_failures_eject_with_growing_time_and_a_cap_on_the_share() -> None:
    pool = [state(n) for n in "abcd"]
    det = OutlierDetector(OutlierPolicy(consecutive_failures=3, base_ejection_s=10, max_ejected_percent=50))
    det.pool_states = lambda p: pool
    ejected: list[tuple[str, float]] = []
    det.on_eject = lambda s, sec: ejected.append((s.endpoint.id, sec))
    a = pool[0]
    det.failure(a)
    det.failure(a)
    det.success(a)  # a success resets the count
    det.failure(a)
    det.failure(a)
    assert a.ejection.ejected_until == 0
    det.failure(a)
    assert ejected == [("a", 10)] and a.ejection.ejected_until > time.monotonic()
    a.ejection.ejected_until = 0  # the ejection ran out; failing again doubles it
    for _ in range(3):
        det.failure(a)
    assert ejected[-1] == ("a", 20)
    for s in pool[1:]:  # at most 50% of the pool: b joins a, c and d stay
        for _ in range(3):
            det.failure(s)
    assert [e[0] for e in ejected] == ["a", "a", "b"]


def test_retry_budget_allows_a_floor_then_a_share_of_requests() -> None:
    budget = RetryBudget(percent=20, min_per_s=1)  # floor: 1/s x 10 s window = 10
    assert sum(budget.try_retry("p") for _ in range(20)) == 10
    for _ in range(100):
        budget.request("p")
    assert sum(budget.try_retry("p") for _ in range(50)) == pytest.approx(20, abs=1)
    assert budget.try_retry("other")  # budgets are per pool


# -- metrics parsing --------------------------------------------------------------------------

TRITON_PAGE = """# HELP nv_inference_pending_request_count Instantaneous number of pending requests
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="resnet",version="1"} 4
nv_inference_pending_request_count{model="bert",version="1"} 1
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="resnet",version="1"} 110
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="resnet",version="1"} 60000
nv_inference_compute_infer_duration_us{model="resnet",version="1"} 250000
nv_gpu_utilization{gpu_uuid="GPU-1"} 0.5
nv_gpu_utilization{gpu_uuid="GPU-2"} 0.7
nv_gpu_memory_used_bytes{gpu_uuid="GPU-1"} 2e9
nv_gpu_memory_total_bytes{gpu_uuid="GPU-1"} 8e9
nv_cpu_utilization 0.3
"""


def test_parse_triton_page_with_counter_rates() -> None:
    specs = load_metric_names()["triton"]
    first = parse_page(TRITON_PAGE, specs, 1.0, None)
    assert first.gpu_util == pytest.approx(0.6)
    assert first.gpu_mem == pytest.approx(0.25)
    assert first.queue == 5 and dict(first.model_queue) == {"resnet": 4, "bert": 1}
    assert first.queue_for("bert") == 1 and first.queue_for("other") == 5
    later = (
        TRITON_PAGE.replace("} 110", "} 120").replace("} 60000", "} 80000").replace("} 250000", "} 300000")
    )
    second = parse_page(later, specs, 2.0, first)
    assert second.queue_s_per_request["resnet"] == pytest.approx(0.002)  # 20 ms / 10 requests
    assert second.compute_s_per_request["resnet"] == pytest.approx(0.005)


def test_parse_dcgm_and_vllm_pages_and_reject_garbage() -> None:
    names = load_metric_names()
    dcgm = 'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-1",modelName="H100"} 90\nDCGM_FI_DEV_FB_USED{gpu="0"} 1000\nDCGM_FI_DEV_FB_FREE{gpu="0"} 3000\n'
    s = parse_page(dcgm, names["any"], 0.0, None)
    assert s.gpu_util == pytest.approx(0.9) and s.gpu_mem == pytest.approx(0.25)
    vllm = 'vllm:num_requests_waiting{model_name="llama",engine="0"} 7\nvllm:num_requests_running{model_name="llama",engine="0"} 3\nvllm:kv_cache_usage_perc{model_name="llama",engine="0"} 0.42\n'
    v = parse_page(vllm, names["vllm"], 0.0, None)
    assert (v.queue, v.running, v.kv_cache, v.queue_for("llama")) == (7, 3, pytest.approx(0.42), 7)
    with pytest.raises(ValueError):
        parse_page('nv_gpu_utilization{gpu_uuid="x" 0.5\n', names["triton"], 0.0, None)


def test_prefer_cost_takes_half_the_score_from_price() -> None:
    from dataclasses import replace

    cheap, dear = state("cheap"), state("dear")
    dear.endpoint = replace(dear.endpoint, meta={"price_in_per_1k": "0.1", "price_out_per_1k": "0.15"})
    assert plugins.s_price(dear, req(), CTX) == pytest.approx(0.8)
    assert plugins.s_price(cheap, req(), CTX) == 1.0
    sched = Scheduler()
    by_cost = RequestInfo("m", "", 1.0, "", 1.0, "cost")
    assert all(sched.pick([dear, cheap], by_cost) is cheap for _ in range(10))
    assert {sched.pick([dear, cheap], req()).endpoint.id for _ in range(10)} == {"cheap", "dear"}  # type: ignore[union-attr]
    cheap.calls.in_flight, cheap.calls.units = 4, 32.0  # 33x slower now: speed outweighs a 20% price gap
    assert sched.pick([dear, cheap], by_cost) is dear


def test_gpu_class_sets_capacity_unless_given() -> None:
    from discovery import PoolSnapshot
    from gateway.endpoints import EndpointTable

    table = EndpointTable(lambda ep: object(), gpu_capacity={"a100-80g": 4.0})  # type: ignore[arg-type,return-value]
    by_class = Endpoint(
        id="x", pool="p", host="h", port=1, backend="triton", models=(ModelRef("m"),), gpu="a100-80g"
    )
    explicit = Endpoint(
        id="y",
        pool="p",
        host="h",
        port=2,
        backend="triton",
        models=(ModelRef("m"),),
        gpu="a100-80g",
        capacity=2.0,
        meta={"capacity": "2"},
    )
    unknown = Endpoint(
        id="z", pool="p", host="h", port=3, backend="triton", models=(ModelRef("m"),), gpu="t4"
    )
    table.apply(PoolSnapshot(source="s", pool="p", endpoints=(by_class, explicit, unknown)))
    assert {s.endpoint.id: s.endpoint.capacity for s in table.states()} == {"x": 4.0, "y": 2.0, "z": 1.0}


def test_alias_split_follows_weights_then_the_fallback_chain() -> None:
    import random

    from gateway.routing.aliases import Alias, Policies, Target

    canary, stable, small = Target("llm", "2"), Target("llm", "1"), Target("llm-small", "", "cpu")
    policies = Policies({"chat": Alias(((canary, 1.0), (stable, 9.0)), (small,))}, random.Random(3))
    firsts = Counter(policies.chain("chat", "")[0][0] for _ in range(2000))
    assert 150 <= firsts[canary] <= 250 and firsts[canary] + firsts[stable] == 2000
    chain, spill = policies.chain("chat", "")
    assert chain[1:] == (small,) and spill
    assert policies.chain("plain", "3") == ((Target("plain", "3"),), False)  # not an alias


def test_an_ensembles_composing_models_do_not_count_as_other_callers() -> None:
    """Triton counts an ensemble call once for the ensemble and once per composing model. Only
    the models the endpoint declares count, so 10 calls of ours through `pipe` are all of its
    answers (our share 1), and its compute time is the ensemble's, not three times over."""
    specs = load_metric_names()["triton"]

    def page(n: int) -> str:
        return "".join(
            f'nv_inference_request_success{{model="{m}",version="1"}} {n}\n'
            f'nv_inference_compute_infer_duration_us{{model="{m}",version="1"}} {n * 50_000}\n'
            for m in ("pipe", "pre", "post")
        )

    s = state("a", slots=4)
    s.endpoint = dataclasses.replace(s.endpoint, models=(ModelRef("pipe"),))
    t0 = s.calls.busy_since
    first = parse_page(page(0), specs, t0 + 1.0, None)
    observe(s, first)
    s.calls.completed = 10
    observe(s, parse_page(page(10), specs, t0 + 2.0, first))
    assert s.scrape.shared is not None
    assert s.scrape.shared.share == pytest.approx(1.0)
    assert s.scrape.shared.others == pytest.approx(0.0)
    assert s.scrape.load is not None and s.scrape.load.busy == pytest.approx(
        1.5
    )  # the page's total: 3 x 0.5 s


def test_vllm_running_and_answers_split_into_ours_and_other_callers() -> None:
    """vLLM: 4 requests running, 8 answered since the last scrape (vllm:request_success_total,
    summed over finish reasons), 2 of them ours. Our share is 1/4, so 3 of the 4 running are
    other callers'."""
    specs = load_metric_names()["any"] + load_metric_names()["vllm"]

    def page(done_stop: int, done_length: int) -> str:
        return (
            'vllm:num_requests_running{model_name="m",engine="0"} 4\n'
            'vllm:num_requests_waiting{model_name="m",engine="0"} 0\n'
            f'vllm:request_success_total{{finished_reason="stop",model_name="m",engine="0"}} {done_stop}\n'
            f'vllm:request_success_total{{finished_reason="length",model_name="m",engine="0"}} {done_length}\n'
        )

    s = state("v", slots=16)
    t0 = s.calls.busy_since
    first = parse_page(page(10, 2), specs, t0 + 1.0, None)
    observe(s, first)
    s.calls.completed = 2
    second = parse_page(page(16, 4), specs, t0 + 2.0, first)
    assert (second.busy, second.completed) == (4, 8)
    observe(s, second)
    assert s.scrape.shared is not None
    assert s.scrape.shared.share == pytest.approx(0.25)
    # The running gauge is instantaneous, not smoothed over scrapes: 3 of its 4 are others'.
    assert s.scrape.shared.others == pytest.approx(3.0)


def test_a_restarted_server_resets_its_counters_without_misleading_the_split() -> None:
    """Triton restarts: its counters start again from 0. That window says nothing (no negative
    rates, no share from it); the next one counts again."""
    specs = load_metric_names()["any"] + load_metric_names()["triton"]
    s = state("a", slots=4)
    t0 = s.calls.busy_since
    first = parse_page(triton_page(100, 50.0, 0.0), specs, t0 + 1.0, None)
    observe(s, first)
    s.calls.completed = 40
    restarted = parse_page(triton_page(3, 0.5, 0.0), specs, t0 + 2.0, first)
    assert (restarted.busy, restarted.completed) == (None, None)
    observe(s, restarted)
    assert s.scrape.shared is not None and s.scrape.shared.share == 1.0 and s.scrape.shared.others == 0.0
    s.calls.completed = 43
    observe(s, parse_page(triton_page(9, 2.5, 0.0), specs, t0 + 3.0, restarted))
    assert s.scrape.shared.share == pytest.approx(0.5)  # 3 of the 6 answered since are ours
    assert s.scrape.shared.others == pytest.approx(1.0)  # 2 s of compute in 1 s, half of it others'


def test_the_parser_reads_only_the_declared_models_lines_unless_none_match() -> None:
    """A Triton serving many models behind an endpoint that declares one is parsed for that one
    (prometheus_client's parser costs ~15 us a sample); a label that names none of the declared
    models (a served-model alias) falls back to reading them all."""
    specs = load_metric_names()["triton"]
    page = "".join(
        f'nv_inference_pending_request_count{{model="m{i}",version="1"}} {i}\n' for i in range(1, 12)
    )
    only = parse_page(page, specs, NOW, None, frozenset({"m1"}))
    assert dict(only.model_queue) == {"m1": 1.0} and only.queue == 1.0  # not m10 or m11
    fallback = parse_page(page, specs, NOW, None, frozenset({"llama"}))
    assert len(fallback.model_queue) == 11 and fallback.queue == sum(range(1, 12))


def test_other_callers_requests_are_taken_as_the_pools_mean_size() -> None:
    """All 4 slots hold other callers' requests. A light call waits for one of them to finish:
    how long depends on their size, which we cannot see; the pool's mean units per request (the
    same callers send them) stands in. With heavy traffic (mean 8 units) the wait is 8x that of
    light traffic (mean 1)."""
    s = state("a", capacity=1, slots=4)
    s.scrape.shared = Shared(0.0, 4.0, NOW, 0.0, 0, 0, 0.0, 10.0, 0.0)
    light_pool = plugins.predicted_seconds(s, req(1), Context(NOW, 5.0, 1.0))
    heavy_pool = plugins.predicted_seconds(s, req(1), Context(NOW, 5.0, 8.0))
    assert light_pool == pytest.approx(1 + 1 * 1 / 4)
    assert heavy_pool == pytest.approx(1 + 1 * 8 / 4)
    sched = Scheduler()
    sched.started(state("b"), req(8))  # the pool's calls so far: 8 units each
    assert sched.pool_units["p"] == 8.0
