"""All of logstream's SQL (schema ``logstream``)."""

from __future__ import annotations

import uuid

import asyncpg

from fleetlab_common.db import Conn
from fleetlab_common.events import LogLinesAppended


async def insert_lines(conn: Conn, batch: LogLinesAppended) -> None:
    """Store a batch; lines already stored (a redelivered batch) are skipped."""
    await conn.executemany(
        """INSERT INTO lines (experiment_id, attempt, seq, stream, ts, line)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""",
        [
            (batch.experiment_id, batch.attempt, ln.seq, ln.stream, ln.ts, ln.line)
            for ln in batch.lines
        ],
    )


async def latest_attempt(conn: Conn, experiment_id: uuid.UUID) -> int | None:
    value = await conn.fetchval(
        "SELECT max(attempt) FROM lines WHERE experiment_id = $1", experiment_id
    )
    return int(value) if value is not None else None


async def count_lines(conn: Conn, experiment_id: uuid.UUID, attempt: int) -> int:
    value = await conn.fetchval(
        "SELECT count(*) FROM lines WHERE experiment_id = $1 AND attempt = $2",
        experiment_id,
        attempt,
    )
    return int(value)


async def fetch_lines(
    conn: Conn,
    experiment_id: uuid.UUID,
    attempt: int,
    from_seq: int,
    to_seq: int | None,
    stream: str | None,
    limit: int,
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT seq, stream, ts, line FROM lines
           WHERE experiment_id = $1 AND attempt = $2 AND seq >= $3
             AND ($4::integer IS NULL OR seq <= $4)
             AND ($5::text IS NULL OR stream = $5)
           ORDER BY seq LIMIT $6""",
        experiment_id,
        attempt,
        from_seq,
        to_seq,
        stream,
        limit,
    )
    return rows
