"""What the config builds for the gateway: the authorisation rules, the rate limits' counters,
the stage list, the upstream TLS options (app.py wires them; a reload builds them again)."""

from __future__ import annotations

import urllib.parse

from adapters.scrub import register_secret

from ..config import Config
from ..observe.metrics import Metrics
from ..pipeline.stages import Stage, build_stages
from ..policy.admission.stage import AdmissionStage
from ..policy.auth.authorize import AuthorizeStage, Rules
from ..policy.cache.redis_store import RedisCache
from ..policy.cache.stage import CacheStage
from ..policy.cache.store import CacheStore, MemoryCache
from ..policy.limits.stage import RateLimitStage
from ..stores.counters import Counters, MemoryCounters
from ..stores.leased import LeasedCounters
from ..stores.redis_store import RedisCounters


def stages(
    config: Config,
    metrics: Metrics,
    rules: Rules | None,
    counters: Counters,
    cache: CacheStore,
    admission: AdmissionStage,
    extra: tuple[Stage, ...] = (),
) -> tuple[Stage, ...]:
    authorize = AuthorizeStage(rules) if rules is not None else None
    limits = None
    if config.rate_limits.limits:
        slot_ttl = config.server.max_timeout_s + 60.0  # a dead holder's slot frees itself
        limits = RateLimitStage(config.rate_limits.limits, counters, metrics, slot_ttl, admission.pressure)
    cached = CacheStage(config.cache, cache, metrics) if config.cache is not None else None
    admission.configure(config.admission)
    admit = admission if admission.enabled else None
    return build_stages(
        config, metrics, extra, authorize=authorize, limits=limits, cache=cached, admission=admit
    )


def _redis_url(url: str) -> str:
    password = urllib.parse.urlsplit(url).password
    if password:
        register_secret(password)  # masked in every message and log line
    return url


def cache(config: Config, metrics: Metrics) -> CacheStore:
    c = config.cache
    if c is not None and c.store == "redis" and config.redis is not None:
        r = config.redis
        return RedisCache(
            _redis_url(r.url),
            metrics,
            max_bytes=c.max_bytes,
            timeout_s=r.timeout_s,
            retry_s=r.retry_s,
            prefix=r.prefix,
        )
    return MemoryCache(c.max_bytes if c is not None else 0)


def counters(config: Config) -> Counters:
    if config.rate_limits.store == "redis" and config.redis is not None:
        r = config.redis
        _redis_url(r.url)
        redis = RedisCounters(r.url, timeout_s=r.timeout_s, retry_s=r.retry_s, prefix=r.prefix)
        if r.mode == "leased":
            return LeasedCounters(redis, lease_fraction=r.lease_fraction, lease_s=r.lease_s)
        return redis
    return MemoryCounters()


def upstream(config: Config) -> dict[str, dict[str, str]]:
    return {pool: tls.options() for pool, tls in config.upstream_tls.items()}


def rules(config: Config) -> Rules | None:
    return Rules(config.auth) if config.auth.rules or config.auth.default == "deny" else None
