"""The ledger in SQLite (the embedded default): one file, WAL journal, written by one thread of
its own (sqlite3 blocks; the event loop never waits on it). One transaction per batch
(executemany), so a batch is all in or all out."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .records import (
    COLUMNS,
    MIGRATIONS,
    LedgerRejected,
    LedgerUnavailable,
    UsageRecord,
    UsageRow,
    usage_query,
    usage_row,
)

T = TypeVar("T")
# What a record's values caused (a number out of range, a type it cannot store), not the database.
_REJECTED = (
    sqlite3.DataError,
    sqlite3.IntegrityError,
    sqlite3.ProgrammingError,
    OverflowError,
    ValueError,
    TypeError,
)
_INSERT = f"INSERT OR IGNORE INTO usage_records ({COLUMNS}) VALUES ({', '.join(['?'] * 18)})"


class SQLiteLedger:
    def __init__(self, path: str) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="meshgate-ledger")
        self._db: sqlite3.Connection | None = None

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn, *args)
        except _REJECTED as err:
            raise LedgerRejected(f"sqlite {self.path}: {err}") from None
        except sqlite3.Error as err:
            raise LedgerUnavailable(f"sqlite {self.path}: {err}") from None

    async def open(self) -> None:
        await self._in_thread(self._open)

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable against a process crash
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("CREATE TABLE IF NOT EXISTS meshgate_schema (version INTEGER NOT NULL)")
        row = db.execute("SELECT MAX(version) FROM meshgate_schema").fetchone()
        current = row[0] or 0
        for version in sorted(v for v in MIGRATIONS if v > current):
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[version]:
                    db.execute(statement.format(real="REAL"))
                db.execute("INSERT INTO meshgate_schema (version) VALUES (?)", (version,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        self._db = db

    async def write(self, records: Sequence[UsageRecord]) -> None:
        await self._in_thread(self._write, records)

    def _write(self, records: Sequence[UsageRecord]) -> None:
        db = self._db
        if db is None:
            self._open()
            db = self._db
            assert db is not None
        db.execute("BEGIN")
        try:
            db.executemany(_INSERT, records)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def usage(self, since: float, until: float, group_by: Sequence[str]) -> list[UsageRow]:
        query = usage_query(group_by, "?")
        rows: list[tuple[Any, ...]] = await self._in_thread(self._select, query, (since, until))
        return [usage_row(r, len(group_by)) for r in rows]

    async def count(self) -> int:
        rows = await self._in_thread(self._select, "SELECT COUNT(*) FROM usage_records", ())
        return int(rows[0][0])

    def _select(self, query: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self._db is None:
            self._open()
        assert self._db is not None
        return self._db.execute(query, args).fetchall()

    async def aclose(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, db.close)
        self._pool.shutdown(wait=False)
