"""FGLab's documented routes against their documented strings (``api.raml``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from fleetlab_common.events import Rpc

SCHEMA = {"x": {"type": "float", "default": 2}, "k": {"type": "int", "default": 3}}


class Scheduler:
    """Answers ``rpc.scheduler.agents`` as the scheduler would, with the agents set here."""

    def __init__(self) -> None:
        self.agents: list[dict[str, Any]] = []

    async def answer(self, msg: Msg) -> None:
        await msg.respond(json.dumps({"agents": self.agents}).encode())


@pytest.fixture
async def scheduler(nc: NatsClient) -> AsyncIterator[Scheduler]:
    fake = Scheduler()
    sub = await nc.subscribe(Rpc.AGENTS, cb=fake.answer)
    await nc.flush()
    try:
        yield fake
    finally:
        await sub.unsubscribe()


def agent(**fields: Any) -> dict[str, Any]:
    return {
        "id": "a1",
        "online": True,
        "draining": False,
        "slots": 2,
        "busy": 0,
        "labels": [],
        **fields,
    }


async def _count(client: httpx.AsyncClient, project: str) -> int:
    page = (await client.get("/api/v1/experiments", params={"project": project})).json()
    return len(page["items"])


async def test_unknown_project_is_fglabs_400(client: httpx.AsyncClient) -> None:
    for path in ("experiment", "batch"):
        response = await client.post(f"/api/v1/projects/562237f33774694c5a4814bb/{path}", json={})
        assert response.status_code == 400
        assert response.json() == {"error": "Project ID 562237f33774694c5a4814bb does not exist"}


async def test_experiment_created_when_an_agent_has_room(
    client: httpx.AsyncClient, make_project: Any, scheduler: Scheduler
) -> None:
    project = await make_project(SCHEMA)
    scheduler.agents = [agent(busy=2), agent(id="a2", busy=1)]

    response = await client.post(f"/api/v1/projects/{project['id']}/experiment", json={"x": 1.5})

    assert response.status_code == 201, response.text
    assert list(response.json()) == ["_id"]
    record = (await client.get(f"/api/v1/experiments/{response.json()['_id']}")).json()
    assert record["options"] == {"x": 1.5, "k": 3}


@pytest.mark.parametrize(
    "agents",
    [
        pytest.param([], id="no-agents"),
        pytest.param([agent(busy=2)], id="full"),
        pytest.param([agent(online=False)], id="offline"),
        pytest.param([agent(draining=True)], id="draining"),
        pytest.param([agent(labels=["cpu"])], id="missing-label"),
    ],
)
async def test_no_capacity_is_501_and_creates_nothing(
    client: httpx.AsyncClient,
    make_project: Any,
    scheduler: Scheduler,
    agents: list[dict[str, Any]],
) -> None:
    project = await make_project(SCHEMA, labels=["gpu"])
    scheduler.agents = agents

    response = await client.post(f"/api/v1/projects/{project['name']}/experiment", json={})

    assert response.status_code == 501
    assert response.json() == {"error": "No machine capacity available"}
    assert await _count(client, project["name"]) == 0


async def test_scheduler_away_is_fglabs_500(client: httpx.AsyncClient, make_project: Any) -> None:
    project = await make_project(SCHEMA)

    response = await client.post(f"/api/v1/projects/{project['id']}/experiment", json={})

    assert response.status_code == 500
    assert response.json() == {"error": "Experiment failed to run"}


async def test_invalid_options_are_400_with_the_message(
    client: httpx.AsyncClient, make_project: Any
) -> None:
    project = await make_project(SCHEMA)

    response = await client.post(
        f"/api/v1/projects/{project['id']}/experiment", json={"x": "big", "z": 1}
    )

    assert response.status_code == 400
    body = response.json()
    assert list(body) == ["error"]
    assert "x: must be a number" in body["error"]
    assert "z: unknown option" in body["error"]


async def test_batch_checks_every_set_first_and_creates_nothing_on_error(
    client: httpx.AsyncClient, make_project: Any
) -> None:
    project = await make_project(SCHEMA)

    response = await client.post(
        f"/api/v1/projects/{project['id']}/batch",
        json=[{"x": 1}, {"x": 2}, {"k": 1.5}, {"k": "no"}],
    )

    assert response.status_code == 400
    assert response.json() == {"error": "k: must be an integer, not 1.5"}
    assert await _count(client, project["name"]) == 0


async def test_batch_queues_them_all(
    client: httpx.AsyncClient, make_project: Any, wait_until: Callable[..., Any]
) -> None:
    project = await make_project(SCHEMA)

    response = await client.post(
        f"/api/v1/projects/{project['name']}/batch",
        params={"retry": 60},
        json=[{"x": 1}, {"x": 2}, {}],
    )

    assert response.status_code == 201, response.text
    assert response.json() == {"status": "Started"}
    page = (await client.get("/api/v1/experiments", params={"project": project["name"]})).json()
    assert sorted(e["options"]["x"] for e in page["items"]) == [1.0, 2.0, 2.0]
    assert {e["status"] for e in page["items"]} == {"queued"}


@pytest.mark.parametrize(
    ("params", "body"),
    [({"retry": 0}, []), ({}, {"x": 1}), ({}, "not json")],
    ids=["retry-0", "not-a-list", "malformed"],
)
async def test_bad_batch_requests_are_400(
    client: httpx.AsyncClient, make_project: Any, params: dict[str, Any], body: Any
) -> None:
    project = await make_project(SCHEMA)
    content = body if isinstance(body, str) else json.dumps(body)

    response = await client.post(
        f"/api/v1/projects/{project['id']}/batch",
        params=params,
        content=content,
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 400
    assert list(response.json()) == ["error"]
