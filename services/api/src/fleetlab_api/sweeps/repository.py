"""All SQL on sweeps (the trials themselves are rows of ``experiments`` with ``sweep_id``)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from fleetlab_common.db import Conn

ACTIVE = ("queued", "running")


async def insert(conn: Conn, fields: dict[str, Any]) -> None:
    await conn.execute(
        """INSERT INTO sweeps (id, project_id, name, method, parameters, count, parallelism,
                               seed, metric, goal)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
        fields["id"],
        fields["project_id"],
        fields["name"],
        fields["method"],
        fields["parameters"],
        fields["count"],
        fields["parallelism"],
        fields["seed"],
        fields["metric"],
        fields["goal"],
    )


async def insert_trials(conn: Conn, rows: list[tuple[Any, ...]]) -> None:
    """``(id, project_id, options, name, priority, tags, sweep_id, code)`` rows."""
    await conn.executemany(
        """INSERT INTO experiments (id, project_id, options, name, priority, tags, sweep_id,
                                    code)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        rows,
    )


_SELECT = """SELECT s.*, p.name AS project FROM sweeps s JOIN projects p ON p.id = s.project_id"""


async def get(conn: Conn, sweep_id: uuid.UUID, *, lock: bool = False) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"{_SELECT} WHERE s.id = $1" + (" FOR UPDATE OF s" if lock else ""), sweep_id
    )
    return row


async def page(
    conn: Conn, *, project_id: uuid.UUID | None, before: uuid.UUID | None, limit: int
) -> list[asyncpg.Record]:
    """Newest first, keyset-paged on the (time-ordered) id."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""{_SELECT}
            WHERE ($1::uuid IS NULL OR s.project_id = $1)
              AND ($2::uuid IS NULL OR s.id < $2)
            ORDER BY s.id DESC LIMIT $3""",
        project_id,
        before,
        limit,
    )
    return rows


async def counts(conn: Conn, sweep_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, int]]:
    """Trials by status, per sweep."""
    rows = await conn.fetch(
        """SELECT sweep_id, status, count(*) AS n FROM experiments
           WHERE sweep_id = ANY($1::uuid[]) GROUP BY sweep_id, status""",
        sweep_ids,
    )
    found: dict[uuid.UUID, dict[str, int]] = {s: {} for s in sweep_ids}
    for r in rows:
        found[r["sweep_id"]][r["status"]] = r["n"]
    return found


async def active_trials(conn: Conn, sweep_id: uuid.UUID) -> list[uuid.UUID]:
    """Queued trials first, then running ones: stopped in this order, a running trial's freed
    slot never goes to a trial of the same sweep that is about to be cancelled."""
    rows = await conn.fetch(
        """SELECT id FROM experiments WHERE sweep_id = $1 AND status = ANY($2::text[])
           ORDER BY status = 'running', id""",
        sweep_id,
        list(ACTIVE),
    )
    return [r["id"] for r in rows]


async def has_active(conn: Conn, sweep_id: uuid.UUID) -> bool:
    """Whether a trial is still queued or running (one index probe, whatever the size)."""
    found = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM experiments
                          WHERE sweep_id = $1 AND status = ANY($2::text[]))""",
        sweep_id,
        list(ACTIVE),
    )
    return bool(found)


async def mark_stopped(conn: Conn, sweep_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE sweeps SET stopped_at = coalesce(stopped_at, now()) WHERE id = $1", sweep_id
    )


async def sweep_of(conn: Conn, experiment_id: uuid.UUID) -> uuid.UUID | None:
    found: uuid.UUID | None = await conn.fetchval(
        "SELECT sweep_id FROM experiments WHERE id = $1", experiment_id
    )
    return found


async def lock_unfinished(conn: Conn, sweep_id: uuid.UUID) -> asyncpg.Record | None:
    """The sweep, locked, unless it is already marked finished. Holding this lock, the next
    statement sees every trial change committed before it (PostgreSQL's read committed takes
    a fresh snapshot per statement), so of two trials ending at once, the later sees both."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"{_SELECT} WHERE s.id = $1 AND s.finished_at IS NULL FOR UPDATE OF s", sweep_id
    )
    return row


async def mark_finished(conn: Conn, sweep_id: uuid.UUID) -> None:
    await conn.execute("UPDATE sweeps SET finished_at = now() WHERE id = $1", sweep_id)
