"""The lifecycle shared by every service that owns a Postgres schema.

Start: apply the migrations, open the pool, build the service's runtime object, start the
broker, make sure the streams exist, start the outbox relay and the background loops.
Stop: the reverse. FastStream services get an ASGI app with ``/healthz`` from :meth:`asgi`;
the API drives :meth:`start_db`/:meth:`started`/:meth:`stopping`/:meth:`closed` from its own
lifespan.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from faststream.asgi import AsgiFastStream
from faststream.nats import NatsBroker

from fleetlab_common.broker import ensure_streams
from fleetlab_common.db.migrate import migrate
from fleetlab_common.db.outbox import OutboxRelay
from fleetlab_common.db.pool import create_pool, ping
from fleetlab_common.service import (
    Background,
    HealthCheck,
    healthz_handler,
    register_health_rpc,
)
from fleetlab_common.settings import CommonSettings

Build = Callable[[asyncpg.Pool, OutboxRelay], Awaitable[None]]
Loop = tuple[str, Callable[[], Coroutine[Any, Any, None]]]


@dataclass
class DbService:
    """One service process that owns the Postgres schema ``schema``."""

    name: str
    settings: CommonSettings
    broker: NatsBroker
    schema: str
    migrations: Path
    # Called once the pool is open: builds the service's runtime object.
    build: Build
    # Background loops started after the broker: (name, coroutine factory).
    loops: Callable[[], list[Loop]] = list
    # Extra health components beyond NATS and Postgres.
    extra_health: HealthCheck | None = None
    pool: asyncpg.Pool | None = None
    relay: OutboxRelay | None = None
    background: Background = field(default_factory=Background)

    def __post_init__(self) -> None:
        register_health_rpc(self.broker, self.name, self.components)

    async def migrate(self) -> list[str]:
        """Apply this service's migrations (safe to run from many processes at once)."""
        return await migrate(self.settings.postgres.dsn, self.schema, self.migrations)

    async def components(self) -> dict[str, str]:
        """Health of what this process depends on."""
        nats_ok = await self.broker.ping(1.0)
        db_ok = self.pool is not None and await ping(self.pool)
        report = {"nats": "ok" if nats_ok else "down", "postgres": "ok" if db_ok else "down"}
        if self.extra_health is not None:
            report.update(await self.extra_health())
        return report

    async def start_db(self) -> None:
        """Before the broker starts: migrations, pool, relay, the runtime object."""
        await self.migrate()
        pg = self.settings.postgres
        self.pool = await create_pool(
            pg.dsn, self.schema, min_size=pg.min_size, max_size=pg.max_size
        )
        self.relay = OutboxRelay(self.pool, self.broker)
        await self.build(self.pool, self.relay)

    async def started(self) -> None:
        """After the broker started: streams, the relay, the loops."""
        await ensure_streams(self.broker.connection.jetstream(), self.settings.nats)
        assert self.relay is not None
        self.relay.start()
        for name, factory in self.loops():
            self.background.spawn(name, factory)

    async def stopping(self) -> None:
        """Before the broker stops: loops, then the last outbox rows."""
        await self.background.stop()
        if self.relay is not None:
            await self.relay.stop()

    async def closed(self) -> None:
        """After the broker stopped: the pool."""
        if self.pool is not None:
            await self.pool.close()

    def asgi(self) -> AsgiFastStream:
        """The ASGI app of a FastStream service: ``/healthz`` plus the broker's lifespan."""
        return AsgiFastStream(
            self.broker,
            asgi_routes=[("/healthz", healthz_handler(self.name, self.components))],
            on_startup=[self.start_db],
            after_startup=[self.started],
            on_shutdown=[self.stopping],
            after_shutdown=[self.closed],
        )
