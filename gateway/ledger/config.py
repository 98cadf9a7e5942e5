"""The `ledger` and `prices` sections of the gateway config."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LedgerConfig(_Strict):
    """Durable usage records, one per call. sqlite: a file of this host (the embedded default);
    postgres: one database for every replica."""

    store: Literal["sqlite", "postgres"] = "sqlite"
    path: str = "meshgate-usage.db"  # sqlite: the database file (WAL mode)
    url: str = ""  # postgres: postgresql://user:password@host:5432/db
    # Records are written in batches at least this often: a crash loses at most the calls that
    # completed within the last interval.
    flush_interval_s: float = Field(default=1.0, gt=0, le=60)
    max_batch: int = Field(
        default=1000, ge=1
    )  # records per write (bench-ledger: 1000 keeps event-loop stalls ~4 ms)
    # Records held while the database is unreachable; past this, new records are dropped and
    # counted (meshgate_ledger_records_total{result="dropped"}), never silently.
    max_buffered: int = Field(default=200_000, ge=1)


class TokenPrice(_Strict):
    """Money per 1,000 tokens."""

    in_per_1k: float = Field(default=0.0, ge=0)
    out_per_1k: float = Field(default=0.0, ge=0)
    cached_per_1k: float | None = Field(default=None, ge=0)  # default: in_per_1k


class PricesConfig(_Strict):
    """What calls cost. Token prices per model (globs, first match) win over an endpoint's
    Consul Meta (price_in_per_1k, price_out_per_1k, price_cached_per_1k). Self-hosted
    endpoints are charged per GPU-second from their cost_per_hour (Meta or `meta` in the pool
    config): a call holds one of the endpoint's slots for as long as its backend call lasts,
    so it costs seconds / slots GPU-seconds, at cost_per_hour / 3600 each."""

    currency: str = "USD"
    models: dict[str, TokenPrice] = Field(default_factory=dict)
    cache_hit: float = Field(default=0.0, ge=0)  # money per call answered from the cache
