"""Real programs through the agent, a real NATS and logstream on a real Postgres: what a
program prints is what is stored, line for line — progress bars kept as their last state,
colours kept, garbage bytes replaced, and every line of a long, fast run."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from faststream.nats import NatsBroker

from fleetlab_agent import handlers as agent_handlers
from fleetlab_agent.runner import MAX_LINE_BYTES
from fleetlab_agent.service import Agent
from fleetlab_agent.settings import AgentSettings
from fleetlab_common.broker import ensure_streams, make_broker, publish_event
from fleetlab_common.db.service import DbService
from fleetlab_common.embedded import start_nats, stop_process
from fleetlab_common.events import ExperimentAssigned, Rpc
from fleetlab_common.runspec import RunSpec
from fleetlab_common.settings import NatsSettings, PostgresSettings
from fleetlab_logstream.app import build_service
from fleetlab_logstream.settings import LogstreamSettings
from fleetlab_logstream.state import State


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Its own server: logstream's durable consumers are shared by every logstream on a server.
    proc, url = start_nats(tmp_path_factory.mktemp("e2e-output-nats"))
    try:
        yield url
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
async def logstream(
    own_nats: str, postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[DbService, State]]:
    import asyncpg

    name = f"out_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres_dsn)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    head, sep, query = postgres_dsn.partition("?")
    dsn = f"{head.rsplit('/', 1)[0]}/{name}{sep}{query}"
    settings = LogstreamSettings(
        postgres=PostgresSettings(dsn=dsn),
        nats=NatsSettings(url=own_nats),
        home=tmp_path_factory.mktemp("ls-home"),
        secret_key="s",
    )
    service, state = build_service(settings)
    await service.start_db()
    await service.broker.start()
    await service.started()
    try:
        yield service, state
    finally:
        await service.stopping()
        await service.broker.stop()
        await service.closed()


@pytest.fixture(scope="module")
async def agent(
    own_nats: str, tmp_path_factory: pytest.TempPathFactory, logstream: Any
) -> AsyncIterator[Agent]:
    settings = AgentSettings(
        nats={"url": own_nats},
        home=tmp_path_factory.mktemp("agent-home"),
        agent={"name": "out-agent", "slots": 2},
    )
    broker = make_broker(settings.nats, "out-agent")
    agent = Agent(settings, broker)
    agent_handlers.register(broker, agent)
    await broker.start()
    await ensure_streams(broker.connection.jetstream(), settings.nats)
    agent.spool.start()
    try:
        yield agent
    finally:
        await agent.shutdown()
        await broker.stop()


@pytest.fixture(scope="module")
async def client(own_nats: str) -> AsyncIterator[NatsBroker]:
    broker = NatsBroker(own_nats)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


async def run_program(
    client: NatsBroker, agent: Agent, tmp_path: Path, body: str, timeout: float = 60
) -> list[dict[str, Any]]:
    """Run ``body`` as a Python program on the agent; return every stored line once the run's
    end is known and all its lines are in."""
    program = tmp_path / f"prog-{uuid.uuid4().hex[:6]}.py"
    program.write_text(textwrap.dedent(body))
    eid = uuid.uuid4()
    await publish_event(
        client,
        ExperimentAssigned(
            experiment_id=eid,
            agent_id=agent.name,
            project="p",
            run=RunSpec(command=[sys.executable, str(program)]),
        ),
    )
    # The run's end, with its line count, is on the AGENT stream.
    js = client.connection.jetstream()
    sub = await js.subscribe("agent.experiment.finished", ordered_consumer=True)
    try:
        async with asyncio.timeout(timeout):
            while True:
                msg = await sub.next_msg(timeout=timeout)
                end = json.loads(msg.data)
                if end["experiment_id"] == str(eid):
                    break
    finally:
        await sub.unsubscribe()
    assert end["status"] == "succeeded", end
    lines: list[dict[str, Any]] = []
    next_seq: int | None = 1
    while next_seq is not None:
        query = {
            "experiment_id": str(eid),
            "from_seq": next_seq,
            "limit": 50_000,
            "min_count": end["log_lines"],
            "wait_s": 10,
        }
        reply = await client.request(query, Rpc.LOG_LINES, timeout=30)
        page: dict[str, Any] = await reply.decode()  # type: ignore[assignment]
        lines += page["lines"]
        next_seq = page["next_seq"]
    assert len(lines) == end["log_lines"]
    return lines


async def test_a_progress_bar_is_kept_as_its_last_state_and_colours_survive(
    client: NatsBroker, agent: Agent, tmp_path: Path
) -> None:
    lines = await run_program(
        client,
        agent,
        tmp_path,
        r"""
        import sys
        print("\x1b[32mstarting\x1b[0m")
        for i in range(1, 2001):
            sys.stdout.write(f"\rtraining {i * 100 // 2000:3d}% |" + "\u2588" * (i // 200))
        sys.stdout.write("\n")
        for i in range(3):
            sys.stderr.write(f"\repoch {i}")
            sys.stderr.flush()
        sys.stderr.write("\r\n")
        print("done")
        """,
    )
    assert [(ln["stream"], ln["line"]) for ln in lines] == [
        ("stdout", "\x1b[32mstarting\x1b[0m"),
        ("stdout", "training 100% |" + "\u2588" * 10),
        ("stderr", "epoch 2"),
        ("stdout", "done"),
    ] or sorted(ln["line"] for ln in lines) == sorted(
        ["\x1b[32mstarting\x1b[0m", "training 100% |" + "\u2588" * 10, "epoch 2", "done"]
    )
    assert [ln["seq"] for ln in lines] == [1, 2, 3, 4]


async def test_garbage_bytes_are_replaced_never_fatal(
    client: NatsBroker, agent: Agent, tmp_path: Path
) -> None:
    lines = await run_program(
        client,
        agent,
        tmp_path,
        rf"""
        import os, random, sys
        random.seed(7)
        out = sys.stdout.buffer
        out.write(b"before\n")
        out.write(b"nul\x00byte and \xff\xfe\xc3 bad utf-8\n")
        out.write(bytes(random.randrange(256) for _ in range(100_000)) + b"\n")
        out.write(b"x" * ({MAX_LINE_BYTES} * 3) + b"\n")
        out.write(b"after\n")
        """,
    )
    texts = [ln["line"] for ln in lines]
    assert texts[0] == "before"
    assert texts[1] == "nul\ufffdbyte and \ufffd\ufffd\ufffd bad utf-8"
    assert texts[-1] == "after"
    cut = [t for t in texts if t.startswith("xxx")]
    assert cut == ["x" * MAX_LINE_BYTES + f" … [line cut: {MAX_LINE_BYTES * 3} bytes]"]
    assert all(len(t.encode()) <= MAX_LINE_BYTES * 3 + 64 for t in texts)


@pytest.mark.parametrize("count", [200_000])
async def test_a_run_printing_fast_has_every_line_stored(
    client: NatsBroker, agent: Agent, tmp_path: Path, count: int
) -> None:
    began = time.monotonic()
    lines = await run_program(
        client,
        agent,
        tmp_path,
        f"""
        import sys
        w = sys.stdout.write
        for i in range(1, {count} + 1):
            w(f"line {{i}}\\n")
        """,
        timeout=110,
    )
    took = time.monotonic() - began
    assert [ln["seq"] for ln in lines] == list(range(1, count + 1))
    assert [ln["line"] for ln in lines] == [f"line {i}" for i in range(1, count + 1)]
    print(f"{count} lines stored end to end in {took:.1f} s ({count / took:,.0f} lines/s)")
