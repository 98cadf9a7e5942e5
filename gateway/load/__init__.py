"""The load probe: scrape each endpoint's metrics (probe.py), parse them (parse.py) and split
what they say into ours and everyone else's (split.py)."""

from .parse import LoadSample, MetricSpec, describe, load_metric_names, parse_page
from .probe import LoadProbe
from .split import herd_factors, observe, split_load

__all__ = [
    "LoadProbe",
    "LoadSample",
    "MetricSpec",
    "describe",
    "herd_factors",
    "load_metric_names",
    "observe",
    "parse_page",
    "split_load",
]
