"""Resource use (``agent.usage.sampled``): stored per agent and per experiment, read back whole
or downsampled, pruned by age.

Each batch holds one machine sample and one sample per running experiment (per rank of a
multi-worker one); it is stored once (the inbox drops a redelivery), the experiments' rows with
COPY. An experiment's samples are series, one per agent and rank: a multi-worker experiment
has one for each rank, on whichever agents they ran. A read returns the samples since
``since``; with ``points`` > 0 and more samples than that, the time range is cut into equal
buckets, as many per series as ``points`` allows in all, and each bucket of each series gives
one sample: CPU and GPU utilisation are the bucket's mean, memory (RSS, machine memory, GPU
memory) its peak, ``ts`` its last sample's. ``points`` = 0 returns every sample, a page at a
time (follow ``next_offset``), in time order.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from faststream.nats import NatsBroker
from pydantic import BaseModel, Field, model_validator

from fleetlab_common.broker import event_subscriber
from fleetlab_common.db import Conn
from fleetlab_common.db.inbox import first_delivery
from fleetlab_common.events import Rpc, UsageSampled, utcnow
from fleetlab_common.log import get_logger
from fleetlab_logstream.handlers import RPC_WORKERS
from fleetlab_logstream.service import CONSUMER
from fleetlab_logstream.state import State

log = get_logger(__name__)

# Bytes one answer may hold (NATS's payload limit is 1 MiB), and what a sample costs in it.
_REPLY_BYTES = 512 * 1024
_SAMPLE_BYTES = 240
_GPU_BYTES = 110

_EXPERIMENT_COLUMNS = (
    "experiment_id",
    "attempt",
    "agent_id",
    "rank",
    "ts",
    "cpu_percent",
    "rss_mb",
    "processes",
    "gpu_percent",
    "gpu_memory_mb",
)


class UsageQuery(BaseModel):
    """The samples of one experiment or of one agent (exactly one of the two)."""

    experiment_id: uuid.UUID | None = None
    agent_id: str | None = None
    since: datetime | None = None
    points: int = Field(default=500, ge=0, le=2000)
    # Samples to skip (a page's ``next_offset``), with ``points`` = 0.
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=2000, ge=1, le=2000)

    @model_validator(mode="after")
    def _one_subject(self) -> UsageQuery:
        if (self.experiment_id is None) == (self.agent_id is None):
            raise ValueError("give experiment_id or agent_id")
        return self


class UsagePage(BaseModel):
    samples: list[dict[str, Any]]
    # How many samples the range holds (more than ``samples`` when downsampled).
    total: int
    downsampled: bool = False
    next_offset: int | None = None


class LatestUsageQuery(BaseModel):
    """The newest machine sample of each of these agents."""

    agent_ids: list[str] = Field(max_length=10_000)


# -- writing ----------------------------------------------------------------------------------


async def store(pool: asyncpg.Pool, batch: UsageSampled) -> bool:
    """Store a batch once; False when it was a redelivery."""
    m = batch.machine
    async with pool.acquire() as conn, conn.transaction():
        if not await first_delivery(conn, CONSUMER, batch):
            return False
        await conn.execute(
            """INSERT INTO agent_usage (agent_id, ts, cpu_percent, memory_used_mb,
                                        memory_total_mb)
               VALUES ($1, $2, $3, $4, $5)""",
            batch.agent_id,
            m.ts,
            m.cpu_percent,
            m.memory_used_mb,
            m.memory_total_mb,
        )
        if m.gpus:
            await conn.executemany(
                """INSERT INTO agent_gpu_usage (agent_id, ts, gpu, utilization, memory_used_mb,
                                                memory_total_mb)
                   VALUES ($1, $2, $3, $4, $5, $6)""",
                [
                    (
                        batch.agent_id,
                        m.ts,
                        g.index,
                        g.utilization,
                        g.memory_used_mb,
                        g.memory_total_mb,
                    )
                    for g in m.gpus
                ],
            )
        if batch.experiments:
            await conn.copy_records_to_table(
                "experiment_usage",
                records=[
                    (
                        e.experiment_id,
                        e.attempt,
                        batch.agent_id,
                        e.rank,
                        e.ts,
                        e.cpu_percent,
                        e.rss_mb,
                        e.processes,
                        e.gpu_percent,
                        e.gpu_memory_mb,
                    )
                    for e in batch.experiments
                ],
                columns=_EXPERIMENT_COLUMNS,
            )
    return True


# -- reading ----------------------------------------------------------------------------------


def _iso(ts: datetime) -> str:
    return ts.isoformat()


def _experiment_sample(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "ts": _iso(r["ts"]),
        "attempt": r["attempt"],
        "agent_id": r["agent_id"],
        "rank": r["rank"],
        "cpu_percent": round(r["cpu_percent"], 1),
        "rss_mb": round(r["rss_mb"], 1),
        "processes": r["processes"],
        "gpu_percent": None if r["gpu_percent"] is None else round(r["gpu_percent"], 1),
        "gpu_memory_mb": None if r["gpu_memory_mb"] is None else round(r["gpu_memory_mb"], 1),
    }


def _gpu(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "index": r["gpu"],
        "utilization": round(r["utilization"], 1),
        "memory_used_mb": round(r["memory_used_mb"], 1),
        "memory_total_mb": round(r["memory_total_mb"], 1),
    }


def _agent_sample(r: asyncpg.Record, gpus: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "ts": _iso(r["ts"]),
        "cpu_percent": round(r["cpu_percent"], 1),
        "memory_used_mb": round(r["memory_used_mb"], 1),
        "memory_total_mb": round(r["memory_total_mb"], 1),
        "gpus": gpus,
    }


async def _range(
    conn: Conn, table: str, column: str, subject: Any, since: datetime | None
) -> tuple[int, datetime | None, datetime | None]:
    row = await conn.fetchrow(
        f"""SELECT count(*) AS n, min(ts) AS first, max(ts) AS last FROM {table}
            WHERE {column} = $1 AND ($2::timestamptz IS NULL OR ts >= $2)""",
        subject,
        since,
    )
    assert row is not None
    return int(row["n"]), row["first"], row["last"]


# The bucket of a row: its place in [first, last] cut into $4 equal parts.
_BUCKET = "least(floor(extract(epoch FROM ts - $3) / $5)::integer, $4 - 1)"


async def _gpu_count(conn: Conn, agent_id: str) -> int:
    value = await conn.fetchval(
        """SELECT count(DISTINCT gpu) FROM agent_gpu_usage
           WHERE agent_id = $1 AND ts = (SELECT max(ts) FROM agent_usage WHERE agent_id = $1)""",
        agent_id,
    )
    return int(value or 0)


async def query(pool: asyncpg.Pool, q: UsageQuery) -> UsagePage:
    async with pool.acquire() as conn:
        if q.experiment_id is not None:
            return await _experiment(conn, q, q.experiment_id)
        assert q.agent_id is not None
        return await _agent(conn, q, q.agent_id)


async def _experiment(conn: Conn, q: UsageQuery, experiment_id: uuid.UUID) -> UsagePage:
    total, first, last = await _range(
        conn, "experiment_usage", "experiment_id", experiment_id, q.since
    )
    if q.points == 0 or total <= q.points:
        limit = q.limit if q.points == 0 else q.points
        rows = await conn.fetch(
            """SELECT id, ts, attempt, agent_id, rank, cpu_percent, rss_mb, processes,
                      gpu_percent, gpu_memory_mb
               FROM experiment_usage
               WHERE experiment_id = $1 AND ($2::timestamptz IS NULL OR ts >= $2)
               ORDER BY ts, id OFFSET $3 LIMIT $4""",
            experiment_id,
            q.since,
            q.offset,
            limit,
        )
        more = q.points == 0 and len(rows) == limit
        return UsagePage(
            samples=[_experiment_sample(r) for r in rows],
            total=total,
            next_offset=q.offset + len(rows) if more else None,
        )
    assert first is not None and last is not None
    # The same time buckets for every series (agent and rank), ``points`` samples in all: a
    # bucket never mixes two ranks' trees or two machines.
    series = await conn.fetchval(
        """SELECT count(*) FROM (
               SELECT DISTINCT agent_id, rank FROM experiment_usage
               WHERE experiment_id = $1 AND ($2::timestamptz IS NULL OR ts >= $2)) s""",
        experiment_id,
        q.since,
    )
    buckets = max(q.points // max(int(series or 0), 1), 1)
    width = max((last - first).total_seconds() / buckets, 1e-6)
    rows = await conn.fetch(
        f"""SELECT max(ts) AS ts, max(attempt) AS attempt, agent_id, rank,
                   avg(cpu_percent) AS cpu_percent, max(rss_mb) AS rss_mb,
                   max(processes) AS processes, avg(gpu_percent) AS gpu_percent,
                   max(gpu_memory_mb) AS gpu_memory_mb
            FROM experiment_usage
            WHERE experiment_id = $1 AND ($2::timestamptz IS NULL OR ts >= $2)
            GROUP BY agent_id, rank, {_BUCKET} ORDER BY 1, agent_id, rank""",
        experiment_id,
        q.since,
        first,
        buckets,
        width,
    )
    return UsagePage(samples=[_experiment_sample(r) for r in rows], total=total, downsampled=True)


async def _agent(conn: Conn, q: UsageQuery, agent_id: str) -> UsagePage:
    total, first, last = await _range(conn, "agent_usage", "agent_id", agent_id, q.since)
    # Samples with many GPUs are bigger: fewer of them fit in one answer.
    fits = max(_REPLY_BYTES // (_SAMPLE_BYTES + _GPU_BYTES * await _gpu_count(conn, agent_id)), 1)
    points = min(q.points, fits)
    if q.points == 0 or total <= points:
        limit = min(q.limit, fits) if q.points == 0 else points
        rows = await conn.fetch(
            """SELECT id, ts, cpu_percent, memory_used_mb, memory_total_mb FROM agent_usage
               WHERE agent_id = $1 AND ($2::timestamptz IS NULL OR ts >= $2)
               ORDER BY ts, id OFFSET $3 LIMIT $4""",
            agent_id,
            q.since,
            q.offset,
            limit,
        )
        gpus: dict[datetime, list[dict[str, Any]]] = {}
        if rows:
            for g in await conn.fetch(
                """SELECT ts, gpu, utilization, memory_used_mb, memory_total_mb
                   FROM agent_gpu_usage WHERE agent_id = $1 AND ts = ANY($2::timestamptz[])
                   ORDER BY ts, gpu""",
                agent_id,
                [r["ts"] for r in rows],
            ):
                gpus.setdefault(g["ts"], []).append(_gpu(g))
        more = q.points == 0 and len(rows) == limit
        return UsagePage(
            samples=[_agent_sample(r, gpus.get(r["ts"], [])) for r in rows],
            total=total,
            next_offset=q.offset + len(rows) if more else None,
        )
    assert first is not None and last is not None
    width = max((last - first).total_seconds() / points, 1e-6)
    args = (agent_id, q.since, first, points, width)
    rows = await conn.fetch(
        f"""SELECT {_BUCKET} AS bucket, max(ts) AS ts, avg(cpu_percent) AS cpu_percent,
                   max(memory_used_mb) AS memory_used_mb, max(memory_total_mb) AS memory_total_mb
            FROM agent_usage WHERE agent_id = $1 AND ($2::timestamptz IS NULL OR ts >= $2)
            GROUP BY 1 ORDER BY 1""",
        *args,
    )
    by_bucket: dict[int, list[dict[str, Any]]] = {}
    for g in await conn.fetch(
        f"""SELECT {_BUCKET} AS bucket, gpu, avg(utilization) AS utilization,
                   max(memory_used_mb) AS memory_used_mb, max(memory_total_mb) AS memory_total_mb
            FROM agent_gpu_usage WHERE agent_id = $1 AND ($2::timestamptz IS NULL OR ts >= $2)
            GROUP BY 1, 2 ORDER BY 1, 2""",
        *args,
    ):
        by_bucket.setdefault(g["bucket"], []).append(_gpu(g))
    return UsagePage(
        samples=[_agent_sample(r, by_bucket.get(r["bucket"], [])) for r in rows],
        total=total,
        downsampled=True,
    )


async def latest(pool: asyncpg.Pool, agent_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The newest machine sample of each agent that has one."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT a.id AS agent_id, u.ts, u.cpu_percent, u.memory_used_mb,
                      u.memory_total_mb
               FROM unnest($1::text[]) AS a(id)
               CROSS JOIN LATERAL (
                   SELECT ts, cpu_percent, memory_used_mb, memory_total_mb FROM agent_usage
                   WHERE agent_id = a.id ORDER BY ts DESC LIMIT 1
               ) u""",
            agent_ids,
        )
        gpus: dict[tuple[str, datetime], list[dict[str, Any]]] = {}
        if rows:
            for g in await conn.fetch(
                """SELECT agent_id, ts, gpu, utilization, memory_used_mb, memory_total_mb
                   FROM agent_gpu_usage g
                   JOIN unnest($1::text[], $2::timestamptz[]) AS k(agent_id, ts)
                   USING (agent_id, ts) ORDER BY gpu""",
                [r["agent_id"] for r in rows],
                [r["ts"] for r in rows],
            ):
                gpus.setdefault((g["agent_id"], g["ts"]), []).append(_gpu(g))
    return {r["agent_id"]: _agent_sample(r, gpus.get((r["agent_id"], r["ts"]), [])) for r in rows}


# -- retention --------------------------------------------------------------------------------


async def prune(pool: asyncpg.Pool, older_than: datetime) -> int:
    """Delete every sample taken before ``older_than``; returns how many rows went."""
    gone = 0
    async with pool.acquire() as conn:
        for table in ("agent_usage", "agent_gpu_usage", "experiment_usage"):
            status: str = await conn.execute(f"DELETE FROM {table} WHERE ts < $1", older_than)
            gone += int(status.rsplit(maxsplit=1)[-1])
    return gone


async def retention_loop(pool: asyncpg.Pool, max_age_days: float, interval_s: float) -> None:
    """Prune samples older than ``max_age_days`` every ``interval_s`` seconds."""
    while True:
        try:
            gone = await prune(pool, utcnow() - timedelta(days=max_age_days))
            if gone:
                log.info("usage.retention", deleted_rows=gone)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database away for now: the next round tries again
            log.warning("usage.retention_failed", error=repr(exc))
        await asyncio.sleep(interval_s)


# -- subscribers ------------------------------------------------------------------------------


def register(broker: NatsBroker, state: State) -> None:
    """Take the agents' usage batches in; answer usage queries over request/reply."""
    settings = state.settings

    @event_subscriber(broker, UsageSampled, CONSUMER, settings.nats, batch_size=50)
    async def handle_usage_sampled(event: UsageSampled) -> None:
        await store(state.get().pool, event)

    @broker.subscriber(
        Rpc.USAGE, queue=CONSUMER, max_workers=RPC_WORKERS, title=f"{Rpc.USAGE}:reply"
    )
    async def handle_usage_query(q: UsageQuery) -> dict[str, Any]:
        page = await query(state.get().pool, q)
        return page.model_dump(mode="json")

    @broker.subscriber(
        Rpc.USAGE_LATEST,
        queue=CONSUMER,
        max_workers=RPC_WORKERS,
        title=f"{Rpc.USAGE_LATEST}:reply",
    )
    async def handle_latest_usage_query(q: LatestUsageQuery) -> dict[str, Any]:
        return {"agents": await latest(state.get().pool, q.agent_ids)}
