"""What the config builds for the gateway: the authorisation rules, the rate limits' counters,
the stage list, the upstream TLS options (app.py wires them; a reload builds them again)."""

from __future__ import annotations

import logging
import os
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence

from adapters.scrub import register_secret
from discovery import Endpoint

from ..config import Config
from ..endpoints import EndpointState
from ..ledger.prices import Prices
from ..ledger.records import LedgerStore, LedgerUnavailable
from ..ledger.sqlite import SQLiteLedger
from ..ledger.stage import LedgerStage, cost_counter
from ..ledger.writer import LedgerWriter
from ..load import LoadProbe, load_metric_names
from ..observe.metrics import Metrics
from ..pipeline.stages import Stage, build_stages
from ..policy.admission.stage import AdmissionStage
from ..policy.auth.authorize import AuthorizeStage, Rules
from ..policy.budgets.stage import BudgetMetrics, BudgetStage, ledger_restore
from ..policy.cache.redis_store import RedisCache
from ..policy.cache.stage import CacheStage
from ..policy.cache.store import CacheStore, MemoryCache
from ..policy.limits.stage import RateLimitStage
from ..stores.counters import Counters, MemoryCounters
from ..stores.leased import LeasedCounters
from ..stores.redis_store import RedisCounters

log = logging.getLogger("meshgate")


class Shared:
    """What the stages keep across config reloads, built once at start (which store each uses
    is restart-only): the rate limits' counters, the response cache's store, fair admission's
    queues, the usage ledger's writer."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        admission: AdmissionStage,
        endpoints: Callable[[str, str], Sequence[Endpoint]],
    ) -> None:
        self.counters = counters(config)
        self.budget_counters = budget_counters(config)
        self.budget_metrics = BudgetMetrics(metrics.registry)
        self.endpoints = endpoints  # the endpoints that could serve (model, version)
        self.budget_stage: BudgetStage | None = None  # the running config's (Admin/ListBudgets)
        self.cache = cache(config, metrics)
        self.admission = admission
        self.ledger = ledger(config, metrics)
        self.currency = config.prices.currency  # restart-only with the ledger: totals stay in one currency
        self.cost = cost_counter(metrics.registry, self.currency)

    async def start(self) -> None:
        if self.ledger is not None:
            try:
                await self.ledger.store.open()
            except LedgerUnavailable as err:  # records wait in the buffer until it opens
                log.warning("ledger: %s (records are kept and written when it can be reached)", err)
            self.ledger.start()

    async def aclose(self) -> None:
        await self.counters.aclose()
        await self.budget_counters.aclose()
        await self.cache.aclose()
        if self.ledger is not None:
            await self.ledger.aclose()


def stages(
    config: Config, metrics: Metrics, rules: Rules | None, shared: Shared, extra: tuple[Stage, ...] = ()
) -> tuple[Stage, ...]:
    authorize = AuthorizeStage(rules) if rules is not None else None
    admission = shared.admission
    limits = None
    if config.rate_limits.limits:
        slot_ttl = config.server.max_timeout_s + 60.0  # a dead holder's slot frees itself
        limits = RateLimitStage(
            config.rate_limits.limits, shared.counters, metrics, slot_ttl, admission.pressure
        )
    cached = CacheStage(config.cache, shared.cache, metrics) if config.cache is not None else None
    admission.configure(config.admission)
    admit = admission if admission.enabled else None
    prices = Prices(config.prices)
    ledger = LedgerStage(shared.ledger, prices, shared.cost) if shared.ledger is not None else None
    budget = None
    if config.budgets.limits:
        restore = None
        if config.budgets.store == "memory" and shared.ledger is not None:
            restore = ledger_restore(shared.ledger.store.usage, shared.ledger.flush)
        budget = BudgetStage(
            config.budgets, shared.budget_counters, prices, shared.endpoints, shared.budget_metrics, restore
        )
    shared.budget_stage = budget
    return build_stages(
        config,
        metrics,
        extra,
        authorize=authorize,
        limits=limits,
        cache=cached,
        budget=budget,
        admission=admit,
        ledger=ledger,
    )


def ledger(config: Config, metrics: Metrics) -> LedgerWriter | None:
    c = config.ledger
    if c is None:
        return None
    store: LedgerStore
    if c.store == "postgres":
        from ..ledger.postgres import PostgresLedger

        store = PostgresLedger(_store_url(c.url))
    else:
        store = SQLiteLedger(os.path.expanduser(c.path))
    return LedgerWriter(
        store,
        metrics.registry,
        flush_interval_s=c.flush_interval_s,
        max_batch=c.max_batch,
        max_buffered=c.max_buffered,
    )


def _store_url(url: str) -> str:
    """The URL of a store (Redis, PostgreSQL), its password registered as a secret."""
    password = urllib.parse.urlsplit(url).password
    if password:
        register_secret(password)  # masked in every message and log line
    return url


def cache(config: Config, metrics: Metrics) -> CacheStore:
    c = config.cache
    if c is not None and c.store == "redis" and config.redis is not None:
        r = config.redis
        return RedisCache(
            _store_url(r.url),
            metrics,
            max_bytes=c.max_bytes,
            timeout_s=r.timeout_s,
            retry_s=r.retry_s,
            prefix=r.prefix,
        )
    return MemoryCache(c.max_bytes if c is not None else 0)


def budget_counters(config: Config) -> Counters:
    """Budgets' counters: Redis in exact mode (never leased: the overshoot bound is one
    reservation per replica), or this process's memory."""
    if config.budgets.store == "redis" and config.redis is not None:
        r = config.redis
        return RedisCounters(_store_url(r.url), timeout_s=r.timeout_s, retry_s=r.retry_s, prefix=r.prefix)
    return MemoryCounters(time.time)


def counters(config: Config) -> Counters:
    if config.rate_limits.store == "redis" and config.redis is not None:
        r = config.redis
        _store_url(r.url)
        redis = RedisCounters(r.url, timeout_s=r.timeout_s, retry_s=r.retry_s, prefix=r.prefix)
        if r.mode == "leased":
            return LeasedCounters(redis, lease_fraction=r.lease_fraction, lease_s=r.lease_s)
        return redis
    return MemoryCounters()


def upstream(config: Config) -> dict[str, dict[str, str]]:
    return {pool: tls.options() for pool, tls in config.upstream_tls.items()}


def rules(config: Config) -> Rules | None:
    return Rules(config.auth) if config.auth.rules or config.auth.default == "deny" else None


def probe(
    config: Config,
    states: Callable[[], Iterable[EndpointState]],
    metrics: Metrics,
    on_sample: Callable[[EndpointState], None],
) -> LoadProbe:
    """The load probe over the endpoint table, reporting each fresh sample to the scheduler."""
    cfg = config.routing.load_probe
    return LoadProbe(
        states,
        interval_s=cfg.interval_s,
        jitter=cfg.jitter,
        timeout_s=cfg.timeout_s,
        max_concurrent=cfg.max_concurrent,
        metric_names=load_metric_names(cfg.metric_names),
        on_scrape=lambda url, ok: metrics.scrapes.labels("ok" if ok else "error").inc(),
        on_sample=on_sample,
    )
