"""The logstream process: ASGI app with ``/healthz``, the broker, stored lines and metrics."""

from __future__ import annotations

import secrets

import asyncpg
from faststream.asgi import AsgiFastStream

from fleetlab_common.artifacts import make_store
from fleetlab_common.broker import make_broker
from fleetlab_common.db.outbox import OutboxRelay
from fleetlab_common.db.service import DbService, Loop
from fleetlab_common.service import migrations_dir
from fleetlab_logstream import handlers, usage
from fleetlab_logstream.service import Logstream
from fleetlab_logstream.settings import LogstreamSettings
from fleetlab_logstream.state import State

SCHEMA = "logstream"


def build_service(settings: LogstreamSettings) -> tuple[DbService, State]:
    """Logstream's broker, subscribers and lifecycle, not started."""
    broker = make_broker(settings.nats, "logstream")
    state = State(settings)
    handlers.register(broker, state)
    usage.register(broker, state)
    # Logstream only writes archives; it signs no URL, so a missing secret is no loss.
    secret = settings.secret_key.get_secret_value().encode() or secrets.token_bytes(32)
    store = make_store(settings, f"http://{settings.host}:{settings.port}", secret)

    async def build(pool: asyncpg.Pool, relay: OutboxRelay) -> None:
        state.logstream = Logstream(settings, pool, store, relay)

    def loops() -> list[Loop]:
        ls = state.get()

        async def usage_retention() -> None:
            await usage.retention_loop(
                ls.pool, settings.usage_max_age_days, settings.retention_interval_s
            )

        return [
            ("log-archiver", ls.archive_loop),
            ("log-retention", ls.retention_loop),
            ("usage-retention", usage_retention),
        ]

    async def artifacts_health() -> dict[str, str]:
        return {"artifacts": "ok" if await store.ping() else "down"}

    service = DbService(
        "logstream",
        settings,
        broker,
        SCHEMA,
        migrations_dir(__file__),
        build,
        loops=loops,
        extra_health=artifacts_health,
    )
    return service, state


async def migrate(settings: LogstreamSettings) -> list[str]:
    """Apply logstream's migrations."""
    return await build_service(settings)[0].migrate()


def create_app(settings: LogstreamSettings) -> AsgiFastStream:
    """Build logstream. Nothing starts until the ASGI lifespan does."""
    return build_service(settings)[0].asgi()
