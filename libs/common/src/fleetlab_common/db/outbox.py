"""The transactional outbox: write events with the state, publish them after commit."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
from faststream.nats import NatsBroker
from opentelemetry import propagate

from fleetlab_common.db import Conn
from fleetlab_common.events import Event
from fleetlab_common.log import get_logger
from fleetlab_common.service import cancel_until_done

log = get_logger(__name__)


async def enqueue(conn: Conn, *events: Event) -> None:
    """Add events to the outbox inside the caller's transaction (with the trace context)."""
    rows: list[tuple[Any, ...]] = []
    for event in events:
        headers = event.headers()
        propagate.inject(headers)
        rows.append(
            (event.id, event.subject(), event.STREAM, event.model_dump_json().encode(), headers)
        )
    await conn.executemany(
        "INSERT INTO outbox (id, subject, stream, payload, headers) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (id) DO NOTHING",
        rows,
    )


class OutboxRelay:
    """Publishes outbox rows in order, then deletes them. One per service process.

    ``kick()`` after a commit publishes at once; a periodic sweep catches anything left by a
    crash or a broker outage. A row is deleted only after JetStream acknowledged it; a row
    published twice (crash between ack and delete) is dropped by the stream's duplicate window.
    """

    def __init__(
        self, pool: asyncpg.Pool, broker: NatsBroker, *, batch: int = 500, interval: float = 1.0
    ) -> None:
        self._pool = pool
        self._broker = broker
        self._batch = batch
        self._interval = interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def kick(self) -> None:
        """Publish now (call after a transaction that enqueued events committed)."""
        self._wake.set()

    async def flush(self) -> int:
        """Publish up to one batch; return how many rows went out."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT seq, subject, stream, payload, headers FROM outbox"
                " ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                self._batch,
            )
            for row in rows:
                await self._broker.publish(
                    bytes(row["payload"]),
                    row["subject"],
                    headers=dict(row["headers"]),
                    stream=row["stream"],
                    timeout=5.0,
                )
            if rows:
                await conn.execute(
                    "DELETE FROM outbox WHERE seq = ANY($1::bigint[])", [r["seq"] for r in rows]
                )
        return len(rows)

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                while await self.flush() == self._batch:
                    pass
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker or database is away: retry, keep the rows
                log.warning("outbox.publish_failed", error=repr(exc), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._wake.set()

    def start(self) -> None:
        """Run the relay in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="outbox-relay")
            self._wake.set()

    async def stop(self) -> None:
        """Publish what is left (best effort), then stop."""
        if self._task is not None:
            await cancel_until_done(self._task)
            self._task = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), 2.0)
