"""Resource use: a real process tree measured (CPU %, RSS, processes), the machine measured,
samples published through the spool and carried by heartbeats, none lost while NATS is away."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import nats
import pytest

from fleetlab_agent import handlers
from fleetlab_agent.runner import LogBatcher, Run
from fleetlab_agent.service import Agent
from fleetlab_agent.settings import AgentSettings
from fleetlab_agent.usage import Tracked, UsageSampler
from fleetlab_common.broker import ensure_streams, make_broker, publish_event
from fleetlab_common.events import ExperimentAssigned, ExperimentUsage
from fleetlab_common.runspec import RunSpec
from fleetlab_common.testing.plugin import RestartableNats

ALLOC_MB = 150
# The leader holds ALLOC_MB of touched memory; its child spins on a core.
BUSY_TREE = f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "x = 0\\nwhile True: x += 1"])
block = b"x" * ({ALLOC_MB} * 1024 * 1024)
print("ready", flush=True)
time.sleep(120)
"""


async def until(probe: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    """Call ``probe`` (awaiting what it returns if need be) until it gives something truthy;
    fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = probe()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return got
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {what}")
        await asyncio.sleep(0.05)


async def test_a_busy_process_tree_shows_its_cpu_and_its_memory(tmp_path: Path) -> None:
    ready = asyncio.Event()

    async def lines(batch: list[dict[str, object]]) -> None:
        if any(line["line"] == "ready" for line in batch):
            ready.set()

    run = Run(
        experiment_id=uuid.uuid4(),
        attempt=1,
        spec=RunSpec(command=[sys.executable, "-c", BUSY_TREE]),
        options={},
        workdir=tmp_path / "run",
    )
    assert await run.start() is None
    assert run.process is not None
    waiting = asyncio.create_task(run.wait(LogBatcher(lines), grace_s=1))
    try:
        await asyncio.wait_for(ready.wait(), 20)
        pid = run.process.pid
        sampler = UsageSampler("a1", lambda: [Tracked(run.experiment_id, 1, pid)])

        async def busy() -> ExperimentUsage | None:
            (sample,) = (await asyncio.to_thread(sampler.sample)).experiments
            return sample if sample.cpu_percent > 20 else None

        sample = await until(busy, "the spinning child's CPU never showed")
        assert sample.experiment_id == run.experiment_id
        assert sample.processes == 2  # the leader and its child: the whole tree
        assert sample.rss_mb > ALLOC_MB
        assert sample.gpu_percent is None  # no GPU given to the run
        machine = sampler.latest
        assert machine is not None
        assert 0 < machine.memory_used_mb < machine.memory_total_mb
        assert 0 <= machine.cpu_percent <= 100
    finally:
        await run.stop("test over", grace_s=1)
        await waiting


def test_each_rank_of_an_experiment_on_one_agent_makes_a_sample_of_its_own() -> None:
    eid = uuid.uuid4()
    # Rank 0 is a lone process; rank 1 holds 100 MB more and has a child.
    programs = [
        "import time; time.sleep(60)",
        "import subprocess, sys, time\n"
        "block = b'x' * (100 * 1024 * 1024)\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)",
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", program], start_new_session=True, stdout=subprocess.PIPE
        )
        for program in programs
    ]
    try:
        assert procs[1].stdout is not None and procs[1].stdout.readline() == b"ready\n"
        ranks = [Tracked(eid, 1, p.pid, rank=r) for r, p in enumerate(procs)]
        single = Tracked(uuid.uuid4(), 1, procs[0].pid)
        sample = UsageSampler("a1", lambda: [*ranks, single]).sample()
        assert len(sample.experiments) == 3
        by_rank = {e.rank: e for e in sample.experiments if e.experiment_id == eid}
        assert set(by_rank) == {0, 1}
        assert (by_rank[0].processes, by_rank[1].processes) == (1, 2)
        assert by_rank[1].rss_mb > by_rank[0].rss_mb + 90
        (alone,) = [e for e in sample.experiments if e.experiment_id == single.experiment_id]
        assert alone.rank is None and alone.processes == 1
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def test_with_no_run_the_machine_alone_is_sampled() -> None:
    sampler = UsageSampler("a1", list)
    sample = sampler.sample()
    assert sample.agent_id == "a1" and sample.experiments == []
    assert sample.machine.memory_total_mb > 0
    assert sampler.latest == sample.machine


@pytest.fixture
async def agent_on(tmp_path: Path) -> AsyncIterator[Callable[[str], Awaitable[Agent]]]:
    """Start an agent (usage every 0.2 s) on the given NATS; stopped at the end."""
    started: list[tuple[Agent, Any, list[asyncio.Task[None]]]] = []

    async def start(url: str) -> Agent:
        name = f"agent-{uuid.uuid4().hex[:8]}"
        settings = AgentSettings(
            nats={"url": url},
            home=tmp_path,
            agent={"name": name, "slots": 2, "heartbeat_s": 0.2, "usage_interval_s": 0.2},
        )
        broker = make_broker(settings.nats, name)
        agent = Agent(settings, broker)
        handlers.register(broker, agent)
        await broker.start()
        await ensure_streams(broker.connection.jetstream(), settings.nats)
        agent.spool.start()
        tasks = [
            asyncio.create_task(agent.heartbeat_loop()),
            asyncio.create_task(agent.usage_loop()),
        ]
        started.append((agent, broker, tasks))
        return agent

    yield start
    for agent, broker, tasks in started:
        for task in tasks:
            task.cancel()
        await agent.shutdown()
        await broker.stop()


class Collected:
    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.changed = asyncio.Event()

    async def on_msg(self, msg: Any) -> None:
        self.items.append((msg.subject, json.loads(msg.data)))
        self.changed.set()

    async def wait_for(
        self, predicate: Callable[[str, dict[str, Any]], bool], timeout: float = 20
    ) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for subject, body in self.items:
                    if predicate(subject, body):
                        return body
                self.changed.clear()
                await self.changed.wait()


async def test_the_agent_publishes_each_runs_usage_and_heartbeats_carry_the_machines(
    nats_url: str, agent_on: Callable[[str], Awaitable[Agent]]
) -> None:
    agent = await agent_on(nats_url)
    nc = await nats.connect(nats_url)
    seen = Collected()
    await nc.subscribe("agent.>", cb=seen.on_msg)
    broker = make_broker(agent.settings.nats, "test-scheduler")
    await broker.start()
    try:
        event = ExperimentAssigned(
            experiment_id=uuid.uuid4(),
            agent_id=agent.name,
            project="p",
            run=RunSpec(command=[sys.executable, "-c", "import time; time.sleep(60)"]),
        )
        await publish_event(broker, event)
        eid = str(event.experiment_id)
        sample = await seen.wait_for(
            lambda s, b: (
                s == f"agent.usage.sampled.{agent.name}"
                and any(e["experiment_id"] == eid for e in b["experiments"])
            )
        )
        assert sample["type"] == "agent.usage.sampled" and sample["agent_id"] == agent.name
        (mine,) = [e for e in sample["experiments"] if e["experiment_id"] == eid]
        assert mine["processes"] == 1 and mine["rss_mb"] > 1
        assert sample["machine"]["memory_total_mb"] > 0
        beat = await seen.wait_for(
            lambda s, b: (
                s == "agent.heartbeat" and b["agent_id"] == agent.name and b["usage"] is not None
            )
        )
        assert beat["usage"]["memory_total_mb"] == sample["machine"]["memory_total_mb"]
    finally:
        await broker.stop()
        await nc.close()


async def test_samples_taken_while_nats_is_away_are_sent_when_it_is_back(
    own_nats: RestartableNats, agent_on: Callable[[str], Awaitable[Agent]]
) -> None:
    agent = await agent_on(own_nats.url)
    await until(lambda: agent.spool.sent > 0, "the first sample never went out")
    await own_nats.stop()
    waiting = agent.spool.size()
    # Samples pile up on disk while nothing can be sent.
    await until(lambda: agent.spool.size() > waiting + 2000, "samples were not spooled")
    away_until = agent.usage.latest
    assert away_until is not None
    await own_nats.start()
    nc = await nats.connect(own_nats.url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(f"agent.usage.sampled.{agent.name}", ordered_consumer=True)
        got: list[dict[str, Any]] = []

        async def caught_up() -> bool:
            msg = await sub.next_msg(timeout=10)
            got.append(json.loads(msg.data))
            return datetime.fromisoformat(got[-1]["machine"]["ts"]) >= away_until.ts

        await until(caught_up, "the samples from the outage never arrived", timeout=30)
        times = [datetime.fromisoformat(g["machine"]["ts"]) for g in got]
        assert times == sorted(times)  # in order, as taken
        assert away_until.ts in times  # the last one taken while NATS was away
    finally:
        await nc.close()
