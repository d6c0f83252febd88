"""The logstream process: ASGI app with ``/healthz``, the broker, stored lines."""

from __future__ import annotations

import asyncpg
from faststream.asgi import AsgiFastStream

from fleetlab_common.broker import make_broker
from fleetlab_common.db.outbox import OutboxRelay
from fleetlab_common.db.service import DbService
from fleetlab_common.service import migrations_dir
from fleetlab_logstream import handlers
from fleetlab_logstream.service import Logstream
from fleetlab_logstream.settings import LogstreamSettings
from fleetlab_logstream.state import State

SCHEMA = "logstream"


def build_service(settings: LogstreamSettings) -> tuple[DbService, State]:
    """Logstream's broker, subscribers and lifecycle, not started."""
    broker = make_broker(settings.nats, "logstream")
    state = State(settings)
    handlers.register(broker, state)

    async def build(pool: asyncpg.Pool, relay: OutboxRelay) -> None:
        state.logstream = Logstream(settings, pool)

    service = DbService("logstream", settings, broker, SCHEMA, migrations_dir(__file__), build)
    return service, state


async def migrate(settings: LogstreamSettings) -> list[str]:
    """Apply logstream's migrations."""
    return await build_service(settings)[0].migrate()


def create_app(settings: LogstreamSettings) -> AsgiFastStream:
    """Build logstream. Nothing starts until the ASGI lifespan does."""
    return build_service(settings)[0].asgi()
