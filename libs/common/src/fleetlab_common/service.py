"""What every Fleetlab service process shares: its entry point, health and run loop.

A service is built by ``create_app(settings)`` (an ASGI app serving ``/healthz``) and started by
``python -m fleetlab_<svc>``; ``python -m fleetlab_<svc> migrate`` applies its migrations and
exits. Each service also answers ``rpc.<svc>.health`` on NATS, which the API's
``/api/v1/health`` gathers.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Literal

import uvicorn
from faststream.nats import NatsBroker
from pydantic import BaseModel

from fleetlab_common.events import Rpc
from fleetlab_common.log import configure_logging, get_logger
from fleetlab_common.settings import CommonSettings
from fleetlab_common.tracing import configure_tracing

log = get_logger(__name__)

HealthCheck = Callable[[], Awaitable[dict[str, str]]]


class HealthReport(BaseModel):
    """``status`` is ``ok`` only when every component says ``ok``."""

    service: str
    status: str
    components: dict[str, str]

    @classmethod
    def of(cls, service: str, components: dict[str, str]) -> HealthReport:
        ok = all(v == "ok" for v in components.values())
        return cls(service=service, status="ok" if ok else "fail", components=components)


def register_health_rpc(broker: NatsBroker, service: str, check: HealthCheck) -> None:
    """Answer ``rpc.<service>.health`` requests with this process's :class:`HealthReport`."""

    @broker.subscriber(Rpc.health(service), title=f"{Rpc.health(service)}:reply")
    async def _health() -> dict[str, Any]:
        return HealthReport.of(service, await check()).model_dump()


def migrations_dir(package_file: str) -> Path:
    """The service's ``migrations/`` folder: inside the installed package, or in the source tree."""
    here = Path(package_file).resolve().parent
    inside = here / "migrations"
    if inside.is_dir():
        return inside
    return here.parents[1] / "migrations"


async def cancel_until_done(task: asyncio.Task[Any], every_s: float = 0.5) -> None:
    """Cancel ``task`` and wait for its end, cancelling it again while it goes on.

    A cancel that lands as an awaited reply arrives can be lost inside ``asyncio.wait_for``
    (Python 3.11; the NATS client waits for every JetStream acknowledgement that way): the task
    then runs on to its next wait, where the next cancel reaches it."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=every_s)
    with contextlib.suppress(asyncio.CancelledError):
        task.result()


class Background:
    """Named background tasks of a service, cancelled together on shutdown.

    A task that dies of an unexpected error is logged and restarted after a pause: a loop such
    as the lease reaper must not silently stop.
    """

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def spawn(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        async def guarded() -> None:
            while True:
                try:
                    await factory()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("task.crashed", task=name)
                    await asyncio.sleep(1.0)

        self._tasks.append(asyncio.create_task(guarded(), name=name))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()


def run_service(
    service: str,
    settings: CommonSettings,
    create_app: Callable[[Any], Any],
    migrate: Callable[[Any], Coroutine[Any, Any, list[str]]] | None = None,
    argv: list[str] | None = None,
    loop: Literal["auto", "asyncio", "uvloop"] = "auto",
) -> None:
    """The body of ``python -m fleetlab_<service> [migrate]``; ``loop`` is uvicorn's event
    loop choice (``auto``: uvloop where installed)."""
    args = sys.argv[1:] if argv is None else argv
    configure_logging(service, settings.log_level, settings.log_json)
    configure_tracing(service, settings.telemetry)
    if args[:1] == ["migrate"]:
        if migrate is None:
            log.info("migrate.nothing", reason=f"{service} has no database")
            return
        applied = asyncio.run(migrate(settings))
        log.info("migrate.done", applied=applied)
        return
    if args:
        sys.exit(f"usage: python -m fleetlab_{service} [migrate]")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        # Longer than clients keep an idle connection (httpx: 5 s, uvicorn's own default):
        # with equal times a client could send on a connection the server was closing that
        # very moment, and its request failed with a dropped connection (seen under load).
        timeout_keep_alive=75,
        loop=loop,
        # The sans-I/O implementation: the default one imports a deprecated websockets module.
        ws="websockets-sansio",
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        sys.exit(1)


def healthz_handler(service: str, components: HealthCheck) -> Any:
    """The ``GET /healthz`` route of a FastStream ASGI service: 200 or 503 with the report."""
    import json

    from faststream.asgi import AsgiResponse, get
    from faststream.asgi.types import Scope

    @get
    async def healthz(scope: Scope) -> AsgiResponse:
        report = HealthReport.of(service, await components())
        return AsgiResponse(
            json.dumps(report.model_dump()).encode(),
            200 if report.status == "ok" else 503,
            headers={"content-type": "application/json"},
        )

    return healthz
