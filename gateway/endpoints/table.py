"""The live endpoint table: what discovery found, with adapters and runtime state."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping

import grpc

from adapters import REGISTRY, Adapter
from adapters.tls import KEYS as TLS_KEYS
from discovery import Endpoint, PoolSnapshot

from ..errors import GatewayError, did_you_mean, echo
from .state import EndpointState
from .upstream import with_upstream

log = logging.getLogger("meshgate.endpoints")

AdapterMaker = Callable[[Endpoint], Adapter]


def default_adapter_maker(max_message_bytes: int) -> AdapterMaker:
    def make(ep: Endpoint) -> Adapter:
        return REGISTRY[ep.backend](ep.id, ep.address, max_message_bytes=max_message_bytes, options=ep.meta)

    return make


class EndpointTable:
    """Merges snapshots from every source into pools; indexes endpoints by model."""

    def __init__(
        self,
        make_adapter: AdapterMaker,
        on_change: Callable[[list[EndpointState]], None] = lambda added: None,
        gpu_capacity: Mapping[str, float] | None = None,
        upstream_tls: Mapping[str, dict[str, str]] | None = None,
    ) -> None:
        self._make_adapter = make_adapter
        self._on_change = on_change
        # GPU class -> capacity, for endpoints that name their GPU (Meta `gpu`) but no capacity.
        self._gpu_capacity = dict(gpu_capacity or {})
        # pool (or "*") -> TLS options for its adapters (config upstream_tls; upstream.py).
        self._upstream: dict[str, dict[str, str]] = dict(upstream_tls or {})
        self._by_source: dict[tuple[str, str], tuple[Endpoint, ...]] = {}
        self._health_checked: set[tuple[str, str]] = set()  # (source, pool) snapshots that vouch
        self._states: dict[tuple[str, str], EndpointState] = {}  # (pool, id) -> state
        self._by_model: dict[str, list[EndpointState]] = {}
        self._retired: list[tuple[EndpointState, float]] = []  # (state, time retired)
        # Endpoints whose adapter could not be built: (pool, id) -> (definition, reason), and
        # counts by (source, reason) for meshgate_discovery_invalid_entries_total.
        self._rejected: dict[tuple[str, str], tuple[Endpoint, str]] = {}
        self.invalid: dict[tuple[str, str], int] = {}
        # (pool, id) drained by an operator: kept while the endpoint comes and goes, so a drain
        # holds across discovery changes and config reloads (not across a restart).
        self._drained: set[tuple[str, str]] = set()

    def apply(self, snap: PoolSnapshot) -> None:
        """Replace what `snap.source` said about `snap.pool`; `on_change` gets the new endpoints."""
        self._by_source[(snap.source, snap.pool)] = snap.endpoints
        if snap.health_checked:
            self._health_checked.add((snap.source, snap.pool))
        else:
            self._health_checked.discard((snap.source, snap.pool))
        self._rebuild()

    def set_upstream_tls(self, upstream_tls: Mapping[str, dict[str, str]]) -> None:
        """A config reload's upstream_tls: endpoints whose TLS changed get new adapters."""
        if dict(upstream_tls) != self._upstream:
            self._upstream = dict(upstream_tls)
            self._rebuild()

    def remove(self, source: str, pool: str) -> None:
        """Forget what `source` said about `pool` (a static pool dropped by a config reload)."""
        self._by_source.pop((source, pool), None)
        self._health_checked.discard((source, pool))
        self._rebuild()

    def _rebuild(self) -> None:
        wanted: dict[tuple[str, str], Endpoint] = {}
        origin: dict[tuple[str, str], str] = {}  # key -> the source that listed it first
        vouched: set[tuple[str, str]] = set()
        for (source, pool), eps in sorted(self._by_source.items()):
            checked = (source, pool) in self._health_checked
            for ep in eps:
                if checked:
                    vouched.add((pool, ep.id))
                if "capacity" not in ep.meta and ep.gpu in self._gpu_capacity:
                    ep = dataclasses.replace(ep, capacity=self._gpu_capacity[ep.gpu])
                meta = with_upstream(ep.meta, pool, self._upstream)
                if meta is not ep.meta:
                    ep = dataclasses.replace(ep, meta=meta)
                if (pool, ep.id) not in wanted:
                    wanted[(pool, ep.id)] = ep
                    origin[(pool, ep.id)] = source
        for key in [k for k in self._states if k not in wanted]:
            state = self._states.pop(key)
            self._retired.append((state, time.monotonic()))
            log.info("endpoint removed: pool=%s id=%s", key[0], key[1])
        added: list[EndpointState] = []
        for key, ep in wanted.items():
            old = self._states.get(key)
            if old is not None and old.endpoint == ep:
                continue
            if old is not None and _connection(old.endpoint) == _connection(ep):
                old.endpoint = ep  # metadata change only: keep the connection and state
                continue
            adapter = self._build(ep, origin[key])
            if adapter is None:
                continue
            if old is not None:
                self._retired.append((old, time.monotonic()))
            self._states[key] = state = EndpointState(ep, adapter)
            state.drained = key in self._drained
            added.append(state)
            log.info(
                "endpoint added: pool=%s id=%s address=%s backend=%s", ep.pool, ep.id, ep.address, ep.backend
            )
        for key, state in self._states.items():
            state.health_checked = key in vouched
        self._reindex()
        self._on_change(added)

    def _build(self, ep: Endpoint, source: str) -> Adapter | None:
        """The endpoint's adapter, or None when it cannot be built: that endpoint is skipped, with
        one log line and one count per endpoint and reason, and every other endpoint applies.
        A skipped endpoint is tried again at the next snapshot (the key file may exist by then)."""
        try:
            adapter = self._make_adapter(ep)
        except Exception as err:  # one endpoint must never blank the table; bugs get a traceback
            if isinstance(err, ValueError):  # backend options (Meta) that the adapter refuses
                reason = "bad_options"
            elif isinstance(err, OSError):  # a key or certificate file that cannot be read
                reason = "unreadable_file"
            else:
                reason = "adapter_error"
            seen = (ep, reason)
            if self._rejected.get((ep.pool, ep.id)) != seen:
                self._rejected[(ep.pool, ep.id)] = seen
                self.invalid[(source, reason)] = self.invalid.get((source, reason), 0) + 1
                log.error(
                    "endpoint skipped: pool=%s id=%s backend=%s: %s",
                    ep.pool,
                    ep.id,
                    ep.backend,
                    err,
                    exc_info=reason == "adapter_error",
                )
            return None
        self._rejected.pop((ep.pool, ep.id), None)
        return adapter

    def _reindex(self) -> None:
        by_model: dict[str, list[EndpointState]] = {}
        for state in self._states.values():
            for name in {ref.name for ref in state.endpoint.models}:
                by_model.setdefault(name, []).append(state)
        self._by_model = by_model

    def drain(self, pool: str, endpoint_id: str, drained: bool) -> EndpointState:
        """Take the endpoint out of rotation (or put it back). NOT_FOUND when no pool lists it."""
        state = self._states.get((pool, endpoint_id))
        if state is None:
            pools = {p for p, _ in self._states}
            if pool not in pools:
                raise GatewayError(
                    grpc.StatusCode.NOT_FOUND,
                    f"pool: no pool {echo(pool)}{did_you_mean(pool, pools)}",
                    field="pool",
                )
            ids = [i for p, i in self._states if p == pool]
            raise GatewayError(
                grpc.StatusCode.NOT_FOUND,
                f"endpoint_id: pool {echo(pool)} has no endpoint {echo(endpoint_id)}"
                f"{did_you_mean(endpoint_id, ids)}",
                field="endpoint_id",
            )
        if drained:
            self._drained.add((pool, endpoint_id))
        else:
            self._drained.discard((pool, endpoint_id))
        if state.drained != drained:
            state.drained = drained
            log.info("endpoint %s: pool=%s id=%s", "drained" if drained else "undrained", pool, endpoint_id)
            self._on_change([])
        return state

    def pools(self) -> dict[str, list[EndpointState]]:
        """Every pool a source lists (empty ones included), with its endpoints."""
        pools: dict[str, list[EndpointState]] = {pool: [] for _, pool in self._by_source}
        for (pool, _), state in self._states.items():
            pools.setdefault(pool, []).append(state)
        return pools

    def take_retired(self, linger_s: float = 60.0) -> list[Adapter]:
        """Adapters of removed endpoints whose in-flight calls have ended (or that lingered
        `linger_s`), for the caller to close. Removed endpoints get no new calls at once."""
        now = time.monotonic()
        done = [s for s, at in self._retired if s.calls.in_flight == 0 or now - at > linger_s]
        self._retired = [
            (s, at) for s, at in self._retired if not (s.calls.in_flight == 0 or now - at > linger_s)
        ]
        return [s.adapter for s in done]

    def candidates(self, model: str, version: str) -> list[EndpointState]:
        """Endpoints that serve model/version, ready or not. NOT_FOUND when none does."""
        states = self._by_model.get(model)
        if not states:
            raise GatewayError(
                grpc.StatusCode.NOT_FOUND,
                f"model: {echo(model)} is not served by any pool{did_you_mean(model, self._by_model)}",
                field="model",
            )
        if version:
            matching = [s for s in states if s.serves(model, version)]
            if not matching:
                known = sorted({r.version for s in states for r in s.endpoint.models if r.name == model})
                raise GatewayError(
                    grpc.StatusCode.NOT_FOUND,
                    f"model_version: model {echo(model)} version {echo(version)} is not served by any pool"
                    f" (served versions: {', '.join(known)})",
                    field="model_version",
                )
            return matching
        return states

    def states(self) -> Iterable[EndpointState]:
        return self._states.values()

    def models(self) -> dict[str, list[EndpointState]]:
        return self._by_model

    def pool_states(self, pool: str) -> list[EndpointState]:
        return [s for (p, _), s in self._states.items() if p == pool]

    def pool_ready(self) -> dict[str, bool]:
        ready: dict[str, bool] = {}
        for (pool, _), state in self._states.items():
            ready[pool] = ready.get(pool, False) or (
                state.health.live and bool(state.health.ready_models) and not state.drained
            )
        for _, pool in self._by_source:
            ready.setdefault(pool, False)
        return ready


def _connection(ep: Endpoint) -> tuple[object, ...]:
    """What the adapter's connection is made of: a change rebuilds it (anything else in the
    metadata is updated in place, keeping the connection and what calls taught)."""
    return (ep.address, ep.backend, *(ep.meta.get(k) for k in TLS_KEYS))
