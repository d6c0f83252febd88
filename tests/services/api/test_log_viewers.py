"""Live log viewers that go away: a viewer that drops its connection gives back its NATS
subscriptions, whether it dropped while lines flowed or while the log was idle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient

from fleetlab_common.broker import publish_event
from fleetlab_common.events import ExperimentStarted
from fleetlab_common.ids import uuid7

from .conftest import eventually
from .test_logs_support import Logstream, batch, running_logstream, serve

MakeProject = Callable[..., Awaitable[dict[str, Any]]]
VIEWERS = 50


@pytest.fixture(scope="module")
async def logstream(
    nats_url: str, postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Logstream]:
    async with running_logstream(
        nats_url, postgres_dsn, tmp_path_factory.mktemp("logstream-home"), "viewers"
    ) as ls:
        yield ls


@pytest.fixture(scope="module")
async def base_url(api: FastAPI, logstream: Logstream) -> AsyncIterator[str]:
    async for url in serve(api):
        yield url


def subscriptions(api: FastAPI) -> int:
    """Subscriptions the API's NATS connection holds (nats-py's own table of them)."""
    connection: NatsClient = api.state.fleetlab.broker.connection
    return len(connection._subs)


async def running(http: httpx.AsyncClient, project: str, publisher: NatsBroker) -> str:
    response = await http.post("/api/v1/experiments", json={"project": project})
    assert response.status_code == 201, response.text
    eid: str = response.json()["id"]
    await publish_event(
        publisher,
        ExperimentStarted(
            experiment_id=eid,  # type: ignore[arg-type]
            agent_id="agent-7",
            instance_id=uuid7(),
            pid=1,
            argv=["x"],
            workdir="/tmp/x",
        ),
    )

    async def started() -> bool:
        return bool((await http.get(f"/api/v1/experiments/{eid}")).json()["status"] == "running")

    await eventually(started, what="the run to start")
    return eid


async def first_line(base_url: str, eid: str, attached: asyncio.Event) -> None:
    """Open a viewer, read until its first line arrives, then drop the connection."""
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=30) as http,
        http.stream("GET", f"/api/v1/experiments/{eid}/logs/stream") as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("event: line"):
                attached.set()
                return


@pytest.mark.parametrize("idle", [False, True], ids=["while-lines-flow", "while-idle"])
async def test_dropped_viewers_give_back_their_subscriptions(
    api: FastAPI,
    base_url: str,
    make_project: MakeProject,
    publisher: NatsBroker,
    idle: bool,
) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        eid = await running(http, (await make_project())["name"], publisher)
    await publish_event(publisher, batch(eid, range(1, 11)))
    before = subscriptions(api)

    # Each viewer reads its first line (the stored ones) and hangs up; while-lines-flow
    # keeps new lines coming meanwhile, while-idle drops them on a log where nothing happens.
    attached = [asyncio.Event() for _ in range(VIEWERS)]
    viewers = [asyncio.create_task(first_line(base_url, eid, a)) for a in attached]
    seq = 11
    async with asyncio.timeout(60):
        while not all(a.is_set() for a in attached):
            for viewer in viewers:
                if viewer.done():
                    viewer.result()  # a viewer that could not attach fails the test here
            if not idle:
                await publish_event(publisher, batch(eid, range(seq, seq + 5)))
                seq += 5
            await asyncio.sleep(0.05)
        await asyncio.gather(*viewers)

    async def given_back() -> bool:
        return subscriptions(api) <= before

    await eventually(given_back, timeout=15, what=f"subscriptions back to {before}")
    # And a new viewer still works: attaches, gets its lines.
    again = asyncio.Event()
    await asyncio.wait_for(first_line(base_url, eid, again), 20)
    assert again.is_set()
