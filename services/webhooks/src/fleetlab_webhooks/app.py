"""The webhooks process: owns the ``webhooks`` schema (endpoints, deliveries).

Registration and delivery are built on this lifecycle by the webhooks capability; for now
the process migrates its schema, serves ``/healthz`` and answers ``rpc.webhooks.health``.
"""

from __future__ import annotations

import asyncpg
from faststream.asgi import AsgiFastStream

from fleetlab_common.broker import make_broker
from fleetlab_common.db.outbox import OutboxRelay
from fleetlab_common.db.service import DbService
from fleetlab_common.service import migrations_dir
from fleetlab_webhooks.settings import WebhooksSettings

SCHEMA = "webhooks"


def build_service(settings: WebhooksSettings) -> DbService:
    """The webhooks service's broker and lifecycle, not started."""
    broker = make_broker(settings.nats, "webhooks")

    async def build(pool: asyncpg.Pool, relay: OutboxRelay) -> None:
        """Nothing to build yet beyond the pool and relay."""

    return DbService("webhooks", settings, broker, SCHEMA, migrations_dir(__file__), build)


async def migrate(settings: WebhooksSettings) -> list[str]:
    """Apply the webhooks service's migrations."""
    return await build_service(settings).migrate()


def create_app(settings: WebhooksSettings) -> AsgiFastStream:
    """Build the webhooks service. Nothing starts until the ASGI lifespan does."""
    return build_service(settings).asgi()
