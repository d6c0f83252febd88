"""The API process: FastAPI (REST + pages) with the NATS broker in its lifespan."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI

from fleetlab_api import (
    artifacts,
    auth,
    errors,
    fglab,
    handlers,
    health,
    limits,
    openapi,
    outputs,
)
from fleetlab_api.agents.endpoints import router as agents_router
from fleetlab_api.code import endpoints as code_endpoints
from fleetlab_api.code import service as code_service
from fleetlab_api.dashboard import router as dashboard_router
from fleetlab_api.experiments.endpoints import router as experiments_router
from fleetlab_api.logs.endpoints import router as logs_router
from fleetlab_api.metrics import summary as metric_summary
from fleetlab_api.metrics.endpoints import router as metrics_router
from fleetlab_api.projects.endpoints import router as projects_router
from fleetlab_api.results import register as register_results
from fleetlab_api.settings import ApiSettings
from fleetlab_api.state import State
from fleetlab_api.sweeps.endpoints import router as sweeps_router
from fleetlab_api.tokens.endpoints import router as tokens_router
from fleetlab_api.tokens.first import ensure_first_token
from fleetlab_api.usage import router as usage_router
from fleetlab_api.webhooks.endpoints import router as webhooks_router
from fleetlab_common.artifacts import make_store
from fleetlab_common.broker import make_broker
from fleetlab_common.db.outbox import OutboxRelay
from fleetlab_common.db.service import DbService
from fleetlab_common.events.asyncapi import asyncapi_document
from fleetlab_common.log import get_logger
from fleetlab_common.service import migrations_dir

log = get_logger(__name__)

SCHEMA = "api"


def build_service(settings: ApiSettings) -> tuple[DbService, State]:
    """The API's broker, subscribers and lifecycle, not started."""
    broker = make_broker(settings.nats, "api")
    state = State(settings, broker)
    handlers.register(broker, state)
    metric_summary.register(broker, state)
    outputs.register_rpc(broker, state)
    register_results(broker, state)
    code_service.register_rpc(broker, state)

    async def build(pool: asyncpg.Pool, relay: OutboxRelay) -> None:
        state.pool = pool
        state.relay = relay
        if settings.auth.enabled and not settings.auth.password.get_secret_value():
            await ensure_first_token(pool, settings.home)

    async def artifacts_health() -> dict[str, str]:
        ok = state.store is not None and await state.store.ping()
        return {"artifacts": "ok" if ok else "down"}

    secret = settings.secret_key.get_secret_value().encode()
    if not secret:
        log.warning("api.ephemeral_secret", reason="FLEETLAB_SECRET_KEY is not set")
        secret = secrets.token_bytes(32)
    state.secret = secret
    base_url = settings.public_url or f"http://{settings.host}:{settings.port}"
    state.store = make_store(settings, base_url.rstrip("/"), secret)

    service = DbService(
        "api",
        settings,
        broker,
        SCHEMA,
        migrations_dir(__file__),
        build,
        extra_health=artifacts_health,
    )
    return service, state


async def migrate(settings: ApiSettings) -> list[str]:
    """Apply the API's migrations."""
    return await build_service(settings)[0].migrate()


def create_app(settings: ApiSettings) -> FastAPI:
    """Build the API. Nothing connects until the lifespan starts."""
    auth.check_bind(settings.host, settings.auth)
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
    app.add_middleware(limits.BodyLimitMiddleware, state=state)
    app.add_middleware(auth.AuthMiddleware, state=state)
    errors.install(app)
    app.include_router(projects_router)
    app.include_router(fglab.router)
    app.include_router(experiments_router)
    app.include_router(sweeps_router)
    app.include_router(logs_router)
    app.include_router(metrics_router)
    app.include_router(usage_router)
    app.include_router(webhooks_router)
    app.include_router(agents_router)
    app.include_router(outputs.router)
    app.include_router(tokens_router)
    app.include_router(health.router)
    app.include_router(artifacts.router)
    app.include_router(code_endpoints.router)
    app.include_router(dashboard_router)

    openapi.install(app)
    catalog = asyncapi_document()

    @app.get("/api/v1/asyncapi.json", tags=["events"])
    async def asyncapi() -> dict[str, Any]:
        """The AsyncAPI document of every event Fleetlab publishes on NATS."""
        return catalog

    return app
