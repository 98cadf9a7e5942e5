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
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, NamedTuple

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ..endpoints import EndpointState

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


def parse_page(text: str, specs: Iterable[MetricSpec], at: float, previous: LoadSample | None) -> LoadSample:
    """Reduce a Prometheus text page to a LoadSample. Raises ValueError when it does not parse."""
    by_name = {s.metric: s for s in specs}
    kept = [line for line in text.splitlines() if line[:1] not in ("#", "") and _name(line) in by_name]
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
    return LoadSample(
        at=at,
        gpu_util=mean("gpu_util"),
        gpu_mem=gpu_mem,
        queue=total("queue"),
        running=total("running"),
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


def observe(state: EndpointState, sample: LoadSample) -> None:
    """A fresh scrape of `state`'s metrics: keep it, and what it says beyond our own calls."""
    state.load = sample
    # What of the scraped queue was ours: the scheduler counts ours exactly, and only the rest
    # (other replicas', other clients') is news; a stale total would double-count ours.
    state.queued_at_scrape = max(0, state.in_flight - state.endpoint.slots)
    # Latency feedback fades (half per scrape) unless completions renew it: an endpoint judged
    # slow gets little traffic, so it must not stay judged slow on old evidence.
    state.slowdown = 1.0 + (state.slowdown - 1.0) * 0.5
    if sample.gpu_util is not None:
        split_background(state, sample.gpu_util, sample.at)


def split_background(state: EndpointState, gpu_util: float, now: float) -> None:
    """Split a scraped GPU utilisation g into ours and everyone else's (x, the background).

    Our busy share b is averaged over the time since the previous scrape (GPU utilisation is a
    windowed average too: DCGM samples it over its collection interval). A GPU running other
    work x and ours b of the time reports g = x + (1 - x) b, so x = (g - b) / (1 - b), clamped
    to [0, 0.95]. When our work fills the GPU (b >= 0.95), g says nothing about x: keep the last.
    """
    state.account_busy(now)
    area, at = state.busy_mark
    b = (state.busy_area - area) / (now - at) if now > at else 0.0
    state.busy_mark = (state.busy_area, now)
    if b >= 0.95:
        if state.background is not None:
            state.background = (state.background[0], now)
        return
    x = (gpu_util - b) / (1.0 - b)
    state.background = (min(0.95, max(0.0, x)), now)


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
    ) -> None:
        self._states = states
        self.interval_s = interval_s
        self.jitter = jitter
        self.timeout_s = timeout_s
        self.metric_names = metric_names if metric_names is not None else load_metric_names()
        self._on_scrape = on_scrape
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s), limits=httpx.Limits(max_keepalive_connections=256)
        )
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

    async def _get(self, url: str) -> str:
        resp = await self._client.get(url)
        resp.raise_for_status()
        return resp.text

    async def _scrape(self, url: str, states: list[EndpointState]) -> None:
        specs = self.specs_for(states[0].endpoint.backend)
        urls = [u.strip() for u in url.split(",") if u.strip()]
        try:
            pages = await asyncio.gather(*(self._get(u) for u in urls))
            sample = parse_page("\n".join(pages), specs, time.monotonic(), self._last.get(url))
        except (httpx.HTTPError, ValueError) as err:
            message = f"{type(err).__name__}: {err}"[:200]
            if self.errors.get(url) != message:
                log.warning("load probe: %s: %s (keeping the last good values)", url, message)
            self.errors[url] = message
            self._on_scrape(url, False)
            return
        self.errors.pop(url, None)
        self._last[url] = sample
        for state in states:
            observe(state, sample)
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
        await self._client.aclose()


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
