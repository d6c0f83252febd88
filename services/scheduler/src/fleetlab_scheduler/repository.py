"""All of the scheduler's SQL (schema ``scheduler``)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg

from fleetlab_common.db import Conn
from fleetlab_common.events import AgentHeartbeat, ExperimentSubmitted


async def insert_experiment(conn: Conn, event: ExperimentSubmitted) -> bool:
    """Queue a submitted experiment; False when it was already queued (a redelivery)."""
    inserted = await conn.fetchval(
        """INSERT INTO experiments (id, project, options, run, priority, status, submitted_at,
                                    sweep_id, sweep_parallelism)
           VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8)
           ON CONFLICT (id) DO NOTHING RETURNING true""",
        event.experiment_id,
        event.project,
        event.options,
        json.loads(event.run.model_dump_json(by_alias=True)),
        event.priority,
        event.occurred_at,
        event.sweep_id,
        event.sweep_parallelism,
    )
    return bool(inserted)


async def lock_experiment(conn: Conn, experiment_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT id, status, attempt, agent_id FROM experiments WHERE id = $1 FOR UPDATE",
        experiment_id,
    )
    return row


async def cancel(conn: Conn, experiment_id: uuid.UUID, reason: str) -> None:
    """A queued experiment will never run."""
    await conn.execute(
        """UPDATE experiments SET status = 'done', outcome = 'stopped', reason = $2,
               finished_at = now()
           WHERE id = $1 AND status = 'queued'""",
        experiment_id,
        reason,
    )


async def insert_cancelled(conn: Conn, experiment_id: uuid.UUID, reason: str) -> None:
    """A stop that overtook its submission: keep a finished row, so that the submission,
    when it arrives, finds the id taken and is not queued."""
    await conn.execute(
        """INSERT INTO experiments (id, project, options, run, status, submitted_at, outcome,
                                    reason, finished_at)
           VALUES ($1, '', '{}', '{}', 'done', now(), 'stopped', $2, now())
           ON CONFLICT (id) DO NOTHING""",
        experiment_id,
        reason,
    )


async def upsert_agent(conn: Conn, hb: AgentHeartbeat) -> asyncpg.Record | None:
    """Record a heartbeat; return the agent's previous row (None for a new agent)."""
    previous: asyncpg.Record | None = await conn.fetchrow(
        "SELECT id, instance_id, online FROM agents WHERE id = $1 FOR UPDATE", hb.agent_id
    )
    await conn.execute(
        """INSERT INTO agents (id, instance_id, hostname, slots, labels, hardware, running,
                               projects, address, online, last_seen)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, true, now())
           ON CONFLICT (id) DO UPDATE SET
               instance_id = EXCLUDED.instance_id, hostname = EXCLUDED.hostname,
               slots = EXCLUDED.slots, labels = EXCLUDED.labels, hardware = EXCLUDED.hardware,
               running = EXCLUDED.running, projects = EXCLUDED.projects,
               address = EXCLUDED.address, online = true, last_seen = now()""",
        hb.agent_id,
        hb.instance_id,
        hb.hardware.hostname,
        hb.slots,
        hb.labels,
        hb.hardware.model_dump(),
        hb.running,
        hb.projects,
        hb.address,
    )
    return previous


async def experiments_of_old_instance(
    conn: Conn, agent_id: str, instance_id: uuid.UUID
) -> list[asyncpg.Record]:
    """Experiments marked running on ``agent_id`` by another (dead) instance of it."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT id, attempt, run FROM experiments
           WHERE agent_id = $1 AND status = 'running' AND agent_instance <> $2
           FOR UPDATE""",
        agent_id,
        instance_id,
    )
    return rows


async def expired_agents(conn: Conn, lease_s: float) -> list[asyncpg.Record]:
    """Online agents whose last heartbeat is older than ``lease_s``; marks them offline."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """UPDATE agents SET online = false
           WHERE online AND last_seen < now() - make_interval(secs => $1)
           RETURNING id""",
        lease_s,
    )
    return rows


async def active_on_agent(conn: Conn, agent_id: str) -> list[asyncpg.Record]:
    """Experiments assigned to or running on ``agent_id``, locked."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT id, attempt, run, status FROM experiments
           WHERE agent_id = $1 AND status IN ('assigned', 'running') FOR UPDATE""",
        agent_id,
    )
    return rows


async def mark_lost(conn: Conn, experiment_id: uuid.UUID, reason: str, requeue: bool) -> None:
    """An experiment lost its agent: queue it again as the next attempt, or give it up."""
    if requeue:
        await conn.execute(
            """UPDATE experiments SET status = 'queued', attempt = attempt + 1, agent_id = NULL,
                   agent_instance = NULL, assigned_at = NULL, started_at = NULL, reason = $2
               WHERE id = $1""",
            experiment_id,
            reason,
        )
    else:
        await conn.execute(
            """UPDATE experiments SET status = 'lost', finished_at = now(), outcome = 'lost',
                   reason = $2 WHERE id = $1""",
            experiment_id,
            reason,
        )


async def capacity_rows(
    conn: Conn, *, lock: bool = True
) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    """Online agents and what runs on them; ``lock`` holds the agent rows so that placement
    happens one round at a time, even across scheduler replicas."""
    agents: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, slots, labels, hardware, draining, projects FROM agents"
        " WHERE online ORDER BY id" + (" FOR UPDATE" if lock else "")
    )
    active: list[asyncpg.Record] = await conn.fetch(
        "SELECT agent_id, run, gpus FROM experiments WHERE status IN ('assigned', 'running')"
    )
    # A gang's experiment row names no agent: its workers hold the capacity, rank by rank.
    return agents, active + await active_worker_rows(conn)


async def next_queued(
    conn: Conn,
    limit: int,
    after: asyncpg.Record | None = None,
    room: dict[uuid.UUID, int] | None = None,
) -> tuple[list[asyncpg.Record], asyncpg.Record | None]:
    """The next experiments to place: highest priority first, then oldest; ``limit`` rows
    read, from just after the row ``after`` (the previous page's last). Returns the rows to
    consider and the last row read (None when the queue has no more).

    A sweep's trials count against its parallelism: a sweep with as many trials assigned or
    running as it allows has none returned, and one with room has at most that many (the
    first in queue order; ``room`` carries the count across the pages of one round).
    Placement holds the agents' row locks, so rounds never overlap and the count cannot go
    stale within one."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """WITH busy AS (
               SELECT sweep_id, count(*) AS n FROM experiments
               WHERE sweep_id IS NOT NULL AND status IN ('assigned', 'running')
               GROUP BY sweep_id)
           SELECT e.id, e.project, e.options, e.run, e.attempt, e.sweep_id, e.priority,
                  e.submitted_at, e.sweep_parallelism - coalesce(b.n, 0) AS sweep_room
           FROM experiments e LEFT JOIN busy b ON b.sweep_id = e.sweep_id
           WHERE e.status = 'queued'
             AND (e.sweep_parallelism IS NULL OR coalesce(b.n, 0) < e.sweep_parallelism)
             AND ($2::int IS NULL OR e.priority < $2
                  OR (e.priority = $2 AND (e.submitted_at, e.id) > ($3, $4)))
           ORDER BY e.priority DESC, e.submitted_at, e.id
           LIMIT $1 FOR UPDATE OF e SKIP LOCKED""",
        limit,
        after["priority"] if after is not None else None,
        after["submitted_at"] if after is not None else None,
        after["id"] if after is not None else None,
    )
    room = {} if room is None else room
    chosen: list[asyncpg.Record] = []
    for row in rows:
        if row["sweep_room"] is not None:
            left = room.setdefault(row["sweep_id"], row["sweep_room"])
            if left <= 0:
                continue
            room[row["sweep_id"]] = left - 1
        chosen.append(row)
    return chosen, (rows[-1] if len(rows) == limit else None)


async def assign_many(conn: Conn, assignments: list[tuple[uuid.UUID, str, list[int]]]) -> None:
    """queued → assigned for each (experiment, agent, GPU indices), in one round trip."""
    if not assignments:
        return
    await conn.executemany(
        """UPDATE experiments SET status = 'assigned', agent_id = $2, gpus = $3,
               assigned_at = now()
           WHERE id = $1""",
        assignments,
    )


async def queued_runs(conn: Conn, ids: list[uuid.UUID]) -> list[asyncpg.Record]:
    """The run specs of those of ``ids`` still queued."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, project, run FROM experiments WHERE id = ANY($1::uuid[]) AND status = 'queued'",
        ids,
    )
    return rows


async def set_draining(conn: Conn, agent_id: str, draining: bool) -> bool:
    updated = await conn.fetchval(
        "UPDATE agents SET draining = $2 WHERE id = $1 RETURNING true", agent_id, draining
    )
    return bool(updated)


async def remove_agent(conn: Conn, agent_id: str) -> str:
    """Forget an offline agent: 'removed', 'online' (refused) or 'unknown'."""
    row = await conn.fetchrow("SELECT online FROM agents WHERE id = $1 FOR UPDATE", agent_id)
    if row is None:
        return "unknown"
    if row["online"]:
        return "online"
    await conn.execute("DELETE FROM agents WHERE id = $1", agent_id)
    return "removed"


async def mark_started(
    conn: Conn,
    experiment_id: uuid.UUID,
    attempt: int,
    agent_id: str,
    instance_id: uuid.UUID,
    at: datetime,
) -> bool:
    """assigned → running; False when the event is stale (another attempt, or already over)."""
    updated = await conn.fetchval(
        """UPDATE experiments SET status = 'running', started_at = $5, agent_id = $3,
               agent_instance = $4
           WHERE id = $1 AND attempt = $2 AND status IN ('queued', 'assigned')
           RETURNING true""",
        experiment_id,
        attempt,
        agent_id,
        instance_id,
        at,
    )
    return bool(updated)


async def mark_finished(
    conn: Conn,
    experiment_id: uuid.UUID,
    attempt: int,
    outcome: str,
    reason: str | None,
    at: datetime,
) -> bool:
    """→ done; False when the event is stale."""
    updated = await conn.fetchval(
        """UPDATE experiments SET status = 'done', outcome = $3, reason = $4, finished_at = $5
           WHERE id = $1 AND attempt = $2 AND status IN ('queued', 'assigned', 'running')
           RETURNING true""",
        experiment_id,
        attempt,
        outcome,
        reason,
        at,
    )
    return bool(updated)


async def agents_summary(conn: Conn) -> list[dict[str, Any]]:
    """Every known agent with its capacity in use (for ``rpc.scheduler.agents``)."""
    rows = await conn.fetch(
        """SELECT a.id, a.hostname, a.slots, a.labels, a.hardware, a.online, a.last_seen,
                  a.draining, a.running, a.projects, a.first_seen, a.address,
                  count(e.id) + (SELECT count(*) FROM workers w WHERE w.agent_id = a.id
                                 AND w.status IN ('pending', 'assigned', 'running', 'stopping'))
                      AS busy
           FROM agents a
           LEFT JOIN experiments e
             ON e.agent_id = a.id AND e.status IN ('assigned', 'running')
           GROUP BY a.id ORDER BY a.id"""
    )
    return [
        {
            "id": r["id"],
            "hostname": r["hostname"],
            "slots": r["slots"],
            "busy": r["busy"],
            "labels": list(r["labels"]),
            "hardware": r["hardware"],
            "online": r["online"],
            "status": "online" if r["online"] else "offline",
            "draining": r["draining"],
            "running": [str(x) for x in r["running"]],
            "projects": list(r["projects"]),
            "address": r["address"],
            "first_seen": r["first_seen"].isoformat(),
            "last_seen": r["last_seen"].isoformat(),
        }
        for r in rows
    ]


# -- multi-worker experiments (gangs) --------------------------------------------------------

ACTIVE_WORKER = ("pending", "assigned", "running", "stopping")


async def assign_gang(
    conn: Conn,
    experiment_id: uuid.UUID,
    attempt: int,
    places: list[tuple[str, int, list[int]]],
) -> None:
    """queued → assigned for a gang: one worker row per (agent, local rank, GPUs), in rank
    order; rank 0 is assigned at once, the others wait for its rendezvous port."""
    await conn.execute(
        """UPDATE experiments SET status = 'assigned', assigned_at = now(), agent_id = NULL,
               gpus = '{}', outcome = NULL, failed_rank = NULL, master_addr = NULL,
               master_port = NULL
           WHERE id = $1""",
        experiment_id,
    )
    await conn.executemany(
        """INSERT INTO workers (experiment_id, attempt, rank, agent_id, local_rank, gpus, status)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (experiment_id, attempt, rank) DO NOTHING""",
        [
            (
                experiment_id,
                attempt,
                rank,
                agent,
                local,
                gpus,
                "assigned" if rank == 0 else "pending",
            )
            for rank, (agent, local, gpus) in enumerate(places)
        ],
    )


async def lock_gang(conn: Conn, experiment_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        """SELECT id, project, options, run, status, attempt, outcome, reason, failed_rank,
                  master_addr, master_port, started_at
           FROM experiments WHERE id = $1 FOR UPDATE""",
        experiment_id,
    )
    return row


async def workers_of(conn: Conn, experiment_id: uuid.UUID, attempt: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT * FROM workers WHERE experiment_id = $1 AND attempt = $2
           ORDER BY rank FOR UPDATE""",
        experiment_id,
        attempt,
    )
    return rows


async def worker_started(
    conn: Conn,
    experiment_id: uuid.UUID,
    attempt: int,
    rank: int,
    *,
    agent_id: str,
    instance_id: uuid.UUID,
    pid: int,
    argv: list[str],
    workdir: str,
    inputs: list[dict[str, Any]],
    at: datetime,
) -> bool:
    """assigned → running for one rank; False when stale or already recorded."""
    updated = await conn.fetchval(
        """UPDATE workers SET status = 'running', agent_instance = $5, pid = $6, argv = $7,
               workdir = $8, inputs = $9, started_at = $10
           WHERE experiment_id = $1 AND attempt = $2 AND rank = $3 AND agent_id = $4
             AND status = 'assigned'
           RETURNING true""",
        experiment_id,
        attempt,
        rank,
        agent_id,
        instance_id,
        pid,
        argv,
        workdir,
        inputs,
        at,
    )
    return bool(updated)


async def worker_finished(
    conn: Conn,
    experiment_id: uuid.UUID,
    attempt: int,
    rank: int,
    *,
    outcome: str,
    exit_code: int | None,
    signal: int | None,
    reason: str | None,
    started_at: datetime | None,
    log_lines: int,
    outputs: list[dict[str, Any]],
    outputs_skipped: dict[str, str],
    at: datetime,
) -> bool:
    """→ done for one rank; False when stale or already done."""
    updated = await conn.fetchval(
        """UPDATE workers SET status = 'done', outcome = $4, exit_code = $5, signal = $6,
               reason = $7, started_at = coalesce(started_at, $8), log_lines = $9,
               outputs = $10, outputs_skipped = $11, finished_at = $12
           WHERE experiment_id = $1 AND attempt = $2 AND rank = $3
             AND status IN ('assigned', 'running', 'stopping')
           RETURNING true""",
        experiment_id,
        attempt,
        rank,
        outcome,
        exit_code,
        signal,
        reason,
        started_at,
        log_lines,
        outputs,
        outputs_skipped,
        at,
    )
    return bool(updated)


async def set_workers(
    conn: Conn,
    experiment_id: uuid.UUID,
    attempt: int,
    ranks: list[int],
    status: str,
    reason: str | None = None,
) -> None:
    """Move the given ranks to ``status`` (``done`` ones as stopped before they started)."""
    if not ranks:
        return
    await conn.execute(
        """UPDATE workers SET status = $4,
               outcome = CASE WHEN $4 = 'done' THEN 'stopped' ELSE outcome END,
               reason = coalesce($5, reason),
               finished_at = CASE WHEN $4 = 'done' THEN now() ELSE finished_at END
           WHERE experiment_id = $1 AND attempt = $2 AND rank = ANY($3::int[])
             AND status IN ('pending', 'assigned', 'running', 'stopping')""",
        experiment_id,
        attempt,
        ranks,
        status,
        reason,
    )


async def set_rendezvous(
    conn: Conn, experiment_id: uuid.UUID, addr: str | None, port: int | None
) -> None:
    await conn.execute(
        "UPDATE experiments SET master_addr = $2, master_port = $3 WHERE id = $1",
        experiment_id,
        addr,
        port,
    )


async def decide_gang(
    conn: Conn, experiment_id: uuid.UUID, outcome: str, reason: str | None, failed_rank: int | None
) -> None:
    """Record how a gang ends (its first rank that did not succeed, or a stop) while the
    other ranks are being stopped."""
    await conn.execute(
        """UPDATE experiments SET outcome = $2, reason = $3, failed_rank = $4
           WHERE id = $1 AND outcome IS NULL""",
        experiment_id,
        outcome,
        reason,
        failed_rank,
    )


async def gang_running(conn: Conn, experiment_id: uuid.UUID, at: datetime) -> None:
    await conn.execute(
        """UPDATE experiments SET status = 'running', started_at = $2
           WHERE id = $1 AND status = 'assigned'""",
        experiment_id,
        at,
    )


async def gang_done(
    conn: Conn, experiment_id: uuid.UUID, outcome: str, reason: str | None, at: datetime
) -> None:
    await conn.execute(
        """UPDATE experiments SET status = 'done', outcome = $2, reason = $3, finished_at = $4
           WHERE id = $1""",
        experiment_id,
        outcome,
        reason,
        at,
    )


async def active_workers_on_agent(conn: Conn, agent_id: str) -> list[asyncpg.Record]:
    """Workers of gangs placed on ``agent_id`` and not yet done (not locked here: their
    gang's experiment row is locked first, as everywhere else)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT experiment_id, attempt, rank, status, agent_instance FROM workers
           WHERE agent_id = $1 AND status IN ('pending', 'assigned', 'running', 'stopping')
           ORDER BY experiment_id, rank""",
        agent_id,
    )
    return rows


async def active_worker_rows(conn: Conn) -> list[asyncpg.Record]:
    """What gang workers hold on their agents (for placement): agent, run spec, GPUs."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT w.agent_id, e.run, w.gpus FROM workers w
           JOIN experiments e ON e.id = w.experiment_id
           WHERE w.status IN ('pending', 'assigned', 'running', 'stopping')"""
    )
    return rows
