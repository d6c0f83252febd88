"""Webhooks tests: a real HTTP receiver on 127.0.0.1, a NATS server of this package's own,
the service on a fresh database, and time scaled down so that retries take milliseconds."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import pytest

from fleetlab_common.broker import make_broker
from fleetlab_common.db.outbox import OutboxRelay
from fleetlab_common.db.pool import create_pool
from fleetlab_common.embedded import start_nats, stop_process
from fleetlab_common.settings import NatsSettings, PostgresSettings
from fleetlab_webhooks.app import migrate
from fleetlab_webhooks.service import Webhooks
from fleetlab_webhooks.settings import WebhooksSettings
from fleetlab_webhooks.ssrf import Resolver, system_resolver

# Retries after 50 ms, then 100 ms, 200 ms, ...: the production schedule, scaled.
FAST: dict[str, Any] = {
    "allow_loopback": True,
    "retry_base_s": 0.05,
    "retry_factor": 2.0,
    "retry_max_s": 0.5,
    "retry_jitter": 0.0,
    "poll_s": 0.2,
    "timeout_s": 2.0,
}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """What a webhook receiver saw, and how it answers (a script of statuses, then 200)."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    default_status: int = 200
    response_body: bytes = b"ok"
    delay_s: float = 0.0
    # Requests being answered now, and the most at once, per path.
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight: dict[str, int] = field(default_factory=dict)
    extra_headers: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_status(self) -> int:
        with self.lock:
            return self.script.pop(0) if self.script else self.default_status


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            with receiver.lock:
                now = receiver.in_flight[self.path] = receiver.in_flight.get(self.path, 0) + 1
                receiver.max_in_flight[self.path] = max(
                    receiver.max_in_flight.get(self.path, 0), now
                )
            try:
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                status = receiver.next_status()
                with receiver.lock:
                    receiver.requests.append(
                        Received(self.path, dict(self.headers.items()), body, time.monotonic())
                    )
                self.send_response(status)
                for name, value in receiver.extra_headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(receiver.response_body)))
                self.end_headers()
                self.wfile.write(receiver.response_body)
            finally:
                with receiver.lock:
                    receiver.in_flight[self.path] -= 1

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An HTTP server on a free port of 127.0.0.1, in a thread."""
    rec = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rec))
    server.daemon_threads = True
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="package")
def wh_nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A NATS server of this package's own: its durable consumers and streams start empty."""
    proc, url = start_nats(tmp_path_factory.mktemp("webhooks-nats"))
    try:
        yield url
    finally:
        stop_process(proc)


def settings_for(
    dsn: str, nats_url: str = "nats://127.0.0.1:1", **delivery: Any
) -> WebhooksSettings:
    return WebhooksSettings(
        postgres=PostgresSettings(dsn=dsn),
        nats=NatsSettings(url=nats_url),
        webhooks={**FAST, **delivery},
    )


MakeWebhooks = Callable[..., Awaitable[Webhooks]]


@pytest.fixture
async def make_webhooks(fresh_dsn: str) -> AsyncIterator[MakeWebhooks]:
    """The service layer on a fresh, migrated database, with no NATS (the outbox fills)."""
    made: list[tuple[Webhooks, asyncpg.Pool]] = []

    async def make(resolver: Resolver = system_resolver, **delivery: Any) -> Webhooks:
        settings = settings_for(fresh_dsn, **delivery)
        if not made:
            await migrate(settings)
        pool = await create_pool(fresh_dsn, "webhooks")
        webhooks = Webhooks(
            settings, pool, OutboxRelay(pool, make_broker(settings.nats, "test")), resolver=resolver
        )
        made.append((webhooks, pool))
        return webhooks

    yield make
    for webhooks, pool in made:
        await webhooks.stop()
        await pool.close()


async def eventually(
    probe: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition"
) -> Any:
    """Poll ``probe`` (sync or async) until it returns something truthy, or fail."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
