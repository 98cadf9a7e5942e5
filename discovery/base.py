"""The DiscoverySource seam: where endpoints come from.

A source yields full snapshots per pool (never deltas): the latest snapshot of a pool replaces
the previous one from the same source. A source that loses its upstream keeps quiet, so the last
snapshot stays in force.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A model an endpoint serves; version "" = whatever the server serves by default."""

    name: str
    version: str = ""

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """'name' or 'name:version'."""
        name, _, version = text.partition(":")
        return cls(name.strip(), version.strip())


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One model server instance, as discovered."""

    id: str
    pool: str
    host: str
    port: int
    backend: str
    models: tuple[ModelRef, ...]
    region: str = ""
    metrics_url: str = ""
    capacity: float = 1.0
    gpu: str = ""
    meta: Mapping[str, str] = field(default_factory=dict)
    # Requests the server runs at once (batch slots / model instances); more wait in its queue.
    slots: int = 1
    # Complexity units per item (tensor models) or per 1,000 tokens (LLMs), by model name;
    # models not listed cost routing.model_costs or 1.
    costs: Mapping[str, float] = field(default_factory=dict)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """Every endpoint of `pool` known to `source`, now."""

    source: str
    pool: str
    endpoints: tuple[Endpoint, ...]
    # The source lists only instances whose health checks pass (Consul's ?passing), and drops
    # one as soon as its checks fail: the gateway then checks these less often while they are
    # ready (readiness.health_checked_interval_s).
    health_checked: bool = False


class DiscoverySource(Protocol):
    """Produces pool snapshots until closed.

    `watch` is called once by the gateway and iterated in a background task; it must not raise
    for upstream errors (log, count, back off, keep the last snapshot) and ends when `aclose`
    is called.
    """

    name: str

    def watch(self) -> AsyncIterator[PoolSnapshot]: ...

    async def aclose(self) -> None: ...
