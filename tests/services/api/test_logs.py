"""Experiment logs through the API: the whole log, live over Server-Sent Events and a
WebSocket (head, skip marker, tail, live lines, end), exact resume, agents' own logs.

Logstream runs in this process on the session's NATS (only for this module: other modules
check what the API says when it is away); the API is served over real HTTP.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient

from fleetlab_common.broker import publish_event
from fleetlab_common.events import (
    AgentLogAppended,
    AgentLogLine,
    ExperimentFinished,
    ExperimentStarted,
    Rpc,
    utcnow,
)
from fleetlab_common.ids import uuid7

from .test_logs_support import (
    Logstream,
    SseEvent,
    batch,
    new_database,
    serve,
    sse,
    take,
    take_until,
)

MakeProject = Callable[..., Awaitable[dict[str, Any]]]
WaitUntil = Callable[..., Awaitable[Any]]
AGENT = "agent-7"


@pytest.fixture(scope="module")
async def logstream(
    nats_url: str, postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Logstream]:
    ls = Logstream(
        nats_url,
        await new_database(postgres_dsn, "logs"),
        tmp_path_factory.mktemp("logstream-home"),
    )
    await ls.start()
    try:
        yield ls
    finally:
        if ls.service is not None:
            await ls.stop()


@pytest.fixture(scope="module")
async def base_url(api: FastAPI, logstream: Logstream) -> AsyncIterator[str]:
    async for url in serve(api):
        yield url


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        yield client


async def running(
    http: httpx.AsyncClient, make_project: MakeProject, publisher: NatsBroker
) -> dict[str, Any]:
    """A submitted experiment the API has seen start."""
    project = await make_project()
    response = await http.post("/api/v1/experiments", json={"project": project["name"]})
    assert response.status_code == 201, response.text
    experiment: dict[str, Any] = response.json()
    await publish_event(
        publisher,
        ExperimentStarted(
            experiment_id=experiment["id"],
            agent_id=AGENT,
            instance_id=uuid7(),
            pid=1,
            argv=["x"],
            workdir="/tmp/x",
        ),
    )
    async with asyncio.timeout(10):
        while (await http.get(f"/api/v1/experiments/{experiment['id']}")).json()[
            "status"
        ] != "running":
            await asyncio.sleep(0.02)
    return experiment


async def publish_lines(publisher: NatsBroker, experiment_id: str, first: int, last: int) -> None:
    for start in range(first, last + 1, 500):
        await publish_event(
            publisher, batch(experiment_id, range(start, min(start + 500, last + 1)))
        )


async def stored(nc: NatsClient, experiment_id: str, count: int) -> None:
    """Wait until logstream holds ``count`` lines of the run."""
    query = {"experiment_id": experiment_id, "min_count": count, "wait_s": 10, "limit": 1}
    reply = await nc.request(Rpc.LOG_LINES, json.dumps(query).encode(), timeout=15)
    assert json.loads(reply.data)["stored"] >= count


def finish(experiment_id: str, log_lines: int, status: str = "succeeded") -> ExperimentFinished:
    return ExperimentFinished(
        experiment_id=experiment_id,  # type: ignore[arg-type]
        agent_id=AGENT,
        status=status,  # type: ignore[arg-type]
        exit_code=0 if status == "succeeded" else 1,
        log_lines=log_lines,
    )


def seqs(events: list[SseEvent]) -> list[int]:
    lines = [e for e in events if e.event == "line"]
    assert all(e.id == str(e.data["seq"]) for e in lines)
    return [e.data["seq"] for e in lines]


async def test_a_late_viewer_gets_head_skip_marker_tail_then_live_lines_then_the_end(
    http: httpx.AsyncClient, make_project: MakeProject, publisher: NatsBroker, nc: NatsClient
) -> None:
    experiment = await running(http, make_project, publisher)
    eid = experiment["id"]
    await publish_lines(publisher, eid, 1, 12_000)
    await stored(nc, eid, 12_000)

    out: asyncio.Queue[SseEvent] = asyncio.Queue()
    reader = asyncio.create_task(sse(http, f"/api/v1/experiments/{eid}/logs/stream", out))
    try:
        first = await take(out, 2001)
        assert seqs(first[:1000]) == list(range(1, 1001))
        assert first[1000].event == "skipped"
        assert first[1000].data == {"skipped": 10_000, "from_seq": 1001, "to_seq": 11_000}
        assert seqs(first[1001:]) == list(range(11_001, 12_001))
        line = first[0].data
        assert set(line) == {"seq", "stream", "ts", "line"}
        assert (line["line"], line["stream"]) == ("line 1", "stdout")

        # Live lines come as they are published, then the end with the final status.
        await publish_lines(publisher, eid, 12_001, 12_005)
        live = await take(out, 5)
        assert seqs(live) == list(range(12_001, 12_006))
        await publish_event(publisher, finish(eid, 12_005))
        rest = await take_until(out, "closed")
        assert [e.event for e in rest] == ["end", "closed"]
        assert rest[0].data["status"] == "succeeded"
        assert rest[0].data["log_lines"] == 12_005
    finally:
        reader.cancel()


async def test_head_and_tail_are_parameters_and_a_short_log_comes_whole(
    http: httpx.AsyncClient, make_project: MakeProject, publisher: NatsBroker, nc: NatsClient
) -> None:
    experiment = await running(http, make_project, publisher)
    eid = experiment["id"]
    await publish_lines(publisher, eid, 1, 30)
    await publish_event(publisher, finish(eid, 30))
    await stored(nc, eid, 30)
    url = f"/api/v1/experiments/{eid}/logs/stream"

    out: asyncio.Queue[SseEvent] = asyncio.Queue()
    await sse(http, url, out, params={"head": 3, "tail": 4})
    events = await take_until(out, "closed")
    assert seqs(events[:3]) == [1, 2, 3]
    assert events[3].data == {"skipped": 23, "from_seq": 4, "to_seq": 26}
    assert seqs(events[4:]) == [27, 28, 29, 30]
    assert [e.event for e in events[-2:]] == ["end", "closed"]

    # Not longer than head + tail: every line, no marker.
    await sse(http, url, out, params={"head": 20, "tail": 10})
    events = await take_until(out, "closed")
    assert seqs(events) == list(range(1, 31))
    assert "skipped" not in [e.event for e in events]

    # Only one stream: the numbering stays the run's.
    await sse(http, url, out, params={"stream": "stderr"})
    events = await take_until(out, "closed")
    assert seqs(events) == [10, 20, 30]


async def test_from_seq_and_last_event_id_resume_exactly(
    http: httpx.AsyncClient, make_project: MakeProject, publisher: NatsBroker, nc: NatsClient
) -> None:
    experiment = await running(http, make_project, publisher)
    eid = experiment["id"]
    await publish_lines(publisher, eid, 1, 3000)
    await stored(nc, eid, 3000)
    url = f"/api/v1/experiments/{eid}/logs/stream"

    out: asyncio.Queue[SseEvent] = asyncio.Queue()
    reader = asyncio.create_task(sse(http, url, out, params={"from_seq": 2500}))
    # A browser reconnecting after line 2990 sends Last-Event-ID: 2990.
    out2: asyncio.Queue[SseEvent] = asyncio.Queue()
    reader2 = asyncio.create_task(sse(http, url, out2, headers={"Last-Event-ID": "2990"}))
    try:
        assert seqs(await take(out, 501)) == list(range(2500, 3001))
        assert seqs(await take(out2, 10)) == list(range(2991, 3001))
        # Lines published while both watch: each once, in order, on both.
        await publish_lines(publisher, eid, 3001, 4200)
        await publish_event(publisher, finish(eid, 4200))
        rest = await take_until(out, "end")
        assert seqs(rest) == list(range(3001, 4201))
        rest2 = await take_until(out2, "end")
        assert seqs(rest2) == list(range(3001, 4201))
    finally:
        reader.cancel()
        reader2.cancel()

    bad = await http.get(url, headers={"Last-Event-ID": "nope"})
    assert bad.status_code == 422


async def test_resume_across_a_logstream_restart(
    http: httpx.AsyncClient,
    make_project: MakeProject,
    publisher: NatsBroker,
    nc: NatsClient,
    logstream: Logstream,
) -> None:
    experiment = await running(http, make_project, publisher)
    eid = experiment["id"]
    await publish_lines(publisher, eid, 1, 1000)
    await stored(nc, eid, 1000)
    url = f"/api/v1/experiments/{eid}/logs/stream"

    # A viewer attached before the restart keeps getting live lines through it.
    out: asyncio.Queue[SseEvent] = asyncio.Queue()
    reader = asyncio.create_task(sse(http, url, out, params={"from_seq": 900}))
    try:
        assert seqs(await take(out, 101)) == list(range(900, 1001))
        await logstream.stop()
        # While logstream is away, JetStream keeps the batches; the viewer hears them live.
        await publish_lines(publisher, eid, 1001, 1500)
        assert seqs(await take(out, 500)) == list(range(1001, 1501))
        down = await http.get(url, params={"from_seq": 1})
        assert down.status_code == 503

        await logstream.start()
        await stored(nc, eid, 1500)
        # A viewer resuming at 1200 after the restart: exactly 1200 onwards, no gap, no duplicate.
        out2: asyncio.Queue[SseEvent] = asyncio.Queue()
        reader2 = asyncio.create_task(sse(http, url, out2, params={"from_seq": 1200}))
        try:
            assert seqs(await take(out2, 301)) == list(range(1200, 1501))
            await publish_lines(publisher, eid, 1501, 1600)
            await publish_event(publisher, finish(eid, 1600))
            rest2 = await take_until(out2, "end")
            assert seqs(rest2) == list(range(1501, 1601))
        finally:
            reader2.cancel()
        rest = await take_until(out, "end")
        assert seqs(rest) == list(range(1501, 1601))
    finally:
        reader.cancel()
        if logstream.service is None:
            await logstream.start()

    await stored(nc, eid, 1600)
    whole = await http.get(f"/api/v1/experiments/{eid}/logs")
    assert whole.status_code == 200
    assert whole.text.splitlines() == [f"line {n}" for n in range(1, 1601)]


async def test_a_finished_run_streams_what_is_stored_then_ends(
    http: httpx.AsyncClient, make_project: MakeProject, publisher: NatsBroker, wait_until: WaitUntil
) -> None:
    experiment = await running(http, make_project, publisher)
    eid = experiment["id"]
    await publish_lines(publisher, eid, 1, 50)
    await publish_event(publisher, finish(eid, 50, status="failed"))

    async def ended() -> bool:
        body = (await http.get(f"/api/v1/experiments/{eid}")).json()
        return bool(body["status"] == "failed")

    await wait_until(ended)
    out: asyncio.Queue[SseEvent] = asyncio.Queue()
    await sse(http, f"/api/v1/experiments/{eid}/logs/stream", out)
    events = await take_until(out, "closed")
    assert seqs(events) == list(range(1, 51))
    assert events[-2].event == "end"
    assert events[-2].data["status"] == "failed"
    assert events[-2].data["exit_code"] == 1


async def test_unknown_experiment_stream_is_404(http: httpx.AsyncClient) -> None:
    response = await http.get(f"/api/v1/experiments/{uuid7()}/logs/stream")
    assert response.status_code == 404


async def test_the_websocket_sends_head_skip_tail_live_and_end(
    http: httpx.AsyncClient,
    base_url: str,
    make_project: MakeProject,
    publisher: NatsBroker,
    nc: NatsClient,
) -> None:
    experiment = await running(http, make_project, publisher)
    eid = experiment["id"]
    await publish_lines(publisher, eid, 1, 100)
    await stored(nc, eid, 100)
    ws_url = base_url.replace("http", "ws") + f"/api/v1/experiments/{eid}/logs/ws?head=5&tail=5"

    async with websockets.connect(ws_url) as ws:
        messages: list[dict[str, Any]] = []
        got: list[int] = []
        async with asyncio.timeout(20):
            while len(got) < 10:
                msg = json.loads(await ws.recv())
                messages.append(msg)
                got += [ln["seq"] for ln in msg.get("lines", [])]
        assert got == [1, 2, 3, 4, 5, 96, 97, 98, 99, 100]
        skipped = [m for m in messages if m["type"] == "skipped"]
        assert skipped == [{"type": "skipped", "skipped": 90, "from_seq": 6, "to_seq": 95}]

        await publish_lines(publisher, eid, 101, 103)
        await publish_event(publisher, finish(eid, 103))
        live: list[int] = []
        async with asyncio.timeout(20):
            while True:
                msg = json.loads(await ws.recv())
                if msg["type"] == "end":
                    break
                live += [ln["seq"] for ln in msg.get("lines", [])]
        assert live == [101, 102, 103]
        assert msg["status"] == "succeeded"
        with pytest.raises(websockets.ConnectionClosedOK):
            await ws.recv()


async def test_the_logs_text_keeps_stream_range_and_download(
    http: httpx.AsyncClient, make_project: MakeProject, publisher: NatsBroker, nc: NatsClient
) -> None:
    experiment = await running(http, make_project, publisher)
    eid = experiment["id"]
    await publish_lines(publisher, eid, 1, 40)
    await stored(nc, eid, 40)
    url = f"/api/v1/experiments/{eid}/logs"

    assert (await http.get(url, params={"from_seq": 5, "to_seq": 7})).text == (
        "line 5\nline 6\nline 7\n"
    )
    assert (await http.get(url, params={"stream": "stderr"})).text == (
        "line 10\nline 20\nline 30\nline 40\n"
    )
    download = await http.get(url, params={"download": True})
    assert download.headers["content-disposition"] == f'attachment; filename="{eid}.log"'
    assert download.headers["x-log-lines"] == "40"


async def test_an_agents_own_log(http: httpx.AsyncClient, publisher: NatsBroker) -> None:
    agent_id = f"agent-{uuid7().hex[-8:]}"
    now = utcnow()
    for start in (0, 3):
        await publish_event(
            publisher,
            AgentLogAppended(
                agent_id=agent_id,
                instance_id=uuid7(),
                lines=[
                    AgentLogLine(ts=now, level="info", line=f'{{"event": "n{i}"}}')
                    for i in range(start, start + 3)
                ],
            ),
        )

    async with asyncio.timeout(10):
        while True:
            response = await http.get(f"/api/v1/agents/{agent_id}/logs")
            assert response.status_code == 200, response.text
            if len(response.json()["lines"]) == 6:
                break
            await asyncio.sleep(0.05)
    body = response.json()
    assert [json.loads(ln["line"])["event"] for ln in body["lines"]] == [f"n{i}" for i in range(6)]
    assert body["before_id"] is None

    older = await http.get(f"/api/v1/agents/{agent_id}/logs", params={"limit": 2})
    page = older.json()
    assert [json.loads(ln["line"])["event"] for ln in page["lines"]] == ["n4", "n5"]
    back = await http.get(
        f"/api/v1/agents/{agent_id}/logs", params={"limit": 2, "before_id": page["before_id"]}
    )
    assert [json.loads(ln["line"])["event"] for ln in back.json()["lines"]] == ["n2", "n3"]
