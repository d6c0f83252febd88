"""InboxBatch on a real PostgreSQL: events handled side by side share one transaction, a
redelivery changes nothing, and a failing change fails only its own event."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from fleetlab_common.db import Conn
from fleetlab_common.db.inbox import InboxBatch
from fleetlab_common.db.migrate import migrate
from fleetlab_common.db.pool import create_pool
from fleetlab_common.events import ExperimentSubmitted
from fleetlab_common.runspec import RunSpec

SCHEMA = "batched"


def submitted() -> ExperimentSubmitted:
    return ExperimentSubmitted(
        experiment_id=uuid.uuid4(),
        project_id=uuid.uuid4(),
        project="mnist",
        options={},
        run=RunSpec(command=["true"]),
    )


@pytest.fixture
async def pool(fresh_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate(fresh_dsn, SCHEMA, None)
    pool = await create_pool(fresh_dsn, SCHEMA, max_size=4)
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE applied (event_id uuid, txid bigint)")
    try:
        yield pool
    finally:
        await pool.close()


def recorder(event: ExperimentSubmitted) -> Callable[[Conn], Awaitable[str]]:
    async def change(conn: Conn) -> str:
        await conn.execute("INSERT INTO applied VALUES ($1, txid_current())", event.experiment_id)
        return str(event.experiment_id)

    return change


async def applied(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await conn.fetch("SELECT event_id, txid FROM applied")


async def test_events_handed_over_together_commit_in_one_transaction(pool: asyncpg.Pool) -> None:
    inbox = InboxBatch(lambda: pool, "c")
    events = [submitted() for _ in range(20)]

    results = await asyncio.gather(*(inbox.apply(e, recorder(e)) for e in events))

    assert results == [str(e.experiment_id) for e in events]
    rows = await applied(pool)
    assert sorted(r["event_id"] for r in rows) == sorted(e.experiment_id for e in events)
    # The first is applied at once; those that came while it was, in one more transaction.
    assert len({r["txid"] for r in rows}) <= 2


async def test_a_redelivered_event_is_applied_once(pool: asyncpg.Pool) -> None:
    inbox = InboxBatch(lambda: pool, "c")
    event = submitted()

    first = await inbox.apply(event, recorder(event))
    again = await asyncio.gather(
        inbox.apply(event, recorder(event)),
        inbox.apply(event, recorder(event)),
    )

    assert first == str(event.experiment_id)
    assert again == [None, None]
    assert len(await applied(pool)) == 1
    # Another consumer has an inbox of its own.
    assert await InboxBatch(lambda: pool, "other").apply(event, recorder(event)) is not None


async def test_a_failing_change_fails_only_its_event(pool: asyncpg.Pool) -> None:
    inbox = InboxBatch(lambda: pool, "c")
    good = [submitted() for _ in range(5)]
    bad = submitted()

    async def boom(conn: Conn) -> str:
        await conn.execute("INSERT INTO applied VALUES ($1, 0)", bad.experiment_id)
        raise ValueError("bad event")

    calls = [inbox.apply(e, recorder(e)) for e in good[:3]]
    calls.append(inbox.apply(bad, boom))
    calls += [inbox.apply(e, recorder(e)) for e in good[3:]]
    results = await asyncio.gather(*calls, return_exceptions=True)

    assert isinstance(results[3], ValueError)
    assert [r for i, r in enumerate(results) if i != 3] == [str(e.experiment_id) for e in good]
    assert sorted(r["event_id"] for r in await applied(pool)) == sorted(
        e.experiment_id for e in good
    )
    # The failed event was not recorded as applied: its redelivery applies it.
    assert await inbox.apply(bad, recorder(bad)) == str(bad.experiment_id)
