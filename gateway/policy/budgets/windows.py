"""Budget windows: calendar-aligned (daily from midnight, weekly from Monday, monthly from the
1st, in the configured time zone, daylight saving included) or a fixed length counted from the
Unix epoch. `window(...)` gives the window holding an instant: its start and end as Unix
seconds; the start names the window in store keys, so a new window starts from zero."""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from typing import NamedTuple


class Window(NamedTuple):
    start: float
    end: float


def window(kind: str | None, length_s: float | None, zone: str, now: float) -> Window:
    if length_s is not None:
        start = math.floor(now / length_s) * length_s
        return Window(start, start + length_s)
    tz = zoneinfo.ZoneInfo(zone)
    local = dt.datetime.fromtimestamp(now, tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "daily":
        first, after = midnight, midnight + dt.timedelta(days=1)
    elif kind == "weekly":
        first = midnight - dt.timedelta(days=local.weekday())
        after = first + dt.timedelta(days=7)
    elif kind == "monthly":
        first = midnight.replace(day=1)
        after = (
            first.replace(year=first.year + 1, month=1)
            if first.month == 12
            else first.replace(month=first.month + 1)
        )
    else:
        raise ValueError(f"unknown window {kind!r}")
    # Wall-clock midnights: re-attach the zone so a daylight-saving change moves the offset.
    return Window(_at(first, tz), _at(after, tz))


def _at(local: dt.datetime, tz: zoneinfo.ZoneInfo) -> float:
    return local.replace(tzinfo=None).replace(tzinfo=tz).timestamp()
