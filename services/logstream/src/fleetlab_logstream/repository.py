"""All of logstream's SQL (schema ``logstream``)."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from fleetlab_common.db import Conn
from fleetlab_common.events import AgentLogLine, MetricPoint

# -- output lines --------------------------------------------------------------------------

_LINES_JSON = orjson.dumps
# Stored by the batch (a chunk, see migration 0005): one row per batch, its lines as JSON.


async def insert_chunk(
    conn: Conn,
    experiment_id: uuid.UUID,
    attempt: int,
    lines: list[dict[str, Any]],
    size: int,
) -> int:
    """Store one batch of lines (``size`` bytes of text) as a chunk. Lines already stored are
    skipped: a batch delivered again, or lines sent again in another batch. The run's counters
    move by what was new. Returns how many lines were new."""
    seqs = [ln["seq"] for ln in lines]
    first, last = min(seqs), max(seqs)
    # The common case in one statement: no stored chunk overlaps the batch's range.
    inserted = await _insert_chunk(conn, experiment_id, attempt, lines, first, last, size, True)
    if inserted is not None:
        return inserted
    # Overlapping chunks: another rank's (their numbers interleave) or the same lines again.
    stored: set[int] = set()
    for row in await conn.fetch(
        """SELECT lines FROM chunks WHERE experiment_id = $1 AND attempt = $2
             AND first_seq <= $4 AND last_seq >= $3""",
        experiment_id,
        attempt,
        first,
        last,
    ):
        stored.update(ln["seq"] for ln in orjson.loads(row["lines"]))
    new = [ln for ln in lines if ln["seq"] not in stored]
    if not new:
        return 0
    seqs = [ln["seq"] for ln in new]
    size = sum(len(ln["line"].encode()) for ln in new) if len(new) < len(lines) else size
    inserted = await _insert_chunk(
        conn, experiment_id, attempt, new, min(seqs), max(seqs), size, False
    )
    return inserted or 0


async def _insert_chunk(
    conn: Conn,
    experiment_id: uuid.UUID,
    attempt: int,
    lines: list[dict[str, Any]],
    first: int,
    last: int,
    size: int,
    unless_overlapping: bool,
) -> int | None:
    """Insert the chunk; None when it was not (it overlaps a stored one, if so asked)."""
    inserted: int | None = await conn.fetchval(
        """WITH ins AS (
               INSERT INTO chunks (experiment_id, attempt, first_seq, last_seq, count, lines)
               SELECT $1, $2, $3, $4, $5, $7
               WHERE NOT ($8 AND EXISTS (
                   SELECT 1 FROM chunks WHERE experiment_id = $1 AND attempt = $2
                     AND first_seq <= $4 AND last_seq >= $3))
               ON CONFLICT DO NOTHING
               RETURNING count, last_seq
           ), up AS (
               INSERT INTO runs AS r (experiment_id, attempt, stored, last_seq, bytes)
               SELECT $1, $2, count, last_seq, $6 FROM ins
               ON CONFLICT (experiment_id, attempt) DO UPDATE
               SET stored = r.stored + EXCLUDED.stored,
                   last_seq = greatest(r.last_seq, EXCLUDED.last_seq),
                   bytes = r.bytes + EXCLUDED.bytes
           )
           SELECT count FROM ins""",
        experiment_id,
        attempt,
        first,
        last,
        len(lines),
        size,
        _LINES_JSON(lines).decode(),
        unless_overlapping,
    )
    return inserted


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
) -> list[dict[str, Any]]:
    """Up to ``limit`` lines from ``from_seq`` (to ``to_seq``, of ``stream``), in seq order,
    as the agent sent them. Chunks are read in order of their first line, a few at a time;
    the ranks of a multi-worker run interleave their numbers, so their chunks overlap, and
    reading stops only once no later chunk can hold a line before the last one kept."""
    lines: list[dict[str, Any]] = []
    after: int | None = None
    page = 4
    loads = orjson.loads
    while True:
        rows = await conn.fetch(
            """SELECT first_seq, lines FROM chunks
               WHERE experiment_id = $1 AND attempt = $2 AND last_seq >= $3
                 AND ($4::integer IS NULL OR first_seq <= $4)
                 AND ($5::integer IS NULL OR first_seq > $5)
               ORDER BY first_seq LIMIT $6""",
            experiment_id,
            attempt,
            from_seq,
            to_seq,
            after,
            page,
        )
        for row in rows:
            if len(lines) >= limit:
                lines.sort(key=_seq)
                if row["first_seq"] > lines[limit - 1]["seq"]:
                    return _unique(lines)[:limit]
            lines += [
                ln
                for ln in loads(row["lines"])
                if ln["seq"] >= from_seq
                and (to_seq is None or ln["seq"] <= to_seq)
                and (stream is None or ln["stream"] == stream)
            ]
        if len(rows) < page:
            lines.sort(key=_seq)
            return _unique(lines)[:limit]
        after = rows[-1]["first_seq"]
        page = min(page * 2, 256)


def _seq(line: dict[str, Any]) -> int:
    seq: int = line["seq"]
    return seq


def _unique(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sorted lines without a repeated seq (a batch stored twice under other bounds)."""
    if all(a["seq"] != b["seq"] for a, b in itertools.pairwise(lines)):
        return lines
    out = lines[:1]
    for ln in lines[1:]:
        if ln["seq"] != out[-1]["seq"]:
            out.append(ln)
    return out


# -- how runs end, archives, retention ---------------------------------------------------------


async def record_finished(
    conn: Conn,
    experiment_id: uuid.UUID,
    attempt: int,
    status: str,
    log_lines: int,
    finished_at: datetime,
) -> None:
    # A run that printed nothing has no log file to write: it counts as archived at once.
    await conn.execute(
        """INSERT INTO runs AS r (experiment_id, attempt, status, log_lines, finished_at,
                                  archived_at, archive_complete)
           VALUES ($1, $2, $3, $4, $5,
                   CASE WHEN $4 = 0 THEN now() END, CASE WHEN $4 = 0 THEN true END)
           ON CONFLICT (experiment_id, attempt) DO UPDATE
           SET status = EXCLUDED.status, log_lines = EXCLUDED.log_lines,
               finished_at = EXCLUDED.finished_at,
               archived_at = coalesce(r.archived_at, EXCLUDED.archived_at),
               archive_complete = coalesce(r.archive_complete, EXCLUDED.archive_complete)""",
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
        "DELETE FROM chunks WHERE experiment_id = $1 AND attempt = $2", experiment_id, attempt
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


@dataclass(slots=True)
class Series:
    """One metric's points of one batch, as columns in the order they came."""

    steps: list[int | None] = field(default_factory=list)
    vals: list[float] = field(default_factory=list)
    ts: list[datetime] = field(default_factory=list)
    cumulative: list[bool] = field(default_factory=list)
    metadata: list[str | None] = field(default_factory=list)  # JSON text

    def add(
        self,
        step: int | None,
        value: float,
        ts: datetime,
        cumulative: bool,
        metadata: str | None,
    ) -> None:
        self.steps.append(step)
        self.vals.append(value)
        self.ts.append(ts)
        self.cumulative.append(cumulative)
        self.metadata.append(metadata)


# A batch of points: each metric's points by its name.
PointBatch = dict[str, Series]


def add_point(
    batch: PointBatch,
    name: str,
    step: int | None,
    value: float,
    ts: datetime,
    cumulative: bool,
    metadata: str | None,
) -> None:
    """Add one point to its metric's series in ``batch``."""
    series = batch.get(name)
    if series is None:
        series = batch[name] = Series()
    series.add(step, value, ts, cumulative, metadata)


def _metadata(p: MetricPoint) -> str | None:
    """A point's metadata as stored; a rank of a multi-worker run keeps its ``rank`` there."""
    if p.rank is not None:
        return json.dumps({**(p.metadata or {}), "rank": p.rank})
    return None if p.metadata is None else json.dumps(p.metadata)


def batch_of_points(points: Sequence[MetricPoint]) -> PointBatch:
    """Points (models) as columns per metric."""
    batch: PointBatch = {}
    for p in points:
        add_point(batch, p.name, p.step, p.value, p.ts, p.cumulative, _metadata(p))
    return batch


def summarise(batch: PointBatch) -> list[tuple[Any, ...]]:
    """Per metric of a batch: (name, last, last_step, last_ts, min, max, count)."""
    return [
        (name, s.vals[-1], s.steps[-1], s.ts[-1], min(s.vals), max(s.vals), len(s.vals))
        for name, s in batch.items()
        if s.vals
    ]


# A point's id: its chunk's id * _IDS_PER_CHUNK + its place in the chunk (migration 0006).
_IDS_PER_CHUNK = 1_000_000
_CHUNK_COLUMNS = (
    "experiment_id",
    "attempt",
    "name",
    "steps",
    "vals",
    "ts",
    "cumulative",
    "metadata",
)


async def copy_points(
    conn: Conn, experiment_id: uuid.UUID, attempt: int, batch: PointBatch
) -> None:
    """Append a batch with COPY: one chunk row per metric, its points as arrays."""
    rows = [
        (
            experiment_id,
            attempt,
            name,
            s.steps,
            s.vals,
            s.ts,
            s.cumulative if any(s.cumulative) else None,
            s.metadata if any(m is not None for m in s.metadata) else None,
        )
        for name, s in batch.items()
        if s.vals
    ]
    await conn.copy_records_to_table("metric_chunks", records=rows, columns=_CHUNK_COLUMNS)


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
) -> list[dict[str, Any]]:
    """Up to ``limit`` points in ingest order (a batch's points by name), from after
    ``after_id`` (a page's cursor): ``id``, ``name``, ``step``, ``value``, ``ts``,
    ``cumulative``, ``metadata`` (JSON text), ``attempt``."""
    points: list[dict[str, Any]] = []
    chunk_from, skip = divmod(max(after_id + 1, 0), _IDS_PER_CHUNK)
    while len(points) < limit:
        rows = await conn.fetch(
            """SELECT id, name, attempt, steps, vals, ts, cumulative, metadata
               FROM metric_chunks
               WHERE experiment_id = $1 AND ($2::text[] IS NULL OR name = ANY($2)) AND id >= $3
               ORDER BY id LIMIT 16""",
            experiment_id,
            names,
            chunk_from,
        )
        for row in rows:
            first = skip if row["id"] == chunk_from else 0
            base = row["id"] * _IDS_PER_CHUNK
            cumulative, metadata = row["cumulative"], row["metadata"]
            steps, vals, ts = row["steps"], row["vals"], row["ts"]
            for i in range(first, min(len(vals), first + limit - len(points))):
                points.append(
                    {
                        "id": base + i,
                        "name": row["name"],
                        "step": steps[i],
                        "value": vals[i],
                        "ts": ts[i],
                        "cumulative": bool(cumulative[i]) if cumulative else False,
                        "metadata": metadata[i] if metadata else None,
                        "attempt": row["attempt"],
                    }
                )
        if len(rows) < 16:
            break
        chunk_from, skip = rows[-1]["id"] + 1, 0
    return points


async def fetch_series(
    conn: Conn, experiment_id: uuid.UUID, name: str
) -> tuple[list[int | None], list[float], list[datetime]]:
    """Every point of one metric in ingest order: (steps, values, times)."""
    steps: list[int | None] = []
    vals: list[float] = []
    ts: list[datetime] = []
    for row in await conn.fetch(
        """SELECT steps, vals, ts FROM metric_chunks
           WHERE experiment_id = $1 AND name = $2 ORDER BY id""",
        experiment_id,
        name,
    ):
        steps += row["steps"]
        vals += row["vals"]
        ts += row["ts"]
    return steps, vals, ts


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
