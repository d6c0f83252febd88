"""The API in process, on a real Postgres and a real NATS (JetStream).

One API serves every test of this package: it owns a database of its own, and it is the only
consumer of the ``api-*`` durable consumers while it runs (a second API on the same NATS would
share them and take some of the events meant for the first). Tests keep apart by using
project names of their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pytest
from fastapi import FastAPI
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient

from fleetlab_api.app import create_app
from fleetlab_api.settings import ApiSettings
from fleetlab_common.broker import ensure_streams, make_broker
from fleetlab_common.ids import uuid7
from fleetlab_common.settings import NatsSettings

# How long the API's NATS requests wait: short, so "no answer" is quick to see.
RPC_TIMEOUT_S = 0.5


def _database_of(dsn: str, database: str) -> str:
    head, sep, query = dsn.partition("?")
    return f"{head.rsplit('/', 1)[0]}/{database}{sep}{query}"


@pytest.fixture(scope="package")
async def api_dsn(postgres_dsn: str) -> str:
    """A new database for this package's API."""
    name = f"api_{uuid7().hex[-12:]}"
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _database_of(postgres_dsn, name)


@pytest.fixture(scope="package")
def api_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``FLEETLAB_HOME`` of the API: local artifacts live under ``artifacts/``."""
    return tmp_path_factory.mktemp("api-home")


@pytest.fixture(scope="package")
async def api(nats_url: str, api_dsn: str, api_home: Path) -> AsyncIterator[FastAPI]:
    """The API with its lifespan entered: migrated, connected, consuming events."""
    settings = ApiSettings(
        postgres={"dsn": api_dsn},
        nats={"url": nats_url},
        secret_key="test-secret",
        home=api_home,
        rpc_timeout_s=RPC_TIMEOUT_S,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(api: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the API in process."""
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@pytest.fixture(scope="package")
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    """A plain nats-py connection, as a custom tool (or another service) would hold."""
    conn = await nats.connect(nats_url)
    try:
        yield conn
    finally:
        await conn.drain()


@pytest.fixture(scope="package")
async def publisher(nats_url: str) -> AsyncIterator[NatsBroker]:
    """A started FastStream broker standing in for the agents and the scheduler."""
    settings = NatsSettings(url=nats_url)
    broker = make_broker(settings, "test-publisher")
    await broker.start()
    await ensure_streams(broker.connection.jetstream(), settings)
    try:
        yield broker
    finally:
        await broker.stop()


def unique(prefix: str) -> str:
    """A project name no other test uses."""
    return f"{prefix}-{uuid7().hex[-10:]}"


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    return unique


MakeProject = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def make_project(client: httpx.AsyncClient) -> MakeProject:
    """Create a project through the API (a unique name unless given); returns its JSON."""

    async def make(schema: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": unique("proj"),
            "command": ["python3", "train.py"],
            "schema": schema or {},
            **fields,
        }
        response = await client.post("/api/v1/projects", json=body)
        assert response.status_code == 201, response.text
        project: dict[str, Any] = response.json()
        return project

    return make


async def eventually(
    probe: Callable[[], Awaitable[Any]], *, timeout: float = 10.0, what: str = "condition"
) -> Any:
    """Poll ``probe`` until it returns something truthy (returned), or fail at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


@pytest.fixture
def wait_until() -> Callable[..., Awaitable[Any]]:
    """:func:`eventually`, as a fixture."""
    return eventually
