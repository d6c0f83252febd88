"""``/api/v1/health`` gathers the whole system over NATS; ``/healthz`` is this process alone.

Only the API runs here: the other services are played by responders on their RPC subjects.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

SERVICES = ("scheduler", "logstream", "webhooks")
LOCAL = ("api", "artifacts", "nats", "postgres")
AGENTS = "rpc.scheduler.agents"

Answer = Callable[..., Awaitable[None]]


def healthy(service: str) -> dict[str, Any]:
    return {"service": service, "status": "ok", "components": {}}


def agents(online: int) -> dict[str, Any]:
    listed = [{"id": f"agent-{n}", "state": "online", "slots": 1} for n in range(online)]
    return {"agents": listed, "online": online}


@pytest.fixture
async def answer(nc: NatsClient) -> AsyncIterator[Answer]:
    """``await answer({subject: reply})``: answer each subject with its JSON reply until the
    test ends, as the real services would."""
    subs: list[Subscription] = []

    async def start(replies: dict[str, dict[str, Any]]) -> None:
        for subject, reply in replies.items():
            body = json.dumps(reply).encode()

            async def respond(msg: Msg, body: bytes = body) -> None:
                await msg.respond(body)

            subs.append(await nc.subscribe(subject, cb=respond))
        await nc.flush()

    try:
        yield start
    finally:
        for sub in subs:
            await sub.unsubscribe()
        await nc.flush()


def everything_up(online: int = 1) -> dict[str, dict[str, Any]]:
    replies = {f"rpc.{s}.health": healthy(s) for s in SERVICES}
    replies[AGENTS] = agents(online)
    return replies


async def test_api_alone_fails_naming_what_is_missing(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/health")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert body["failing"] == ["agents", "logstream", "scheduler", "webhooks"]
    components = body["components"]
    for name in LOCAL:
        assert components[name] == "ok", components
    for name in SERVICES:
        assert components[name].startswith("down"), components
    assert "scheduler" in components["agents"]


async def test_everything_up_is_200(client: httpx.AsyncClient, answer: Answer) -> None:
    await answer(everything_up())

    response = await client.get("/api/v1/health")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert "failing" not in body
    assert body["components"] == dict.fromkeys((*LOCAL, *SERVICES, "agents"), "ok")


async def test_no_agent_online_is_503(client: httpx.AsyncClient, answer: Answer) -> None:
    await answer(everything_up(online=0))

    response = await client.get("/api/v1/health")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert body["failing"] == ["agents"]
    assert "no agent online" in body["components"]["agents"]


async def test_a_service_reporting_a_fault_is_named(
    client: httpx.AsyncClient, answer: Answer
) -> None:
    replies = everything_up()
    replies["rpc.webhooks.health"] = {
        "service": "webhooks",
        "status": "fail",
        "components": {"nats": "ok", "postgres": "down"},
    }
    await answer(replies)

    response = await client.get("/api/v1/health")

    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["webhooks"]
    assert "postgres" in body["components"]["webhooks"]


async def test_healthz_is_this_process_alone(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "components": {"nats": "ok", "postgres": "ok"}}


async def test_api_answers_its_own_health_on_nats(
    client: httpx.AsyncClient, nc: NatsClient
) -> None:
    reply = await nc.request("rpc.api.health", b"{}", timeout=5)

    report = json.loads(reply.data)
    assert report["service"] == "api"
    assert report["status"] == "ok"
    assert report["components"] == {"nats": "ok", "postgres": "ok", "artifacts": "ok"}
