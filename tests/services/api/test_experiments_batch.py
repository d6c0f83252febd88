"""``POST /api/v1/experiments/batch``: many experiments queued at once, all or none, and the
SDK's ``submit_many`` on top of it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from fleetlab_api.projects import repository as projects_repo
from fleetlab_cli import ApiError, AsyncClient, Client
from fleetlab_common.api.experiments import Experiment, ExperimentCreate

from .test_code import stored

MakeProject = Callable[..., Awaitable[dict[str, Any]]]

BATCH = "/api/v1/experiments/batch"
SUBMITTED = "api.experiment.submitted"
SCHEMA: dict[str, Any] = {
    "seed": {"type": "int"},  # no default: required
    "lr": {"type": "float", "default": 0.1},
}


@pytest.fixture
async def two(make_project: MakeProject) -> tuple[dict[str, Any], dict[str, Any]]:
    return await make_project(SCHEMA), await make_project(SCHEMA, option_style="plain")


@pytest.fixture
async def submitted(nc: NatsClient) -> AsyncIterator[asyncio.Queue[Msg]]:
    """Every ``api.experiment.submitted`` published from now on."""
    queue: asyncio.Queue[Msg] = asyncio.Queue()
    sub: Subscription = await nc.subscribe(SUBMITTED, cb=queue.put)
    await nc.flush()
    try:
        yield queue
    finally:
        await sub.unsubscribe()


async def events_for(queue: asyncio.Queue[Msg], ids: list[str]) -> list[dict[str, Any]]:
    """The payloads of the events for ``ids``, in the order published (others skipped)."""
    wanted = set(ids)
    seen: list[dict[str, Any]] = []
    while len(seen) < len(wanted):
        payload: dict[str, Any] = json.loads((await asyncio.wait_for(queue.get(), 10)).data)
        if payload["experiment_id"] in wanted:
            seen.append(payload)
    return seen


async def listed(client: httpx.AsyncClient, project: str) -> list[dict[str, Any]]:
    response = await client.get("/api/v1/experiments", params={"project": project, "limit": 1000})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_a_batch_across_two_projects_is_queued_in_order_with_its_events(
    client: httpx.AsyncClient,
    two: tuple[dict[str, Any], dict[str, Any]],
    submitted: asyncio.Queue[Msg],
) -> None:
    one, other = two
    code = await stored(client, [("train.py", b"print('batch')\n")])
    items: list[dict[str, Any]] = [
        {"project": one["name"], "options": {"seed": 1}, "name": "first", "tags": ["scan"]},
        {"project": other["id"], "options": {"seed": 2, "lr": 0.5}, "priority": 7},
        {"project": one["name"], "options": {"seed": 3}, "code": code},
        {"project": other["name"], "options": {"seed": 4}},
        {"project": one["id"], "options": {"seed": 5, "lr": 1}},
    ]

    response = await client.post(BATCH, json={"experiments": items})

    assert response.status_code == 201, response.text
    made = response.json()["experiments"]
    assert [e["options"]["seed"] for e in made] == [1, 2, 3, 4, 5]
    assert [e["project"] for e in made] == [p["name"] for p in (one, other, one, other, one)]
    assert [e["project_id"] for e in made] == [p["id"] for p in (one, other, one, other, one)]
    assert all(e["status"] == "queued" and e["attempt"] == 1 for e in made)
    assert made[0]["name"] == "first" and made[0]["tags"] == ["scan"]
    assert made[1]["priority"] == 7 and made[1]["options"] == {"seed": 2, "lr": 0.5}
    assert made[4]["options"] == {"seed": 5, "lr": 1.0}  # defaults filled, types as the schema's
    assert [e["code"] for e in made] == [None, None, code, None, None]
    ids = [e["id"] for e in made]
    assert len(set(ids)) == 5
    # The records answered are the stored ones, and the list shows them all.
    for experiment in made:
        fetched = await client.get(f"/api/v1/experiments/{experiment['id']}")
        assert fetched.json() == experiment
    assert {e["id"] for e in await listed(client, one["name"])} == {ids[0], ids[2], ids[4]}
    assert {e["id"] for e in await listed(client, other["name"])} == {ids[1], ids[3]}
    artifacts = (await client.get(f"/api/v1/experiments/{ids[2]}/artifacts")).json()
    assert [("sha256:" + a["sha256"]) for a in artifacts if a["kind"] == "code"] == [code]

    events = await events_for(submitted, ids)

    # Published in the order given (one outbox, one transaction).
    assert [p["experiment_id"] for p in events] == ids
    for payload, experiment in zip(events, made, strict=True):
        assert payload["project_id"] == experiment["project_id"]
        assert payload["project"] == experiment["project"]
        assert payload["options"] == experiment["options"]
        assert payload["priority"] == experiment["priority"]
    assert [p["run"]["option_style"] for p in events[:2]] == ["double-dash", "plain"]
    assert [p["run"].get("code") for p in events] == [None, None, code, None, None]


@pytest.mark.parametrize(
    ("bad", "field", "why"),
    [
        pytest.param({"options": {"seed": 3, "lr": "fast"}}, "options.lr", "number", id="option"),
        pytest.param({"options": {}}, "options.seed", "required", id="required-option"),
        pytest.param({"project": "no-such-project"}, "project", "no project", id="project"),
        pytest.param({"code": "sha256:" + "ab" * 32}, "code", "unknown digest", id="code"),
        pytest.param({"code": "main"}, "code", "sha256", id="code-not-a-digest"),
        pytest.param({"priority": 5000}, "priority", "1000", id="body-field"),
        pytest.param({"colour": "red"}, "colour", "xtra", id="unknown-key"),
    ],
)
async def test_a_bad_item_refuses_the_whole_batch_naming_it(
    client: httpx.AsyncClient,
    two: tuple[dict[str, Any], dict[str, Any]],
    submitted: asyncio.Queue[Msg],
    bad: dict[str, Any],
    field: str,
    why: str,
) -> None:
    one, other = two
    items = [
        {"project": p["name"], "options": {"seed": i}}
        for i, p in enumerate((one, other, one, other, one))
    ]
    items[2] = {**items[2], **bad}
    before = [await listed(client, p["name"]) for p in two]

    response = await client.post(BATCH, json={"experiments": items})

    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body["fields"]) == {f"experiments.2.{field}"}
    assert why in body["fields"][f"experiments.2.{field}"]
    assert "experiments.2" in body["error"]
    assert [await listed(client, p["name"]) for p in two] == before == [[], []]
    # Events leave in commit order: had any of the batch been published, it would come first.
    marker = await client.post(
        "/api/v1/experiments", json={"project": one["name"], "options": {"seed": 99}}
    )
    assert marker.status_code == 201, marker.text
    marker_id = marker.json()["id"]
    while True:
        payload = json.loads((await asyncio.wait_for(submitted.get(), 10)).data)
        if payload["experiment_id"] == marker_id:
            break
        assert payload["project"] not in (one["name"], other["name"]), payload


async def test_a_missing_artifact_input_refuses_the_batch_naming_the_item(
    client: httpx.AsyncClient, make_project: MakeProject
) -> None:
    fine = await make_project()
    url = f"artifact://{uuid.uuid4()}/model.bin"
    needs = await make_project(inputs=[{"name": "model.bin", "url": url}])
    items = [{"project": fine["name"]}, {"project": needs["name"]}]

    response = await client.post(BATCH, json={"experiments": items})

    assert response.status_code == 422, response.text
    fields = response.json()["fields"]
    assert set(fields) == {"experiments.1.inputs.0.url"}
    assert "model.bin" in fields["experiments.1.inputs.0.url"]
    assert await listed(client, fine["name"]) == []


@pytest.mark.parametrize(
    ("count", "why"),
    [pytest.param(0, "at least 1", id="empty"), pytest.param(1001, "at most 1000", id="1001")],
)
async def test_an_empty_or_oversized_batch_is_422(
    client: httpx.AsyncClient, make_project: MakeProject, count: int, why: str
) -> None:
    project = await make_project()
    items = [{"project": project["name"]}] * count

    response = await client.post(BATCH, json={"experiments": items})

    assert response.status_code == 422, response.text
    assert why in response.json()["fields"]["experiments"]
    assert await listed(client, project["name"]) == []


@pytest.mark.parametrize(
    ("content", "field"),
    [
        pytest.param(b"[]", "body", id="not-an-object"),
        pytest.param(b"{}", "experiments", id="no-experiments"),
        pytest.param(b'{"experiments": {}}', "experiments", id="not-a-list"),
        pytest.param(b'{"experiments": [], "x": 1}', "x", id="unknown-key"),
    ],
)
async def test_a_malformed_batch_body_is_422(
    client: httpx.AsyncClient, content: bytes, field: str
) -> None:
    response = await client.post(
        BATCH, content=content, headers={"content-type": "application/json"}
    )

    assert response.status_code == 422, response.text
    assert field in response.json()["fields"]


async def test_a_full_batch_looks_each_project_up_once(
    client: httpx.AsyncClient,
    two: tuple[dict[str, Any], dict[str, Any]],
    submitted: asyncio.Queue[Msg],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    one, other = two
    looked_up: list[str] = []
    real_get = projects_repo.get

    async def counting(conn: Any, ref: str) -> Any:
        looked_up.append(ref)
        return await real_get(conn, ref)

    monkeypatch.setattr(projects_repo, "get", counting)
    items = [
        {"project": (one if i % 2 else other)["name"], "options": {"seed": i}} for i in range(1000)
    ]

    response = await client.post(BATCH, json={"experiments": items})

    assert response.status_code == 201, response.text
    made = response.json()["experiments"]
    assert [e["options"]["seed"] for e in made] == list(range(1000))
    assert sorted(looked_up) == sorted([one["name"], other["name"]])
    assert len(await listed(client, one["name"])) == 500
    events = await events_for(submitted, [e["id"] for e in made])
    assert [p["experiment_id"] for p in events] == [e["id"] for e in made]


# -- the SDK --------------------------------------------------------------------------------


class _OnTheTestLoop(httpx.BaseTransport):
    """Serves a synchronous client, called from a worker thread, with the in-process API
    running on the test's event loop."""

    def __init__(self, app: FastAPI, loop: asyncio.AbstractEventLoop) -> None:
        self._asgi = httpx.ASGITransport(app=app)
        self._loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()

        async def send() -> httpx.Response:
            forwarded = httpx.Request(
                request.method, request.url, headers=request.headers, content=body
            )
            response = await self._asgi.handle_async_request(forwarded)
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
            return httpx.Response(response.status_code, headers=response.headers, content=raw)

        return asyncio.run_coroutine_threadsafe(send(), self._loop).result(timeout=30)


async def test_async_client_submit_many(
    api: FastAPI, two: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    one, other = two
    async with AsyncClient("http://test") as fl:
        await fl._http.aclose()
        fl._http = httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url=fl.url)
        made = await fl.submit_many(
            [
                ExperimentCreate(project=one["name"], options={"seed": 1}, tags=["sdk"]),
                {"project": other["name"], "options": {"seed": 2}, "name": "as a dict"},
            ]
        )
        assert all(isinstance(e, Experiment) for e in made)
        assert [(e.project, e.options["seed"]) for e in made] == [
            (one["name"], 1),
            (other["name"], 2),
        ]
        assert made[0].tags == ["sdk"] and made[1].name == "as a dict"
        assert (await fl.experiment(str(made[1].id))).name == "as a dict"

        with pytest.raises(ApiError) as refused:
            await fl.submit_many([{"project": one["name"]}])
        assert refused.value.status == 422
        assert set(refused.value.fields) == {"experiments.0.options.seed"}


async def test_client_submit_many(
    api: FastAPI, client: httpx.AsyncClient, two: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    one, other = two
    transport = _OnTheTestLoop(api, asyncio.get_running_loop())

    def use() -> tuple[list[Experiment], ApiError]:
        with Client("http://test") as fl:
            fl._http.close()
            fl._http = httpx.Client(transport=transport, base_url=fl.url)
            made = fl.submit_many(
                [
                    {"project": one["name"], "options": {"seed": 1}},
                    ExperimentCreate(project=other["id"], options={"seed": 2}, priority=3),
                ]
            )
            try:
                fl.submit_many([{"project": other["name"], "options": {"seed": "x"}}])
            except ApiError as exc:
                return made, exc
            raise AssertionError("a bad option was accepted")

    made, refused = await asyncio.to_thread(use)

    assert [(e.project, e.options["seed"], e.priority) for e in made] == [
        (one["name"], 1, 0),
        (other["name"], 2, 3),
    ]
    assert refused.status == 422
    assert set(refused.fields) == {"experiments.0.options.seed"}
    assert [e["id"] for e in await listed(client, other["name"])] == [str(made[1].id)]
