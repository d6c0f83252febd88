"""All SQL on the experiments read model."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from fleetlab_api.experiments.listing import MetricFilter, Sort, filter_sql
from fleetlab_common.api.experiments import Experiment
from fleetlab_common.db import Conn

_SELECT = """SELECT e.*, p.name AS project FROM experiments e
             JOIN projects p ON p.id = e.project_id"""


def _to_experiment(row: asyncpg.Record) -> Experiment:
    return Experiment.model_validate({**dict(row), "tags": list(row["tags"])})


async def insert(conn: Conn, rows: list[tuple[Any, ...]]) -> None:
    """``(id, project_id, options, name, priority, tags)`` rows, in one statement batch."""
    await conn.executemany(
        """INSERT INTO experiments (id, project_id, options, name, priority, tags)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        rows,
    )


async def get(conn: Conn, experiment_id: uuid.UUID) -> Experiment | None:
    row = await conn.fetchrow(f"{_SELECT} WHERE e.id = $1", experiment_id)
    return _to_experiment(row) if row else None


async def get_many(conn: Conn, experiment_ids: list[uuid.UUID]) -> list[Experiment]:
    """The experiments with these ids, in the order given (those that do not exist left out)."""
    rows = await conn.fetch(f"{_SELECT} WHERE e.id = ANY($1::uuid[])", experiment_ids)
    found = {row["id"]: _to_experiment(row) for row in rows}
    return [found[i] for i in experiment_ids if i in found]


async def page(
    conn: Conn,
    *,
    project_id: uuid.UUID | None,
    status: str | None,
    before: uuid.UUID | None,
    limit: int,
) -> list[Experiment]:
    """Newest first, keyset-paged on the (time-ordered) id: stable under inserts."""
    rows = await conn.fetch(
        f"""{_SELECT}
            WHERE ($1::uuid IS NULL OR e.project_id = $1)
              AND ($2::text IS NULL OR e.status = $2)
              AND ($3::uuid IS NULL OR e.id < $3)
            ORDER BY e.id DESC LIMIT $4""",
        project_id,
        status,
        before,
        limit,
    )
    return [_to_experiment(r) for r in rows]


# The read model follows events. Each update names the states it may leave, so a stale or
# out-of-order event (another attempt's, or one arriving after the end) changes nothing.


async def record_assigned(
    conn: Conn, experiment_id: uuid.UUID, attempt: int, agent_id: str
) -> None:
    await conn.execute(
        """UPDATE experiments SET agent_id = $3
           WHERE id = $1 AND attempt = $2 AND status = 'queued'""",
        experiment_id,
        attempt,
        agent_id,
    )


async def record_started(
    conn: Conn,
    experiment_id: uuid.UUID,
    attempt: int,
    agent_id: str,
    at: datetime,
) -> None:
    await conn.execute(
        """UPDATE experiments SET status = 'running', started_at = $4, agent_id = $3,
               status_reason = NULL
           WHERE id = $1 AND attempt = $2 AND status = 'queued'""",
        experiment_id,
        attempt,
        agent_id,
        at,
    )


async def record_finished(
    conn: Conn,
    experiment_id: uuid.UUID,
    attempt: int,
    *,
    status: str,
    agent_id: str,
    exit_code: int | None,
    signal: int | None,
    reason: str | None,
    started_at: datetime | None,
    finished_at: datetime,
    log_lines: int,
) -> None:
    await conn.execute(
        """UPDATE experiments SET status = $3, agent_id = $4, exit_code = $5, signal = $6,
               status_reason = $7, started_at = coalesce(started_at, $8), finished_at = $9,
               log_lines = $10
           WHERE id = $1 AND attempt = $2 AND status IN ('queued', 'running')""",
        experiment_id,
        attempt,
        status,
        agent_id,
        exit_code,
        signal,
        reason,
        started_at,
        finished_at,
        log_lines,
    )


async def record_cancelled(
    conn: Conn, experiment_id: uuid.UUID, attempt: int, reason: str, at: datetime
) -> None:
    await conn.execute(
        """UPDATE experiments SET status = 'stopped', status_reason = $3, finished_at = $4
           WHERE id = $1 AND attempt = $2 AND status = 'queued'""",
        experiment_id,
        attempt,
        reason,
        at,
    )


async def record_lost(
    conn: Conn,
    experiment_id: uuid.UUID,
    attempt: int,
    reason: str,
    requeued: bool,
    at: datetime,
) -> None:
    if requeued:
        await conn.execute(
            """UPDATE experiments SET status = 'queued', attempt = attempt + 1, agent_id = NULL,
                   started_at = NULL, status_reason = $3
               WHERE id = $1 AND attempt = $2 AND status IN ('queued', 'running')""",
            experiment_id,
            attempt,
            f"lost on attempt {attempt} ({reason}); queued again",
        )
    else:
        await conn.execute(
            """UPDATE experiments SET status = 'lost', status_reason = $3, finished_at = $4
               WHERE id = $1 AND attempt = $2 AND status IN ('queued', 'running')""",
            experiment_id,
            attempt,
            reason,
            at,
        )


async def page_sorted(
    conn: Conn,
    *,
    project_id: uuid.UUID | None,
    status: str | None,
    tag: str | None,
    sweep_id: uuid.UUID | None,
    sort: Sort,
    after: tuple[str, uuid.UUID] | None,
    limit: int,
    metric_filters: list[MetricFilter] | None = None,
) -> list[Experiment]:
    """Filtered and sorted by ``sort`` then id, starting strictly after ``after`` (the last
    row's key value, as text, and id): keyset paging, stable under inserts for every sort."""
    args: list[Any] = [project_id, status, tag, sweep_id, limit]
    by_metrics = filter_sql(metric_filters or [], args)
    expr = sort.expr
    if sort.path is not None:
        args.append(sort.path)
        expr = expr.replace("$PATH", f"${len(args)}")
    direction = "DESC" if sort.descending else "ASC"
    keyset = "TRUE"
    if after is not None:
        args += [after[0], after[1]]
        value, last_id = f"${len(args) - 1}::text::{sort.sql_type}", f"${len(args)}::uuid"
        keyset = f"({expr}, e.id) {'<' if sort.descending else '>'} ({value}, {last_id})"
    rows = await conn.fetch(
        f"""{_SELECT}
            WHERE ($1::uuid IS NULL OR e.project_id = $1)
              AND ($2::text IS NULL OR e.status = $2)
              AND ($3::text IS NULL OR $3 = ANY(e.tags))
              AND ($4::uuid IS NULL OR e.sweep_id = $4)
              AND {by_metrics}
              AND {keyset}
            ORDER BY {expr} {direction}, e.id {direction} LIMIT $5""",
        *args,
    )
    return [_to_experiment(r) for r in rows]


async def update_fields(
    conn: Conn, experiment_id: uuid.UUID, fields: dict[str, Any]
) -> Experiment | None:
    """Set ``name`` and/or ``notes`` (the only fields a user edits)."""
    columns = [c for c in ("name", "notes") if c in fields]
    if columns:
        sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=2))
        await conn.execute(
            f"UPDATE experiments SET {sets} WHERE id = $1",
            experiment_id,
            *[fields[c] for c in columns],
        )
    return await get(conn, experiment_id)


async def delete(conn: Conn, experiment_id: uuid.UUID) -> bool:
    done = await conn.execute("DELETE FROM experiments WHERE id = $1", experiment_id)
    return bool(done.endswith(" 1"))
