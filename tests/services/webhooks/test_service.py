"""The service layer on a real Postgres, delivering to a real local HTTP receiver."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from fleetlab_common.events import (
    AgentOnline,
    ExperimentFinished,
    ExperimentStarted,
    ExperimentSubmitted,
)
from fleetlab_common.ids import uuid7
from fleetlab_common.runspec import RunSpec
from fleetlab_webhooks.service import WebhookError, Webhooks
from fleetlab_webhooks.ssrf import AddressPolicy, IPAddress, SafeTransport, UrlRefusedError

from .conftest import MakeWebhooks, Receiver, eventually


def submitted(
    project: str = "mnist", experiment_id: uuid.UUID | None = None
) -> ExperimentSubmitted:
    return ExperimentSubmitted(
        experiment_id=experiment_id or uuid7(),
        project_id=uuid7(),
        project=project,
        options={"lr": 0.1},
        run=RunSpec(command=["python", "train.py"]),
    )


def finished(experiment_id: uuid.UUID, status: str = "succeeded") -> ExperimentFinished:
    return ExperimentFinished(
        experiment_id=experiment_id,
        agent_id="gpu-1",
        status=status,
        exit_code=0,  # type: ignore[arg-type]
    )


@pytest.fixture
async def running(make_webhooks: MakeWebhooks) -> AsyncIterator[Webhooks]:
    """The service with its delivery loop running."""
    webhooks = await make_webhooks()
    task = asyncio.create_task(webhooks.run())
    yield webhooks
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def register(webhooks: Webhooks, url: str, **fields: Any) -> dict[str, Any]:
    return await webhooks.create({"url": url, "events": ["experiment.finished"], **fields})


async def outbox_types(webhooks: Webhooks) -> list[str]:
    async with webhooks.pool.acquire() as conn:
        rows = await conn.fetch("SELECT subject FROM outbox ORDER BY seq")
    return [r["subject"] for r in rows]


# --- endpoints -----------------------------------------------------------------------------


async def test_endpoint_lifecycle(make_webhooks: MakeWebhooks) -> None:
    webhooks = await make_webhooks()
    created = await register(webhooks, "https://hooks.example.com/a", project="mnist")
    secret = created.pop("secret")
    assert secret.startswith("whsec_")
    assert created["events"] == ["experiment.finished"] and created["paused"] is False
    shown = await webhooks.get({"id": created["id"]})
    assert "secret" not in shown and shown["project"] == "mnist"
    assert [e["id"] for e in (await webhooks.list())["items"]] == [created["id"]]

    given = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    own = await register(webhooks, "https://hooks.example.com/b", secret=given)
    assert "secret" not in own  # the user's own secret is not echoed

    updated = await webhooks.update(
        {"id": created["id"], "changes": {"events": ["agent.online"], "project": ""}}
    )
    assert updated["events"] == ["agent.online"] and updated["project"] is None
    rotated = await webhooks.update({"id": created["id"], "changes": {"rotate_secret": True}})
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != secret

    paused = await webhooks.update({"id": created["id"], "changes": {"paused": True}})
    assert paused["paused"] is True and paused["paused_reason"] == "paused by a user"
    assert await outbox_types(webhooks) == ["webhooks.endpoint.paused"]
    resumed = await webhooks.update({"id": created["id"], "changes": {"paused": False}})
    assert resumed["paused"] is False

    assert await webhooks.delete({"id": created["id"]}) == {"deleted": created["id"]}
    with pytest.raises(WebhookError) as missing:
        await webhooks.get({"id": created["id"]})
    assert missing.value.status == 404


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"url": "https://x.example", "events": ["experiment.exploded"]}, 422, "events"),
        ({"url": "https://x.example", "events": []}, 422, "events"),
        ({"url": "https://x.example", "events": ["agent.online"], "secret": "s"}, 422, "secret"),
        ({"url": "ftp://x.example", "events": ["agent.online"]}, 400, "url"),
        ({"url": "http://169.254.169.254/latest", "events": ["agent.online"]}, 400, "url"),
        ({"url": "http://10.0.0.7/", "events": ["agent.online"]}, 400, "url"),
        ({"url": "https://x.example", "events": ["agent.online"], "color": "red"}, 422, "color"),
    ],
)
async def test_invalid_registrations_are_refused(
    make_webhooks: MakeWebhooks, body: dict[str, Any], status: int, field: str
) -> None:
    webhooks = await make_webhooks()
    with pytest.raises(WebhookError) as refused:
        await webhooks.create(body)
    assert refused.value.status == status
    assert field in refused.value.fields
    assert (await webhooks.list())["items"] == []


async def test_loopback_registration_is_refused_unless_allowed(
    make_webhooks: MakeWebhooks,
) -> None:
    strict = await make_webhooks(allow_loopback=False)
    for url in ("http://127.0.0.1/", "http://localhost:8080/hook", "http://[::1]/"):
        with pytest.raises(WebhookError) as refused:
            await register(strict, url)
        assert refused.value.status == 400
        assert "loopback" in refused.value.message
    relaxed = await make_webhooks(allow_loopback=True)
    assert (await register(relaxed, "http://127.0.0.1/"))["url"] == "http://127.0.0.1/"
    with pytest.raises(WebhookError):  # metadata stays refused
        await register(relaxed, "http://169.254.169.254/")


# --- events into deliveries ----------------------------------------------------------------


async def test_events_become_deliveries_for_matching_endpoints_once(
    make_webhooks: MakeWebhooks,
) -> None:
    webhooks = await make_webhooks()
    sub = submitted(project="mnist")
    other = submitted(project="cifar")
    everything = await webhooks.create(
        {"url": "https://a.example", "events": ["experiment.finished", "agent.online"]}
    )
    by_project = await register(webhooks, "https://b.example", project="mnist")
    by_experiment = await register(
        webhooks, "https://c.example", experiment=str(other.experiment_id)
    )
    starts = await webhooks.create({"url": "https://d.example", "events": ["experiment.started"]})

    for event in (sub, other):
        assert await webhooks.on_event(event) == 0  # nobody asked for submissions
    done = finished(sub.experiment_id)
    assert await webhooks.on_event(done) == 2  # everything, by_project
    assert await webhooks.on_event(done) == 0  # a redelivery changes nothing
    assert await webhooks.on_event(finished(other.experiment_id)) == 2  # everything, by_experiment
    assert await webhooks.on_event(AgentOnline(agent_id="gpu-1")) == 1

    async def targets(endpoint: dict[str, Any]) -> list[str]:
        page = await webhooks.deliveries({"endpoint_id": endpoint["id"]})
        return [d["event_type"] for d in page["items"]]

    assert await targets(everything) == [
        "agent.online",
        "experiment.finished",
        "experiment.finished",
    ]
    assert await targets(by_project) == ["experiment.finished"]
    assert await targets(by_experiment) == ["experiment.finished"]
    assert await targets(starts) == []

    page = await webhooks.deliveries({"endpoint_id": by_project["id"]})
    detail = await webhooks.delivery(
        {"endpoint_id": by_project["id"], "delivery_id": page["items"][0]["id"]}
    )
    body = json.loads(detail["payload"])
    assert body["type"] == "experiment.finished" and body["id"] == str(done.id)
    # The record joins what every event said about the experiment.
    assert body["data"]["experiment"] == {
        "id": str(sub.experiment_id),
        "project": "mnist",
        "project_id": str(sub.project_id),
        "options": {"lr": 0.1},
        "priority": 0,
        "status": "succeeded",
        "attempt": 1,
        "submitted_at": sub.occurred_at.isoformat(),
        "agent_id": "gpu-1",
        "exit_code": 0,
        "signal": None,
        "reason": None,
        "log_lines": 0,
        "finished_at": done.occurred_at.isoformat(),
    }


# --- delivery ------------------------------------------------------------------------------


async def test_500_twice_then_200_is_delivered_on_the_third_try_with_one_webhook_id(
    running: Webhooks, receiver: Receiver
) -> None:
    receiver.script = [500, 500]
    endpoint = await register(running, receiver.url)
    sub = submitted()
    await running.on_event(sub)
    await running.on_event(finished(sub.experiment_id))

    await eventually(lambda: len(receiver.requests) == 3, what="three attempts")
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert len(ids) == 1
    last = receiver.requests[-1]
    verified = Webhook(endpoint["secret"]).verify(last.body, last.headers)
    assert verified["type"] == "experiment.finished"
    assert receiver.requests[0].body == last.body  # the same message every time

    async def history() -> dict[str, Any] | None:
        page = await running.deliveries({"endpoint_id": endpoint["id"]})
        item = page["items"][0]
        if item["state"] != "succeeded":
            return None
        return await running.delivery({"endpoint_id": endpoint["id"], "delivery_id": item["id"]})

    detail = await eventually(history, what="the delivery recorded as succeeded")
    assert detail["id"] == ids.pop()
    assert [(a["attempt"], a["status_code"]) for a in detail["attempt_history"]] == [
        (1, 500),
        (2, 500),
        (3, 200),
    ]
    assert [a["error"] for a in detail["attempt_history"]] == ["HTTP 500", "HTTP 500", None]
    assert all(a["latency_ms"] > 0 for a in detail["attempt_history"])
    assert detail["attempt_history"][2]["response_body"] == "ok"
    # Backoff: the second retry waited longer than the first.
    gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    assert gaps[0] >= 0.04 and gaps[1] >= 0.09
    assert await outbox_types(running) == [
        "webhooks.delivery.failed",
        "webhooks.delivery.failed",
        "webhooks.delivery.succeeded",
    ]


async def test_410_gone_pauses_the_endpoint(running: Webhooks, receiver: Receiver) -> None:
    receiver.default_status = 410
    endpoint = await register(running, receiver.url)
    await running.on_event(finished(uuid7()))
    shown = await eventually(
        lambda: _paused(running, endpoint["id"]), what="the endpoint to be paused"
    )
    assert shown["paused_reason"] == "the endpoint answered 410 Gone"
    assert "webhooks.endpoint.paused" in await outbox_types(running)
    # Paused: the retry waits, and new events are not sent.
    await running.on_event(finished(uuid7()))
    assert len(receiver.requests) == 1
    receiver.default_status = 200
    await running.update({"id": endpoint["id"], "changes": {"paused": False}})
    await eventually(lambda: len(receiver.requests) == 2, what="the held delivery, resumed")


async def _paused(webhooks: Webhooks, endpoint_id: str) -> dict[str, Any] | None:
    shown = await webhooks.get({"id": endpoint_id})
    return shown if shown["paused"] else None


async def test_an_endpoint_failing_for_days_is_paused_with_an_event(
    running: Webhooks, receiver: Receiver
) -> None:
    receiver.default_status = 503
    endpoint = await register(running, receiver.url)
    async with running.pool.acquire() as conn:
        await conn.execute(
            "UPDATE endpoints SET failing_since = now() - interval '6 days' WHERE id = $1",
            uuid.UUID(endpoint["id"]),
        )
    await running.on_event(finished(uuid7()))
    shown = await eventually(lambda: _paused(running, endpoint["id"]), what="a pause")
    assert shown["paused_reason"].startswith("every delivery failed for 6.0 days")
    async with running.pool.acquire() as conn:
        payload = await conn.fetchval(
            "SELECT payload FROM outbox WHERE subject = 'webhooks.endpoint.paused'"
        )
    event = json.loads(bytes(payload))
    assert (event["endpoint_id"], event["cause"]) == (endpoint["id"], "failing")


async def test_a_success_resets_the_failure_clock(running: Webhooks, receiver: Receiver) -> None:
    receiver.script = [500]
    endpoint = await register(running, receiver.url)
    await running.on_event(finished(uuid7()))
    await eventually(lambda: len(receiver.requests) == 2, what="the retry")

    async def clock_reset() -> bool:
        shown = await running.get({"id": endpoint["id"]})
        return shown["failing_since"] is None

    await eventually(clock_reset, what="failing_since cleared")


async def test_retries_end_and_a_delivery_can_be_resent_by_hand(
    make_webhooks: MakeWebhooks, receiver: Receiver
) -> None:
    webhooks = await make_webhooks(retries=1)
    task = asyncio.create_task(webhooks.run())
    try:
        receiver.default_status = 500
        receiver.response_body = b"x" * 10_000
        endpoint = await register(webhooks, receiver.url)
        await webhooks.on_event(finished(uuid7()))

        async def final() -> dict[str, Any] | None:
            page = await webhooks.deliveries({"endpoint_id": endpoint["id"], "state": "failed"})
            return page["items"][0] if page["items"] else None

        failed = await eventually(final, what="the delivery to fail for good")
        assert failed["attempts"] == 2 and failed["next_attempt_at"] is None
        assert len(failed["response_body"]) < 4200  # cut to 4 KiB
        assert failed["response_body"].endswith("[truncated]")

        receiver.default_status = 200
        ref = {"endpoint_id": endpoint["id"], "delivery_id": failed["id"]}
        await webhooks.resend(ref)

        async def succeeded() -> dict[str, Any] | None:
            detail = await webhooks.delivery(ref)
            return detail if detail["state"] == "succeeded" else None

        detail = await eventually(succeeded, what="the resent delivery")
        assert [a["manual"] for a in detail["attempt_history"]] == [False, False, True]
        assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_one_slow_endpoint_holds_up_only_itself(
    make_webhooks: MakeWebhooks, receiver: Receiver
) -> None:
    webhooks = await make_webhooks(max_in_flight_per_endpoint=2)
    task = asyncio.create_task(webhooks.run())
    try:
        receiver.delay_s = 0.3
        await register(webhooks, receiver.url)
        await register(webhooks, receiver.url.replace("/hook", "/fast"))
        started = asyncio.get_running_loop().time()
        for _ in range(6):
            await webhooks.on_event(finished(uuid7()))
        await eventually(lambda: len(receiver.requests) == 12, timeout=15, what="every delivery")
        elapsed = asyncio.get_running_loop().time() - started
        assert receiver.max_in_flight == {"/hook": 2, "/fast": 2}
        # Six deliveries, two at a time, 0.3 s each: three rounds per endpoint, side by side.
        assert 0.85 < elapsed < 2.5
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --- the address actually connected to -----------------------------------------------------


def resolving_to(address: str) -> Any:
    async def resolve(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(address)]

    return resolve


async def test_the_transport_connects_to_the_checked_address_with_the_host_kept(
    receiver: Receiver,
) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    transport = SafeTransport(
        AddressPolicy(allow_loopback=True), resolver=resolving_to("127.0.0.1")
    )
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.post(f"http://hooks.example:{port}/hook", content=b"{}")
    assert response.status_code == 200
    assert receiver.requests[0].headers["Host"] == f"hooks.example:{port}"


async def test_the_transport_refuses_a_name_that_now_resolves_to_metadata() -> None:
    # DNS rebinding: the name passed at registration, then points at the metadata service.
    transport = SafeTransport(
        AddressPolicy(allow_loopback=True), resolver=resolving_to("169.254.169.254")
    )
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(UrlRefusedError, match="link-local or metadata"):
            await client.post("http://hooks.example/hook", content=b"{}")


async def test_delivery_to_a_refused_address_is_recorded_as_an_error(
    make_webhooks: MakeWebhooks, receiver: Receiver
) -> None:
    webhooks = await make_webhooks(allow_loopback=True)
    endpoint = await register(webhooks, receiver.url.replace("127.0.0.1", "localhost"))
    strict = await make_webhooks(allow_loopback=False)
    await strict.on_event(finished(uuid7()))
    async with strict.pool.acquire() as conn:
        rows = await strict_claim(strict, conn)
    await strict.send(rows[0])
    detail = (await strict.deliveries({"endpoint_id": endpoint["id"]}))["items"][0]
    assert detail["status_code"] is None and "loopback" in detail["error"]
    assert receiver.requests == []


async def strict_claim(webhooks: Webhooks, conn: Any) -> list[Any]:
    from fleetlab_webhooks import repository

    return await repository.claim(conn, limit=10, lease_s=30, per_endpoint=4)


async def test_redirects_are_not_followed(running: Webhooks, receiver: Receiver) -> None:
    receiver.default_status = 302
    receiver.extra_headers = {"location": "http://169.254.169.254/"}
    endpoint = await register(running, receiver.url)
    await running.on_event(finished(uuid7()))

    async def attempted() -> dict[str, Any] | None:
        item = (await running.deliveries({"endpoint_id": endpoint["id"]}))["items"][0]
        return item if item["attempts"] >= 1 else None

    item = await eventually(attempted, what="one attempt")
    assert item["status_code"] == 302 and item["state"] == "pending"
    assert all(r.path == "/hook" for r in receiver.requests)


async def test_fglab_endpoints_get_the_registered_json(
    running: Webhooks, receiver: Receiver
) -> None:
    experiment_id = uuid7()
    registered = {
        "url": receiver.url,
        "objects": "experiments",
        "object_id": str(experiment_id),
        "event": "started",
    }
    await running.create(
        {
            "kind": "fglab",
            "url": receiver.url,
            "events": ["experiment.started"],
            "experiment": str(experiment_id),
            "fglab_body": registered,
        }
    )
    await running.on_event(
        ExperimentStarted(
            experiment_id=uuid7(), agent_id="a", instance_id=uuid7(), pid=1, argv=[], workdir="/"
        )
    )
    await running.on_event(
        ExperimentStarted(
            experiment_id=experiment_id,
            agent_id="a",
            instance_id=uuid7(),
            pid=1,
            argv=[],
            workdir="/",
        )
    )
    await eventually(lambda: len(receiver.requests) == 1, what="the FGLab delivery")
    assert json.loads(receiver.requests[0].body) == registered
