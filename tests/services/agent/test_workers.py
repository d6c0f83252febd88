"""Multi-worker experiments through a real scheduler and two real agents on one nats-server.

The program rendezvouses over TCP with the variables each rank is given: rank 0 listens on
MASTER_ADDR:MASTER_PORT, the others connect and they exchange their ranks.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from faststream.nats import NatsBroker

from fleetlab_agent import handlers
from fleetlab_agent.service import Agent
from fleetlab_agent.settings import AgentSettings
from fleetlab_common.broker import ensure_streams, make_broker, publish_event
from fleetlab_common.events import ExperimentSubmitted
from fleetlab_common.ids import uuid7
from fleetlab_common.runspec import RunSpec
from fleetlab_common.settings import NatsSettings, PostgresSettings
from fleetlab_common.testing.plugin import RestartableNats
from fleetlab_scheduler.app import build_service
from fleetlab_scheduler.settings import SchedulerSettings

WAIT_S = 30.0

RENDEZVOUS = (Path(__file__).parents[2] / "programs" / "rendezvous.py").read_text()


class Events:
    """Every message under ``agent.>`` (what agents and, for gangs, the scheduler report)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.changed = asyncio.Event()

    async def on_msg(self, msg: Any) -> None:
        self.items.append((msg.subject, json.loads(msg.data)))
        self.changed.set()

    def matching(self, predicate: Callable[[str, dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [b for s, b in self.items if predicate(s, b)]

    async def wait_for(
        self, predicate: Callable[[str, dict[str, Any]], bool], count: int = 1
    ) -> list[dict[str, Any]]:
        async with asyncio.timeout(WAIT_S):
            while True:
                found = self.matching(predicate)
                if len(found) >= count:
                    return found
                self.changed.clear()
                await self.changed.wait()


async def start_agent(
    url: str, home: Path, name: str
) -> tuple[Agent, NatsBroker, asyncio.Task[None]]:
    settings = AgentSettings(
        nats={"url": url},
        home=home,
        agent={"name": name, "slots": 1, "heartbeat_s": 0.2, "stop_grace_s": 2},
    )
    broker = make_broker(settings.nats, name)
    agent = Agent(settings, broker)
    handlers.register(broker, agent)
    await broker.start()
    await ensure_streams(broker.connection.jetstream(), settings.nats)
    agent.spool.start()
    return agent, broker, asyncio.create_task(agent.heartbeat_loop())


@pytest.fixture
async def fleet(
    fresh_dsn: str, own_nats: RestartableNats, tmp_path: Path
) -> AsyncIterator[tuple[NatsBroker, Events]]:
    """A scheduler and two one-slot agents (so a 2-worker experiment spans both), a client
    broker to submit with, and every ``agent.>`` message seen."""
    settings = SchedulerSettings(
        postgres=PostgresSettings(dsn=fresh_dsn),
        nats=NatsSettings(url=own_nats.url),
        reap_interval_s=0.1,
    )
    service, _ = build_service(settings)
    await service.start_db()
    await service.broker.start()
    await service.started()
    agents = [await start_agent(own_nats.url, tmp_path / n, n) for n in ("left", "right")]
    nc = await nats.connect(own_nats.url)
    events = Events()
    await nc.subscribe("agent.>", cb=events.on_msg)
    client = NatsBroker(own_nats.url)
    await client.connect()
    try:
        # Both agents online before anything is submitted.
        await events.wait_for(lambda s, b: s == "agent.heartbeat" and b["agent_id"] == "left")
        await events.wait_for(lambda s, b: s == "agent.heartbeat" and b["agent_id"] == "right")
        yield client, events
    finally:
        await client.stop()
        await nc.close()
        for agent, broker, beats in agents:
            beats.cancel()
            await agent.shutdown()
            await broker.stop()
        await service.stopping()
        await service.broker.stop()
        await service.closed()


async def submit(client: NatsBroker, program: Path, workers: int, **options: Any) -> str:
    event = ExperimentSubmitted(
        experiment_id=uuid7(),
        project_id=uuid.uuid4(),
        project="ddp",
        options=options,
        run=RunSpec(command=[sys.executable, str(program)], workers=workers),
    )
    await publish_event(client, event)
    return str(event.experiment_id)


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "rendezvous.py"
    path.write_text(RENDEZVOUS)
    return path


def of(eid: str, type_: str) -> Callable[[str, dict[str, Any]], bool]:
    return lambda s, b: b.get("type") == type_ and b.get("experiment_id") == eid


async def test_two_ranks_on_two_agents_rendezvous_over_tcp(
    fleet: tuple[NatsBroker, Events], program: Path
) -> None:
    client, events = fleet
    eid = await submit(client, program, workers=2)
    (finished,) = await events.wait_for(of(eid, "agent.experiment.finished"))
    assert finished["status"] == "succeeded", finished
    assert finished["world_size"] == 2 and finished["exit_code"] == 0

    ranks = {b["rank"]: b for b in events.matching(of(eid, "agent.worker.started"))}
    assert {r: b["agent_id"] for r, b in ranks.items()} == {0: "left", 1: "right"} or {
        r: b["agent_id"] for r, b in ranks.items()
    } == {0: "right", 1: "left"}
    master = f"{ranks[0]['master_addr']}:{ranks[0]['master_port']}"
    assert ranks[0]["master_addr"] == "127.0.0.1"  # the agent's address on the route to NATS

    # The experiment is one record: started once (when both ranks ran), finished once.
    (started,) = events.matching(of(eid, "agent.experiment.started"))
    assert started["world_size"] == 2 and started["agent_id"] == ranks[0]["agent_id"]

    # Every line keeps its rank; the ranks share one sequence without collisions.
    lines = [
        line
        for _, b in events.items
        if b.get("type") == "agent.log.appended" and b["experiment_id"] == eid
        for line in b["lines"]
    ]
    by_rank = {(ln["rank"], ln["line"]) for ln in lines}
    assert (0, f"rank 0 of 2, local rank 0, master {master}") in by_rank
    assert (1, f"rank 1 of 2, local rank 0, master {master}") in by_rank
    assert (0, "rank 0 got ranks [1]") in by_rank
    assert (1, "rank 1 got rank 0") in by_rank
    # Three lines a rank.
    assert len({ln["seq"] for ln in lines}) == len(lines) == finished["log_lines"] == 6


async def test_a_failing_rank_fails_the_experiment_and_stops_the_other(
    fleet: tuple[NatsBroker, Events], program: Path
) -> None:
    client, events = fleet
    eid = await submit(client, program, workers=2, fail=1)
    (finished,) = await events.wait_for(of(eid, "agent.experiment.finished"))
    assert finished["status"] == "failed"
    assert finished["failed_rank"] == 1 and finished["exit_code"] == 3
    assert finished["reason"] == "rank 1 failed: exit code 3"
    ends = {b["rank"]: b for b in events.matching(of(eid, "agent.worker.finished"))}
    assert ends[1]["status"] == "failed"
    # Rank 0 was sleeping for two minutes: it was stopped, not left running.
    assert ends[0]["status"] == "stopped"
    assert ends[0]["reason"] == "rank 1 failed: exit code 3"
