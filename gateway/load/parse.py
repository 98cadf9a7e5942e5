"""Parsing a scraped page into a LoadSample: the metric names per backend kind are data
(metric_names.yaml), lines are filtered by name before prometheus_client's parser sees them
(~15 us a sample), and queue and compute time per request are derived from the counters."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, NamedTuple

import yaml
from prometheus_client.parser import text_string_to_metric_families

SIGNALS = frozenset(
    {
        "gpu_util",
        "gpu_mem_used",
        "gpu_mem_free",
        "gpu_mem_total",
        "queue",
        "running",
        "kv_cache",
        "queue_us",
        "compute_us",
        "requests",
    }
)


class MetricSpec(NamedTuple):
    metric: str
    signal: str
    scale: float = 1.0
    model_label: str = ""


def load_metric_names(path: str | None = None) -> dict[str, tuple[MetricSpec, ...]]:
    """backend kind -> metrics to read. The packaged table, or the file at `path`."""
    if path:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    else:
        raw = yaml.safe_load(resources.files(__package__).joinpath("metric_names.yaml").read_text())
    if not isinstance(raw, dict):
        raise ValueError("metric names: expected a mapping of backend kind -> list of metrics")
    table: dict[str, tuple[MetricSpec, ...]] = {}
    for kind, entries in raw.items():
        specs = []
        for i, e in enumerate(entries or []):
            if not isinstance(e, dict) or "metric" not in e or e.get("signal") not in SIGNALS:
                raise ValueError(
                    f"metric names: {kind}[{i}]: needs `metric` and a `signal` in {sorted(SIGNALS)}"
                )
            specs.append(
                MetricSpec(
                    str(e["metric"]),
                    str(e["signal"]),
                    float(e.get("scale", 1.0)),
                    str(e.get("model_label", "")),
                )
            )
        table[str(kind)] = tuple(specs)
    return table


@dataclass(frozen=True)
class LoadSample:
    """What one scrape said about an endpoint. None = the page did not say."""

    at: float  # time.monotonic() of the scrape
    gpu_util: float | None = None
    gpu_mem: float | None = None
    queue: float | None = None
    running: float | None = None
    kv_cache: float | None = None
    # Requests executing on average since the previous scrape, all models: compute-seconds per
    # second from the compute-time counter (Little's law), else the `running` gauge (vLLM).
    busy: float | None = None
    completed: float | None = None  # requests answered since the previous scrape, all models
    # Per model (None key = all models): waiting requests, and per-request queue/compute seconds
    # over the last scrape interval (from cumulative counters).
    model_queue: Mapping[str, float] = field(default_factory=dict)
    queue_s_per_request: Mapping[str, float] = field(default_factory=dict)
    compute_s_per_request: Mapping[str, float] = field(default_factory=dict)
    counters: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (signal, model) -> value

    def age(self, now: float) -> float:
        return now - self.at

    def queue_for(self, model: str) -> float | None:
        if model in self.model_queue:
            return self.model_queue[model]
        return self.queue


def parse_page(
    text: str,
    specs: Iterable[MetricSpec],
    at: float,
    previous: LoadSample | None,
    models: frozenset[str] | None = None,
) -> LoadSample:
    """Reduce a Prometheus text page to a LoadSample. Raises ValueError when it does not parse.

    Lines are kept by metric name before prometheus_client's parser sees them (it costs ~15 us
    a sample); with `models`, per-model lines only for those models (a Triton serving 50 models
    behind an endpoint that declares 3 is parsed for 3), unless a metric has no line for any of
    them."""
    by_name = {s.metric: s for s in specs}
    sums, per_model = _read(_keep_lines(text, by_name, models), by_name)

    def mean(signal: str) -> float | None:
        values = sums.get(signal)
        return sum(values) / len(values) if values else None

    def total(signal: str) -> float | None:
        values = sums.get(signal)
        return sum(values) if values else None

    gpu_mem = None
    used, free, cap = total("gpu_mem_used"), total("gpu_mem_free"), total("gpu_mem_total")
    if used is not None and cap:
        gpu_mem = used / cap
    elif used is not None and free is not None and used + free > 0:
        gpu_mem = used / (used + free)
    counters = {k: v for k, v in per_model.items() if k[0] in ("queue_us", "compute_us", "requests")}
    for signal in ("queue_us", "compute_us", "requests"):
        if signal in sums:
            counters[(signal, "")] = sum(sums[signal])
    queue_s, compute_s = _rates(counters, previous)
    running = total("running")
    busy = running
    completed = None
    if previous is not None and at > previous.at:
        now_c, old_c = counters.get(("compute_us", "")), previous.counters.get(("compute_us", ""))
        if now_c is not None and old_c is not None and now_c >= old_c:
            busy = (now_c - old_c) / 1e6 / (at - previous.at)
        now_r, old_r = counters.get(("requests", "")), previous.counters.get(("requests", ""))
        if now_r is not None and old_r is not None and now_r >= old_r:
            completed = now_r - old_r
    return LoadSample(
        at=at,
        gpu_util=mean("gpu_util"),
        gpu_mem=gpu_mem,
        queue=total("queue"),
        running=running,
        busy=busy,
        completed=completed,
        kv_cache=mean("kv_cache"),
        model_queue={m: v for (s, m), v in per_model.items() if s == "queue"},
        queue_s_per_request=queue_s,
        compute_s_per_request=compute_s,
        counters=counters,
    )


def _keep_lines(text: str, by_name: Mapping[str, MetricSpec], models: frozenset[str] | None) -> list[str]:
    """The page's lines for the wanted metric names (and, per model, the declared models)."""
    wanted = (
        {s.metric: tuple(f'{s.model_label}="{m}"' for m in models) for s in by_name.values() if s.model_label}
        if models is not None
        else {}
    )
    kept = []
    others: dict[str, list[str]] = {}  # per-model lines for other models, by metric
    matched: set[str] = set()
    for line in text.splitlines():
        if line[:1] in ("#", ""):
            continue
        name = _name(line)
        if name not in by_name:
            continue
        labels = wanted.get(name)
        if labels is not None:
            if not any(label in line for label in labels):
                others.setdefault(name, []).append(line)
                continue
            matched.add(name)
        kept.append(line)
    for name, lines in others.items():  # no line for a declared model: the label holds another
        if name not in matched:  # name for it (a served-model alias): read them all, as without
            kept += lines
    return kept


def _read(
    kept: list[str], by_name: Mapping[str, MetricSpec]
) -> tuple[dict[str, list[float]], dict[tuple[str, str], float]]:
    """Parse the kept lines: values by signal, and per (signal, model) where the page says."""
    sums: dict[str, list[float]] = {}
    per_model: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families("\n".join(kept) + "\n"):
        for sample in family.samples:
            spec = by_name.get(sample.name)
            if spec is None:
                continue
            value = float(sample.value) * spec.scale
            if value != value:  # NaN: the server has no value now
                continue
            sums.setdefault(spec.signal, []).append(value)
            if spec.model_label and spec.model_label in sample.labels:
                key = (spec.signal, sample.labels[spec.model_label])
                per_model[key] = per_model.get(key, 0.0) + value
    return sums, per_model


def _rates(
    counters: Mapping[tuple[str, str], float], previous: LoadSample | None
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-request queue and compute seconds between the previous scrape and this one."""
    queue_s: dict[str, float] = {}
    compute_s: dict[str, float] = {}
    if previous is None:
        return queue_s, compute_s
    old = previous.counters
    for (signal, model), value in counters.items():
        if signal != "requests" or (signal, model) not in old:
            continue
        done = value - old[(signal, model)]
        if done <= 0:  # nothing finished, or the server restarted (counter reset)
            continue
        for name, out in (("queue_us", queue_s), ("compute_us", compute_s)):
            now_v, old_v = counters.get((name, model)), old.get((name, model))
            if now_v is not None and old_v is not None and now_v >= old_v:
                out[model] = (now_v - old_v) / done / 1e6
    return queue_s, compute_s


def _name(line: str) -> str:
    end = len(line)
    for sep in ("{", " "):
        i = line.find(sep)
        if 0 <= i < end:
            end = i
    return line[:end]


def describe(sample: Any) -> str:
    """One line for logs and the Models service."""
    if sample is None:
        return "no metrics"
    parts = [
        f"{name}={getattr(sample, name):.2f}"
        for name in ("gpu_util", "gpu_mem", "queue", "running", "kv_cache")
        if getattr(sample, name) is not None
    ]
    return " ".join(parts) or "no known signals"
