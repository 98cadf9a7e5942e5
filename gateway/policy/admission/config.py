"""The `admission` section of the gateway config."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..auth.config import Who


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PriorityClass(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_-]{1,32}$")
    # Longest a call of this class waits for capacity; 0: never waits (shed when the pool is full).
    max_wait_s: float = Field(default=30.0, ge=0)


class ClassRule(_Strict):
    """Principals matching `who` get `priority` as their class (first match)."""

    who: Who
    priority: str


def _default_classes() -> list[PriorityClass]:
    return [
        PriorityClass(name="critical", max_wait_s=60.0),
        PriorityClass(name="standard", max_wait_s=30.0),
        PriorityClass(name="sheddable", max_wait_s=0.0),
    ]


class AdmissionConfig(_Strict):
    """While a pool has no free capacity, calls wait in the gateway: classes in priority order
    (first listed is served first), tenants within a class in weighted fair share."""

    pools: list[str] = Field(default_factory=list)  # globs of the pools that get a queue (none: off)
    per_slot: float = Field(default=1.0, gt=0)  # calls in flight per endpoint slot before calls queue
    max_queued: int = Field(default=1000, ge=1)  # waiting calls per pool
    tenant: Literal["user", "project", "department"] = "project"  # whose share is kept fair
    weights: dict[str, float] = Field(default_factory=dict)  # tenant -> weight (default 1)
    # A tenant returning from idle may go up to this many calls (x its weight) ahead of the busy
    # tenants' fair-share order: short bursts of a tenant below its share pass at once.
    idle_credit: float = Field(default=2.0, ge=0)
    classes: list[PriorityClass] = Field(default_factory=_default_classes)
    default_class: str = "standard"
    class_rules: list[ClassRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _known_classes(self) -> AdmissionConfig:
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError("class names must be unique")
        for name in [self.default_class, *(r.priority for r in self.class_rules)]:
            if name not in names:
                raise ValueError(f"unknown priority class {name!r}; expected one of {', '.join(names)}")
        for tenant, weight in self.weights.items():
            if not weight > 0:
                raise ValueError(f"weights.{tenant}: must be > 0")
        return self
