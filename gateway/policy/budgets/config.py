"""The `budgets` section of the gateway config."""

from __future__ import annotations

import zoneinfo
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..auth.config import Who


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Budget(_Strict):
    """A cap on what each `scope` value (each department, project, user or API key that `who`
    matches) may spend per window. A call counts against every budget that applies to it, so a
    user's call spends its own budget, its project's and its department's."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    scope: Literal["department", "project", "user", "api_key"]
    who: Who = Field(default_factory=Who)
    models: list[str] = Field(default_factory=lambda: ["*"])  # globs over the model named
    limit: float = Field(gt=0)
    unit: Literal["money", "tokens"] = "money"  # money: prices.currency; tokens: in + out
    # Calendar windows in budgets.timezone, or a fixed length in seconds (window_s).
    window: Literal["daily", "weekly", "monthly"] | None = "monthly"
    window_s: float | None = Field(default=None, ge=1)
    on_store_error: Literal["open", "closed"] = "open"  # the shared store (Redis) unreachable

    @model_validator(mode="after")
    def _one_window(self) -> Budget:
        if self.window_s is not None and self.window is not None and "window" in self.model_fields_set:
            raise ValueError("give window or window_s, not both")
        return self

    @property
    def period(self) -> str:
        if self.window_s is not None:
            return f"{self.window_s:g} s"
        return {"daily": "day", "weekly": "week", "monthly": "month"}[str(self.window)]


class BudgetsConfig(_Strict):
    # memory: this process (spend restored from the ledger at start); redis: shared by every
    # replica that uses the same Redis (the `redis` section; always exact, never leased).
    store: Literal["memory", "redis"] = "memory"
    timezone: str = "UTC"  # where calendar windows start (midnight; Monday; the 1st)
    soft_threshold: float = Field(default=0.8, gt=0, le=1)  # exported for alerts when passed
    # A self-hosted call reserves this many seconds of its costliest endpoint (or its deadline,
    # if sooner) before it runs; what it really held is settled after.
    gpu_reserve_s: float = Field(default=30.0, gt=0)
    limits: list[Budget] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name: UTC, Europe/Paris)") from None
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> BudgetsConfig:
        names = [b.name for b in self.limits]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"budget names must be unique; repeated: {', '.join(dupes)}")
        return self
