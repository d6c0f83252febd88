"""The scheduler as a running service on a real NATS and Postgres.

An agent is played by the test: it sends heartbeats on core NATS, receives its assignments on
``scheduler.experiment.assigned.<agent_id>`` and reports started/finished through JetStream.
The module has a nats-server of its own: the scheduler's durable consumers are shared by every
scheduler on a server, so another module's scheduler (or its leftover messages) would take
part in this one's placement.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import nats
import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from fleetlab_common.broker import publish_event
from fleetlab_common.db.service import DbService
from fleetlab_common.embedded import start_nats, stop_process
from fleetlab_common.events import (
    AgentHeartbeat,
    ExperimentAssigned,
    ExperimentFinished,
    ExperimentStarted,
    ExperimentSubmitted,
    Rpc,
)
from fleetlab_common.ids import uuid7
from fleetlab_common.runspec import RunSpec
from fleetlab_common.settings import NatsSettings, PostgresSettings
from fleetlab_scheduler.app import build_service
from fleetlab_scheduler.settings import SchedulerSettings
from fleetlab_scheduler.state import State

LEASE_S = 1.5
WAIT_S = 10.0


@pytest.fixture(scope="module")
def module_nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_nats(tmp_path_factory.mktemp("scheduler-nats"))
    try:
        yield url
    finally:
        stop_process(proc)


@pytest.fixture
async def scheduler(fresh_dsn: str, module_nats_url: str) -> AsyncIterator[State]:
    """A started scheduler service (migrations, pool, broker, streams, relay, loops)."""
    settings = SchedulerSettings(
        postgres=PostgresSettings(dsn=fresh_dsn),
        nats=NatsSettings(url=module_nats_url),
        lease_s=LEASE_S,
        reap_interval_s=0.1,
    )
    service, state = build_service(settings)
    await start(service)
    try:
        yield state
    finally:
        await service.stopping()
        await service.broker.stop()
        await service.closed()


async def start(service: DbService) -> None:
    await service.start_db()
    await service.broker.start()
    await service.started()


@pytest.fixture
async def client(module_nats_url: str) -> AsyncIterator[NatsBroker]:
    """What an agent or the api uses to talk to the scheduler."""
    broker = NatsBroker(module_nats_url)
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.stop()


@pytest.fixture
async def nc(module_nats_url: str) -> AsyncIterator[Client]:
    conn = await nats.connect(module_nats_url)
    try:
        yield conn
    finally:
        await conn.drain()


async def next_event(sub: Subscription, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The next message on ``sub`` whose JSON body matches, within WAIT_S."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise AssertionError(f"no matching message on {sub.subject} within {WAIT_S} s")
        try:
            msg = await sub.next_msg(timeout=remaining)
        except nats.errors.TimeoutError:
            continue
        body: dict[str, Any] = json.loads(msg.data)
        if match(body):
            return body


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def request(client: NatsBroker, subject: str) -> dict[str, Any]:
    reply = await client.request(None, subject, timeout=5.0)
    body: dict[str, Any] = await reply.decode()  # type: ignore[assignment]
    return body


def submission(max_retries: int = 0) -> ExperimentSubmitted:
    return ExperimentSubmitted(
        experiment_id=uuid7(),
        project_id=uuid.uuid4(),
        project="mnist",
        options={"seed": 123},
        run=RunSpec(command=["python", "train.py"], max_retries=max_retries),
    )


class FakeAgent:
    """Heartbeats every 0.1 s until stopped, as a live agent process does."""

    def __init__(self, client: NatsBroker, agent_id: str, slots: int) -> None:
        self.client = client
        self.agent_id = agent_id
        self.instance_id = uuid7()
        self.slots = slots
        self._task: asyncio.Task[None] | None = None

    def heartbeat(self) -> AgentHeartbeat:
        return AgentHeartbeat(
            agent_id=self.agent_id, instance_id=self.instance_id, slots=self.slots
        )

    async def _beat(self) -> None:
        while True:
            await publish_event(self.client, self.heartbeat())
            await asyncio.sleep(0.1)

    async def __aenter__(self) -> FakeAgent:
        self._task = asyncio.create_task(self._beat())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.die()

    async def die(self) -> None:
        """Stop heartbeating, as a killed agent process does."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def started(self, assigned: ExperimentAssigned) -> None:
        await publish_event(
            self.client,
            ExperimentStarted(
                experiment_id=assigned.experiment_id,
                agent_id=self.agent_id,
                instance_id=self.instance_id,
                attempt=assigned.attempt,
                pid=1234,
                argv=assigned.run.command,
                workdir="/tmp/run",
            ),
        )

    async def finished(self, assigned: ExperimentAssigned) -> None:
        await publish_event(
            self.client,
            ExperimentFinished(
                experiment_id=assigned.experiment_id,
                agent_id=self.agent_id,
                attempt=assigned.attempt,
                status="succeeded",
                exit_code=0,
            ),
        )


async def test_a_submission_is_pushed_to_the_agent_and_its_finish_frees_the_slot(
    scheduler: State, client: NatsBroker, nc: Client
) -> None:
    agent_id = f"agent-{uuid7().hex[-8:]}"
    assignments = await nc.subscribe(f"scheduler.experiment.assigned.{agent_id}")
    first, second = submission(), submission()
    ids = {first.experiment_id, second.experiment_id}

    async with FakeAgent(client, agent_id, slots=1) as agent:
        await publish_event(client, first)
        await publish_event(client, second)
        await publish_event(client, first)  # the api's relay publishes it again

        body = await next_event(assignments, lambda b: uuid.UUID(b["experiment_id"]) in ids)
        got = ExperimentAssigned.model_validate(body)
        assert (got.agent_id, got.attempt, got.project, got.options) == (
            agent_id,
            1,
            "mnist",
            {"seed": 123},
        )
        assert got.run.command == ["python", "train.py"]
        [other] = ids - {got.experiment_id}

        # One slot: the other waits until the first is over.
        agents = (await request(client, Rpc.AGENTS))["agents"]
        [me] = [a for a in agents if a["id"] == agent_id]
        assert (me["online"], me["slots"], me["busy"]) == (True, 1, 1)

        await agent.started(got)
        await agent.finished(got)
        body = await next_event(assignments, lambda b: uuid.UUID(b["experiment_id"]) in ids)
        assert uuid.UUID(body["experiment_id"]) == other

    pool = scheduler.get().pool
    row = await pool.fetchrow(
        "SELECT status, outcome FROM experiments WHERE id = $1", got.experiment_id
    )
    assert row is not None
    assert (row["status"], row["outcome"]) == ("done", "succeeded")
    # The repeated submission was queued once: nothing else was assigned.
    assert await pool.fetchval("SELECT count(*) FROM experiments") == 2


async def test_a_silent_agent_turns_its_experiment_lost(
    scheduler: State, client: NatsBroker, nc: Client
) -> None:
    agent_id = f"agent-{uuid7().hex[-8:]}"
    assignments = await nc.subscribe(f"scheduler.experiment.assigned.{agent_id}")
    lost = await nc.subscribe("scheduler.experiment.lost")
    offline = await nc.subscribe("scheduler.agent.offline")
    online = await nc.subscribe("scheduler.agent.online")
    submitted = submission(max_retries=0)

    async with FakeAgent(client, agent_id, slots=2) as agent:
        await next_event(online, lambda b: b["agent_id"] == agent_id)
        await publish_event(client, submitted)
        body = await next_event(
            assignments, lambda b: b["experiment_id"] == str(submitted.experiment_id)
        )
        await agent.started(ExperimentAssigned.model_validate(body))
        pool = scheduler.get().pool
        await eventually(
            lambda: _status_is(pool, submitted.experiment_id, "running"), "the run to start"
        )
        await agent.die()

        gone = await next_event(offline, lambda b: b["agent_id"] == agent_id)
        assert "missed its heartbeats" in gone["reason"]
        body = await next_event(lost, lambda b: b["experiment_id"] == str(submitted.experiment_id))
        assert (body["agent_id"], body["attempt"], body["requeued"]) == (agent_id, 1, False)

    assert await _status_is(pool, submitted.experiment_id, "lost")
    agents = (await request(client, Rpc.AGENTS))["agents"]
    assert [(a["online"], a["busy"]) for a in agents if a["id"] == agent_id] == [(False, 0)]


async def _status_is(pool: Any, experiment_id: uuid.UUID, status: str) -> bool:
    value = await pool.fetchval("SELECT status FROM experiments WHERE id = $1", experiment_id)
    return bool(value == status)


@pytest.mark.usefixtures("scheduler")
async def test_health_answers_ok(client: NatsBroker) -> None:
    report = await request(client, Rpc.health("scheduler"))
    assert report == {
        "service": "scheduler",
        "status": "ok",
        "components": {"nats": "ok", "postgres": "ok"},
    }
