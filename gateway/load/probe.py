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

import aiohttp
import certifi

from ..endpoints import EndpointState
from .parse import LoadSample, MetricSpec, load_metric_names, parse_page
from .split import herd_factors, observe

log = logging.getLogger("meshgate.probe")


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
        on_sample: Callable[[EndpointState], None] = lambda state: None,
        max_concurrent: int = 32,
    ) -> None:
        self._states = states
        self.interval_s = interval_s
        self.jitter = jitter
        self.timeout_s = timeout_s
        self.metric_names = metric_names if metric_names is not None else load_metric_names()
        self._on_scrape = on_scrape  # (url, ok) per scrape: metrics
        self._on_sample = on_sample  # per endpoint with a fresh sample: the scheduler
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
        completed = sum(s.calls.completed for s in states)
        for state in states:
            observe(state, sample, completed, models)
            self._on_sample(state)
        self._on_scrape(url, True)

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            await self.scrape_once()  # a bug here is caught, counted and backed off by server/background
            pause = self.interval_s * (1 + random.uniform(-self.jitter, self.jitter))
            await asyncio.sleep(max(0.0, pause - (time.monotonic() - started)))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


__all__ = ["LoadProbe", "LoadSample", "MetricSpec", "load_metric_names"]
