"""Shared by the log and metric tests of the API: logstream in process on the session's NATS,
the API served over real HTTP (SSE and WebSockets need a server), and an SSE reader."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvicorn
from fastapi import FastAPI

from fleetlab_common.db.service import DbService
from fleetlab_common.embedded import free_port
from fleetlab_common.events import LogLine, LogLinesAppended
from fleetlab_common.ids import uuid7
from fleetlab_logstream.app import build_service
from fleetlab_logstream.settings import LogstreamSettings
from fleetlab_logstream.state import State


async def new_database(postgres_dsn: str, prefix: str) -> str:
    name = f"{prefix}_{uuid7().hex[-12:]}"
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    head, sep, query = postgres_dsn.partition("?")
    return f"{head.rsplit('/', 1)[0]}/{name}{sep}{query}"


@dataclass
class Logstream:
    """A logstream service run in this process, which a test may stop and start again."""

    nats_url: str
    dsn: str
    home: Path
    service: DbService | None = None
    state: State | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    async def start(self) -> None:
        settings = LogstreamSettings(
            postgres={"dsn": self.dsn},
            nats={"url": self.nats_url},
            home=self.home,
            secret_key="test-secret",
            **self.overrides,
        )
        self.service, self.state = build_service(settings)
        await self.service.start_db()
        await self.service.broker.start()
        await self.service.started()

    async def stop(self) -> None:
        assert self.service is not None
        await self.service.stopping()
        await self.service.broker.stop()
        await self.service.closed()
        self.service = None


async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Serve ``app`` (its lifespan already entered) on a free port; yields the base URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_config=None, ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def batch(
    experiment_id: str, seqs: range, *, attempt: int = 1, text: str = "line {seq}"
) -> LogLinesAppended:
    now = datetime.now(UTC)
    return LogLinesAppended(
        experiment_id=experiment_id,  # type: ignore[arg-type]
        agent_id="agent-7",
        attempt=attempt,
        lines=[
            LogLine(
                seq=s,
                stream="stderr" if s % 10 == 0 else "stdout",
                ts=now,
                line=text.format(seq=s),
            )
            for s in seqs
        ],
    )


@dataclass
class SseEvent:
    event: str
    id: str | None
    data: Any


async def sse(
    http: httpx.AsyncClient,
    url: str,
    out: asyncio.Queue[SseEvent],
    *,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    status: list[int] | None = None,
) -> None:
    """Read an event stream into ``out`` until the server ends it."""
    async with http.stream("GET", url, params=params, headers=headers) as response:
        if status is not None:
            status.append(response.status_code)
        if response.status_code != 200:
            await response.aread()
            await out.put(SseEvent("http-error", None, response.json()))
            return
        assert response.headers["content-type"].startswith("text/event-stream")
        event, eid, data = "message", None, []
        async for line in response.aiter_lines():
            if line == "":
                if data:
                    await out.put(SseEvent(event, eid, json.loads("\n".join(data))))
                event, eid, data = "message", None, []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "id":
                eid = value
            elif name == "data":
                data.append(value)
    await out.put(SseEvent("closed", None, None))


async def take(out: asyncio.Queue[SseEvent], n: int, timeout: float = 20) -> list[SseEvent]:
    """The next ``n`` events (fails after ``timeout`` seconds)."""
    got: list[SseEvent] = []
    async with asyncio.timeout(timeout):
        while len(got) < n:
            got.append(await out.get())
    return got


async def take_until(
    out: asyncio.Queue[SseEvent], kind: str, timeout: float = 20
) -> list[SseEvent]:
    """Events up to and including the first of ``kind``."""
    got: list[SseEvent] = []
    async with asyncio.timeout(timeout):
        while not got or got[-1].event != kind:
            got.append(await out.get())
            assert got[-1].event != "closed" or kind == "closed", got[-3:]
    return got


@contextlib.asynccontextmanager
async def running_logstream(
    nats_url: str, postgres_dsn: str, home: Path, name: str
) -> AsyncIterator[Logstream]:
    """A logstream service on a database of its own, started, and stopped at the end."""
    ls = Logstream(nats_url, await new_database(postgres_dsn, name), home)
    await ls.start()
    try:
        yield ls
    finally:
        await ls.stop()
