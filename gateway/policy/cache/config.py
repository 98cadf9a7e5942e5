"""The `cache` section of the gateway config."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CacheConfig(BaseModel):
    """An exact-match response cache for deterministic calls: Infer, ModelInfer, Embed, and
    Generate / GenerateStream with temperature 0 or a fixed seed. Never errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # memory: this process only (the embedded default); redis: one cache for every replica that
    # uses the same Redis (the `redis` section; entries are data, never pickle).
    store: Literal["memory", "redis"] = "memory"
    ttl_s: float = Field(default=300.0, gt=0)
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)  # least recently used go first
    max_entry_bytes: int = Field(default=8 * 1024 * 1024, ge=1)  # larger answers are not kept
    # Who shares entries: each user (default), each project or department, or everybody. A
    # caller never receives an answer cached for another scope.
    scope: Literal["user", "project", "department", "global"] = "user"
    models: list[str] = Field(default_factory=lambda: ["*"])  # globs over the model the caller named
