"""The ledger's contract, over both stores (SQLite in a temporary file, a real PostgreSQL):
batches are all-or-nothing and idempotent, totals group and filter by time, the schema migrates
once, and the writer keeps records while the database is down (bounded, overflow counted) and
writes them when it returns."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.ledger.postgres import PostgresLedger
from gateway.ledger.records import LedgerRejected, LedgerStore, UsageRecord
from gateway.ledger.sqlite import SQLiteLedger
from gateway.ledger.writer import LedgerWriter
from tests.postgres_server import PostgresServer


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.remove()


def record(ts: float, *, user: str = "bob", project: str = "ads", model: str = "m", **kw: Any) -> UsageRecord:
    fields: dict[str, Any] = dict(
        id=uuid.uuid4().hex,
        ts=ts,
        request_id="r",
        method="Generate",
        user=user,
        project=project,
        department="eng",
        credential_id="k1",
        model=model,
        pool="p",
        endpoint="e",
        tokens_in=10,
        tokens_out=5,
        tokens_cached=2,
        gpu_seconds=0.5,
        cost=0.25,
        cache_hit=False,
        status="OK",
    )
    fields.update(kw)
    return UsageRecord(**fields)


@pytest.fixture(params=["sqlite", "postgres"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "sqlite":
        yield lambda: SQLiteLedger(str(tmp_path / "usage.db"))
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    db = f"t{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        import asyncpg

        conn = await asyncpg.connect(server.url)
        await conn.execute(f"CREATE DATABASE {db}")
        await conn.close()

    asyncio.run(create())
    yield lambda: PostgresLedger(server.url.rsplit("/", 1)[0] + "/" + db)


def test_batches_totals_and_idempotence(store_factory: Any) -> None:
    async def check() -> None:
        store: LedgerStore = store_factory()
        await store.open()
        batch = [
            record(100.0),
            record(101.0, user="alice", cost=1.0),
            record(102.0, model="n", status="CANCELLED"),
        ]
        await store.write(batch)
        await store.write(batch)  # a retried batch counts once
        assert await store.count() == 3
        (total,) = await store.usage(0, 1000, [])
        assert (total.calls, total.tokens_in, total.tokens_out, total.tokens_cached) == (3, 30, 15, 6)
        assert total.cost == pytest.approx(1.5) and total.gpu_seconds == pytest.approx(1.5)
        assert total.errors == 1 and total.cache_hits == 0
        by_user = {r.group: r.calls for r in await store.usage(0, 1000, ["user"])}
        assert by_user == {("alice",): 1, ("bob",): 2}
        by_two = {r.group: r.cost for r in await store.usage(0, 1000, ["project", "model"])}
        assert by_two == {("ads", "m"): pytest.approx(1.25), ("ads", "n"): pytest.approx(0.25)}
        # since <= ts < until
        assert [r.calls for r in await store.usage(101.0, 102.0, [])] == [1]
        assert [r.calls for r in await store.usage(200.0, 300.0, [])] == [0]
        with pytest.raises(ValueError, match="group_by"):
            await store.usage(0, 1, ["password"])
        await store.aclose()
        again: LedgerStore = store_factory()  # the schema is there: opening migrates nothing twice
        await again.open()
        assert await again.count() == 3
        await again.aclose()

    asyncio.run(check())


def test_a_batch_is_all_or_nothing(store_factory: Any) -> None:
    async def check() -> None:
        store: LedgerStore = store_factory()
        await store.open()
        bad = record(1.0)._replace(tokens_in=2**70)  # too large for the column: the whole batch fails
        with pytest.raises(LedgerRejected):
            await store.write([record(1.0), bad])
        assert await store.count() == 0
        await store.aclose()
        # the writer keeps the rest of such a batch and drops only the refused record, counted
        registry = CollectorRegistry()
        writer = LedgerWriter(store_factory(), registry)
        await writer.store.open()
        for r in (record(2.0), bad, record(3.0, user="nul\x00byte"), record(4.0)):
            writer.append(r)
        assert await writer.flush()
        assert await writer.store.count() >= 2 and writer.buffered == 0
        assert writer.rejected + await writer.store.count() == 4
        assert (
            registry.get_sample_value("meshgate_ledger_records_total", {"result": "rejected"})
            == writer.rejected
        )
        await writer.aclose()

    asyncio.run(check())


def test_the_writer_keeps_records_while_postgres_is_down(postgres: PostgresServer) -> None:
    async def check() -> None:
        registry = CollectorRegistry()
        writer = LedgerWriter(
            PostgresLedger(postgres.url), registry, flush_interval_s=0.1, max_batch=50, max_buffered=300
        )
        await writer.store.open()
        writer.start()
        before = await writer.store.count()
        for i in range(100):
            writer.append(record(float(i)))
        await asyncio.sleep(0.5)
        assert writer.buffered == 0 and await writer.store.count() == before + 100
        postgres.stop()
        try:
            for i in range(400):  # 300 fit in the buffer; 100 are dropped, and counted
                writer.append(record(float(i)))
            await asyncio.sleep(0.5)
            assert writer.buffered == 300 and writer.dropped == 100
            assert registry.get_sample_value("meshgate_ledger_records_total", {"result": "dropped"}) == 100
            assert registry.get_sample_value("meshgate_ledger_write_errors_total") >= 1
        finally:
            postgres.start()
        for _ in range(100):
            if writer.buffered == 0:
                break
            await asyncio.sleep(0.1)
        assert writer.buffered == 0 and await writer.store.count() == before + 400
        await writer.aclose()

    asyncio.run(check())
