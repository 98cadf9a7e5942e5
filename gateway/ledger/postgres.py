"""The ledger in PostgreSQL (asyncpg), one database for every replica. A batch is one
transaction: binary COPY into a temporary table, then INSERT ... ON CONFLICT (id) DO NOTHING, so
a batch retried after a lost acknowledgement never counts a call twice. Migrations run under an
advisory lock: replicas starting together apply each one once.

A refused or lost connection, a timeout or a server error is LedgerUnavailable (the writer keeps
the batch and retries); the next write connects again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg

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

_LOCK = 0x6D657368  # pg_advisory_xact_lock key for migrations ("mesh")
_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
# What a record's values caused (out of range, NUL in text, a type COPY cannot encode).
_REJECTED = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.exceptions.CharacterNotInRepertoireError,
    OverflowError,
    ValueError,
    TypeError,
)


class PostgresLedger:
    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self._url = url
        self._timeout_s = timeout_s
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def open(self) -> None:
        await self._connected()

    async def _connected(self) -> asyncpg.Pool:
        async with self._opening:
            if self._pool is not None:
                return self._pool
            try:
                pool = await asyncpg.create_pool(
                    self._url,
                    min_size=1,
                    max_size=2,
                    timeout=self._timeout_s,
                    command_timeout=self._timeout_s,
                )
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
                    await conn.execute(
                        "CREATE TABLE IF NOT EXISTS meshgate_schema (version INTEGER NOT NULL)"
                    )
                    current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM meshgate_schema")
                    for version in sorted(v for v in MIGRATIONS if v > current):
                        for statement in MIGRATIONS[version]:
                            await conn.execute(statement.format(real="DOUBLE PRECISION"))
                        await conn.execute("INSERT INTO meshgate_schema (version) VALUES ($1)", version)
            except _ERRORS as err:
                raise LedgerUnavailable(f"postgres: {err or type(err).__name__}") from None
            self._pool = pool
            return pool

    async def _run(self, fn: Any) -> Any:
        pool = await self._connected()
        try:
            async with pool.acquire() as conn:
                return await fn(conn)
        except _REJECTED as err:
            raise LedgerRejected(f"postgres: {err or type(err).__name__}") from None
        except _ERRORS as err:
            if isinstance(err, (OSError, asyncpg.InterfaceError, TimeoutError)):
                await self._drop()
            raise LedgerUnavailable(f"postgres: {err or type(err).__name__}") from None

    async def write(self, records: Sequence[UsageRecord]) -> None:
        async def write(conn: Any) -> None:
            async with conn.transaction():
                await conn.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS usage_batch (LIKE usage_records) ON COMMIT DELETE ROWS"
                )
                await conn.copy_records_to_table("usage_batch", records=records)
                await conn.execute(
                    f"INSERT INTO usage_records ({COLUMNS}) SELECT {COLUMNS} FROM usage_batch"
                    " ON CONFLICT (id) DO NOTHING"
                )

        await self._run(write)

    async def usage(self, since: float, until: float, group_by: Sequence[str]) -> list[UsageRow]:
        query = usage_query(group_by, "${}")

        async def select(conn: Any) -> list[Any]:
            rows: list[Any] = await conn.fetch(query, since, until)
            return rows

        rows = await self._run(select)
        return [usage_row(tuple(r), len(group_by)) for r in rows]

    async def count(self) -> int:
        async def count(conn: Any) -> int:
            return int(await conn.fetchval("SELECT COUNT(*) FROM usage_records"))

        n: int = await self._run(count)
        return n

    async def _drop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5.0)
            except (TimeoutError, *_ERRORS):
                pool.terminate()
