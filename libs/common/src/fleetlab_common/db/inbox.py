"""The inbox: event ids a consumer already applied, so redeliveries change nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg

from fleetlab_common.db import Conn
from fleetlab_common.events import Event

T = TypeVar("T")


async def prune_inbox(conn: Conn, keep_days: int = 7) -> None:
    """Forget processed event ids older than any redelivery could be."""
    await conn.execute(
        "DELETE FROM inbox WHERE processed_at < now() - make_interval(days => $1)", keep_days
    )


async def first_delivery(conn: Conn, consumer: str, event: Event) -> bool:
    """Record that ``consumer`` applied ``event``; False when it already had (a redelivery).

    Call inside the transaction that applies the event, so both commit or neither does.
    """
    inserted = await conn.fetchval(
        "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING RETURNING true",
        consumer,
        event.id,
    )
    return bool(inserted)


async def first_deliveries(conn: Conn, consumer: str, events: Sequence[Event]) -> set[uuid.UUID]:
    """:func:`first_delivery` for several events in one statement: the ids new to ``consumer``
    (an id twice in ``events`` counts once)."""
    rows = await conn.fetch(
        "INSERT INTO inbox (consumer, event_id) SELECT $1, unnest($2::uuid[])"
        " ON CONFLICT DO NOTHING RETURNING event_id",
        consumer,
        list({event.id for event in events}),
    )
    return {row["event_id"] for row in rows}


class InboxBatch:
    """Applies a consumer's events in shared transactions.

    The handlers of the messages one fetch brought run side by side: each hands its event and
    its change to :meth:`apply` and waits for the commit. One transaction records all their
    ids in the inbox (one statement) and applies the changes of the new ones in the order they
    came; a redelivered event's change is skipped. A batch that fails is applied again one
    event per transaction, so only the event at fault fails (and is redelivered). Nothing waits
    for company: an event alone is applied at once, and the events that come while a batch is
    being applied form the next one.
    """

    def __init__(
        self, pool: Callable[[], asyncpg.Pool], consumer: str, *, max_batch: int = 100
    ) -> None:
        self._pool = pool
        self.consumer = consumer
        self.max_batch = max_batch
        self._pending: list[_Item[Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def apply(self, event: Event, change: Callable[[Conn], Awaitable[T]]) -> T | None:
        """Apply ``change`` with ``event`` recorded in the inbox, in one transaction; its
        result, or None when the event was applied before (a redelivery)."""
        item: _Item[T] = _Item(event, change, asyncio.get_running_loop().create_future())
        self._pending.append(item)
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name=f"inbox-{self.consumer}")
        return await item.done

    async def _drain(self) -> None:
        batch: list[_Item[Any]] = []
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: len(batch)]
                try:
                    await self._apply(batch)
                except Exception:
                    for item in batch:
                        await self._apply_alone(item)
                batch = []
        except BaseException as exc:  # cancelled with the service: nobody is left waiting
            for item in [*batch, *self._pending]:
                if item.done.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    item.done.cancel()
                else:
                    item.done.set_exception(exc)
            self._pending.clear()
            raise
        finally:
            self._task = None

    async def _apply(self, batch: list[_Item[Any]]) -> None:
        results: list[Any] = []
        async with self._pool().acquire() as conn, conn.transaction():
            new = await first_deliveries(conn, self.consumer, [item.event for item in batch])
            for item in batch:
                if item.event.id in new:
                    new.discard(item.event.id)  # the same event twice: applied once
                    results.append(await item.change(conn))
                else:
                    results.append(None)
        for item, result in zip(batch, results, strict=True):
            if not item.done.done():
                item.done.set_result(result)

    async def _apply_alone(self, item: _Item[Any]) -> None:
        try:
            await self._apply([item])
        except Exception as exc:
            if not item.done.done():
                item.done.set_exception(exc)


@dataclass(slots=True)
class _Item(Generic[T]):
    event: Event
    change: Callable[[Conn], Awaitable[T]]
    done: asyncio.Future[T | None]
