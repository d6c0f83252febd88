"""The scheduler's logic: queue, placement, leases. Plain functions over explicit resources."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from math import ceil
from typing import Any

import asyncpg

from fleetlab_common.db import Conn
from fleetlab_common.db.inbox import InboxBatch, first_delivery
from fleetlab_common.db.outbox import OutboxRelay, enqueue
from fleetlab_common.events import (
    AgentHeartbeat,
    AgentOffline,
    AgentOnline,
    Event,
    ExperimentAssigned,
    ExperimentCancelled,
    ExperimentFinished,
    ExperimentLost,
    ExperimentStarted,
    ExperimentStopOrdered,
    ExperimentStopRequested,
    ExperimentSubmitted,
    OutputFile,
    StagedInput,
    WorkerFinished,
    WorkerStarted,
    utcnow,
)
from fleetlab_common.log import get_logger
from fleetlab_common.runspec import RunSpec
from fleetlab_scheduler import repository as repo
from fleetlab_scheduler.placement import AgentCapacity, Fleet, capacity_from_rows, why_waiting
from fleetlab_scheduler.settings import SchedulerSettings

log = get_logger(__name__)

CONSUMER = "scheduler"


@dataclass
class Scheduler:
    """The scheduler's resources: its pool, its outbox relay, and a wake-up for placement."""

    settings: SchedulerSettings
    pool: asyncpg.Pool
    relay: OutboxRelay
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Events fetched together are applied in one transaction.
    _inbox: InboxBatch = field(init=False)

    def __post_init__(self) -> None:
        self._inbox = InboxBatch(lambda: self.pool, CONSUMER)

    def wake(self) -> None:
        """Something changed that may let a queued experiment run: place now."""
        self._wake.set()

    async def on_submitted(self, event: ExperimentSubmitted) -> None:
        if await self._inbox.apply(event, lambda conn: repo.insert_experiment(conn, event)):
            log.info("experiment.queued", experiment_id=str(event.experiment_id))
        self.wake()

    async def on_stop_requested(self, event: ExperimentStopRequested) -> None:
        """Cancel a queued experiment; order the agent running one to stop it."""
        stop: Event | None = None
        async with self.pool.acquire() as conn, conn.transaction():
            if not await first_delivery(conn, CONSUMER, event):
                return
            row = await repo.lock_experiment(conn, event.experiment_id)
            if row is None:
                # The stop overtook its submission (two consumers of one stream).
                await repo.insert_cancelled(conn, event.experiment_id, event.reason)
                stop = ExperimentCancelled(
                    experiment_id=event.experiment_id, attempt=1, reason=event.reason
                )
            elif row["status"] == "queued":
                await repo.cancel(conn, event.experiment_id, event.reason)
                stop = ExperimentCancelled(
                    experiment_id=event.experiment_id, attempt=row["attempt"], reason=event.reason
                )
            elif row["status"] in ("assigned", "running") and row["agent_id"] is None:
                # A gang: every rank is told to stop; it ends stopped when all have.
                gang = await repo.lock_gang(conn, event.experiment_id)
                assert gang is not None
                await repo.decide_gang(conn, event.experiment_id, "stopped", event.reason, None)
                orders = await self._stop_ranks(conn, gang, event.reason)
                if orders:
                    stop = orders[0]
                    await enqueue(conn, *orders[1:])
            elif row["status"] in ("assigned", "running"):
                stop = ExperimentStopOrdered(
                    experiment_id=event.experiment_id,
                    agent_id=row["agent_id"],
                    attempt=row["attempt"],
                    reason=event.reason,
                )
            if stop is not None:
                await enqueue(conn, stop)
        if stop is not None:
            log.info("experiment.stop", experiment_id=str(event.experiment_id), how=stop.type)
            self.relay.kick()
            self.wake()

    async def on_heartbeat(self, hb: AgentHeartbeat) -> None:
        events: list[Event] = []
        async with self.pool.acquire() as conn, conn.transaction():
            previous = await repo.upsert_agent(conn, hb)
            if previous is None or not previous["online"]:
                events.append(AgentOnline(agent_id=hb.agent_id, hostname=hb.hardware.hostname))
                log.info("agent.online", agent_id=hb.agent_id, slots=hb.slots)
            if previous is not None and previous["instance_id"] != hb.instance_id:
                # The agent restarted: what its previous life ran died with it.
                for row in await repo.experiments_of_old_instance(
                    conn, hb.agent_id, hb.instance_id
                ):
                    events.append(await self._lose(conn, row, hb.agent_id, "the agent restarted"))
                workers = [
                    w
                    for w in await repo.active_workers_on_agent(conn, hb.agent_id)
                    if w["status"] in ("running", "stopping")
                    and w["agent_instance"] != hb.instance_id
                ]
                events += await self._lose_workers(
                    conn, hb.agent_id, workers, "the agent restarted"
                )
            await enqueue(conn, *events)
        if events:
            self.relay.kick()
        self.wake()

    async def _lose(
        self, conn: Conn, row: asyncpg.Record, agent_id: str, reason: str
    ) -> ExperimentLost:
        run = RunSpec.model_validate(row["run"])
        requeue = row["attempt"] <= run.max_retries
        await repo.mark_lost(conn, row["id"], reason, requeue)
        log.warning(
            "experiment.lost",
            experiment_id=str(row["id"]),
            agent_id=agent_id,
            reason=reason,
            requeued=requeue,
        )
        return ExperimentLost(
            experiment_id=row["id"],
            agent_id=agent_id,
            attempt=row["attempt"],
            reason=reason,
            requeued=requeue,
        )

    async def on_started(self, event: ExperimentStarted) -> None:
        if event.world_size > 1:
            return  # a gang's own start, which this scheduler reported
        await self._inbox.apply(
            event,
            lambda conn: repo.mark_started(
                conn,
                event.experiment_id,
                event.attempt,
                event.agent_id,
                event.instance_id,
                event.occurred_at,
            ),
        )

    async def on_finished(self, event: ExperimentFinished) -> None:
        if event.world_size > 1:
            return  # a gang's own end, which this scheduler reported
        await self._inbox.apply(
            event,
            lambda conn: repo.mark_finished(
                conn,
                event.experiment_id,
                event.attempt,
                event.status,
                event.reason,
                event.occurred_at,
            ),
        )
        self.wake()

    async def reap_once(self) -> int:
        """Turn agents whose lease ran out offline, and what they ran lost. Returns how many
        experiments were lost."""
        events: list[Event] = []
        async with self.pool.acquire() as conn, conn.transaction():
            for agent in await repo.expired_agents(conn, self.settings.lease_s):
                reason = (
                    f"agent {agent['id']} missed its heartbeats for {self.settings.lease_s:g} s"
                )
                events.append(AgentOffline(agent_id=agent["id"], reason=reason))
                log.warning("agent.offline", agent_id=agent["id"])
                for row in await repo.active_on_agent(conn, agent["id"]):
                    events.append(await self._lose(conn, row, agent["id"], reason))
                workers = await repo.active_workers_on_agent(conn, agent["id"])
                events += await self._lose_workers(conn, agent["id"], workers, reason)
            await enqueue(conn, *events)
        if events:
            self.relay.kick()
            self.wake()
        return sum(isinstance(e, ExperimentLost) for e in events)

    async def reaper_loop(self) -> None:
        while True:
            await self.reap_once()
            await asyncio.sleep(self.settings.reap_interval_s)

    async def place_once(self) -> int:
        """Assign queued experiments to agents that fit them; return how many were placed."""
        async with self._lock, self.pool.acquire() as conn, conn.transaction():
            fleet = Fleet(capacity_from_rows(*await repo.capacity_rows(conn)))
            if not fleet.any_free():
                return 0
            assigned: list[ExperimentAssigned] = []
            # The queue stops itself once the fleet is full.
            async for row in self._queued(conn, fleet):
                run = RunSpec.model_validate(row["run"])
                local = None if run.command else row["project"]
                if run.workers > 1:
                    places = fleet.place_gang(
                        run.workers, frozenset(run.labels), run.resources, local, run.capacity
                    )
                    if places is not None:
                        assigned.append(await self._assign_gang(conn, row, run, places))
                    continue
                chosen = fleet.place(frozenset(run.labels), run.resources, local, run.capacity)
                if chosen is None:
                    continue
                agent, gpus = chosen
                assigned.append(
                    ExperimentAssigned(
                        experiment_id=row["id"],
                        agent_id=agent.id,
                        attempt=row["attempt"],
                        project=row["project"],
                        options=row["options"],
                        run=run,
                        gpus=gpus,
                    )
                )
            await repo.assign_many(
                conn,
                [(e.experiment_id, e.agent_id, e.gpus) for e in assigned if e.world_size == 1],
            )
            await enqueue(conn, *assigned)
        for e in assigned:
            log.info("experiment.assigned", experiment_id=str(e.experiment_id), agent_id=e.agent_id)
        if assigned:
            self.relay.kick()
        return len(assigned)

    async def _queued(self, conn: Conn, fleet: Fleet) -> AsyncGenerator[asyncpg.Record, None]:
        """The queue in placement order, read a page at a time while the fleet has room.

        A page is a few times what the free slots could take (a slot freed by a finished run
        reads a handful of rows, not the whole queue), at most ``placement_batch``."""
        room: dict[uuid.UUID, int] = {}
        after: asyncpg.Record | None = None
        while True:
            page = min(self.settings.placement_batch, max(32, 4 * ceil(fleet.free_slots())))
            rows, after = await repo.next_queued(conn, page, after, room)
            for row in rows:
                yield row
                if not fleet.any_free():
                    return
            if after is None:
                return

    async def why(self, ids: list[uuid.UUID]) -> dict[str, str]:
        """Why each of ``ids`` that is still queued is waiting."""
        async with self.pool.acquire() as conn:
            agents = capacity_from_rows(*await repo.capacity_rows(conn, lock=False))
            rows = await repo.queued_runs(conn, ids)
        reasons = {}
        for row in rows:
            run = RunSpec.model_validate(row["run"])
            local = None if run.command else row["project"]
            reasons[str(row["id"])] = why_waiting(
                agents, frozenset(run.labels), run.resources, local, run.capacity, run.workers
            )
        return reasons

    # -- multi-worker experiments (gangs) ------------------------------------------------------

    async def _assign_gang(
        self,
        conn: Conn,
        row: asyncpg.Record,
        run: RunSpec,
        places: list[tuple[AgentCapacity, list[int]]],
    ) -> ExperimentAssigned:
        """Record a placed gang; return rank 0's assignment (the others wait for its port)."""
        seen: dict[str, int] = {}
        ranks: list[tuple[str, int, list[int]]] = []
        for agent, gpus in places:
            ranks.append((agent.id, seen.get(agent.id, 0), gpus))
            seen[agent.id] = seen.get(agent.id, 0) + 1
        await repo.assign_gang(conn, row["id"], row["attempt"], ranks)
        return ExperimentAssigned(
            experiment_id=row["id"],
            agent_id=ranks[0][0],
            attempt=row["attempt"],
            project=row["project"],
            options=row["options"],
            run=run,
            gpus=ranks[0][2],
            rank=0,
            world_size=len(ranks),
            local_rank=0,
        )

    async def _stop_ranks(
        self, conn: Conn, gang: asyncpg.Record, reason: str, *, status: str = "assigned"
    ) -> list[ExperimentStopOrdered]:
        """Stop every rank of the gang's attempt not yet done: those not yet sent never run;
        the others are told to stop (and moved to ``status``: ``stopping`` when the attempt
        is over)."""
        workers = await repo.workers_of(conn, gang["id"], gang["attempt"])
        pending = [w["rank"] for w in workers if w["status"] == "pending"]
        await repo.set_workers(conn, gang["id"], gang["attempt"], pending, "done", reason)
        live = [w for w in workers if w["status"] in ("assigned", "running", "stopping")]
        if status == "stopping":
            await repo.set_workers(
                conn, gang["id"], gang["attempt"], [w["rank"] for w in live], "stopping"
            )
        agents = sorted({w["agent_id"] for w in live})
        return [
            ExperimentStopOrdered(
                experiment_id=gang["id"], agent_id=agent, attempt=gang["attempt"], reason=reason
            )
            for agent in agents
        ]

    async def _lose_workers(
        self, conn: Conn, agent_id: str, workers: list[asyncpg.Record], reason: str
    ) -> list[Event]:
        """Ranks on an agent that is gone: their gang is lost (and queued again within its
        retries) and its other ranks are stopped; a gang already ending just ends."""
        events: list[Event] = []
        by_gang: dict[tuple[uuid.UUID, int], list[int]] = {}
        for w in workers:
            by_gang.setdefault((w["experiment_id"], w["attempt"]), []).append(w["rank"])
        for (experiment_id, attempt), ranks in by_gang.items():
            gang = await repo.lock_gang(conn, experiment_id)
            await repo.set_workers(conn, experiment_id, attempt, ranks, "done", reason)
            if (
                gang is None
                or gang["attempt"] != attempt
                or gang["status"] not in ("assigned", "running")
            ):
                continue
            if gang["outcome"] is not None:
                events += await self._finish_gang_if_done(conn, gang)
                continue
            events += await self._stop_ranks(conn, gang, reason, status="stopping")
            events.append(await self._lose(conn, gang, agent_id, reason))
        return events

    async def on_worker_started(self, event: WorkerStarted) -> None:
        events: list[Event] = []
        async with self.pool.acquire() as conn, conn.transaction():
            if not await first_delivery(conn, CONSUMER, event):
                return
            gang = await repo.lock_gang(conn, event.experiment_id)
            if gang is None:
                return
            recorded = await repo.worker_started(
                conn,
                event.experiment_id,
                event.attempt,
                event.rank,
                agent_id=event.agent_id,
                instance_id=event.instance_id,
                pid=event.pid,
                argv=event.argv,
                workdir=event.workdir,
                inputs=[i.model_dump(mode="json") for i in event.inputs],
                at=event.occurred_at,
            )
            if not recorded:
                return
            current = gang["attempt"] == event.attempt and gang["status"] in (
                "assigned",
                "running",
            )
            if not current or gang["outcome"] is not None:
                # Started after its gang ended or began to: it stops too.
                events.append(
                    ExperimentStopOrdered(
                        experiment_id=event.experiment_id,
                        agent_id=event.agent_id,
                        attempt=event.attempt,
                        reason=gang["reason"] or "its experiment ended",
                    )
                )
            else:
                workers = await repo.workers_of(conn, event.experiment_id, event.attempt)
                if event.rank == 0:
                    events += await self._send_ranks(conn, gang, workers, event)
                elif all(w["status"] == "running" for w in workers):
                    await repo.gang_running(conn, event.experiment_id, event.occurred_at)
                    r0 = workers[0]
                    events.append(
                        ExperimentStarted(
                            experiment_id=event.experiment_id,
                            agent_id=r0["agent_id"],
                            instance_id=r0["agent_instance"],
                            attempt=event.attempt,
                            pid=r0["pid"],
                            argv=r0["argv"],
                            workdir=r0["workdir"],
                            inputs=[StagedInput.model_validate(i) for i in r0["inputs"] or []],
                            world_size=len(workers),
                        )
                    )
            await enqueue(conn, *events)
        if events:
            log.info(
                "gang.worker_started",
                experiment_id=str(event.experiment_id),
                rank=event.rank,
                agent_id=event.agent_id,
            )
            self.relay.kick()

    async def _send_ranks(
        self,
        conn: Conn,
        gang: asyncpg.Record,
        workers: list[asyncpg.Record],
        started: WorkerStarted,
    ) -> list[Event]:
        """Rank 0 runs and chose its port: assign every other rank, with the rendezvous."""
        await repo.set_rendezvous(conn, gang["id"], started.master_addr, started.master_port)
        pending = [w for w in workers if w["status"] == "pending"]
        await repo.set_workers(
            conn, gang["id"], gang["attempt"], [w["rank"] for w in pending], "assigned"
        )
        run = RunSpec.model_validate(gang["run"])
        return [
            ExperimentAssigned(
                experiment_id=gang["id"],
                agent_id=w["agent_id"],
                attempt=gang["attempt"],
                project=gang["project"],
                options=gang["options"],
                run=run,
                gpus=list(w["gpus"]),
                rank=w["rank"],
                world_size=len(workers),
                local_rank=w["local_rank"],
                master_addr=started.master_addr,
                master_port=started.master_port,
            )
            for w in pending
        ]

    async def on_worker_finished(self, event: WorkerFinished) -> None:
        events: list[Event] = []
        async with self.pool.acquire() as conn, conn.transaction():
            if not await first_delivery(conn, CONSUMER, event):
                return
            gang = await repo.lock_gang(conn, event.experiment_id)
            if gang is None:
                return
            recorded = await repo.worker_finished(
                conn,
                event.experiment_id,
                event.attempt,
                event.rank,
                outcome=event.status,
                exit_code=event.exit_code,
                signal=event.signal,
                reason=event.reason,
                started_at=event.started_at,
                log_lines=event.log_lines,
                outputs=[o.model_dump(mode="json") for o in event.outputs],
                outputs_skipped=event.outputs_skipped,
                at=event.occurred_at,
            )
            current = gang["attempt"] == event.attempt and gang["status"] in (
                "assigned",
                "running",
            )
            if recorded and current:
                if event.status != "succeeded" and gang["outcome"] is None:
                    why = event.reason or event.status
                    reason = f"rank {event.rank} {event.status}: {why}"
                    await repo.decide_gang(
                        conn, event.experiment_id, event.status, reason, event.rank
                    )
                    events += await self._stop_ranks(conn, gang, reason)
                    gang = await repo.lock_gang(conn, event.experiment_id)
                    assert gang is not None
                events += await self._finish_gang_if_done(conn, gang)
            await enqueue(conn, *events)
        log.info(
            "gang.worker_finished",
            experiment_id=str(event.experiment_id),
            rank=event.rank,
            status=event.status,
        )
        if events:
            self.relay.kick()
        self.wake()

    async def _finish_gang_if_done(self, conn: Conn, gang: asyncpg.Record) -> list[Event]:
        """When every rank of the gang's attempt is done: the gang's end, as one event."""
        workers = await repo.workers_of(conn, gang["id"], gang["attempt"])
        if any(w["status"] != "done" for w in workers):
            return []
        outcome = gang["outcome"] or "succeeded"
        failed = next((w for w in workers if w["rank"] == gang["failed_rank"]), None)
        now = utcnow()
        await repo.gang_done(conn, gang["id"], outcome, gang["reason"], now)
        starts = [w["started_at"] for w in workers if w["started_at"] is not None]
        outputs: list[OutputFile] = []
        skipped: dict[str, str] = {}
        for w in workers:
            outputs += [OutputFile.model_validate(o) for o in w["outputs"] or []]
            skipped.update(w["outputs_skipped"] or {})
        log.info("gang.finished", experiment_id=str(gang["id"]), status=outcome)
        return [
            ExperimentFinished(
                experiment_id=gang["id"],
                agent_id=workers[0]["agent_id"],
                attempt=gang["attempt"],
                status=outcome,
                exit_code=(
                    failed["exit_code"]
                    if failed is not None
                    else (0 if outcome == "succeeded" else None)
                ),
                signal=failed["signal"] if failed is not None else None,
                reason=gang["reason"],
                started=bool(starts),
                started_at=gang["started_at"] or (min(starts) if starts else None),
                log_lines=sum(w["log_lines"] for w in workers),
                outputs=outputs,
                outputs_skipped=skipped,
                world_size=len(workers),
                failed_rank=gang["failed_rank"],
            )
        ]

    async def drain(self, agent_id: str, draining: bool) -> bool:
        async with self.pool.acquire() as conn:
            found = await repo.set_draining(conn, agent_id, draining)
        if found and not draining:
            self.wake()
        return found

    async def remove(self, agent_id: str) -> str:
        async with self.pool.acquire() as conn, conn.transaction():
            return await repo.remove_agent(conn, agent_id)

    async def placement_loop(self) -> None:
        """Place whenever woken (submission, heartbeat, finish), and every second regardless."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            self._wake.clear()
            await self.place_once()

    async def agents(self) -> list[dict[str, Any]]:
        async with self.pool.acquire() as conn:
            return await repo.agents_summary(conn)
