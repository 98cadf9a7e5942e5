"""Log lines a caller can cause, at most one per key per interval.

A client that sends junk must not be able to fill the disk: what its requests cause is counted in
a metric, and logged once per `every_s` per key (e.g. per RPC method), with the number of lines
left out since the last one.
"""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, every_s: float = 10.0) -> None:
        self._log = logger
        self._every_s = every_s
        self._last: dict[str, float] = {}  # key -> when it was last logged
        self._dropped: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> bool:
        """Log `message % args` at WARNING unless `key` was logged in the last interval; True if
        logged. Event loop thread only."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._every_s:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return False
        if len(self._last) > 10_000:  # keys are bounded by the caller; this bounds a mistake
            self._last.clear()
        self._last[key] = now
        dropped = self._dropped.pop(key, 0)
        if dropped:
            message += " (%d more like it in the last %.0f s)"
            args = (*args, dropped, now - last if last is not None else 0.0)
        self._log.warning(message, *args)
        return True
