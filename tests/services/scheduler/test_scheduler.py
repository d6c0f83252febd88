"""The scheduler's service layer on a real Postgres: queue, placement, leases, retries.

Every test drives :class:`Scheduler` the way its subscribers do and reads two things back: the
``experiments``/``agents`` rows, and the ``outbox`` table, where the events the state implies
were written in the same transaction (the relay that publishes them is a fake here).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import pytest

from fleetlab_common.db.outbox import OutboxRelay
from fleetlab_common.db.pool import create_pool
from fleetlab_common.events import (
    AgentHardware,
    AgentHeartbeat,
    ExperimentAssigned,
    ExperimentFinished,
    ExperimentOutcome,
    ExperimentStarted,
    ExperimentSubmitted,
)
from fleetlab_common.ids import uuid7
from fleetlab_common.runspec import Parameter, RunSpec
from fleetlab_common.settings import NatsSettings, PostgresSettings
from fleetlab_scheduler.app import migrate
from fleetlab_scheduler.service import Scheduler
from fleetlab_scheduler.settings import SchedulerSettings

LEASE_S = 1.0
T0 = datetime(2025, 1, 1, tzinfo=UTC)


class FakeRelay:
    """Stands in for :class:`OutboxRelay`: counts kicks; the outbox table is read directly."""

    def __init__(self) -> None:
        self.kicks = 0

    def kick(self) -> None:
        self.kicks += 1


class Harness:
    """A scheduler on a fresh database, with helpers to feed it events and read it back."""

    def __init__(self, scheduler: Scheduler, relay: FakeRelay) -> None:
        self.scheduler = scheduler
        self.relay = relay
        self.pool = scheduler.pool
        self.instances: dict[str, uuid.UUID] = {}

    async def submit(
        self,
        *,
        priority: int = 0,
        max_retries: int = 0,
        at: datetime | None = None,
        run: RunSpec | None = None,
    ) -> ExperimentSubmitted:
        event = ExperimentSubmitted(
            experiment_id=uuid7(),
            project_id=uuid.uuid4(),
            project="mnist",
            options={"lr": 0.01, "model": "cnn.v2"},
            run=run or RunSpec(command=["python", "train.py"], max_retries=max_retries),
            priority=priority,
            occurred_at=at or datetime.now(UTC),
        )
        await self.scheduler.on_submitted(event)
        return event

    async def beat(
        self, agent_id: str, slots: int = 1, instance_id: uuid.UUID | None = None
    ) -> AgentHeartbeat:
        instance = instance_id or self.instances.setdefault(agent_id, uuid7())
        self.instances[agent_id] = instance
        hb = AgentHeartbeat(
            agent_id=agent_id,
            instance_id=instance,
            slots=slots,
            labels=["gpu"],
            hardware=AgentHardware(hostname=f"{agent_id}.lab", cpu_count=8),
        )
        await self.scheduler.on_heartbeat(hb)
        return hb

    async def start(
        self, experiment_id: uuid.UUID, agent_id: str, attempt: int = 1
    ) -> ExperimentStarted:
        event = ExperimentStarted(
            experiment_id=experiment_id,
            agent_id=agent_id,
            instance_id=self.instances[agent_id],
            attempt=attempt,
            pid=4242,
            argv=["python", "train.py"],
            workdir=f"/work/{experiment_id}-{attempt}",
        )
        await self.scheduler.on_started(event)
        return event

    async def finish(
        self,
        experiment_id: uuid.UUID,
        agent_id: str,
        attempt: int = 1,
        status: ExperimentOutcome = "succeeded",
    ) -> ExperimentFinished:
        event = ExperimentFinished(
            experiment_id=experiment_id,
            agent_id=agent_id,
            attempt=attempt,
            status=status,
            exit_code=0 if status == "succeeded" else 1,
        )
        await self.scheduler.on_finished(event)
        return event

    async def go_silent(self, agent_id: str) -> None:
        """Push the agent's last heartbeat well past its lease, instead of waiting."""
        await self.pool.execute(
            "UPDATE agents SET last_seen = now() - make_interval(secs => $2) WHERE id = $1",
            agent_id,
            LEASE_S * 10,
        )

    async def experiment(self, experiment_id: uuid.UUID) -> asyncpg.Record:
        row = await self.pool.fetchrow("SELECT * FROM experiments WHERE id = $1", experiment_id)
        assert row is not None, f"experiment {experiment_id} is not in the queue"
        return row

    async def statuses(self) -> dict[uuid.UUID, tuple[str, str | None, int]]:
        rows = await self.pool.fetch("SELECT id, status, agent_id, attempt FROM experiments")
        return {r["id"]: (r["status"], r["agent_id"], r["attempt"]) for r in rows}

    async def outbox(self, type_: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """(subject, payload) of every event written so far, in commit order."""
        rows = await self.pool.fetch("SELECT subject, payload FROM outbox ORDER BY seq")
        events = [(r["subject"], json.loads(bytes(r["payload"]))) for r in rows]
        return [e for e in events if type_ is None or e[1]["type"] == type_]

    async def assigned(self) -> list[ExperimentAssigned]:
        return [
            ExperimentAssigned.model_validate(p)
            for _, p in await self.outbox("scheduler.experiment.assigned")
        ]


MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_harness(fresh_dsn: str) -> AsyncIterator[MakeHarness]:
    pools: list[asyncpg.Pool] = []

    async def make(lease_s: float = LEASE_S) -> Harness:
        settings = SchedulerSettings(
            postgres=PostgresSettings(dsn=fresh_dsn),
            nats=NatsSettings(url="nats://127.0.0.1:1"),  # never dialled
            lease_s=lease_s,
        )
        await migrate(settings)
        pool = await create_pool(fresh_dsn, "scheduler")
        pools.append(pool)
        relay = FakeRelay()
        return Harness(Scheduler(settings, pool, cast(OutboxRelay, relay)), relay)

    yield make
    for pool in pools:
        await pool.close()


@pytest.fixture
async def h(make_harness: MakeHarness) -> Harness:
    return await make_harness()


# --- the queue ---------------------------------------------------------------------------


async def test_submission_delivered_twice_is_queued_once(h: Harness) -> None:
    event = await h.submit()
    await h.scheduler.on_submitted(event)  # JetStream redelivers

    assert await h.statuses() == {event.experiment_id: ("queued", None, 1)}
    await h.beat("agent-a", slots=4)
    assert await h.scheduler.place_once() == 1
    assert [a.experiment_id for a in await h.assigned()] == [event.experiment_id]


async def test_nothing_is_placed_without_an_online_agent(h: Harness) -> None:
    event = await h.submit()
    assert await h.scheduler.place_once() == 0

    # An agent that was online but whose lease ran out is no place to run either.
    await h.beat("agent-a", slots=2)
    await h.go_silent("agent-a")
    await h.scheduler.reap_once()
    assert await h.scheduler.place_once() == 0

    assert await h.statuses() == {event.experiment_id: ("queued", None, 1)}
    assert await h.assigned() == []


async def test_heartbeats_make_an_agent_online_once(h: Harness) -> None:
    for _ in range(3):
        await h.beat("agent-a", slots=2)

    online = await h.outbox("scheduler.agent.online")
    assert [(s, p["agent_id"], p["hostname"]) for s, p in online] == [
        ("scheduler.agent.online", "agent-a", "agent-a.lab")
    ]
    assert h.relay.kicks == 1  # only the beat that wrote an event asked for a publish
    [agent] = await h.scheduler.agents()
    assert (agent["id"], agent["online"], agent["slots"], agent["busy"]) == (
        "agent-a",
        True,
        2,
        0,
    )

    # Back after its lease ran out: online again, announced again.
    await h.go_silent("agent-a")
    await h.scheduler.reap_once()
    await h.beat("agent-a", slots=2)
    assert len(await h.outbox("scheduler.agent.online")) == 2


# --- placement ---------------------------------------------------------------------------


async def test_placement_respects_slots_and_a_finish_frees_one(h: Harness) -> None:
    first, second, third = [await h.submit(at=T0 + timedelta(seconds=i)) for i in range(3)]
    await h.beat("agent-a", slots=2)

    assert await h.scheduler.place_once() == 2
    assert await h.statuses() == {
        first.experiment_id: ("assigned", "agent-a", 1),
        second.experiment_id: ("assigned", "agent-a", 1),
        third.experiment_id: ("queued", None, 1),
    }
    assert await h.scheduler.place_once() == 0  # full: the third waits

    await h.start(first.experiment_id, "agent-a")
    assert await h.scheduler.place_once() == 0  # running still holds its slot
    await h.finish(first.experiment_id, "agent-a")
    assert await h.scheduler.place_once() == 1
    assert (await h.statuses())[third.experiment_id] == ("assigned", "agent-a", 1)
    assert [a.experiment_id for a in await h.assigned()] == [
        first.experiment_id,
        second.experiment_id,
        third.experiment_id,
    ]


async def test_higher_priority_first_then_oldest(h: Harness) -> None:
    old_low = await h.submit(priority=0, at=T0)
    new_high = await h.submit(priority=5, at=T0 + timedelta(seconds=2))
    newer_low = await h.submit(priority=0, at=T0 + timedelta(seconds=1))
    await h.beat("agent-a", slots=1)

    order = []
    for _ in range(3):
        assert await h.scheduler.place_once() == 1
        [(eid, _)] = [(eid, s) for eid, s in (await h.statuses()).items() if s[0] == "assigned"]
        order.append(eid)
        await h.finish(eid, "agent-a")

    assert order == [new_high.experiment_id, old_low.experiment_id, newer_low.experiment_id]


async def test_a_long_head_that_fits_nowhere_does_not_hide_what_fits(h: Harness) -> None:
    # The queue is read a page at a time (a few rows per free slot): 100 experiments asking
    # for a label no agent has come first, then two that fit.
    for i in range(100):
        await h.submit(at=T0 + timedelta(seconds=i), run=RunSpec(command=["t"], labels=["tpu"]))
    fits = [await h.submit(at=T0 + timedelta(seconds=200 + i)) for i in range(2)]
    await h.beat("agent-a", slots=1)

    assert await h.scheduler.place_once() == 1
    statuses = await h.statuses()
    assert statuses[fits[0].experiment_id][0] == "assigned"
    assert statuses[fits[1].experiment_id][0] == "queued"
    assert sum(s[0] == "queued" for s in statuses.values()) == 101


async def test_placement_spreads_over_agents_by_most_free_slots(h: Harness) -> None:
    await h.beat("agent-a", slots=2)
    await h.beat("agent-b", slots=2)
    for i in range(2):
        await h.submit(at=T0 + timedelta(seconds=i))
    assert await h.scheduler.place_once() == 2
    busy = {a["id"]: a["busy"] for a in await h.scheduler.agents()}
    assert busy == {"agent-a": 1, "agent-b": 1}  # spread, not packed onto one machine

    # Now agent-c has far more room than the others: it takes both.
    await h.beat("agent-c", slots=4)
    for i in range(2):
        await h.submit(at=T0 + timedelta(seconds=10 + i))
    assert await h.scheduler.place_once() == 2
    busy = {a["id"]: a["busy"] for a in await h.scheduler.agents()}
    assert busy == {"agent-a": 1, "agent-b": 1, "agent-c": 2}


async def test_assigned_event_carries_the_run_spec_on_the_agents_subject(h: Harness) -> None:
    run = RunSpec(
        command=["python", "-m", "train"],
        option_style="single-dash",
        boolean="optional",
        parameters=[Parameter(pass_as="data/train.csv")],
        env={"CUDA_VISIBLE_DEVICES": "0"},
        timeout_s=3600,
        max_retries=2,
    )
    submitted = await h.submit(run=run, priority=3)
    await h.beat("agent-7", slots=1)
    assert await h.scheduler.place_once() == 1
    assert h.relay.kicks >= 2  # the placement asked for its event to go out at once

    rows = await h.pool.fetch("SELECT id, subject, stream, headers FROM outbox")
    [row] = [r for r in rows if r["subject"].startswith("scheduler.experiment.assigned")]
    assert row["subject"] == "scheduler.experiment.assigned.agent-7"
    assert row["stream"] == "SCHEDULER"
    assert row["headers"]["Nats-Msg-Id"] == str(row["id"])  # JetStream drops a republish

    [assigned] = await h.assigned()
    assert assigned.id == row["id"]
    assert assigned.subject() == "scheduler.experiment.assigned.agent-7"
    assert assigned.experiment_id == submitted.experiment_id
    assert assigned.agent_id == "agent-7"
    assert assigned.attempt == 1
    assert assigned.project == "mnist"
    assert assigned.options == {"lr": 0.01, "model": "cnn.v2"}
    assert assigned.run == run


# --- what agents report --------------------------------------------------------------------


async def test_started_and_finished_move_the_row_and_are_idempotent(h: Harness) -> None:
    submitted = await h.submit()
    await h.beat("agent-a", slots=1)
    await h.scheduler.place_once()
    eid = submitted.experiment_id

    started = await h.start(eid, "agent-a")
    row = await h.experiment(eid)
    assert (row["status"], row["agent_instance"]) == ("running", h.instances["agent-a"])
    assert row["started_at"] == started.occurred_at
    await h.scheduler.on_started(started)  # redelivered
    assert (await h.experiment(eid))["started_at"] == started.occurred_at

    finished = await h.finish(eid, "agent-a", status="failed")
    row = await h.experiment(eid)
    assert (row["status"], row["outcome"], row["finished_at"]) == (
        "done",
        "failed",
        finished.occurred_at,
    )
    await h.scheduler.on_finished(finished)  # redelivered
    await h.scheduler.on_started(started)  # a very late redelivery of the start
    # A second, different start of the same attempt (a confused agent) cannot revive it.
    await h.start(eid, "agent-a")
    row = await h.experiment(eid)
    assert (row["status"], row["outcome"], row["finished_at"]) == (
        "done",
        "failed",
        finished.occurred_at,
    )
    assert [a["busy"] for a in await h.scheduler.agents()] == [0]


async def test_stale_finished_of_attempt_1_does_not_touch_attempt_2(h: Harness) -> None:
    submitted = await h.submit(max_retries=1)
    eid = submitted.experiment_id
    await h.beat("agent-a", slots=1)
    await h.scheduler.place_once()
    await h.start(eid, "agent-a")

    await h.go_silent("agent-a")
    assert await h.scheduler.reap_once() == 1
    await h.beat("agent-b", slots=1)
    assert await h.scheduler.place_once() == 1
    await h.start(eid, "agent-b", attempt=2)

    # agent-a's process of attempt 1 ends at last, and says so.
    await h.finish(eid, "agent-a", attempt=1, status="failed")
    row = await h.experiment(eid)
    assert (row["status"], row["attempt"], row["agent_id"], row["outcome"]) == (
        "running",
        2,
        "agent-b",
        None,
    )

    await h.finish(eid, "agent-b", attempt=2)
    row = await h.experiment(eid)
    assert (row["status"], row["attempt"], row["outcome"]) == ("done", 2, "succeeded")


# --- leases --------------------------------------------------------------------------------


async def test_lease_expiry_loses_what_the_agent_ran_without_retries(h: Harness) -> None:
    running = await h.submit(at=T0)
    assigned = await h.submit(at=T0 + timedelta(seconds=1))
    await h.beat("agent-a", slots=2)
    await h.scheduler.place_once()
    await h.start(running.experiment_id, "agent-a")
    await h.beat("agent-b", slots=1)  # keeps beating: its lease is not touched
    assert (await h.statuses())[assigned.experiment_id][1] == "agent-a"

    assert await h.scheduler.reap_once() == 0  # nobody is late yet
    await h.go_silent("agent-a")
    kicks = h.relay.kicks
    assert await h.scheduler.reap_once() == 2
    assert h.relay.kicks > kicks

    for eid in (running.experiment_id, assigned.experiment_id):
        row = await h.experiment(eid)
        assert (row["status"], row["outcome"], row["attempt"]) == ("lost", "lost", 1)
        assert row["finished_at"] is not None
    [(subject, offline)] = await h.outbox("scheduler.agent.offline")
    assert (subject, offline["agent_id"]) == ("scheduler.agent.offline", "agent-a")
    lost = await h.outbox("scheduler.experiment.lost")
    assert sorted(
        (p["experiment_id"], p["agent_id"], p["attempt"], p["requeued"]) for _, p in lost
    ) == sorted((str(e.experiment_id), "agent-a", 1, False) for e in (running, assigned))
    assert all("missed its heartbeats" in p["reason"] for _, p in lost)
    online = {a["id"]: a["online"] for a in await h.scheduler.agents()}
    assert online == {"agent-a": False, "agent-b": True}

    # Reaping again finds nothing new, and a lost experiment is never placed again.
    assert await h.scheduler.reap_once() == 0
    assert len(await h.outbox("scheduler.agent.offline")) == 1
    assert await h.scheduler.place_once() == 0


async def test_lease_expiry_requeues_the_next_attempt_when_retries_remain(
    h: Harness,
) -> None:
    submitted = await h.submit(max_retries=1)
    eid = submitted.experiment_id
    await h.beat("agent-a", slots=1)
    await h.scheduler.place_once()
    await h.start(eid, "agent-a")

    await h.go_silent("agent-a")
    assert await h.scheduler.reap_once() == 1
    row = await h.experiment(eid)
    assert (row["status"], row["attempt"], row["agent_id"]) == ("queued", 2, None)
    [(_, lost)] = await h.outbox("scheduler.experiment.lost")
    assert (lost["attempt"], lost["requeued"]) == (1, True)

    await h.beat("agent-b", slots=1)
    assert await h.scheduler.place_once() == 1
    second = (await h.assigned())[-1]
    assert (second.experiment_id, second.agent_id, second.attempt) == (eid, "agent-b", 2)
    assert second.subject() == "scheduler.experiment.assigned.agent-b"

    # The retries are spent: losing attempt 2 gives the experiment up.
    await h.start(eid, "agent-b", attempt=2)
    await h.go_silent("agent-b")
    assert await h.scheduler.reap_once() == 1
    row = await h.experiment(eid)
    assert (row["status"], row["attempt"]) == ("lost", 2)
    last = (await h.outbox("scheduler.experiment.lost"))[-1][1]
    assert (last["attempt"], last["requeued"]) == (2, False)


async def test_the_lease_is_lease_s_long(make_harness: MakeHarness) -> None:
    h = await make_harness(lease_s=3600)
    await h.beat("agent-a")
    await h.go_silent("agent-a")  # ten seconds late, but its lease is an hour
    assert await h.scheduler.reap_once() == 0
    assert [a["online"] for a in await h.scheduler.agents()] == [True]


async def test_an_agent_back_with_a_new_instance_loses_what_its_old_life_ran(
    h: Harness,
) -> None:
    running = await h.submit(at=T0)
    pending = await h.submit(at=T0 + timedelta(seconds=1))
    await h.beat("agent-a", slots=2)
    await h.scheduler.place_once()
    await h.start(running.experiment_id, "agent-a")

    await h.beat("agent-a", slots=2)  # same life: nothing happens
    assert await h.outbox("scheduler.experiment.lost") == []

    await h.beat("agent-a", slots=2, instance_id=uuid7())  # the process restarted
    row = await h.experiment(running.experiment_id)
    assert (row["status"], row["reason"]) == ("lost", "the agent restarted")
    [(_, lost)] = await h.outbox("scheduler.experiment.lost")
    assert (lost["experiment_id"], lost["agent_id"], lost["reason"], lost["requeued"]) == (
        str(running.experiment_id),
        "agent-a",
        "the agent restarted",
        False,
    )
    # Not yet started: its assignment is redelivered to the new life, so it stays.
    assert (await h.statuses())[pending.experiment_id] == ("assigned", "agent-a", 1)
    # It never went offline, so it is not announced online again.
    assert len(await h.outbox("scheduler.agent.online")) == 1


async def test_agents_lists_capacity_in_use(h: Harness) -> None:
    for i in range(3):
        await h.submit(at=T0 + timedelta(seconds=i))
    await h.beat("agent-b", slots=1)
    await h.beat("agent-a", slots=2)
    assert await h.scheduler.place_once() == 3
    first = next(iter(await h.statuses()))
    await h.start(first, str((await h.statuses())[first][1]))

    agents = await h.scheduler.agents()
    assert [(a["id"], a["slots"], a["busy"], a["online"]) for a in agents] == [
        ("agent-a", 2, 2, True),
        ("agent-b", 1, 1, True),
    ]
    a = agents[0]
    assert a["hostname"] == "agent-a.lab"
    assert a["labels"] == ["gpu"]
    assert cast(dict[str, Any], a["hardware"])["cpu_count"] == 8
    assert datetime.fromisoformat(str(a["last_seen"])) > datetime.now(UTC) - timedelta(minutes=1)
    json.dumps(agents)  # it travels as the JSON answer of rpc.scheduler.agents
