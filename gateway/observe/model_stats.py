"""Per-model inference statistics as the gateway saw them, for KServe's ModelStatistics.

tritonclient's `get_inference_statistics` asks the server it talks to; through the gateway that
is the gateway, so these are the gateway's own counts, in Triton's shape: per (model, version),
successes and failures with their end-to-end time through the gateway (count, ns), inferences
(items: a batch of 8 counts 8) and executions (backend calls), and the last inference time. The
gateway does not see inside a backend, so Triton's queue and compute_* durations stay 0.

Only calls that reached a backend are counted, so a caller cannot grow the table with made-up
model names (and it is capped at MAX_MODELS besides). Written by ModelStatsStage on the event
loop; read by the KServe servicer on the same loop.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

MAX_MODELS = 10_000


class ModelCounts:
    __slots__ = (
        "executions",
        "fail_count",
        "fail_ns",
        "inferences",
        "last_ms",
        "success_count",
        "success_ns",
    )

    def __init__(self) -> None:
        self.success_count = self.success_ns = 0
        self.fail_count = self.fail_ns = 0
        self.inferences = self.executions = 0
        self.last_ms = 0  # ms since the epoch of the last inference


class ModelStats:
    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], ModelCounts] = {}

    def record(self, model: str, version: str, ok: bool, seconds: float, items: int, attempts: int) -> None:
        key = (model, version)
        counts = self._counts.get(key)
        if counts is None:
            if len(self._counts) >= MAX_MODELS:
                return
            counts = self._counts[key] = ModelCounts()
        ns = int(seconds * 1e9)
        if ok:
            counts.success_count += 1
            counts.success_ns += ns
            counts.inferences += items
        else:
            counts.fail_count += 1
            counts.fail_ns += ns
        counts.executions += attempts
        counts.last_ms = int(time.time() * 1000)

    def select(self, model: str = "", version: str = "") -> Iterator[tuple[str, str, ModelCounts]]:
        """(model, version, counts), sorted; all models when `model` is "", all versions when
        `version` is ""."""
        for (name, ver), counts in sorted(self._counts.items()):
            if (not model or name == model) and (not version or ver == version):
                yield name, ver, counts
