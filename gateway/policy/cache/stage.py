"""CacheStage: exact-match answers for deterministic calls, without a backend call.

What is cached: Infer and ModelInfer (and each ModelStreamInfer request), Embed, and Generate /
GenerateStream with temperature 0 or a seed, once answered OK (never an error, never a stream that
broke or was cancelled). The key is the caller's scope (cache.scope: its user by default, so
one tenant never receives another's answer), the kind, the model and version as the caller named
them, and a BLAKE2b digest of what the backend would see (inputs and their bytes, requested
outputs, parameters; messages, sampling, tools), never the request id or the caller's labels.

Per request, RoutingHints.cache_mode: use (default), bypass (neither read nor write) or
refresh (skip the read, store the fresh answer). Identical misses that arrive while the first is
on its way wait for it and are answered from it (collapsed): one backend call for all of them.
If that call fails, each waiting call goes to a backend itself.

A hit is marked in the route (RouteInfo.cache_hit, and the route of the call that filled the
entry), in the `x-meshgate-cache: hit|miss|refresh|bypass|uncacheable` trailing metadata, and in
meshgate_cache_requests_total{result}; it uses no tokens (rate limits refund its reservation).
A cached stream is replayed as a stream, message by message.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import re
import time
from typing import Any, NamedTuple

import grpc

from adapters import InferCall
from adapters.llm import EmbedCall, GenerateCall

from ...observe.metrics import Metrics
from ...pipeline.stages import Call, Outcome
from .config import CacheConfig
from .store import CacheStore

_CACHED_KINDS = frozenset({"infer", "generate", "embed"})


class Ticket(NamedTuple):
    key: bytes
    leader: asyncio.Future[Any] | None  # the collapsed waiters' future, when this call leads


class CacheStage:
    name = "cache"

    def __init__(self, config: CacheConfig, store: CacheStore, metrics: Metrics) -> None:
        self._config = config
        self._store = store
        self._metrics = metrics
        self._models = re.compile("|".join(fnmatch.translate(m) for m in config.models))
        self._inflight: dict[bytes, asyncio.Future[Any]] = {}

    async def admit(self, call: Call) -> Ticket | None:
        if call.kind not in _CACHED_KINDS or not self._models.fullmatch(call.model):
            return None
        ctx = call.ctx
        mode = ctx.cache_mode or "use"
        if mode == "bypass":
            self._count(call, "bypass")
            return None
        digest = _digest(call)
        if digest is None:
            self._count(call, "uncacheable")
            return None
        key = self._scope(call) + digest
        if mode == "refresh":
            self._count(call, "refresh")
            call.collect = [] if call.stream else None
            return Ticket(key, None)
        entry = await self._store.get(key)
        if entry is not None:
            call.hit = entry
            self._count(call, "hit")
            return None
        waiting = self._inflight.get(key)
        if waiting is not None:  # the same call is on its way: wait for its answer
            remaining = ctx.deadline - time.monotonic()
            try:
                entry = await asyncio.wait_for(asyncio.shield(waiting), max(0.0, remaining))
            except TimeoutError:
                entry = None
            if entry is not None:
                call.hit = entry
                self._count(call, "collapsed")
                return None
            self._count(call, "miss")  # it failed: this call goes to a backend itself
            call.collect = [] if call.stream else None
            return Ticket(key, None)
        leader: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[key] = leader
        self._count(call, "miss")
        call.collect = [] if call.stream else None
        return Ticket(key, leader)

    def settle(self, call: Call, ticket: Ticket | None, outcome: Outcome) -> None:
        if ticket is None:
            return
        entry = call.result if outcome.code == grpc.StatusCode.OK else None
        if entry is not None:
            self._store.put(ticket.key, entry, self._config.ttl_s, self._config.max_entry_bytes)
        if ticket.leader is not None:
            if self._inflight.get(ticket.key) is ticket.leader:
                del self._inflight[ticket.key]
            if not ticket.leader.done():
                ticket.leader.set_result(entry)

    def _scope(self, call: Call) -> bytes:
        p = call.ctx.principal
        scope = self._config.scope
        value = "*" if scope == "global" else getattr(p, scope)
        return f"{scope}={value}\0".encode()

    def _count(self, call: Call, result: str) -> None:
        call.ctx.record.cache = "hit" if result == "collapsed" else result
        counts = self._metrics.cache_results
        counts[(result,)] = counts.get((result,), 0) + 1


def _digest(call: Call) -> bytes | None:
    """What the backend would see, hashed; None when the call's answer is not deterministic."""
    req = call.request
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{call.kind}\0{call.model}\0{call.version}\0".encode())
    if isinstance(req, InferCall):
        for t in req.inputs:
            h.update(f"{t.name}\0{t.datatype}\0{t.shape}\0{sorted(t.parameters.items())}\0".encode())
            h.update(t.raw if t.raw is not None else b"c" + (t.contents or b""))
        h.update(repr((req.outputs, sorted(req.parameters.items()))).encode())
    elif isinstance(req, GenerateCall):
        if req.temperature != 0 and req.seed is None:
            return None
        h.update(repr(req._replace(request_id="", metadata={}, headers=())).encode())
    elif isinstance(req, EmbedCall):
        h.update(repr(req._replace(headers=())).encode())
    else:
        return None
    return h.digest()
