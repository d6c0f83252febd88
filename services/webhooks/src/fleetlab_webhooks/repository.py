"""All SQL of the webhooks schema: endpoints, deliveries, attempts, the experiment records."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from fleetlab_common.db import Conn

# Columns a user may change on an endpoint.
UPDATABLE = ("url", "events", "secret", "project", "experiment", "description")

_CLAIM_LOCK = 0x77686B73  # "whks": one claimer at a time keeps the per-endpoint limit exact


async def insert_endpoint(
    conn: Conn,
    endpoint_id: uuid.UUID,
    *,
    url: str,
    kind: str,
    events: list[str],
    secret: str,
    project: str | None,
    experiment: str | None,
    description: str,
    fglab_body: dict[str, Any] | None,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        """INSERT INTO endpoints (id, url, kind, events, secret, project, experiment,
                                  description, fglab_body)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *""",
        endpoint_id,
        url,
        kind,
        events,
        secret,
        project,
        experiment,
        description,
        fglab_body,
    )
    assert row is not None
    return row


async def get_endpoint(conn: Conn, endpoint_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM endpoints WHERE id = $1", endpoint_id)


async def list_endpoints(conn: Conn) -> list[asyncpg.Record]:
    return list(await conn.fetch("SELECT * FROM endpoints ORDER BY created_at, id"))


async def update_endpoint(
    conn: Conn, endpoint_id: uuid.UUID, changes: dict[str, Any]
) -> asyncpg.Record | None:
    columns = [c for c in UPDATABLE if c in changes]
    if not columns:
        return await get_endpoint(conn, endpoint_id)
    sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=2))
    return await conn.fetchrow(
        f"UPDATE endpoints SET {sets}, updated_at = now() WHERE id = $1 RETURNING *",
        endpoint_id,
        *(changes[c] for c in columns),
    )


async def delete_endpoint(conn: Conn, endpoint_id: uuid.UUID) -> bool:
    deleted = await conn.fetchval("DELETE FROM endpoints WHERE id = $1 RETURNING true", endpoint_id)
    return bool(deleted)


async def pause_endpoint(conn: Conn, endpoint_id: uuid.UUID, reason: str) -> asyncpg.Record | None:
    """Pause an endpoint that is not paused; None when it is paused already (or gone)."""
    return await conn.fetchrow(
        """UPDATE endpoints SET paused_at = now(), paused_reason = $2, updated_at = now()
           WHERE id = $1 AND paused_at IS NULL RETURNING *""",
        endpoint_id,
        reason,
    )


async def resume_endpoint(conn: Conn, endpoint_id: uuid.UUID) -> asyncpg.Record | None:
    """Resume: held deliveries go out at once; the failure clock starts again."""
    row = await conn.fetchrow(
        """UPDATE endpoints SET paused_at = NULL, paused_reason = NULL, failing_since = NULL,
               updated_at = now()
           WHERE id = $1 RETURNING *""",
        endpoint_id,
    )
    if row is not None:
        await conn.execute(
            """UPDATE deliveries SET next_attempt_at = least(next_attempt_at, now())
               WHERE endpoint_id = $1 AND state = 'pending'""",
            endpoint_id,
        )
    return row


# -- events in ----------------------------------------------------------------------------


async def merge_experiment(
    conn: Conn, experiment_id: uuid.UUID, facts: dict[str, Any]
) -> dict[str, Any]:
    """Add what an event says to the experiment's record; return the record."""
    record: dict[str, Any] = await conn.fetchval(
        """INSERT INTO experiments (id, record) VALUES ($1, $2)
           ON CONFLICT (id) DO UPDATE SET record = experiments.record || EXCLUDED.record,
               updated_at = now()
           RETURNING record""",
        experiment_id,
        {"id": str(experiment_id), **facts},
    )
    return record


async def matching_endpoints(
    conn: Conn,
    public_type: str,
    *,
    project: str | None,
    project_id: str | None,
    experiment: str | None,
) -> list[asyncpg.Record]:
    """Endpoints, not paused, that subscribe to ``public_type`` and whose filters match."""
    return list(
        await conn.fetch(
            """SELECT id, kind, fglab_body FROM endpoints
               WHERE paused_at IS NULL AND $1 = ANY (events)
                 AND (project IS NULL OR project = $2 OR project = $3)
                 AND (experiment IS NULL OR experiment = $4)""",
            public_type,
            project,
            project_id,
            experiment,
        )
    )


async def insert_deliveries(conn: Conn, rows: list[tuple[Any, ...]]) -> None:
    """``(id, endpoint_id, event_id, event_type, public_type, payload)`` rows; an event is
    delivered once per endpoint whatever happens upstream."""
    await conn.executemany(
        """INSERT INTO deliveries (id, endpoint_id, event_id, event_type, public_type, payload)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (endpoint_id, event_id) DO NOTHING""",
        rows,
    )


# -- delivery -----------------------------------------------------------------------------


async def claim(
    conn: Conn, *, limit: int, lease_s: float, per_endpoint: int
) -> list[asyncpg.Record]:
    """Take up to ``limit`` due deliveries of endpoints that are not paused, at most
    ``per_endpoint`` in flight per endpoint, and hold them for ``lease_s`` seconds."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _CLAIM_LOCK)
        return list(
            await conn.fetch(
                """WITH busy AS (
                       SELECT endpoint_id, count(*) AS n FROM deliveries
                       WHERE state = 'pending' AND locked_until > now()
                       GROUP BY endpoint_id),
                   ready AS (
                       SELECT d.id, d.endpoint_id, d.next_attempt_at,
                              row_number() OVER (PARTITION BY d.endpoint_id
                                                 ORDER BY d.next_attempt_at, d.id) AS rn
                       FROM deliveries d JOIN endpoints e ON e.id = d.endpoint_id
                       WHERE d.state = 'pending' AND d.next_attempt_at <= now()
                         AND e.paused_at IS NULL
                         AND (d.locked_until IS NULL OR d.locked_until <= now())),
                   picked AS (
                       SELECT ready.id FROM ready
                       LEFT JOIN busy ON busy.endpoint_id = ready.endpoint_id
                       WHERE ready.rn <= $3 - coalesce(busy.n, 0)
                       ORDER BY ready.next_attempt_at, ready.id LIMIT $1)
                   UPDATE deliveries d SET locked_until = now() + make_interval(secs => $2)
                   FROM picked, endpoints e
                   WHERE d.id = picked.id AND e.id = d.endpoint_id
                   RETURNING d.id, d.endpoint_id, d.event_id, d.event_type, d.public_type,
                             d.payload, d.attempt, d.manual, e.url, e.secret""",
                limit,
                lease_s,
                per_endpoint,
            )
        )


async def next_due(conn: Conn) -> datetime | None:
    """When the next pending delivery of an endpoint that is not paused falls due."""
    due: datetime | None = await conn.fetchval(
        """SELECT min(greatest(d.next_attempt_at, coalesce(d.locked_until, d.next_attempt_at)))
           FROM deliveries d JOIN endpoints e ON e.id = d.endpoint_id
           WHERE d.state = 'pending' AND e.paused_at IS NULL"""
    )
    return due


async def record_attempt(
    conn: Conn,
    delivery_id: uuid.UUID,
    *,
    attempt: int,
    manual: bool,
    at: datetime,
    status_code: int | None,
    latency_ms: float,
    response_body: str | None,
    error: str | None,
    state: str,
    retry_in_s: float | None,
) -> asyncpg.Record | None:
    """Record one attempt and what follows: the delivery's new state and next time. None
    when the delivery is gone (its endpoint was deleted meanwhile)."""
    row = await conn.fetchrow(
        """UPDATE deliveries SET attempt = $2, status_code = $3, error = $4,
               response_body = $5, latency_ms = $6, last_attempt_at = $7, state = $8,
               next_attempt_at = CASE WHEN $9::float8 IS NULL THEN next_attempt_at
                                      ELSE now() + make_interval(secs => $9::float8) END,
               locked_until = NULL, manual = false, updated_at = now()
           WHERE id = $1 RETURNING endpoint_id""",
        delivery_id,
        attempt,
        status_code,
        error,
        response_body,
        latency_ms,
        at,
        state,
        retry_in_s,
    )
    if row is None:
        return None
    await conn.execute(
        """INSERT INTO attempts (delivery_id, attempt, at, manual, status_code, latency_ms,
                                 response_body, error)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING""",
        delivery_id,
        attempt,
        at,
        manual,
        status_code,
        latency_ms,
        response_body,
        error,
    )
    return row


async def mark_endpoint_ok(conn: Conn, endpoint_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE endpoints SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL",
        endpoint_id,
    )


async def mark_endpoint_failing(conn: Conn, endpoint_id: uuid.UUID) -> asyncpg.Record | None:
    """Start (or keep) the failure clock; returns the endpoint."""
    return await conn.fetchrow(
        """UPDATE endpoints SET failing_since = coalesce(failing_since, now())
           WHERE id = $1 RETURNING *""",
        endpoint_id,
    )


# -- history ------------------------------------------------------------------------------


async def list_deliveries(
    conn: Conn,
    endpoint_id: uuid.UUID,
    *,
    state: str | None,
    before: uuid.UUID | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Newest first (ids are time-ordered), keyset-paged."""
    return list(
        await conn.fetch(
            """SELECT * FROM deliveries
               WHERE endpoint_id = $1 AND ($2::text IS NULL OR state = $2)
                 AND ($3::uuid IS NULL OR id < $3)
               ORDER BY id DESC LIMIT $4""",
            endpoint_id,
            state,
            before,
            limit,
        )
    )


async def get_delivery(
    conn: Conn, endpoint_id: uuid.UUID, delivery_id: uuid.UUID
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM deliveries WHERE id = $1 AND endpoint_id = $2", delivery_id, endpoint_id
    )


async def attempts_of(conn: Conn, delivery_id: uuid.UUID) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT * FROM attempts WHERE delivery_id = $1 ORDER BY attempt", delivery_id
        )
    )


async def resend(
    conn: Conn, endpoint_id: uuid.UUID, delivery_id: uuid.UUID
) -> asyncpg.Record | None:
    """Send a delivery again now, whatever its state (an attempt in flight finishes first)."""
    return await conn.fetchrow(
        """UPDATE deliveries SET state = 'pending', next_attempt_at = now(), manual = true,
               updated_at = now()
           WHERE id = $1 AND endpoint_id = $2 RETURNING *""",
        delivery_id,
        endpoint_id,
    )
