"""The API process: FastAPI (REST + pages) with the NATS broker in its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI

from fleetlab_api import errors, handlers, health, pages
from fleetlab_api.experiments.endpoints import router as experiments_router
from fleetlab_api.projects.endpoints import router as projects_router
from fleetlab_api.settings import ApiSettings
from fleetlab_api.state import State
from fleetlab_common.broker import make_broker
from fleetlab_common.db.outbox import OutboxRelay
from fleetlab_common.db.service import DbService
from fleetlab_common.events.asyncapi import asyncapi_document
from fleetlab_common.service import migrations_dir

SCHEMA = "api"


def build_service(settings: ApiSettings) -> tuple[DbService, State]:
    """The API's broker, subscribers and lifecycle, not started."""
    broker = make_broker(settings.nats, "api")
    state = State(settings, broker)
    handlers.register(broker, state)

    async def build(pool: asyncpg.Pool, relay: OutboxRelay) -> None:
        state.pool = pool
        state.relay = relay

    service = DbService("api", settings, broker, SCHEMA, migrations_dir(__file__), build)
    return service, state


async def migrate(settings: ApiSettings) -> list[str]:
    """Apply the API's migrations."""
    return await build_service(settings)[0].migrate()


def create_app(settings: ApiSettings) -> FastAPI:
    """Build the API. Nothing connects until the lifespan starts."""
    service, state = build_service(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start_db()
        await state.broker.start()
        await service.started()
        try:
            yield
        finally:
            await service.stopping()
            await state.broker.stop()
            await service.closed()

    app = FastAPI(
        title="Fleetlab",
        version="0.1.0",
        description="Run machine-learning experiments on a fleet of machines.",
        lifespan=lifespan,
    )
    app.state.fleetlab = state
    errors.install(app)
    app.include_router(projects_router)
    app.include_router(experiments_router)
    app.include_router(health.router)
    app.include_router(pages.router)

    catalog = asyncapi_document()

    @app.get("/api/v1/asyncapi.json", tags=["events"])
    async def asyncapi() -> dict[str, Any]:
        """The AsyncAPI document of every event Fleetlab publishes on NATS."""
        return catalog

    return app
