"""The webhooks process: owns the ``webhooks`` schema (endpoints, deliveries, attempts).

It consumes the public events durably, turns each into deliveries for the endpoints that
asked for it, sends them (signed, retried with backoff) and answers ``rpc.webhooks.<verb>``
for the API.
"""

from __future__ import annotations

import asyncpg
from faststream.asgi import AsgiFastStream

from fleetlab_common.broker import make_broker
from fleetlab_common.db.outbox import OutboxRelay
from fleetlab_common.db.service import DbService, Loop
from fleetlab_common.service import migrations_dir
from fleetlab_webhooks import handlers
from fleetlab_webhooks.service import Webhooks
from fleetlab_webhooks.settings import WebhooksSettings
from fleetlab_webhooks.ssrf import Resolver, system_resolver
from fleetlab_webhooks.state import State

SCHEMA = "webhooks"


def build_service(
    settings: WebhooksSettings, *, resolver: Resolver = system_resolver
) -> tuple[DbService, State]:
    """The webhooks service's broker, subscribers and lifecycle, not started."""
    broker = make_broker(settings.nats, "webhooks")
    state = State(settings)
    handlers.register(broker, state)

    async def build(pool: asyncpg.Pool, relay: OutboxRelay) -> None:
        state.webhooks = Webhooks(settings, pool, relay, resolver=resolver)

    def loops() -> list[Loop]:
        return [("webhooks-dispatcher", state.get().run)]

    service = DbService(
        "webhooks", settings, broker, SCHEMA, migrations_dir(__file__), build, loops=loops
    )
    return service, state


async def migrate(settings: WebhooksSettings) -> list[str]:
    """Apply the webhooks service's migrations."""
    return await build_service(settings)[0].migrate()


def create_app(settings: WebhooksSettings) -> AsgiFastStream:
    """Build the webhooks service. Nothing starts until the ASGI lifespan does."""
    return build_service(settings)[0].asgi()
