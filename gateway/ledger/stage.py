"""LedgerStage: one usage record per call that passed the policy stages (answered, failed,
cancelled or broken; calls refused by auth, limits, budgets or admission are counted in
metrics, not kept: a flood of refusals must not fill the disk). Settling costs an append to
the writer's buffer: no await, no I/O on the request path.

What is kept: when the call ended, its request id and method, the principal (user, project,
department, credential id), the model that answered (or the one named, when none did), pool,
endpoint, tokens in / out / cached (a broken or cancelled stream: what it used before it
ended), GPU-seconds and cost (prices.py), whether the cache answered, and the status.
"""

from __future__ import annotations

import time
import uuid

from prometheus_client import CollectorRegistry, Counter

from ..pipeline.stages import Call, Outcome, settled_usage
from .prices import Prices
from .records import UsageRecord
from .writer import LedgerWriter


class LedgerStage:
    name = "ledger"

    def __init__(self, writer: LedgerWriter, prices: Prices, cost_total: Counter) -> None:
        self._writer = writer
        self._prices = prices
        self._cost_total = cost_total

    def admit(self, call: Call) -> None:
        return None

    def settle(self, call: Call, ticket: None, outcome: Outcome) -> None:
        ctx = call.ctx
        record = ctx.record
        usage = settled_usage(call, outcome)
        model = record.model or call.model
        charge = self._prices.of_call(call, outcome)
        p = ctx.principal
        self._writer.append(
            UsageRecord(
                uuid.uuid4().hex,
                time.time(),
                ctx.request_id,
                ctx.method,
                p.user,
                p.project,
                p.department,
                p.credential_id,
                model,
                record.pool,
                record.endpoint,
                _count(usage.prompt_tokens) if usage is not None else 0,
                _count(usage.completion_tokens) if usage is not None else 0,
                _count(usage.cached_tokens) if usage is not None else 0,
                charge.gpu_seconds,
                charge.cost,
                call.hit is not None,
                outcome.code.name,
            )
        )
        if charge.cost:
            self._cost_total.labels(record.pool).inc(charge.cost)


def _count(n: int) -> int:
    """A token count as a column holds it: a backend's absurd number must not refuse a batch."""
    return min(max(int(n), 0), 2**62)


def cost_counter(registry: CollectorRegistry, currency: str) -> Counter:
    return Counter(
        "meshgate_cost",
        f"What calls cost ({currency}; prices config, Meta prices and GPU-seconds), by pool.",
        ["pool"],
        registry=registry,
    )
