"""LedgerWriter: records leave the request path at once (append: no await, no I/O) and are
written in batches by one background task (group commit): a batch goes when max_batch records
wait or flush_interval_s has passed since the first of them, whichever is first.

Bounds: a crash loses at most the records of calls that completed within the last flush
interval (plus the batch being written). While the database is unreachable the records stay
buffered, up to max_buffered, and are written when it returns (retried every flush interval,
logged at most every 30 s); past max_buffered new records are dropped and counted in
meshgate_ledger_records_total{result="dropped"}, never silently. On shutdown what is buffered
is written first (for at most `close_timeout_s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge

from .records import LedgerRejected, LedgerStore, LedgerUnavailable, UsageRecord

log = logging.getLogger("meshgate.ledger")


class LedgerWriter:
    def __init__(
        self,
        store: LedgerStore,
        registry: CollectorRegistry,
        *,
        flush_interval_s: float = 1.0,
        max_batch: int = 5000,
        max_buffered: int = 200_000,
    ) -> None:
        self.store = store
        self._interval = flush_interval_s
        self._max_batch = max_batch
        self._max_buffered = max_buffered
        self._buffer: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()  # one batch at a time: the loop's, or a report's flush
        self._logged = 0.0
        self.written = 0
        self.dropped = 0
        self.rejected = 0
        self._records = Counter(
            "meshgate_ledger_records_total",
            "Usage records by result (written to the ledger database; dropped: the buffer was full"
            " while the database could not be reached; rejected: the database refused the record).",
            ["result"],
            registry=registry,
        )
        self._errors = Counter(
            "meshgate_ledger_write_errors_total",
            "Batch writes to the ledger database that failed (the records stay buffered and are retried).",
            registry=registry,
        )
        Gauge(
            "meshgate_ledger_buffered_records",
            "Usage records waiting to be written to the ledger database.",
            registry=registry,
        ).set_function(lambda: len(self._buffer))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def append(self, record: UsageRecord) -> None:
        if len(self._buffer) >= self._max_buffered:
            self.dropped += 1
            self._records.labels("dropped").inc()
            self._complain(f"buffer full ({self._max_buffered} records): a record was dropped")
            return
        self._buffer.append(record)
        if len(self._buffer) >= self._max_batch:
            self._wake.set()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def _run(self) -> None:
        while True:
            if len(self._buffer) < self._max_batch:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval)
            try:
                if self._buffer and not await self.flush_once():
                    await asyncio.sleep(self._interval)  # the database is down: retry later
            except Exception:  # a bug must not stop the ledger: the records stay, retried
                log.exception("ledger: writing a batch failed unexpectedly")
                await asyncio.sleep(self._interval)

    async def flush_once(self) -> bool:
        """Write one batch; False when the database did not take it (the records stay)."""
        async with self._writing:
            return await self._write_batch()

    async def _write_batch(self) -> bool:
        n = min(len(self._buffer), self._max_batch)
        batch = [self._buffer[i] for i in range(n)]
        try:
            await self.store.write(batch)
        except LedgerUnavailable as err:
            self._errors.inc()
            self._complain(f"cannot write usage records ({len(self._buffer)} buffered, kept): {err}")
            return False
        except LedgerRejected as err:
            log.warning("ledger: a batch was refused (%s); writing its records one by one", err)
            return await self._write_singly(n)
        for _ in range(n):
            self._buffer.popleft()
        self.written += n
        self._records.labels("written").inc(n)
        return True

    async def _write_singly(self, n: int) -> bool:
        """The first n records one at a time: the ones the database refuses are dropped, counted."""
        for _ in range(n):
            record = self._buffer[0]
            try:
                await self.store.write([record])
            except LedgerUnavailable:
                self._errors.inc()
                return False
            except LedgerRejected as err:
                self.rejected += 1
                self._records.labels("rejected").inc()
                log.error(
                    "ledger: usage record of request %s refused and dropped: %s", record.request_id, err
                )
            else:
                self.written += 1
                self._records.labels("written").inc()
            self._buffer.popleft()
        return True

    async def flush(self) -> bool:
        """Everything buffered now, written; False when the database did not take it."""
        while self._buffer:
            if not await self.flush_once():
                return False
        return True

    def _complain(self, message: str) -> None:
        now = time.monotonic()
        if now - self._logged >= 30.0:
            self._logged = now
            log.warning("ledger: %s", message)

    async def aclose(self, close_timeout_s: float = 5.0) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            written = await asyncio.wait_for(self.flush(), close_timeout_s)
        except TimeoutError:
            written = False
        if not written:
            log.error("ledger: %d usage records could not be written before shutdown", len(self._buffer))
        await self.store.aclose()
