"""Background loops that survive their own bugs.

Discovery, readiness, the load probe and self-registration each catch the errors they expect
(a source down, a backend not answering) and go on. `supervise` is the net under them: a loop
that still ends with an unexpected exception is logged in one line (with the traceback the first
time only: it is a bug, and a loop failing every few seconds must not flood the log), counted in meshgate_background_errors_total{loop}, and restarted after a jittered back-off that
doubles up to 30 s, so one bad value cannot stop the gateway from seeing changes for good. A
loop that ran cleanly for a minute starts its back-off from the beginning again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ..observe.metrics import Metrics

log = logging.getLogger("meshgate.background")

_FIRST_DELAY_S = 0.5
_MAX_DELAY_S = 30.0
_HEALTHY_S = 60.0


async def supervise(name: str, run: Callable[[], Coroutine[Any, Any, None]], metrics: Metrics) -> None:
    """Run `run()` until cancelled, restarting it whenever it ends or fails."""
    delay = _FIRST_DELAY_S
    failures = 0
    while True:
        started = time.monotonic()
        try:
            await run()
            log.warning("background loop %s ended; restarting it", name)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the net under the loop's own handling: log, count, back off, go on
            metrics.background_error(name)
            failures += 1
            log.error(
                "background loop %s failed (%s: %s); restarting it in %.1f s",
                name,
                type(err).__name__,
                str(err)[:300],
                delay,
                exc_info=failures == 1,
            )
        if time.monotonic() - started > _HEALTHY_S:
            delay = _FIRST_DELAY_S
        await asyncio.sleep(delay * random.uniform(0.8, 1.2))
        delay = min(_MAX_DELAY_S, delay * 2)
