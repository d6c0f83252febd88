"""All of logstream's SQL (schema ``logstream``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from fleetlab_common.db import Conn
from fleetlab_common.events import AgentLogLine, LogLinesAppended, MetricPoint

# -- output lines --------------------------------------------------------------------------


async def insert_lines(conn: Conn, batch: LogLinesAppended) -> int:
    """Store a batch (one statement, arrays in); lines already stored (a redelivered batch)
    are skipped. The run's counters move by what was new. Returns how many lines were new."""
    lines = batch.lines
    return await insert_line_arrays(
        conn,
        batch.experiment_id,
        batch.attempt,
        [ln.seq for ln in lines],
        [ln.stream for ln in lines],
        [ln.ts.isoformat() for ln in lines],
        [ln.line for ln in lines],
    )


async def insert_line_arrays(
    conn: Conn,
    experiment_id: uuid.UUID,
    attempt: int,
    seqs: list[int],
    streams: list[str],
    timestamps: list[str],
    texts: list[str],
) -> int:
    """:func:`insert_lines` from the batch's columns, times as ISO 8601 text (PostgreSQL
    parses them faster than Python makes datetimes of them)."""
    inserted = await conn.fetchval(
        """WITH ins AS (
               INSERT INTO lines (experiment_id, attempt, seq, stream, ts, line)
               SELECT $1, $2, u.seq, u.stream, u.ts::timestamptz, u.line
               FROM unnest($3::integer[], $4::text[], $5::text[], $6::text[])
                    AS u(seq, stream, ts, line)
               ON CONFLICT DO NOTHING
               RETURNING seq, octet_length(line) AS size
           ), up AS (
               INSERT INTO runs AS r (experiment_id, attempt, stored, last_seq, bytes)
               SELECT $1, $2, count(*), coalesce(max(seq), 0), coalesce(sum(size), 0) FROM ins
               ON CONFLICT (experiment_id, attempt) DO UPDATE
               SET stored = r.stored + EXCLUDED.stored,
                   last_seq = greatest(r.last_seq, EXCLUDED.last_seq),
                   bytes = r.bytes + EXCLUDED.bytes
           )
           SELECT count(*) FROM ins""",
        experiment_id,
        attempt,
        seqs,
        streams,
        timestamps,
        # PostgreSQL text cannot hold NUL (an older agent may send one): replaced, not fatal.
        [t.replace("\x00", "\ufffd") if "\x00" in t else t for t in texts],
    )
    return int(inserted or 0)


async def latest_attempt(conn: Conn, experiment_id: uuid.UUID) -> int | None:
    value = await conn.fetchval(
        "SELECT max(attempt) FROM runs WHERE experiment_id = $1", experiment_id
    )
    return int(value) if value is not None else None


async def count_lines(conn: Conn, experiment_id: uuid.UUID, attempt: int) -> int:
    """How many lines of the attempt are stored (kept in ``runs``, not counted). An expired
    run's lines are gone for good: it counts as complete, so nobody waits for them."""
    value = await conn.fetchval(
        """SELECT CASE WHEN expired_at IS NULL THEN stored ELSE 2147483647 END
           FROM runs WHERE experiment_id = $1 AND attempt = $2""",
        experiment_id,
        attempt,
    )
    return int(value or 0)


async def get_run(conn: Conn, experiment_id: uuid.UUID, attempt: int) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM runs WHERE experiment_id = $1 AND attempt = $2", experiment_id, attempt
    )
    return row


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


# -- how runs end, archives, retention ---------------------------------------------------------


async def record_finished(
    conn: Conn,
    experiment_id: uuid.UUID,
    attempt: int,
    status: str,
    log_lines: int,
    finished_at: datetime,
) -> None:
    await conn.execute(
        """INSERT INTO runs AS r (experiment_id, attempt, status, log_lines, finished_at)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (experiment_id, attempt) DO UPDATE
           SET status = EXCLUDED.status, log_lines = EXCLUDED.log_lines,
               finished_at = EXCLUDED.finished_at""",
        experiment_id,
        attempt,
        status,
        log_lines,
        finished_at,
    )


async def record_project(conn: Conn, experiment_id: uuid.UUID, project: str) -> None:
    await conn.execute(
        """INSERT INTO experiments (experiment_id, project) VALUES ($1, $2)
           ON CONFLICT (experiment_id) DO UPDATE SET project = EXCLUDED.project""",
        experiment_id,
        project,
    )


async def runs_to_archive(conn: Conn, gave_up_before: datetime, limit: int) -> list[asyncpg.Record]:
    """Finished runs not archived yet whose log is complete, or that waited long enough."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT experiment_id, attempt, stored, log_lines FROM runs
           WHERE archived_at IS NULL AND finished_at IS NOT NULL AND expired_at IS NULL
             AND (stored >= log_lines OR finished_at < $1)
           ORDER BY finished_at LIMIT $2""",
        gave_up_before,
        limit,
    )
    return rows


async def mark_archived(
    conn: Conn, experiment_id: uuid.UUID, attempt: int, key: str, complete: bool
) -> None:
    await conn.execute(
        """UPDATE runs SET archive_key = $3, archived_at = now(), archive_complete = $4
           WHERE experiment_id = $1 AND attempt = $2""",
        experiment_id,
        attempt,
        key,
        complete,
    )


async def finished_runs_by_age(conn: Conn) -> list[asyncpg.Record]:
    """Every finished run still holding its log, newest first within its project, with the
    bytes of log its project's newer runs (and itself) hold."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT r.experiment_id, r.attempt, r.archive_key, r.finished_at, e.project,
                  sum(r.bytes) OVER (PARTITION BY e.project
                                     ORDER BY r.finished_at DESC, r.experiment_id, r.attempt)
                      AS kept_bytes
           FROM runs r LEFT JOIN experiments e USING (experiment_id)
           WHERE r.finished_at IS NOT NULL AND r.expired_at IS NULL"""
    )
    return rows


async def expire_run(conn: Conn, experiment_id: uuid.UUID, attempt: int) -> None:
    await conn.execute(
        "DELETE FROM lines WHERE experiment_id = $1 AND attempt = $2", experiment_id, attempt
    )
    await conn.execute(
        """UPDATE runs SET expired_at = now(), stored = 0, bytes = 0
           WHERE experiment_id = $1 AND attempt = $2""",
        experiment_id,
        attempt,
    )


# -- agents' own logs ------------------------------------------------------------------------


async def insert_agent_lines(conn: Conn, agent_id: str, lines: Sequence[AgentLogLine]) -> None:
    await conn.execute(
        """INSERT INTO agent_lines (agent_id, ts, level, line)
           SELECT $1, u.ts, u.level, u.line
           FROM unnest($2::timestamptz[], $3::text[], $4::text[]) AS u(ts, level, line)""",
        agent_id,
        [ln.ts for ln in lines],
        [ln.level for ln in lines],
        [ln.line for ln in lines],
    )


async def fetch_agent_lines(
    conn: Conn, agent_id: str, limit: int, before_id: int | None
) -> list[asyncpg.Record]:
    """The newest ``limit`` lines of the agent (before ``before_id``), oldest first."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT id, ts, level, line FROM (
               SELECT id, ts, level, line FROM agent_lines
               WHERE agent_id = $1 AND ($3::bigint IS NULL OR id < $3)
               ORDER BY id DESC LIMIT $2
           ) newest ORDER BY id""",
        agent_id,
        limit,
        before_id,
    )
    return rows


async def prune_agent_lines(conn: Conn, keep: int) -> int:
    """Keep only the newest ``keep`` lines of each agent; returns how many went."""
    status: str = await conn.execute(
        """DELETE FROM agent_lines a
           USING (
               SELECT g.agent_id,
                      (SELECT x.id FROM agent_lines x WHERE x.agent_id = g.agent_id
                       ORDER BY x.id DESC OFFSET $1 LIMIT 1) AS cutoff
               FROM (SELECT DISTINCT agent_id FROM agent_lines) g
           ) c
           WHERE a.agent_id = c.agent_id AND a.id <= c.cutoff""",
        keep,
    )
    return int(status.rsplit(maxsplit=1)[-1])


# -- metrics -----------------------------------------------------------------------------------

_POINT_COLUMNS = (
    "experiment_id",
    "attempt",
    "name",
    "step",
    "value",
    "ts",
    "cumulative",
    "metadata",
)


def _metadata(p: MetricPoint) -> str | None:
    """A point's metadata as stored; a rank of a multi-worker run keeps its ``rank`` there."""
    if p.rank is not None:
        return json.dumps({**(p.metadata or {}), "rank": p.rank})
    return None if p.metadata is None else json.dumps(p.metadata)


async def copy_points(
    conn: Conn, experiment_id: uuid.UUID, attempt: int, points: Sequence[MetricPoint]
) -> None:
    """Append points with COPY (one round trip for the whole batch)."""
    await copy_point_records(conn, point_records(experiment_id, attempt, points))


def point_records(
    experiment_id: uuid.UUID, attempt: int, points: Sequence[MetricPoint]
) -> list[tuple[Any, ...]]:
    """Points as rows of ``metric_points`` (in ``_POINT_COLUMNS`` order)."""
    return [
        (experiment_id, attempt, p.name, p.step, p.value, p.ts, p.cumulative, _metadata(p))
        for p in points
    ]


async def copy_point_records(conn: Conn, records: Sequence[tuple[Any, ...]]) -> None:
    """Append rows (see :func:`point_records`) with COPY."""
    await conn.copy_records_to_table("metric_points", records=records, columns=_POINT_COLUMNS)


async def upsert_summary(
    conn: Conn, experiment_id: uuid.UUID, rows: Sequence[tuple[Any, ...]]
) -> list[asyncpg.Record]:
    """Fold a batch's per-name (name, last, last_step, last_ts, min, max, count) into the
    experiment's summary: ``last`` is the newest point, ``min``/``max`` over everything.
    Returns the summaries of those names as they now stand."""
    summaries: list[asyncpg.Record] = await conn.fetch(
        """INSERT INTO metric_summary AS s
               (experiment_id, name, last, last_step, last_ts, min, max, count)
           SELECT $1, u.name, u.last, u.last_step, u.last_ts, u.min, u.max, u.count
           FROM unnest($2::text[], $3::float8[], $4::bigint[], $5::timestamptz[],
                       $6::float8[], $7::float8[], $8::bigint[])
                AS u(name, last, last_step, last_ts, min, max, count)
           ON CONFLICT (experiment_id, name) DO UPDATE
           SET last = EXCLUDED.last, last_step = EXCLUDED.last_step,
               last_ts = EXCLUDED.last_ts,
               min = least(s.min, EXCLUDED.min), max = greatest(s.max, EXCLUDED.max),
               count = s.count + EXCLUDED.count
           RETURNING name, last, last_step, last_ts, min, max, count""",
        experiment_id,
        *(list(col) for col in zip(*rows, strict=True)),
    )
    return summaries


async def upsert_scores(conn: Conn, experiment_id: uuid.UUID, scores: dict[str, float]) -> None:
    await conn.execute(
        """INSERT INTO scores (experiment_id, name, value)
           SELECT $1, u.name, u.value FROM unnest($2::text[], $3::float8[]) AS u(name, value)
           ON CONFLICT (experiment_id, name) DO UPDATE SET value = EXCLUDED.value""",
        experiment_id,
        list(scores),
        list(scores.values()),
    )


async def fetch_points(
    conn: Conn,
    experiment_id: uuid.UUID,
    names: list[str] | None,
    after_id: int,
    limit: int,
) -> list[asyncpg.Record]:
    """Points in (name, ingest) order, from after ``after_id`` (a page's cursor)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT id, name, step, value, ts, cumulative, metadata, attempt FROM metric_points
           WHERE experiment_id = $1 AND ($2::text[] IS NULL OR name = ANY($2)) AND id > $3
           ORDER BY id LIMIT $4""",
        experiment_id,
        names,
        after_id,
        limit,
    )
    return rows


async def fetch_series(conn: Conn, experiment_id: uuid.UUID, name: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT step, value, ts FROM metric_points
           WHERE experiment_id = $1 AND name = $2 ORDER BY id""",
        experiment_id,
        name,
    )
    return rows


async def fetch_summary(conn: Conn, experiment_id: uuid.UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT name, last, last_step, last_ts, min, max, count FROM metric_summary
           WHERE experiment_id = $1 ORDER BY name""",
        experiment_id,
    )
    return rows


async def fetch_scores(conn: Conn, experiment_id: uuid.UUID) -> dict[str, float]:
    rows = await conn.fetch(
        "SELECT name, value FROM scores WHERE experiment_id = $1 ORDER BY name", experiment_id
    )
    return {r["name"]: r["value"] for r in rows}


# -- deleted experiments ----------------------------------------------------------------------


async def delete_experiment(conn: Conn, experiment_id: uuid.UUID) -> list[str]:
    """Delete everything stored about one experiment in every table of this schema that has
    an ``experiment_id`` column (lines, runs, metrics, usage…); the archive keys it had."""
    keys = [
        row["archive_key"]
        for row in await conn.fetch(
            "SELECT archive_key FROM runs WHERE experiment_id = $1 AND archive_key IS NOT NULL",
            experiment_id,
        )
    ]
    tables = await conn.fetch(
        """SELECT table_name FROM information_schema.columns
           WHERE table_schema = current_schema() AND column_name = 'experiment_id'
           ORDER BY table_name"""
    )
    async with conn.transaction():
        for row in tables:
            await conn.execute(
                f'DELETE FROM "{row["table_name"]}" WHERE experiment_id = $1', experiment_id
            )
    return keys
