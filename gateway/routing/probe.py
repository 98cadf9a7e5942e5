"""Load probe: scrapes each endpoint's Prometheus page in the background.

Every endpoint with a `metrics_url` (Consul Meta or config) is scraped on an interval (default
1 s, jittered so that N gateways do not scrape in step). The page is filtered down to the metric
names listed for the endpoint's backend kind in metric_names.yaml (data, not code), parsed with
prometheus_client's parser and reduced to a `LoadSample`. `metrics_url` may list several URLs,
comma-separated (a Triton's own page and the node's DCGM exporter): their pages are read as one.
Several endpoints sharing the same URLs (a Triton serving two pools) cost one scrape.

A failed or malformed scrape keeps the last good sample: its age grows, and the scheduler stops
trusting values older than `max_age_s`. Nothing here runs on the request path: the scheduler
reads `EndpointState.load`, a reference swapped in whole after each scrape.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, NamedTuple

import aiohttp
import certifi
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ..endpoints import EndpointState, Shared

log = logging.getLogger("meshgate.probe")

SIGNALS = frozenset(
    {
        "gpu_util",
        "gpu_mem_used",
        "gpu_mem_free",
        "gpu_mem_total",
        "queue",
        "running",
        "kv_cache",
        "queue_us",
        "compute_us",
        "requests",
    }
)


class MetricSpec(NamedTuple):
    metric: str
    signal: str
    scale: float = 1.0
    model_label: str = ""


def load_metric_names(path: str | None = None) -> dict[str, tuple[MetricSpec, ...]]:
    """backend kind -> metrics to read. The packaged table, or the file at `path`."""
    if path:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    else:
        raw = yaml.safe_load(resources.files(__package__).joinpath("metric_names.yaml").read_text())
    if not isinstance(raw, dict):
        raise ValueError("metric names: expected a mapping of backend kind -> list of metrics")
    table: dict[str, tuple[MetricSpec, ...]] = {}
    for kind, entries in raw.items():
        specs = []
        for i, e in enumerate(entries or []):
            if not isinstance(e, dict) or "metric" not in e or e.get("signal") not in SIGNALS:
                raise ValueError(
                    f"metric names: {kind}[{i}]: needs `metric` and a `signal` in {sorted(SIGNALS)}"
                )
            specs.append(
                MetricSpec(
                    str(e["metric"]),
                    str(e["signal"]),
                    float(e.get("scale", 1.0)),
                    str(e.get("model_label", "")),
                )
            )
        table[str(kind)] = tuple(specs)
    return table


@dataclass(frozen=True)
class LoadSample:
    """What one scrape said about an endpoint. None = the page did not say."""

    at: float  # time.monotonic() of the scrape
    gpu_util: float | None = None
    gpu_mem: float | None = None
    queue: float | None = None
    running: float | None = None
    kv_cache: float | None = None
    # Requests executing on average since the previous scrape, all models: compute-seconds per
    # second from the compute-time counter (Little's law), else the `running` gauge (vLLM).
    busy: float | None = None
    completed: float | None = None  # requests answered since the previous scrape, all models
    # Per model (None key = all models): waiting requests, and per-request queue/compute seconds
    # over the last scrape interval (from cumulative counters).
    model_queue: Mapping[str, float] = field(default_factory=dict)
    queue_s_per_request: Mapping[str, float] = field(default_factory=dict)
    compute_s_per_request: Mapping[str, float] = field(default_factory=dict)
    counters: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (signal, model) -> value

    def age(self, now: float) -> float:
        return now - self.at

    def queue_for(self, model: str) -> float | None:
        if model in self.model_queue:
            return self.model_queue[model]
        return self.queue


def parse_page(
    text: str,
    specs: Iterable[MetricSpec],
    at: float,
    previous: LoadSample | None,
    models: frozenset[str] | None = None,
) -> LoadSample:
    """Reduce a Prometheus text page to a LoadSample. Raises ValueError when it does not parse.

    Lines are kept by metric name before prometheus_client's parser sees them (it costs ~15 us
    a sample); with `models`, per-model lines only for those models (a Triton serving 50 models
    behind an endpoint that declares 3 is parsed for 3), unless a metric has no line for any of
    them."""
    by_name = {s.metric: s for s in specs}
    wanted = (
        {s.metric: tuple(f'{s.model_label}="{m}"' for m in models) for s in by_name.values() if s.model_label}
        if models is not None
        else {}
    )
    kept = []
    others: dict[str, list[str]] = {}  # per-model lines for other models, by metric
    matched: set[str] = set()
    for line in text.splitlines():
        if line[:1] in ("#", ""):
            continue
        name = _name(line)
        if name not in by_name:
            continue
        labels = wanted.get(name)
        if labels is not None:
            if not any(label in line for label in labels):
                others.setdefault(name, []).append(line)
                continue
            matched.add(name)
        kept.append(line)
    for name, lines in others.items():  # no line for a declared model: the label holds another
        if name not in matched:  # name for it (a served-model alias): read them all, as without
            kept += lines
    sums: dict[str, list[float]] = {}
    per_model: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families("\n".join(kept) + "\n"):
        for sample in family.samples:
            spec = by_name.get(sample.name)
            if spec is None:
                continue
            value = float(sample.value) * spec.scale
            if value != value:  # NaN: the server has no value now
                continue
            sums.setdefault(spec.signal, []).append(value)
            if spec.model_label and spec.model_label in sample.labels:
                key = (spec.signal, sample.labels[spec.model_label])
                per_model[key] = per_model.get(key, 0.0) + value

    def mean(signal: str) -> float | None:
        values = sums.get(signal)
        return sum(values) / len(values) if values else None

    def total(signal: str) -> float | None:
        values = sums.get(signal)
        return sum(values) if values else None

    gpu_mem = None
    used, free, cap = total("gpu_mem_used"), total("gpu_mem_free"), total("gpu_mem_total")
    if used is not None and cap:
        gpu_mem = used / cap
    elif used is not None and free is not None and used + free > 0:
        gpu_mem = used / (used + free)
    counters = {k: v for k, v in per_model.items() if k[0] in ("queue_us", "compute_us", "requests")}
    for signal in ("queue_us", "compute_us", "requests"):
        if signal in sums:
            counters[(signal, "")] = sum(sums[signal])
    queue_s, compute_s = _rates(counters, previous)
    running = total("running")
    busy = running
    completed = None
    if previous is not None and at > previous.at:
        now_c, old_c = counters.get(("compute_us", "")), previous.counters.get(("compute_us", ""))
        if now_c is not None and old_c is not None and now_c >= old_c:
            busy = (now_c - old_c) / 1e6 / (at - previous.at)
        now_r, old_r = counters.get(("requests", "")), previous.counters.get(("requests", ""))
        if now_r is not None and old_r is not None and now_r >= old_r:
            completed = now_r - old_r
    return LoadSample(
        at=at,
        gpu_util=mean("gpu_util"),
        gpu_mem=gpu_mem,
        queue=total("queue"),
        running=running,
        busy=busy,
        completed=completed,
        kv_cache=mean("kv_cache"),
        model_queue={m: v for (s, m), v in per_model.items() if s == "queue"},
        queue_s_per_request=queue_s,
        compute_s_per_request=compute_s,
        counters=counters,
    )


def _rates(
    counters: Mapping[tuple[str, str], float], previous: LoadSample | None
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-request queue and compute seconds between the previous scrape and this one."""
    queue_s: dict[str, float] = {}
    compute_s: dict[str, float] = {}
    if previous is None:
        return queue_s, compute_s
    old = previous.counters
    for (signal, model), value in counters.items():
        if signal != "requests" or (signal, model) not in old:
            continue
        done = value - old[(signal, model)]
        if done <= 0:  # nothing finished, or the server restarted (counter reset)
            continue
        for name, out in (("queue_us", queue_s), ("compute_us", compute_s)):
            now_v, old_v = counters.get((name, model)), old.get((name, model))
            if now_v is not None and old_v is not None and now_v >= old_v:
                out[model] = (now_v - old_v) / done / 1e6
    return queue_s, compute_s


def observe(
    state: EndpointState,
    sample: LoadSample,
    completed: int | None = None,
    models: frozenset[str] | None = None,
) -> None:
    """A fresh scrape of `state`'s metrics: keep it, and what it says beyond our own calls.

    When more than one endpoint state shares the page (one Triton serving two pools),
    `completed` is our answered calls to all of them and `models` all the models they declare."""
    previous, state.load = state.load, sample
    # What of the scraped queue was ours: the scheduler counts ours exactly, and only the rest
    # (other replicas', other clients') is news; a stale total would double-count ours.
    state.queued_at_scrape = max(0, state.in_flight - state.endpoint.slots)
    # Latency feedback fades (half per scrape) unless completions renew it: an endpoint judged
    # slow gets little traffic, so it must not stay judged slow on old evidence.
    state.slowdown = 1.0 + (state.slowdown - 1.0) * 0.5
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
    """Split what a scrape says into ours and everyone else's: `state.shared`.

    Two different things hide in "the GPU is busy", and they cost a new request differently:
    - occupancy: other callers' requests (other gateway replicas, other clients) hold batch
      slots. A new request waits for a slot but, once running, runs at full speed. Measured as
      o = B (1 - s): B the requests executing on average over the window (`busy`: Triton's
      compute-time counter over elapsed time, or vLLM's running gauge), s our share of the
      requests the endpoint answered over recent windows (ours / its request counter). Without a
      request counter, o = B - ours, ours our own busy share (EndpointState.busy_area) times
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
        completed = state.completed
    state.account_busy(now)
    area, at = state.busy_mark
    b = (state.busy_area - area) / (now - at) if now > at else 0.0
    state.busy_mark = (state.busy_area, now)
    slots = state.endpoint.slots
    last = state.shared
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
    state.shared = Shared(x, others, now, share, state.in_flight, completed, seen_ours, seen_all, herd)


def herd_factors(states: Iterable[EndpointState]) -> None:
    """Per pool, how many calls other gateway replicas send per call of ours: h = 1 / S - 1, S
    our share of the answers of all the pool's scraped endpoints over recent windows (capped at
    h = 19, S = 5%). Pool-wide, not per endpoint: replicas behind one load balancer see the same
    traffic and react alike to the same scraped snapshot, which is what predicted_seconds
    extrapolates; a client calling one endpoint directly lowers our share there but does not
    herd with us. 0 where we are the only caller, or before the counters say."""
    by_pool: dict[str, list[EndpointState]] = {}
    for s in states:
        if s.shared is not None:
            by_pool.setdefault(s.endpoint.pool, []).append(s)
    for members in by_pool.values():
        ours = sum(s.shared.seen_ours for s in members if s.shared is not None)
        seen = sum(s.shared.seen_all for s in members if s.shared is not None)
        herd = 1.0 / max(0.05, min(1.0, ours / seen)) - 1.0 if seen >= 1.0 else 0.0
        for s in members:
            if s.shared is not None and s.shared.herd != herd:
                s.shared = s.shared._replace(herd=herd)


def _name(line: str) -> str:
    end = len(line)
    for sep in ("{", " "):
        i = line.find(sep)
        if 0 <= i < end:
            end = i
    return line[:end]


class LoadProbe:
    """Scrapes metrics URLs of the endpoints that `states()` returns, forever, in the background."""

    def __init__(
        self,
        states: Callable[[], Iterable[EndpointState]],
        *,
        interval_s: float = 1.0,
        jitter: float = 0.2,
        timeout_s: float = 0.5,
        metric_names: Mapping[str, tuple[MetricSpec, ...]] | None = None,
        on_scrape: Callable[[str, bool], None] = lambda url, ok: None,
        max_concurrent: int = 32,
    ) -> None:
        self._states = states
        self.interval_s = interval_s
        self.jitter = jitter
        self.timeout_s = timeout_s
        self.metric_names = metric_names if metric_names is not None else load_metric_names()
        self._on_scrape = on_scrape
        # aiohttp, not httpx, for the scrapes: ~80 us of CPU per GET against ~830 us (measured
        # with 100 servers, `make bench-probe`), which is the difference between a 1,000-endpoint
        # fleet costing 0.1 or 1 core per scrape interval; and httpcore's pool scans every pooled
        # connection on each request event (encode/httpcore#1035), so one pool holding 1,000
        # servers' connections made a round O(n^2). aiohttp's connector keys connections by host.
        # It is already installed for the Consul source (py-consul[asyncio]).
        self._session: aiohttp.ClientSession | None = None
        self._tls = ssl.create_default_context(cafile=certifi.where())
        # Scrapes in flight at once: all at once would queue a whole round's callbacks ahead of
        # the calls the same event loop serves.
        self._slots = asyncio.Semaphore(max_concurrent)
        self._last: dict[str, LoadSample] = {}
        self.errors: dict[str, str] = {}  # url -> last error, cleared by a good scrape

    def specs_for(self, backend: str) -> tuple[MetricSpec, ...]:
        return self.metric_names.get("any", ()) + self.metric_names.get(backend, ())

    async def scrape_once(self) -> None:
        """One round: each distinct URL once, concurrently; results go to every endpoint using it."""
        by_url: dict[str, list[EndpointState]] = {}
        for state in self._states():
            if state.endpoint.metrics_url:
                by_url.setdefault(state.endpoint.metrics_url, []).append(state)
        for url in [u for u in self._last if u not in by_url]:
            del self._last[url]
        await asyncio.gather(*(self._scrape(url, states) for url, states in by_url.items()))
        herd_factors(s for states in by_url.values() for s in states)

    async def _get(self, url: str) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=0, limit_per_host=4, ssl=self._tls, keepalive_timeout=30
                ),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                raise_for_status=True,
            )
        async with self._session.get(url) as resp:
            return await resp.text()

    async def _scrape(self, url: str, states: list[EndpointState]) -> None:
        specs = self.specs_for(states[0].endpoint.backend)
        urls = [u.strip() for u in url.split(",") if u.strip()]
        models = frozenset(ref.name for s in states for ref in s.endpoint.models)
        try:
            async with self._slots:
                pages = await asyncio.gather(*(self._get(u) for u in urls))
            sample = parse_page("\n".join(pages), specs, time.monotonic(), self._last.get(url), models)
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            message = f"{type(err).__name__}: {err}"[:200]
            if self.errors.get(url) != message:
                log.warning("load probe: %s: %s (keeping the last good values)", url, message)
            self.errors[url] = message
            self._on_scrape(url, False)
            return
        self.errors.pop(url, None)
        self._last[url] = sample
        completed = sum(s.completed for s in states)
        for state in states:
            observe(state, sample, completed, models)
        self._on_scrape(url, True)

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.scrape_once()
            except Exception:  # a bug must not stop load-aware routing for good
                log.exception("load probe round failed")
            pause = self.interval_s * (1 + random.uniform(-self.jitter, self.jitter))
            await asyncio.sleep(max(0.0, pause - (time.monotonic() - started)))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def describe(sample: Any) -> str:
    """One line for logs and the Models service."""
    if sample is None:
        return "no metrics"
    parts = [
        f"{name}={getattr(sample, name):.2f}"
        for name in ("gpu_util", "gpu_mem", "queue", "running", "kv_cache")
        if getattr(sample, name) is not None
    ]
    return " ".join(parts) or "no known signals"
