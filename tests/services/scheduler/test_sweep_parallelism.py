"""A sweep's ``parallelism`` in the scheduler's placement, on a real Postgres: never more of
its trials assigned or running at once than it allows, whatever the free capacity."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import cast

import asyncpg
import pytest

from fleetlab_common.db.outbox import OutboxRelay
from fleetlab_common.db.pool import create_pool
from fleetlab_common.events import (
    AgentHardware,
    AgentHeartbeat,
    ExperimentFinished,
    ExperimentStarted,
    ExperimentSubmitted,
)
from fleetlab_common.ids import uuid7
from fleetlab_common.runspec import RunSpec
from fleetlab_common.settings import NatsSettings, PostgresSettings
from fleetlab_scheduler.app import migrate
from fleetlab_scheduler.service import Scheduler
from fleetlab_scheduler.settings import SchedulerSettings

T0 = datetime(2025, 1, 1, tzinfo=UTC)
INSTANCE = uuid7()


class FakeRelay:
    def kick(self) -> None:
        pass


@pytest.fixture
async def scheduler(fresh_dsn: str) -> AsyncIterator[Scheduler]:
    settings = SchedulerSettings(
        postgres=PostgresSettings(dsn=fresh_dsn),
        nats=NatsSettings(url="nats://127.0.0.1:1"),  # never dialled
    )
    await migrate(settings)
    pool = await create_pool(fresh_dsn, "scheduler")
    try:
        yield Scheduler(settings, pool, cast(OutboxRelay, FakeRelay()))
    finally:
        await pool.close()


async def submit(
    s: Scheduler, n: int, *, sweep: uuid.UUID | None, parallelism: int | None, t: int = 0
) -> list[uuid.UUID]:
    ids = []
    for i in range(n):
        event = ExperimentSubmitted(
            experiment_id=uuid7(),
            project_id=uuid.uuid4(),
            project="mnist",
            options={"i": i},
            run=RunSpec(command=["python", "train.py"]),
            sweep_id=sweep,
            sweep_parallelism=parallelism,
            occurred_at=T0 + timedelta(seconds=t + i),
        )
        await s.on_submitted(event)
        ids.append(event.experiment_id)
    return ids


async def beat(s: Scheduler, agent_id: str, slots: int) -> None:
    await s.on_heartbeat(
        AgentHeartbeat(
            agent_id=agent_id,
            instance_id=INSTANCE,
            slots=slots,
            hardware=AgentHardware(hostname=agent_id, cpu_count=8),
        )
    )


async def active(pool: asyncpg.Pool, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    rows = await pool.fetch(
        "SELECT id FROM experiments WHERE id = ANY($1::uuid[]) AND status IN "
        "('assigned', 'running')",
        ids,
    )
    return {r["id"] for r in rows}


async def end(s: Scheduler, experiment_id: uuid.UUID, agent_id: str) -> None:
    row = await s.pool.fetchrow("SELECT agent_id FROM experiments WHERE id = $1", experiment_id)
    assert row is not None
    await s.on_started(
        ExperimentStarted(
            experiment_id=experiment_id,
            agent_id=row["agent_id"],
            instance_id=INSTANCE,
            pid=1,
            argv=["python"],
            workdir="/w",
        )
    )
    await s.on_finished(
        ExperimentFinished(
            experiment_id=experiment_id, agent_id=row["agent_id"], status="succeeded"
        )
    )


async def test_a_sweep_never_has_more_trials_placed_than_its_parallelism(
    scheduler: Scheduler,
) -> None:
    sweep = uuid7()
    trials = await submit(scheduler, 7, sweep=sweep, parallelism=2)
    await beat(scheduler, "a", slots=4)
    await beat(scheduler, "b", slots=4)

    placed = await scheduler.place_once()
    again = await scheduler.place_once()  # room on the agents, none in the sweep

    assert (placed, again) == (2, 0)
    running = await active(scheduler.pool, trials)
    assert running == set(trials[:2])  # the first in queue order

    # Each trial that ends lets exactly one more in, until all seven have run.
    seen_at_once = [len(running)]
    finished = 0
    while finished < len(trials):
        first = sorted(running)[0]
        await end(scheduler, first, "a")
        finished += 1
        await scheduler.place_once()
        running = await active(scheduler.pool, trials)
        seen_at_once.append(len(running))
    assert max(seen_at_once) == 2
    assert running == set()
    statuses = await scheduler.pool.fetch(
        "SELECT status, outcome FROM experiments WHERE id = ANY($1::uuid[])", trials
    )
    assert {(r["status"], r["outcome"]) for r in statuses} == {("done", "succeeded")}


async def test_a_full_sweep_does_not_hold_back_other_work(scheduler: Scheduler) -> None:
    sweep, other_sweep = uuid7(), uuid7()
    capped = await submit(scheduler, 5, sweep=sweep, parallelism=1)
    free = await submit(scheduler, 2, sweep=None, parallelism=None, t=100)
    wide = await submit(scheduler, 3, sweep=other_sweep, parallelism=None, t=200)
    await beat(scheduler, "a", slots=10)

    assert await scheduler.place_once() == 1 + 2 + 3

    assert await active(scheduler.pool, capped) == {capped[0]}
    assert await active(scheduler.pool, free) == set(free)
    assert await active(scheduler.pool, wide) == set(wide)


async def test_parallelism_counts_trials_across_placement_rounds(scheduler: Scheduler) -> None:
    sweep = uuid7()
    first = await submit(scheduler, 2, sweep=sweep, parallelism=3)
    await beat(scheduler, "a", slots=10)
    assert await scheduler.place_once() == 2

    # More trials of the same sweep arrive later (e.g. redelivered submissions): one fits.
    later = await submit(scheduler, 4, sweep=sweep, parallelism=3, t=50)
    assert await scheduler.place_once() == 1

    assert await active(scheduler.pool, first) == set(first)
    assert await active(scheduler.pool, later) == {later[0]}
