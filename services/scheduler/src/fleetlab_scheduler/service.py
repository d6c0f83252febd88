"""The scheduler's logic: queue, placement, leases. Plain functions over explicit resources."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from fleetlab_common.db import Conn
from fleetlab_common.db.inbox import first_delivery
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
)
from fleetlab_common.log import get_logger
from fleetlab_common.runspec import RunSpec
from fleetlab_scheduler import repository as repo
from fleetlab_scheduler.placement import Fleet, capacity_from_rows, why_waiting
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

    def wake(self) -> None:
        """Something changed that may let a queued experiment run: place now."""
        self._wake.set()

    async def on_submitted(self, event: ExperimentSubmitted) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            if await repo.insert_experiment(conn, event):
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
        async with self.pool.acquire() as conn, conn.transaction():
            if not await first_delivery(conn, CONSUMER, event):
                return
            await repo.mark_started(
                conn,
                event.experiment_id,
                event.attempt,
                event.agent_id,
                event.instance_id,
                event.occurred_at,
            )

    async def on_finished(self, event: ExperimentFinished) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            if not await first_delivery(conn, CONSUMER, event):
                return
            await repo.mark_finished(
                conn,
                event.experiment_id,
                event.attempt,
                event.status,
                event.reason,
                event.occurred_at,
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
            for row in await repo.next_queued(conn, self.settings.placement_batch):
                run = RunSpec.model_validate(row["run"])
                local = None if run.command else row["project"]
                chosen = fleet.place(frozenset(run.labels), run.resources, local)
                if chosen is None:
                    if not fleet.any_free():
                        break
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
            await repo.assign_many(conn, [(e.experiment_id, e.agent_id, e.gpus) for e in assigned])
            await enqueue(conn, *assigned)
        for e in assigned:
            log.info("experiment.assigned", experiment_id=str(e.experiment_id), agent_id=e.agent_id)
        if assigned:
            self.relay.kick()
        return len(assigned)

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
                agents, frozenset(run.labels), run.resources, local
            )
        return reasons

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
