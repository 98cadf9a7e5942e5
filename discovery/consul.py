"""ConsulSource: live endpoint sets from the Consul catalog, by blocking queries.

One watcher follows /v1/catalog/services for the services carrying the tag (default
`inference`); each such service gets a watcher on /v1/health/service/<name>?passing&tag=...,
which emits a full PoolSnapshot whenever the passing set changes. A change in Consul therefore
reaches the gateway as soon as Consul answers the blocked query (no polling).

Consul's client rules (https://developer.hashicorp.com/consul/api-docs/features/blocking):
the index is reset to 0 when it goes backwards and is otherwise at least 1; each loop is
rate-limited (burst 2) so a flapping index cannot spin; the HTTP timeout is above wait x 17/16
(Consul adds up to wait/16 of jitter). On errors (unreachable, 5xx, 403, malformed JSON) the
watcher logs, counts, backs off with jitter and keeps quiet: the last snapshots stay in force,
and `stats.last_ok` shows how old they are. Recovery needs no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import Any

import aiohttp
import consul
import consul.aio
from pydantic import BaseModel, ConfigDict, Field

from .base import Endpoint, PoolSnapshot
from .consul_meta import InvalidEntry, endpoint_from_entry

log = logging.getLogger("meshgate.discovery.consul")

ENV_ADDR = "CONSUL_HTTP_ADDR"
ENV_TOKEN = "CONSUL_HTTP_TOKEN"
ENV_TOKEN_FILE = "CONSUL_HTTP_TOKEN_FILE"


class ConsulTLS(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True


class ConsulConfig(BaseModel):
    """discovery.consul in the gateway config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # host:port or http(s)://host:port; default $CONSUL_HTTP_ADDR, else 127.0.0.1:8500.
    address: str | None = None
    # ACL token from a file (never inline in the config); default $CONSUL_HTTP_TOKEN(_FILE).
    token_file: str | None = None
    datacenter: str | None = None
    tls: ConsulTLS | None = None
    # Services with this tag are model pools.
    tag: str = Field(default="inference", min_length=1)
    # Blocking query wait; py-consul's asyncio client caps every call, so stay under 5 minutes.
    wait_s: float = Field(default=55.0, gt=0, lt=300)
    # At most one query per interval per watcher, after a burst of 2.
    min_query_interval_s: float = Field(default=0.05, ge=0)
    backoff_max_s: float = Field(default=10.0, gt=0)


def resolve_address(config: ConsulConfig) -> tuple[str, str, int]:
    """(scheme, host, port) from config, else $CONSUL_HTTP_ADDR, else http://127.0.0.1:8500."""
    raw = config.address or os.environ.get(ENV_ADDR) or "127.0.0.1:8500"
    scheme = "https" if config.tls is not None else "http"
    if "://" in raw:
        scheme, _, raw = raw.partition("://")
    host, _, port = raw.rpartition(":")
    return scheme, host or "127.0.0.1", int(port or 8500)


def resolve_token(config: ConsulConfig) -> str | None:
    """config token_file > $CONSUL_HTTP_TOKEN > $CONSUL_HTTP_TOKEN_FILE, as Consul's CLI orders them."""
    if config.token_file:
        return Path(config.token_file).read_text().strip() or None
    if os.environ.get(ENV_TOKEN):
        return os.environ[ENV_TOKEN]
    if os.environ.get(ENV_TOKEN_FILE):
        return Path(os.environ[ENV_TOKEN_FILE]).read_text().strip() or None
    return None


def make_client(config: ConsulConfig, timeout_s: float) -> consul.aio.Consul:
    """py-consul's asyncio client; `timeout_s` caps every call (py-consul has one session timeout)."""
    scheme, host, port = resolve_address(config)
    verify: bool | str = True
    cert: Any = None
    if config.tls is not None:
        verify = config.tls.ca_file or config.tls.verify
        if config.tls.cert_file:
            cert = (
                (config.tls.cert_file, config.tls.key_file) if config.tls.key_file else config.tls.cert_file
            )
    client = consul.aio.Consul(
        host=host,
        port=port,
        scheme=scheme,
        dc=config.datacenter,
        verify=verify,
        cert=cert,
        connections_timeout=timeout_s,
    )
    client.token = resolve_token(config)  # py-consul lets $CONSUL_HTTP_TOKEN override token=
    # aiohttp resends an idempotent request once, silently, when a kept-alive connection drops.
    # For a blocking query that hides an agent restart: the resent query carries the old index
    # to an agent whose index may have gone backwards, and is held for the whole wait (24.6 s at
    # wait_s 20 when measured). Without the resend the watcher sees the error and resets its
    # index, as Consul's own watch package does. (aiohttp's test client turns it off the same way.)
    session = getattr(client.http, "_session", None)
    if session is not None and hasattr(session, "_retry_connection"):
        session._retry_connection = False
    return client


async def close_client(client: consul.aio.Consul) -> None:
    session = getattr(client.http, "_session", None)
    if session is not None:
        await session.close()


def next_index(previous: int, returned: str | int | None) -> int:
    """Consul's index rules: reset to 0 when it goes backwards, never below 1 otherwise."""
    try:
        index = int(returned or 0)
    except ValueError:
        return 0
    if index < previous:
        return 0
    return max(index, 1)


class RateLimiter:
    """Token bucket: `burst` calls at once, then one per `interval` seconds."""

    def __init__(self, interval: float, burst: int = 2) -> None:
        self._interval = interval
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = time.monotonic()

    async def wait(self) -> None:
        if self._interval <= 0:
            return
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) / self._interval)
        self._at = now
        if self._tokens < 1:
            await asyncio.sleep((1 - self._tokens) * self._interval)
            self._tokens = 1.0
            self._at = time.monotonic()
        self._tokens -= 1


class SourceStats:
    """What the watchers saw, read by the gateway's metrics collector (event loop thread writes)."""

    def __init__(self) -> None:
        self.last_ok = 0.0  # time.monotonic() of the last good answer; 0 = never
        self.errors: Counter[str] = Counter()
        self.invalid: Counter[str] = Counter()
        self._ok_at: dict[str, float] = {}  # watcher -> its last good answer
        self._failing: set[str] = set()  # watchers whose last query failed

    def ok(self, watcher: str) -> None:
        self.last_ok = self._ok_at[watcher] = time.monotonic()
        self._failing.discard(watcher)

    def failed(self, watcher: str) -> None:
        self._failing.add(watcher)

    def gone(self, watcher: str) -> None:
        self._failing.discard(watcher)
        self._ok_at.pop(watcher, None)

    def data_age(self, now: float) -> float:
        """Seconds since the data was last known current: 0 while every watcher's last query
        succeeded (a blocking query that is simply waiting is not staleness: Consul answers it
        at the first change), else the age of the oldest failing watcher's last good answer;
        inf before the first answer."""
        if not self.last_ok:
            return float("inf")
        if not self._failing:
            return 0.0
        return max(now - self._ok_at.get(w, self.last_ok) for w in self._failing)


# What a watcher survives: the network, Consul's errors (5xx, 403, 400), bodies that are not JSON.
_ERRORS = (
    aiohttp.ClientError,
    TimeoutError,
    consul.ConsulException,
    json.JSONDecodeError,
    ValueError,
    TypeError,
)


class ConsulSource:
    name = "consul"

    def __init__(self, config: ConsulConfig, known_backends: Collection[str]) -> None:
        self.config = config
        self.known_backends = frozenset(known_backends)
        self.stats = SourceStats()
        self._closed = asyncio.Event()
        self._invalid_seen: dict[str, str] = {}  # service id -> reason already logged
        self._last_error: dict[str, str] = {}  # watcher -> its last logged error

    async def watch(self) -> AsyncIterator[PoolSnapshot]:
        queue: asyncio.Queue[PoolSnapshot] = asyncio.Queue()
        client = make_client(self.config, self.config.wait_s * 17 / 16 + 5)
        catalog = asyncio.create_task(self._watch_catalog(client, queue))
        closed = asyncio.create_task(self._closed.wait())
        try:
            while not self._closed.is_set():
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                yield getter.result()
        finally:
            for task in (catalog, closed):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await catalog
            await close_client(client)

    async def aclose(self) -> None:
        self._closed.set()

    # -- watchers ------------------------------------------------------------------------------
    async def _watch_catalog(self, client: consul.aio.Consul, queue: asyncio.Queue[PoolSnapshot]) -> None:
        watchers: dict[str, asyncio.Task[None]] = {}
        limiter = RateLimiter(self.config.min_query_interval_s)
        index, failures = 0, 0
        try:
            while True:
                await limiter.wait()
                try:
                    returned, services = await client.catalog.services(
                        index=index or None, wait=f"{self.config.wait_s}s"
                    )
                    names = {str(n) for n, tags in services.items() if self.config.tag in (tags or [])}
                except _ERRORS as err:
                    # Forget the index after any error: a restarted agent's index may have gone
                    # backwards, and a stale one would hold the query for the whole wait (as
                    # Consul's own watch package does: reset, then resync at once).
                    index = 0
                    failures = await self._failed("catalog", err, failures)
                    continue
                failures = self._recovered("catalog", failures)
                index = next_index(index, returned)
                for name in sorted(names - watchers.keys()):
                    log.info("consul: following pool %s", name)
                    watchers[name] = asyncio.create_task(self._watch_service(client, name, queue))
                for name in sorted(watchers.keys() - names):
                    log.info("consul: pool %s is gone from the catalog", name)
                    watchers.pop(name).cancel()
                    self.stats.gone(f"service {name}")
                    queue.put_nowait(PoolSnapshot(self.name, name, ()))
        finally:
            for task in watchers.values():
                task.cancel()

    async def _watch_service(
        self, client: consul.aio.Consul, name: str, queue: asyncio.Queue[PoolSnapshot]
    ) -> None:
        limiter = RateLimiter(self.config.min_query_interval_s)
        index, failures = 0, 0
        last: tuple[Endpoint, ...] | None = None
        while True:
            await limiter.wait()
            try:
                returned, entries = await client.health.service(
                    name,
                    index=index or None,
                    wait=f"{self.config.wait_s}s",
                    passing=True,
                    tag=self.config.tag,
                )
                if not isinstance(entries, list):
                    raise ValueError(f"expected a list of entries, got {type(entries).__name__}")
            except _ERRORS as err:
                index = 0  # as in the catalog watcher: resync from scratch after an error
                failures = await self._failed(f"service {name}", err, failures)
                continue
            failures = self._recovered(f"service {name}", failures)
            index = next_index(index, returned)
            endpoints = self._endpoints(name, entries)
            if endpoints != last:
                last = endpoints
                queue.put_nowait(PoolSnapshot(self.name, name, endpoints, health_checked=True))

    def _endpoints(self, pool: str, entries: list[Any]) -> tuple[Endpoint, ...]:
        out: list[Endpoint] = []
        for entry in entries:
            try:
                out.append(endpoint_from_entry(entry, pool, self.known_backends))
            except InvalidEntry as err:
                self.stats.invalid[err.reason] += 1
                key = str(entry.get("Service", {}).get("ID")) if isinstance(entry, dict) else repr(entry)[:40]
                if self._invalid_seen.get(key) != str(err):  # one line per entry and problem
                    self._invalid_seen[key] = str(err)
                    log.warning("consul: skipping an instance of pool %s: %s", pool, err)
        ids = [e.id for e in out]
        if len(set(ids)) != len(ids):  # service IDs are unique per agent only: qualify by node
            out = [e if ids.count(e.id) == 1 else _with_node(e, entries) for e in out]
        return tuple(sorted(out, key=lambda e: e.id))

    async def _failed(self, what: str, err: BaseException, failures: int) -> int:
        """Count, log (first failure, a new kind of failure, then every 20th), back off with jitter."""
        kind = type(err).__name__
        self.stats.errors[kind] += 1
        self.stats.failed(what)
        failures += 1
        text = f"{kind}: {str(err)[:200] or kind}"
        if failures == 1 or failures % 20 == 0 or self._last_error.get(what) != text:
            age = time.monotonic() - self.stats.last_ok if self.stats.last_ok else float("inf")
            log.warning(
                "consul: %s query failed (%s); keeping the last known endpoints (%.0fs old), retrying",
                what,
                text,
                age,
            )
        self._last_error[what] = text
        delay = min(self.config.backoff_max_s, 0.2 * 2 ** min(failures, 10)) * random.uniform(0.5, 1.0)
        await asyncio.sleep(delay)
        return failures

    def _recovered(self, what: str, failures: int) -> int:
        self.stats.ok(what)
        self._last_error.pop(what, None)
        if failures:
            log.info("consul: %s query works again after %d failure(s)", what, failures)
        return 0


def _with_node(ep: Endpoint, entries: list[Any]) -> Endpoint:
    from dataclasses import replace

    for entry in entries:
        svc = entry.get("Service", {}) if isinstance(entry, dict) else {}
        if svc.get("ID") == ep.id and svc.get("Address", "") in ("", ep.host) and svc.get("Port") == ep.port:
            node = (entry.get("Node") or {}).get("Node", "")
            return replace(ep, id=f"{node}/{ep.id}")
    return ep
