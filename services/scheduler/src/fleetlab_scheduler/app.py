"""The scheduler process: ASGI app with ``/healthz``, the broker, placement and leases."""

from __future__ import annotations

import asyncpg
from faststream.asgi import AsgiFastStream

from fleetlab_common.broker import make_broker
from fleetlab_common.db.outbox import OutboxRelay
from fleetlab_common.db.service import DbService, Loop
from fleetlab_common.service import migrations_dir
from fleetlab_scheduler import handlers
from fleetlab_scheduler.service import Scheduler
from fleetlab_scheduler.settings import SchedulerSettings
from fleetlab_scheduler.state import State

SCHEMA = "scheduler"


def build_service(settings: SchedulerSettings) -> tuple[DbService, State]:
    """The scheduler's broker, subscribers and lifecycle, not started."""
    broker = make_broker(settings.nats, "scheduler")
    state = State(settings)
    handlers.register(broker, state)

    async def build(pool: asyncpg.Pool, relay: OutboxRelay) -> None:
        state.scheduler = Scheduler(settings, pool, relay)

    def loops() -> list[Loop]:
        scheduler = state.get()
        return [("placement", scheduler.placement_loop), ("lease-reaper", scheduler.reaper_loop)]

    service = DbService(
        "scheduler", settings, broker, SCHEMA, migrations_dir(__file__), build, loops
    )
    return service, state


async def migrate(settings: SchedulerSettings) -> list[str]:
    """Apply the scheduler's migrations."""
    return await build_service(settings)[0].migrate()


def create_app(settings: SchedulerSettings) -> AsgiFastStream:
    """Build the scheduler. Nothing starts until the ASGI lifespan does."""
    return build_service(settings)[0].asgi()
