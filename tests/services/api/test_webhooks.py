"""``/api/v1/webhooks`` through the API, answered by a real webhooks service over NATS.

FGLab's contract verbatim, then subscriptions to public events with their history.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import nats.js.errors
import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from standardwebhooks.webhooks import Webhook

from fleetlab_common.broker import consumer_name, ensure_streams, publish_event
from fleetlab_common.events import ExperimentFinished, ExperimentStarted
from fleetlab_common.ids import uuid7
from fleetlab_webhooks.app import build_service
from fleetlab_webhooks.public import CONSUMED
from fleetlab_webhooks.service import CONSUMER
from fleetlab_webhooks.settings import WebhooksSettings

from .conftest import eventually

Started = Callable[..., Any]


class Receiver:
    """A local HTTP receiver: records every POST, answers 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.requests.append((dict(self.headers.items()), body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    thread = threading.Thread(target=rec.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        rec.server.shutdown()
        rec.server.server_close()
        thread.join(5)


async def _consume_from_now(nc: NatsClient, settings: WebhooksSettings) -> None:
    """Create the service's durable consumers reading from now on, where none exists yet.

    The API tests before these left thousands of events in the package's streams, many about
    experiments never submitted here: a new webhooks service would rightly replay them all,
    each held back a few times waiting for its submission, and the events of these tests would
    queue behind them. The service takes an existing durable consumer as it is.
    """
    js = nc.jetstream()
    await ensure_streams(js, settings.nats)
    for event in CONSUMED:
        assert event.STREAM is not None
        durable = consumer_name(CONSUMER, event)
        try:
            await js.consumer_info(event.STREAM, durable)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(
                event.STREAM,
                ConsumerConfig(
                    durable_name=durable,
                    filter_subject=event.subscribe_subject(),
                    deliver_policy=DeliverPolicy.NEW,
                    ack_policy=AckPolicy.EXPLICIT,
                    max_deliver=settings.nats.max_deliver,
                ),
            )


@pytest.fixture
async def webhooks_service(
    nats_url: str, fresh_dsn: str, nc: NatsClient
) -> AsyncIterator[Callable[..., Any]]:
    """Start the webhooks service (one at a time) with the delivery settings asked for."""

    @asynccontextmanager
    async def start(**delivery: Any) -> AsyncIterator[None]:
        settings = WebhooksSettings(
            postgres={"dsn": fresh_dsn},
            nats={"url": nats_url},
            webhooks={"retry_base_s": 0.05, "poll_s": 0.2, **delivery},
        )
        await _consume_from_now(nc, settings)
        service, _ = build_service(settings)
        await service.start_db()
        await service.broker.start()
        await service.started()
        try:
            yield
        finally:
            await service.stopping()
            await service.broker.stop()
            await service.closed()

    yield start


FGLAB = {"url": "https://hooks.example.com/x", "objects": "experiments", "event": "finished"}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({**FGLAB, "object_id": "e1", "url": ""}, "Invalid or empty URL"),
        ({"objects": "experiments", "object_id": "e1", "event": "started"}, "Invalid or empty URL"),
        ({**FGLAB, "object_id": "e1", "url": "not a url"}, "Invalid or empty URL"),
        ({**FGLAB, "object_id": "e1", "objects": "projects"}, "Object is not 'experiments'"),
        ({**FGLAB, "object_id": "e1", "event": "stopped"}, "Event is not 'started' or 'finished'"),
        ({**FGLAB, "object_id": "e1", "event": None}, "Event is not 'started' or 'finished'"),
        (FGLAB, "No object ID provided"),
        ({**FGLAB, "object_id": ""}, "No object ID provided"),
    ],
)
async def test_fglab_errors_verbatim(
    client: httpx.AsyncClient, body: dict[str, Any], error: str
) -> None:
    # Refused before the webhooks service is asked: none runs here.
    response = await client.post("/api/v1/webhooks", json=body)
    assert response.status_code == 400
    assert response.json() == {"error": error}


async def test_fglab_registration_and_delivery_of_the_registered_json(
    client: httpx.AsyncClient,
    publisher: NatsBroker,
    webhooks_service: Callable[..., Any],
    receiver: Receiver,
) -> None:
    experiment_id = uuid7()
    body = {
        "url": receiver.url,
        "objects": "experiments",
        "object_id": str(experiment_id),
        "event": "finished",
    }
    async with webhooks_service(allow_loopback=True):
        response = await client.post("/api/v1/webhooks", json=body)
        assert response.status_code == 201
        assert response.json() == {"status": "Registered", "options": body}
        listed = (await client.get("/api/v1/webhooks")).json()["items"]
        assert [(w["kind"], w["options"], w["experiment"]) for w in listed] == [
            ("fglab", body, str(experiment_id))
        ]
        await publish_event(
            publisher,
            ExperimentFinished(experiment_id=experiment_id, agent_id="a", status="succeeded"),
        )
        await eventually(lambda: _async(len(receiver.requests) == 1), what="the FGLab POST")
        headers, sent = receiver.requests[0]
        assert json.loads(sent) == body
        assert {k.lower(): v for k, v in headers.items()}["content-type"] == "application/json"


async def _async(value: Any) -> Any:
    return value


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/", "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/"],
)
async def test_metadata_addresses_are_refused_even_with_loopback_allowed(
    client: httpx.AsyncClient, webhooks_service: Callable[..., Any], url: str
) -> None:
    async with webhooks_service(allow_loopback=True):
        fglab = await client.post("/api/v1/webhooks", json={**FGLAB, "url": url, "object_id": "e1"})
        events = await client.post(
            "/api/v1/webhooks", json={"url": url, "events": ["experiment.finished"]}
        )
        listed = (await client.get("/api/v1/webhooks")).json()["items"]
    for response in (fglab, events):
        assert response.status_code == 400, response.text
        assert "link-local or metadata" in response.json()["error"]
    assert listed == []


async def test_loopback_is_refused_unless_allowed(
    client: httpx.AsyncClient, webhooks_service: Callable[..., Any]
) -> None:
    body = {"url": "http://127.0.0.1/", "events": ["experiment.finished"]}
    async with webhooks_service(allow_loopback=False):
        refused = await client.post("/api/v1/webhooks", json=body)
    assert refused.status_code == 400
    assert refused.json()["error"] == (
        "URL not allowed: refused to connect to 127.0.0.1: 127.0.0.1 is a loopback address"
    )
    async with webhooks_service(allow_loopback=True):
        allowed = await client.post("/api/v1/webhooks", json=body)
    assert allowed.status_code == 201, allowed.text


async def test_subscriptions_with_history_pause_resend_and_delete(
    client: httpx.AsyncClient,
    publisher: NatsBroker,
    webhooks_service: Callable[..., Any],
    receiver: Receiver,
) -> None:
    experiment_id = uuid7()
    async with webhooks_service(allow_loopback=True):
        created = await client.post(
            "/api/v1/webhooks",
            json={
                "url": receiver.url,
                "events": ["experiment.started"],
                "experiment": str(experiment_id),
                "description": "CI bot",
            },
        )
        assert created.status_code == 201, created.text
        hook = created.json()
        secret = hook.pop("secret")
        base = f"/api/v1/webhooks/{hook['id']}"
        shown = (await client.get(base)).json()
        assert shown["description"] == "CI bot" and "secret" not in shown

        started = ExperimentStarted(
            experiment_id=experiment_id,
            agent_id="gpu-1",
            instance_id=uuid7(),
            pid=42,
            argv=["python", "train.py"],
            workdir="/w",
        )
        await publish_event(publisher, started)
        await eventually(lambda: _async(len(receiver.requests) == 1), what="the delivery")
        headers, sent = receiver.requests[0]
        payload = Webhook(secret).verify(sent, headers)
        assert payload["type"] == "experiment.started"
        assert payload["data"]["experiment"]["status"] == "running"

        async def succeeded() -> list[dict[str, Any]]:
            page = (await client.get(f"{base}/deliveries", params={"status": "succeeded"})).json()
            return list(page["items"])

        (delivery,) = await eventually(succeeded, what="the delivery recorded")
        detail = (await client.get(f"{base}/deliveries/{delivery['id']}")).json()
        assert detail["attempt_history"][0]["status_code"] == 200
        assert json.loads(detail["payload"]) == payload

        resent = await client.post(f"{base}/deliveries/{delivery['id']}/resend")
        assert resent.status_code == 202
        await eventually(lambda: _async(len(receiver.requests) == 2), what="the resend")
        assert receiver.requests[1][0]["webhook-id"] == headers["webhook-id"]

        paused = (await client.post(f"{base}/pause")).json()
        assert paused["paused"] is True
        resumed = (await client.post(f"{base}/resume")).json()
        assert resumed["paused"] is False
        patched = await client.patch(base, json={"events": ["experiment.finished", "agent.online"]})
        assert patched.json()["events"] == ["experiment.finished", "agent.online"]
        bad = await client.patch(base, json={"events": ["experiment.exploded"]})
        assert bad.status_code == 422

        assert (await client.delete(base)).status_code == 204
        assert (await client.get(base)).status_code == 404
        assert (await client.get("/api/v1/webhooks/not-an-id")).status_code == 404


async def test_unknown_events_are_422_and_a_missing_service_is_503(
    client: httpx.AsyncClient,
) -> None:
    bad = await client.post(
        "/api/v1/webhooks", json={"url": "https://x.example", "events": ["experiment.exploded"]}
    )
    assert bad.status_code == 422 and "events.0" in bad.json()["fields"]
    down = await client.post(
        "/api/v1/webhooks", json={"url": "https://x.example", "events": ["agent.online"]}
    )
    assert down.status_code == 503
    assert down.json()["error"].startswith("the webhooks service did not answer")
