"""A usage record, the ledger's store seam (LedgerStore) and its schema, shared by SQLite and
PostgreSQL (migrations are numbered; each store applies the ones its database has not seen)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol


class UsageRecord(NamedTuple):
    """One call, as the ledger keeps it. `id` is unique per record (a retried write of the same
    batch never counts a call twice); `ts` is when the call ended (Unix seconds)."""

    id: str
    ts: float
    request_id: str
    method: str
    user: str
    project: str
    department: str
    credential_id: str
    model: str
    pool: str
    endpoint: str
    tokens_in: int
    tokens_out: int
    tokens_cached: int
    gpu_seconds: float
    cost: float
    cache_hit: bool
    status: str  # the gRPC status code's name: OK, CANCELLED, RESOURCE_EXHAUSTED ...


# What usage can be grouped by (columns of the table).
GROUPS = {
    "user": "user_name",
    "project": "project",
    "department": "department",
    "credential_id": "credential_id",
    "model": "model",
    "pool": "pool",
    "endpoint": "endpoint",
    "status": "status",
    "method": "method",
}


class UsageRow(NamedTuple):
    """Totals over a time range for one group (its values, in the order asked)."""

    group: tuple[str, ...]
    calls: int
    tokens_in: int
    tokens_out: int
    tokens_cached: int
    gpu_seconds: float
    cost: float
    cache_hits: int
    errors: int  # calls that did not end OK


class LedgerUnavailable(Exception):
    """The database cannot be reached or refused the write; the records are kept to retry."""


class LedgerRejected(Exception):
    """The database refused what a batch holds (a value out of range, bytes it cannot store):
    retrying the same batch would fail forever, so the writer writes its records one by one and
    drops (and counts) the ones refused."""


class LedgerStore(Protocol):
    async def open(self) -> None:
        """Connect and bring the schema up to date (LedgerUnavailable when it cannot)."""

    async def write(self, records: Sequence[UsageRecord]) -> None:
        """All of `records` in one transaction, or none (LedgerUnavailable, LedgerRejected). A
        record whose id is already there is skipped."""

    async def usage(self, since: float, until: float, group_by: Sequence[str]) -> list[UsageRow]:
        """Totals of the records with since <= ts < until, per group (GROUPS keys)."""

    async def count(self) -> int:
        """How many records the ledger holds."""

    async def aclose(self) -> None: ...


# Migrations: version -> statements. Append, never edit: a database at version N gets N+1...
# The SQL is the common subset of SQLite and PostgreSQL; {real} is REAL / DOUBLE PRECISION.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE usage_records (
            id TEXT PRIMARY KEY,
            ts {real} NOT NULL,
            request_id TEXT NOT NULL,
            method TEXT NOT NULL,
            user_name TEXT NOT NULL,
            project TEXT NOT NULL,
            department TEXT NOT NULL,
            credential_id TEXT NOT NULL,
            model TEXT NOT NULL,
            pool TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            tokens_in BIGINT NOT NULL,
            tokens_out BIGINT NOT NULL,
            tokens_cached BIGINT NOT NULL,
            gpu_seconds {real} NOT NULL,
            cost {real} NOT NULL,
            cache_hit BOOLEAN NOT NULL,
            status TEXT NOT NULL
        )""",
        "CREATE INDEX usage_records_ts ON usage_records (ts)",
    ),
}

COLUMNS = (
    "id, ts, request_id, method, user_name, project, department, credential_id, model, pool,"
    " endpoint, tokens_in, tokens_out, tokens_cached, gpu_seconds, cost, cache_hit, status"
)


def usage_query(group_by: Sequence[str], placeholder: str) -> str:
    """SELECT of the totals per group; `placeholder` formats the two time bounds ('?' or '$n')."""
    for g in group_by:
        if g not in GROUPS:
            raise ValueError(f"group_by: unknown {g!r}; expected some of {', '.join(GROUPS)}")
    cols = [GROUPS[g] for g in group_by]
    select = ", ".join([*cols, ""]) if cols else ""
    group = f" GROUP BY {', '.join(cols)} ORDER BY {', '.join(cols)}" if cols else ""
    return (
        f"SELECT {select}COUNT(*), COALESCE(SUM(tokens_in), 0), COALESCE(SUM(tokens_out), 0),"
        " COALESCE(SUM(tokens_cached), 0), COALESCE(SUM(gpu_seconds), 0), COALESCE(SUM(cost), 0),"
        " COALESCE(SUM(CASE WHEN cache_hit THEN 1 ELSE 0 END), 0),"
        " COALESCE(SUM(CASE WHEN status <> 'OK' THEN 1 ELSE 0 END), 0)"
        f" FROM usage_records WHERE ts >= {placeholder.format(1)} AND ts < {placeholder.format(2)}{group}"
    )


def usage_row(row: Sequence[object], groups: int) -> UsageRow:
    values = list(row)
    key = tuple(str(v) for v in values[:groups])
    n, t_in, t_out, t_cached, gpu, cost, hits, errors = values[groups:]
    return UsageRow(
        key,
        int(n),  # type: ignore[call-overload]
        int(t_in),  # type: ignore[call-overload]
        int(t_out),  # type: ignore[call-overload]
        int(t_cached),  # type: ignore[call-overload]
        float(gpu),  # type: ignore[arg-type]
        float(cost),  # type: ignore[arg-type]
        int(hits),  # type: ignore[call-overload]
        int(errors),  # type: ignore[call-overload]
    )
