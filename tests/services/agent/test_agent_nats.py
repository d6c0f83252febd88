"""The agent on a real nats-server: takes its own assignments, reports start, lines and end."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest

from fleetlab_agent import handlers
from fleetlab_agent.service import Agent
from fleetlab_agent.settings import AgentSettings
from fleetlab_common.broker import ensure_streams, make_broker, publish_event
from fleetlab_common.events import ExperimentAssigned
from fleetlab_common.runspec import RunSpec


@pytest.fixture
async def agent(nats_url: str, tmp_path: Path) -> AsyncIterator[Agent]:
    name = f"agent-{uuid.uuid4().hex[:8]}"
    settings = AgentSettings(
        nats={"url": nats_url},
        home=tmp_path,
        agent={"name": name, "slots": 2, "heartbeat_s": 0.2, "labels": ["cpu"]},
    )
    broker = make_broker(settings.nats, name)
    agent = Agent(settings, broker)
    handlers.register(broker, agent)
    await broker.start()
    await ensure_streams(broker.connection.jetstream(), settings.nats)
    agent.spool.start()
    beats = asyncio.create_task(agent.heartbeat_loop())
    try:
        yield agent
    finally:
        beats.cancel()
        await agent.shutdown()
        await broker.stop()


class Events:
    """Every message on the subjects an agent publishes, as decoded JSON."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.changed = asyncio.Event()

    async def on_msg(self, msg: Any) -> None:
        self.items.append((msg.subject, json.loads(msg.data)))
        self.changed.set()

    async def wait_for(self, predicate: Any, timeout: float = 15) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for subject, body in self.items:
                    if predicate(subject, body):
                        return body
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def events(nats_url: str) -> AsyncIterator[Events]:
    nc = await nats.connect(nats_url)
    collected = Events()
    await nc.subscribe("agent.>", cb=collected.on_msg)
    try:
        yield collected
    finally:
        await nc.close()


def assignment(agent_id: str, command: list[str], **kw: Any) -> ExperimentAssigned:
    return ExperimentAssigned(
        experiment_id=uuid.uuid4(),
        agent_id=agent_id,
        project="p",
        options=kw.pop("options", {}),
        run=RunSpec(command=command),
        **kw,
    )


async def test_heartbeats_describe_the_machine(agent: Agent, events: Events) -> None:
    beat = await events.wait_for(
        lambda s, b: s == "agent.heartbeat" and b["agent_id"] == agent.name
    )
    assert beat["slots"] == 2 and beat["labels"] == ["cpu"]
    assert beat["hardware"]["cpu_count"] >= 1 and beat["hardware"]["memory_mb"] > 0
    assert beat["instance_id"] == str(agent.instance_id)


async def test_an_assignment_runs_and_reports_start_lines_and_end(
    agent: Agent, events: Events, nats_url: str
) -> None:
    broker = make_broker(agent.settings.nats, "test-scheduler")
    await broker.start()
    try:
        event = assignment(
            agent.name,
            [sys.executable, "-c", "import sys; print('hello'); print(sys.argv[1:])"],
            options={"lr": 0.5},
        )
        await publish_event(broker, event)
        eid = str(event.experiment_id)
        finished = await events.wait_for(
            lambda s, b: b.get("type") == "agent.experiment.finished" and b["experiment_id"] == eid
        )
        started = await events.wait_for(
            lambda s, b: b.get("type") == "agent.experiment.started" and b["experiment_id"] == eid
        )
        lines = await events.wait_for(lambda s, b: s == f"agent.log.appended.{eid}")
        assert finished["status"] == "succeeded" and finished["exit_code"] == 0
        assert finished["log_lines"] == 2
        assert started["argv"][-2:] == ["--lr=0.5", f"--_id={eid}"]
        assert [ln["line"] for ln in lines["lines"]] == ["hello", f"['--lr=0.5', '--_id={eid}']"]

        # Redelivered while it runs, or assigned to another agent: nothing runs twice.
        other = assignment("someone-else", [sys.executable, "-c", "print('not mine')"])
        await publish_event(broker, other)
        slow = assignment(agent.name, [sys.executable, "-c", "import time; time.sleep(1)"])
        await publish_event(broker, slow)
        await publish_event(broker, slow.model_copy(update={"id": uuid.uuid4()}))
        sid = str(slow.experiment_id)
        await events.wait_for(
            lambda s, b: b.get("type") == "agent.experiment.finished" and b["experiment_id"] == sid
        )
        starts = [
            b
            for s, b in events.items
            if b.get("type") == "agent.experiment.started" and b["experiment_id"] == sid
        ]
        assert len(starts) == 1
        assert not any(b.get("experiment_id") == str(other.experiment_id) for _, b in events.items)
    finally:
        await broker.stop()


async def test_a_command_that_does_not_exist_fails_and_the_agent_goes_on(
    agent: Agent, events: Events
) -> None:
    broker = make_broker(agent.settings.nats, "test-scheduler")
    await broker.start()
    try:
        bad = assignment(agent.name, ["/no/such/binary"])
        good = assignment(agent.name, [sys.executable, "-c", "print(1)"])
        await publish_event(broker, bad)
        await publish_event(broker, good)
        failed = await events.wait_for(
            lambda s, b: (
                b.get("type") == "agent.experiment.finished"
                and b["experiment_id"] == str(bad.experiment_id)
            )
        )
        assert failed["status"] == "failed" and failed["started"] is False
        assert failed["reason"] == "command not found: /no/such/binary"
        ok = await events.wait_for(
            lambda s, b: (
                b.get("type") == "agent.experiment.finished"
                and b["experiment_id"] == str(good.experiment_id)
            )
        )
        assert ok["status"] == "succeeded"
    finally:
        await broker.stop()


async def test_a_stop_order_stops_the_run_and_an_early_one_prevents_it(
    agent: Agent, events: Events
) -> None:
    from fleetlab_common.events import ExperimentStopOrdered

    broker = make_broker(agent.settings.nats, "test-scheduler")
    await broker.start()
    try:
        running = assignment(
            agent.name,
            [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        )
        await publish_event(broker, running)
        rid = str(running.experiment_id)
        await events.wait_for(lambda s, b: s == f"agent.log.appended.{rid}")
        await publish_event(
            broker,
            ExperimentStopOrdered(
                experiment_id=running.experiment_id, agent_id=agent.name, attempt=1, reason="enough"
            ),
        )
        stopped = await events.wait_for(
            lambda s, b: b.get("type") == "agent.experiment.finished" and b["experiment_id"] == rid
        )
        assert (stopped["status"], stopped["reason"]) == ("stopped", "enough")

        never = assignment(agent.name, [sys.executable, "-c", "print('should not run')"])
        await publish_event(
            broker,
            ExperimentStopOrdered(
                experiment_id=never.experiment_id, agent_id=agent.name, attempt=1, reason="early"
            ),
        )
        async with asyncio.timeout(10):  # the stop is taken in before the assignment is sent
            while never.experiment_id not in agent.stopped_early:
                await asyncio.sleep(0.01)
        await publish_event(broker, never)
        nid = str(never.experiment_id)
        ended = await events.wait_for(
            lambda s, b: b.get("type") == "agent.experiment.finished" and b["experiment_id"] == nid
        )
        assert (ended["status"], ended["started"], ended["reason"]) == ("stopped", False, "early")
    finally:
        await broker.stop()
