"""The `rate_limits` and `redis` sections of the gateway config."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..auth.config import Who

KeyField = Literal["user", "project", "department", "api_key", "model"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Adaptive(_Strict):
    """Tighten a limit while the pool serving the call is under pressure: (calls running there
    + calls queued at its servers and in the gateway) per endpoint slot. Above `pressure`, the
    rate and burst are scaled by pressure / observed (never below `min_factor`); they relax as
    the pool recovers."""

    pressure: float = Field(default=1.0, gt=0)
    min_factor: float = Field(default=0.1, gt=0, le=1)


class RateLimit(_Strict):
    """One limit. It applies to the calls whose principal matches `who` (empty: everybody) and
    whose model (or alias, as the caller named it) matches one of `models`; each distinct value
    of the `key` fields gets its own budget (key [project]: one per project)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    key: list[KeyField] = Field(default_factory=lambda: list[KeyField](["user"]))
    who: Who = Field(default_factory=Who)
    models: list[str] = Field(default_factory=lambda: ["*"])
    requests_per_s: float | None = Field(default=None, gt=0)
    burst: float | None = Field(default=None, ge=1)  # requests at once; default: one second's worth
    tokens_per_min: float | None = Field(default=None, gt=0)  # LLM calls: prompt + output tokens
    tokens_burst: float | None = Field(default=None, ge=1)  # default: one minute's worth
    concurrent: int | None = Field(default=None, ge=1)  # calls in flight at once
    adaptive: Adaptive | None = None  # tighten while the serving pool is under pressure
    # When the store cannot be reached: let the call through (open) or refuse it (closed).
    on_store_error: Literal["open", "closed"] = "open"

    @model_validator(mode="after")
    def _something_to_limit(self) -> RateLimit:
        if self.requests_per_s is None and self.tokens_per_min is None and self.concurrent is None:
            raise ValueError("give at least one of requests_per_s, tokens_per_min and concurrent")
        if self.burst is not None and self.requests_per_s is None:
            raise ValueError("burst goes with requests_per_s")
        if self.tokens_burst is not None and self.tokens_per_min is None:
            raise ValueError("tokens_burst goes with tokens_per_min")
        return self


class RateLimitsConfig(_Strict):
    # memory: this process only (the embedded default); redis: shared by every replica that
    # uses the same Redis (the `redis` section).
    store: Literal["memory", "redis"] = "memory"
    limits: list[RateLimit] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> RateLimitsConfig:
        names = [r.name for r in self.limits]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"limit names must be unique; repeated: {', '.join(dupes)}")
        return self


class RedisConfig(_Strict):
    """The Redis that replicas share (rate_limits.store: redis). Not a Redis Cluster: one call's
    keys are used together in one script."""

    url: str = "redis://127.0.0.1:6379/0"  # redis://[:password@]host:port/db, rediss:// for TLS
    timeout_s: float = Field(default=0.25, gt=0)  # per operation; then the limit's on_store_error
    retry_s: float = Field(default=1.0, gt=0)  # after a failure, Redis is not tried for this long
    prefix: str = "meshgate:"  # every key starts with it
    # exact: one round trip per decision; leased: each replica leases lease_fraction of a
    # bucket's burst at a time and spends it locally (stores/leased.py: the overshoot bound).
    mode: Literal["exact", "leased"] = "exact"
    lease_fraction: float = Field(default=0.1, gt=0, le=1)
    lease_s: float = Field(default=1.0, gt=0)
