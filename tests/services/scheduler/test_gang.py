"""Gang placement (workers: N, all or nothing) and FGLab's fractional capacity: the pure
placement logic, then the scheduler's service layer on a real Postgres (its outbox read back)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from fleetlab_common.db.outbox import OutboxRelay
from fleetlab_common.db.pool import create_pool
from fleetlab_common.events import (
    AgentHeartbeat,
    ExperimentOutcome,
    ExperimentStopRequested,
    ExperimentSubmitted,
    WorkerFinished,
    WorkerStarted,
)
from fleetlab_common.ids import uuid7
from fleetlab_common.runspec import Resources, RunSpec
from fleetlab_common.settings import NatsSettings, PostgresSettings
from fleetlab_scheduler.app import migrate
from fleetlab_scheduler.placement import AgentCapacity, Fleet, capacity_from_rows, why_waiting
from fleetlab_scheduler.service import Scheduler
from fleetlab_scheduler.settings import SchedulerSettings

NONE: frozenset[str] = frozenset()


def agent(name: str, slots: float = 4, gpus: int = 0, **kw: object) -> AgentCapacity:
    return AgentCapacity(
        id=name,
        labels=frozenset(kw.pop("labels", ())),  # type: ignore[arg-type]
        slots=slots,
        gpu_ids=list(range(gpus)),
        memory_mb=0,
        **kw,  # type: ignore[arg-type]
    )


def test_a_gang_is_placed_whole_filling_the_freest_agent_first() -> None:
    a, b = agent("a", slots=4), agent("b", slots=2)
    places = Fleet([a, b]).place_gang(5, NONE, Resources(cpus=1))
    assert places is not None
    assert [p[0].id for p in places] == ["a", "a", "a", "a", "b"]
    assert a.slots_free == 0 and b.slots_free == 1


def test_a_gang_that_does_not_fit_takes_nothing() -> None:
    a, b = agent("a", slots=2), agent("b", slots=2, slots_used=1)
    assert Fleet([a, b]).place_gang(4, NONE, Resources(cpus=1)) is None
    assert a.slots_used == 0 and b.slots_used == 1  # no partial gang


def test_gpus_per_worker_are_distinct_on_one_agent() -> None:
    box = agent("box", slots=8, gpus=2)
    places = Fleet([box]).place_gang(2, NONE, Resources(gpus=1))
    assert places is not None and sorted(g for _, gs in places for g in gs) == [0, 1]
    assert Fleet([box]).place_gang(2, NONE, Resources(gpus=1)) is None


def test_a_waiting_gang_reserves_agents_against_small_experiments() -> None:
    a, b = agent("a", slots=2, slots_used=1), agent("b", slots=2, slots_used=1)
    c = agent("c", slots=1)
    fleet = Fleet([a, b, c])
    # 4 workers of 1 slot: 5 slots in all, but only 3 free now. It waits, holding a and b.
    assert fleet.place_gang(4, NONE, Resources(cpus=1)) is None
    assert a.reserved and b.reserved and not c.reserved
    # Single experiments behind it only backfill the agent it does not need.
    chosen = fleet.place(NONE, Resources(cpus=1))
    assert chosen is not None and chosen[0] is c
    assert fleet.place(NONE, Resources(cpus=1)) is None


def test_a_gang_too_big_for_the_fleet_reserves_nothing_and_says_why() -> None:
    a, b = agent("a", slots=2), agent("b", slots=2)
    assert Fleet([a, b]).place_gang(5, NONE, Resources(cpus=1)) is None
    assert not a.reserved and not b.reserved
    assert why_waiting([a, b], NONE, Resources(cpus=1), workers=5) == (
        "the online agents together are not big enough for 5 workers of 1 CPU slot"
    )
    a.slots_used = 2
    assert why_waiting([a, b], NONE, Resources(cpus=1), workers=3) == (
        "waiting for 3 workers of 1 CPU slot: 2 agents could run it, all busy"
    )


def test_capacity_half_runs_two_at_once_on_an_agent_whatever_its_slots() -> None:
    for slots in (1, 4, 6):
        box = agent("box", slots=slots)
        fleet = Fleet([box])
        assert fleet.place(NONE, Resources(), capacity=0.5) is not None
        assert fleet.place(NONE, Resources(), capacity=0.5) is not None
        assert fleet.place(NONE, Resources(), capacity=0.5) is None
        assert box.slots_free == 0


def test_capacity_takes_its_fraction_of_the_agents_slots_alongside_cpu_requests() -> None:
    box = agent("box", slots=4)
    fleet = Fleet([box])
    assert fleet.place(NONE, Resources(cpus=3)) is not None
    # 0.5 of 4 slots is 2: it does not fit beside the 3-slot run; 0.25 (1 slot) does.
    assert Fleet([box]).place(NONE, Resources(), capacity=0.5) is None
    box.reserved = False  # a new placement round
    assert Fleet([box]).place(NONE, Resources(), capacity=0.25) is not None
    assert box.slots_free == 0
    assert why_waiting([box], NONE, Resources(), capacity=0.5) == (
        "waiting for 0.5 of an agent's CPU slots: 1 agent could run it, all busy"
    )


def test_running_capacity_runs_count_as_their_fraction() -> None:
    agents = [
        {"id": "box", "slots": 8, "labels": [], "hardware": {}, "draining": False, "projects": []}
    ]
    active = [{"agent_id": "box", "run": {"capacity": 0.75, "resources": {}}, "gpus": []}]
    (box,) = capacity_from_rows(agents, active)
    assert box.slots_used == 6


# --- the scheduler: gangs on a real Postgres --------------------------------------------------


class _Relay:
    def kick(self) -> None:
        pass


class Gangs:
    """Drives :class:`Scheduler` as its subscribers do; reads the outbox back."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.s = scheduler
        self.pool = scheduler.pool
        self.instances: dict[str, uuid.UUID] = {}

    async def beat(self, agent_id: str, slots: int = 1) -> None:
        instance = self.instances.setdefault(agent_id, uuid7())
        await self.s.on_heartbeat(
            AgentHeartbeat(
                agent_id=agent_id, instance_id=instance, slots=slots, address=f"{agent_id}.lab"
            )
        )

    async def submit(self, workers: int = 2, **run: Any) -> uuid.UUID:
        event = ExperimentSubmitted(
            experiment_id=uuid7(),
            project_id=uuid.uuid4(),
            project="ddp",
            options={"lr": 0.1},
            run=RunSpec(command=["python", "train.py"], workers=workers, **run),
        )
        await self.s.on_submitted(event)
        return event.experiment_id

    async def outbox(self, type_: str) -> list[dict[str, Any]]:
        rows = await self.pool.fetch("SELECT payload FROM outbox ORDER BY seq")
        bodies = [json.loads(bytes(r["payload"])) for r in rows]
        return [b for b in bodies if b["type"] == type_]

    async def started(self, eid: uuid.UUID, rank: int, agent: str, attempt: int = 1) -> None:
        await self.s.on_worker_started(
            WorkerStarted(
                experiment_id=eid,
                agent_id=agent,
                instance_id=self.instances[agent],
                attempt=attempt,
                rank=rank,
                world_size=2,
                pid=100 + rank,
                argv=["python", "train.py"],
                workdir=f"/w/{eid}-r{rank}",
                master_addr=f"{agent}.lab" if rank == 0 else None,
                master_port=29500 if rank == 0 else None,
            )
        )

    async def finished(
        self,
        eid: uuid.UUID,
        rank: int,
        agent: str,
        status: ExperimentOutcome = "succeeded",
        attempt: int = 1,
        reason: str | None = None,
    ) -> None:
        await self.s.on_worker_finished(
            WorkerFinished(
                experiment_id=eid,
                agent_id=agent,
                attempt=attempt,
                rank=rank,
                world_size=2,
                status=status,
                exit_code=0 if status == "succeeded" else 1,
                reason=reason,
                log_lines=3,
            )
        )

    async def row(self, eid: uuid.UUID) -> dict[str, Any]:
        row = await self.pool.fetchrow("SELECT * FROM experiments WHERE id = $1", eid)
        assert row is not None
        return dict(row)

    async def busy(self) -> dict[str, int]:
        return {a["id"]: a["busy"] for a in await self.s.agents()}


@pytest.fixture
async def g(fresh_dsn: str) -> AsyncIterator[Gangs]:
    settings = SchedulerSettings(
        postgres=PostgresSettings(dsn=fresh_dsn),
        nats=NatsSettings(url="nats://127.0.0.1:1"),  # never dialled
        lease_s=1.0,
    )
    await migrate(settings)
    pool = await create_pool(fresh_dsn, "scheduler")
    try:
        yield Gangs(Scheduler(settings, pool, cast(OutboxRelay, _Relay())))
    finally:
        await pool.close()


async def test_rank_0_goes_first_and_the_others_follow_with_its_rendezvous(g: Gangs) -> None:
    await g.beat("a")
    await g.beat("b")
    eid = await g.submit(workers=2)
    assert await g.s.place_once() == 1
    (first,) = await g.outbox("scheduler.experiment.assigned")
    assert (first["rank"], first["world_size"], first["master_port"]) == (0, 2, None)
    assert await g.busy() == {"a": 1, "b": 1}  # both ranks hold their slot already
    await g.started(eid, 0, first["agent_id"])
    second = (await g.outbox("scheduler.experiment.assigned"))[1]
    assert second["rank"] == 1 and second["agent_id"] != first["agent_id"]
    assert (second["master_addr"], second["master_port"]) == (f"{first['agent_id']}.lab", 29500)
    assert await g.outbox("agent.experiment.started") == []  # not until every rank runs
    await g.started(eid, 1, second["agent_id"])
    (started,) = await g.outbox("agent.experiment.started")
    assert started["world_size"] == 2 and (await g.row(eid))["status"] == "running"
    await g.finished(eid, 1, second["agent_id"])
    assert await g.outbox("agent.experiment.finished") == []
    await g.finished(eid, 0, first["agent_id"])
    (end,) = await g.outbox("agent.experiment.finished")
    assert end["status"] == "succeeded" and end["log_lines"] == 6
    assert await g.busy() == {"a": 0, "b": 0}


async def test_a_gang_waits_whole_and_says_why(g: Gangs) -> None:
    await g.beat("a")
    eid = await g.submit(workers=2)
    assert await g.s.place_once() == 0
    assert await g.s.why([eid]) == {
        str(eid): "the online agents together are not big enough for 2 workers of 1 CPU slot"
    }
    await g.beat("b")
    assert await g.s.place_once() == 1


async def test_a_lost_rank_loses_the_gang_stops_the_others_and_requeues_it(g: Gangs) -> None:
    await g.beat("a")
    await g.beat("b")
    eid = await g.submit(workers=2, max_retries=1)
    await g.s.place_once()
    (first,) = await g.outbox("scheduler.experiment.assigned")
    r0 = first["agent_id"]
    r1 = "b" if r0 == "a" else "a"
    await g.started(eid, 0, r0)
    await g.started(eid, 1, r1)
    # Rank 1's agent goes silent past its lease.
    await g.pool.execute(
        "UPDATE agents SET last_seen = now() - interval '1 hour' WHERE id = $1", r1
    )
    assert await g.s.reap_once() == 1
    (lost,) = await g.outbox("scheduler.experiment.lost")
    assert lost["agent_id"] == r1 and lost["requeued"] is True
    (stop,) = await g.outbox("scheduler.experiment.stop_ordered")
    assert (stop["agent_id"], stop["attempt"]) == (r0, 1)
    row = await g.row(eid)
    assert (row["status"], row["attempt"]) == ("queued", 2)
    # Rank 0 of the lost attempt holds its slot until its agent reports it stopped.
    assert (await g.busy())[r0] == 1
    await g.finished(eid, 0, r0, "stopped", reason=lost["reason"])
    assert (await g.busy())[r0] == 0
    assert await g.outbox("agent.experiment.finished") == []  # attempt 1 ended as lost


async def test_a_user_stop_reaches_every_rank_and_ends_stopped(g: Gangs) -> None:
    await g.beat("a", slots=2)
    eid = await g.submit(workers=2)
    await g.s.place_once()
    await g.started(eid, 0, "a")
    await g.started(eid, 1, "a")
    assigned = await g.outbox("scheduler.experiment.assigned")
    assert [(e["rank"], e["local_rank"]) for e in assigned] == [(0, 0), (1, 1)]
    await g.s.on_stop_requested(ExperimentStopRequested(experiment_id=eid, reason="enough"))
    (stop,) = await g.outbox("scheduler.experiment.stop_ordered")
    assert stop["agent_id"] == "a"
    await g.finished(eid, 1, "a", "stopped", reason="enough")
    await g.finished(eid, 0, "a", "stopped", reason="enough")
    (end,) = await g.outbox("agent.experiment.finished")
    assert (end["status"], end["reason"], end["failed_rank"]) == ("stopped", "enough", None)


async def test_two_capacity_halves_share_an_agent_and_a_third_waits(g: Gangs) -> None:
    await g.beat("fg", slots=4)
    ids = [await g.submit(workers=1, capacity=0.5) for _ in range(3)]
    assert await g.s.place_once() == 2
    assert await g.s.why([ids[2]]) == {
        str(ids[2]): "waiting for 0.5 of an agent's CPU slots: 1 agent could run it, all busy"
    }
    assert [r["status"] for r in [await g.row(i) for i in ids]] == [
        "assigned",
        "assigned",
        "queued",
    ]
