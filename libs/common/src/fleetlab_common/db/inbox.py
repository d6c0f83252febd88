"""The inbox: event ids a consumer already applied, so redeliveries change nothing."""

from __future__ import annotations

from fleetlab_common.db import Conn
from fleetlab_common.events import Event


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
