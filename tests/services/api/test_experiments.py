"""``/api/v1/experiments``: submission, FGLab's option rules, listing, the read model, logs.

The read model is driven the way the agents and the scheduler drive it: their events are
published to JetStream, and the API's durable consumers apply them.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from fleetlab_common.broker import consumer_name, publish_event
from fleetlab_common.events import (
    Event,
    ExperimentFinished,
    ExperimentLost,
    ExperimentStarted,
)
from fleetlab_common.ids import uuid7

MakeProject = Callable[..., Awaitable[dict[str, Any]]]
WaitUntil = Callable[..., Awaitable[Any]]

SCHEMA: dict[str, Any] = {
    "seed": {"type": "int"},  # no default: required
    "epochs": {"type": "int", "default": 10},
    "lr": {"type": "float", "default": 0.1},
    "cuda": {"type": "bool", "default": False},
    "optimiser": {"type": "enum", "default": "sgd", "values": ["sgd", "adam"]},
    "level": {"type": "enum", "default": 1, "values": [1, 2]},
    "model": {"type": "string", "default": "cnn.v2"},
}
DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "lr": 0.1,
    "cuda": False,
    "optimiser": "sgd",
    "level": 1,
    "model": "cnn.v2",
}
SUBMITTED = "api.experiment.submitted"


@pytest.fixture
async def project(make_project: MakeProject) -> dict[str, Any]:
    return await make_project(SCHEMA, command=["python3", "train.py"], option_style="plain")


async def submit(
    client: httpx.AsyncClient, project: str, options: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    body = {"project": project, "options": {"seed": 1} if options is None else options, **extra}
    response = await client.post("/api/v1/experiments", json=body)
    assert response.status_code == 201, response.text
    experiment: dict[str, Any] = response.json()
    return experiment


async def get(client: httpx.AsyncClient, experiment_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/experiments/{experiment_id}")
    assert response.status_code == 200, response.text
    experiment: dict[str, Any] = response.json()
    return experiment


async def listed(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    """Every experiment the list shows for ``params``, following ``next``."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/api/v1/experiments", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        cursor = page["next"]
        if cursor is None:
            return items


def at(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@pytest.fixture
async def submitted(nc: NatsClient) -> AsyncIterator[asyncio.Queue[Msg]]:
    """Every ``api.experiment.submitted`` published from now on (core NATS sees them too)."""
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def collect(msg: Msg) -> None:
        await queue.put(msg)

    sub: Subscription = await nc.subscribe(SUBMITTED, cb=collect)
    await nc.flush()
    try:
        yield queue
    finally:
        await sub.unsubscribe()


async def published_before(
    queue: asyncio.Queue[Msg], experiment_id: str
) -> tuple[Msg, list[dict[str, Any]]]:
    """The message for ``experiment_id``, and the payloads of those that came before it
    (a test before this one may still have had an event on its way)."""
    before: list[dict[str, Any]] = []
    while True:
        msg = await asyncio.wait_for(queue.get(), 10)
        payload: dict[str, Any] = json.loads(msg.data)
        if payload["experiment_id"] == experiment_id:
            return msg, before
        before.append(payload)


# -- submission -----------------------------------------------------------------------------


async def test_submit_queues_with_defaults_filled(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    response = await client.post(
        "/api/v1/experiments",
        json={"project": project["name"], "options": {"seed": 7, "lr": 0.5}, "name": "first"},
    )

    assert response.status_code == 201, response.text
    experiment = response.json()
    uuid.UUID(experiment["id"])
    assert experiment["status"] == "queued"
    assert experiment["attempt"] == 1
    assert experiment["project"] == project["name"]
    assert experiment["project_id"] == project["id"]
    assert experiment["name"] == "first"
    assert experiment["options"] == {**DEFAULTS, "seed": 7, "lr": 0.5}
    for key in ("started_at", "finished_at", "exit_code", "agent_id", "log_lines"):
        assert experiment[key] is None
    fetched = await get(client, experiment["id"])
    assert fetched == experiment
    # In the schema's order, as FGMachine would pass them.
    assert list(fetched["options"]) == list(SCHEMA)


async def test_project_may_be_given_by_id(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    experiment = await submit(client, project["id"])

    assert experiment["project"] == project["name"]


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        pytest.param({"epochs": 3.0}, {"epochs": 3}, id="int-integral-float"),
        pytest.param({"epochs": -2}, {"epochs": -2}, id="int-negative"),
        pytest.param({"lr": 1}, {"lr": 1.0}, id="float-from-int"),
        pytest.param({"cuda": True}, {"cuda": True}, id="bool"),
        pytest.param({"optimiser": "adam"}, {"optimiser": "adam"}, id="enum-string"),
        pytest.param({"level": 2}, {"level": 2}, id="enum-number"),
        pytest.param({"model": "; rm -rf /"}, {"model": "; rm -rf /"}, id="string"),
    ],
)
async def test_accepted_options(
    client: httpx.AsyncClient,
    project: dict[str, Any],
    given: dict[str, Any],
    stored: dict[str, Any],
) -> None:
    experiment = await submit(client, project["name"], {"seed": 1, **given})

    assert experiment["options"] == {**DEFAULTS, "seed": 1, **stored}
    for key, value in stored.items():
        assert type(experiment["options"][key]) is type(value)


@pytest.mark.parametrize(
    ("given", "field", "why"),
    [
        pytest.param({"epochs": 3.5}, "options.epochs", "integer", id="int-fraction"),
        pytest.param({"epochs": "3"}, "options.epochs", "integer", id="int-string"),
        pytest.param({"epochs": True}, "options.epochs", "integer", id="int-bool"),
        pytest.param({"lr": "fast"}, "options.lr", "number", id="float-string"),
        pytest.param({"lr": False}, "options.lr", "number", id="float-bool"),
        pytest.param({"lr": None}, "options.lr", "number", id="float-null"),
        pytest.param({"cuda": "false"}, "options.cuda", "true or false", id="bool-string"),
        pytest.param({"cuda": 1}, "options.cuda", "true or false", id="bool-number"),
        pytest.param({"optimiser": "adagrad"}, "options.optimiser", "one of", id="enum-other"),
        pytest.param({"level": True}, "options.level", "one of", id="enum-true-is-not-1"),
        pytest.param({"level": "1"}, "options.level", "one of", id="enum-string-is-not-1"),
        pytest.param({"model": ""}, "options.model", "non-empty", id="string-empty"),
        pytest.param({"model": 5}, "options.model", "string", id="string-number"),
        pytest.param({"model": "a\x00b"}, "options.model", "NUL", id="string-nul"),
        pytest.param({"colour": "red"}, "options.colour", "unknown option", id="unknown-key"),
    ],
)
async def test_refused_options_name_the_option(
    client: httpx.AsyncClient,
    project: dict[str, Any],
    given: dict[str, Any],
    field: str,
    why: str,
) -> None:
    response = await client.post(
        "/api/v1/experiments", json={"project": project["name"], "options": {"seed": 1, **given}}
    )

    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body["fields"]) == {field}
    assert why in body["fields"][field]
    assert field in body["error"]


async def test_option_without_default_is_required(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    response = await client.post(
        "/api/v1/experiments", json={"project": project["name"], "options": {"epochs": 2}}
    )

    assert response.status_code == 422
    assert "required" in response.json()["fields"]["options.seed"]


async def test_every_bad_option_is_named_at_once(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    response = await client.post(
        "/api/v1/experiments",
        json={"project": project["name"], "options": {"lr": "fast", "epochs": 1.5, "x": 1}},
    )

    assert response.status_code == 422
    assert set(response.json()["fields"]) == {
        "options.lr",
        "options.epochs",
        "options.x",
        "options.seed",
    }


async def test_unknown_project_is_422(client: httpx.AsyncClient) -> None:
    for ref in ("no-such-project", str(uuid.uuid4())):
        response = await client.post("/api/v1/experiments", json={"project": ref, "options": {}})

        assert response.status_code == 422
        body = response.json()
        assert ref in body["error"]
        assert "project" in body["fields"]


@pytest.mark.parametrize(
    ("content", "field"),
    [
        pytest.param(b'{"project": "x", "options": {', "body", id="malformed-json"),
        pytest.param(b"[]", "body", id="not-an-object"),
        pytest.param(b'{"options": {}}', "project", id="no-project"),
        pytest.param(b'{"project": "x", "options": []}', "options", id="options-not-object"),
        pytest.param(b'{"project": "x", "colour": 1}', "colour", id="unknown-key"),
    ],
)
async def test_bad_request_body_is_422(
    client: httpx.AsyncClient, content: bytes, field: str
) -> None:
    response = await client.post(
        "/api/v1/experiments", content=content, headers={"content-type": "application/json"}
    )

    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"]
    assert field in body["fields"]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        pytest.param({"name": "a\x00b"}, "name", id="name"),
        pytest.param({"tags": ["ok", "a\x00b"]}, "tags.1", id="tag"),
        pytest.param({"name": "x" * 201}, "name", id="long-name"),
        pytest.param({"priority": 1001}, "priority", id="priority"),
    ],
)
async def test_bad_submission_fields_are_422(
    client: httpx.AsyncClient, project: dict[str, Any], extra: dict[str, Any], field: str
) -> None:
    body = {"project": project["name"], "options": {"seed": 1}, **extra}

    response = await client.post("/api/v1/experiments", json=body)

    assert response.status_code == 422, response.text
    assert field in response.json()["fields"]
    assert await listed(client, project=project["name"]) == []


async def test_project_ref_with_nul_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/experiments", json={"project": "a\x00b"})

    assert response.status_code == 422
    assert "project" in response.json()["fields"]


async def test_refused_submission_creates_and_publishes_nothing(
    client: httpx.AsyncClient,
    project: dict[str, Any],
    submitted: asyncio.Queue[Msg],
) -> None:
    before = await listed(client, project=project["name"])

    refused = await client.post(
        "/api/v1/experiments", json={"project": project["name"], "options": {"seed": 1.5}}
    )
    assert refused.status_code == 422
    # Events leave in commit order: if the refused one had been published, it would come
    # before this one.
    marker = await submit(client, project["name"])
    _, earlier = await published_before(submitted, marker["id"])

    assert [p for p in earlier if p["project"] == project["name"]] == []
    assert await listed(client, project=project["name"]) == [marker, *before]


async def test_submission_publishes_the_event(
    client: httpx.AsyncClient,
    project: dict[str, Any],
    submitted: asyncio.Queue[Msg],
) -> None:
    experiment = await submit(client, project["name"], {"seed": 3, "cuda": True}, priority=5)

    msg, _ = await published_before(submitted, experiment["id"])
    payload = json.loads(msg.data)

    assert msg.subject == SUBMITTED
    assert payload["type"] == SUBMITTED
    assert payload["experiment_id"] == experiment["id"]
    assert payload["project_id"] == project["id"]
    assert payload["project"] == project["name"]
    assert payload["options"] == experiment["options"]
    assert list(payload["options"]) == list(SCHEMA)
    assert payload["priority"] == 5
    assert payload["run"]["command"] == ["python3", "train.py"]
    assert payload["run"]["option_style"] == "plain"
    assert msg.headers is not None
    assert msg.headers["Nats-Msg-Id"] == payload["id"]
    assert msg.headers["Fleetlab-Event-Type"] == SUBMITTED


# -- reading --------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", [str(uuid.uuid4()), "not-a-uuid"])
async def test_unknown_experiment_is_404(client: httpx.AsyncClient, ref: str) -> None:
    response = await client.get(f"/api/v1/experiments/{ref}")

    assert response.status_code == 404
    assert ref in response.json()["error"]


async def test_list_newest_first_with_limit(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    made = [await submit(client, project["name"], {"seed": i}) for i in range(3)]

    response = await client.get(
        "/api/v1/experiments", params={"project": project["name"], "limit": 2}
    )

    assert response.status_code == 200
    page = response.json()
    assert [e["id"] for e in page["items"]] == [made[2]["id"], made[1]["id"]]
    assert page["next"] is not None
    everything = await listed(client, project=project["name"])
    assert [e["id"] for e in everything] == [e["id"] for e in reversed(made)]


async def test_cursor_pages_through_everything_while_new_ones_arrive(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    made = [await submit(client, project["name"], {"seed": i}) for i in range(5)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"project": project["name"], "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/v1/experiments", params=params)).json()
        seen += [e["id"] for e in page["items"]]
        cursor = page["next"]
        pages += 1
        if cursor is None:
            break
        # Newer experiments arriving meanwhile must not shift the pages still to come.
        await submit(client, project["name"], {"seed": 100 + pages})

    assert pages == 3
    assert seen == [e["id"] for e in reversed(made)]
    assert len(await listed(client, project=project["name"])) == 5 + 2


async def test_list_filters_by_project_and_status(
    client: httpx.AsyncClient,
    make_project: MakeProject,
    publisher: NatsBroker,
    wait_until: WaitUntil,
) -> None:
    one = await make_project({})
    other = await make_project({})
    mine = [await submit(client, one["name"], {}) for _ in range(2)]
    theirs = await submit(client, other["name"], {})
    await publish_event(publisher, started(mine[0]))
    await wait_until(lambda: status_is(client, mine[0]["id"], "running"))

    assert [e["id"] for e in await listed(client, project=one["name"])] == [
        mine[1]["id"],
        mine[0]["id"],
    ]
    assert [e["id"] for e in await listed(client, project=other["id"])] == [theirs["id"]]
    running = await listed(client, project=one["name"], status="running")
    assert [e["id"] for e in running] == [mine[0]["id"]]
    queued = await listed(client, project=one["name"], status="queued")
    assert [e["id"] for e in queued] == [mine[1]["id"]]
    assert await listed(client, project=one["name"], status="succeeded") == []
    everything = {e["id"] for e in await listed(client, status="queued")}
    assert {mine[1]["id"], theirs["id"]} <= everything


@pytest.mark.parametrize(
    ("params", "field"),
    [
        pytest.param({"cursor": "not-a-cursor"}, "cursor", id="cursor"),
        pytest.param({"status": "sleeping"}, "status", id="status"),
        pytest.param({"limit": 0}, "limit", id="limit"),
    ],
)
async def test_invalid_list_query_is_422(
    client: httpx.AsyncClient, params: dict[str, Any], field: str
) -> None:
    response = await client.get("/api/v1/experiments", params=params)

    assert response.status_code == 422
    assert field in response.json()["fields"]


async def test_list_of_unknown_project_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/experiments", params={"project": "no-such-project"})

    assert response.status_code == 404
    assert "no-such-project" in response.json()["error"]


# -- the read model follows the events ------------------------------------------------------

AGENT = "agent-7"


def started(experiment: dict[str, Any], attempt: int = 1, **fields: Any) -> ExperimentStarted:
    return ExperimentStarted(
        experiment_id=experiment["id"],
        agent_id=AGENT,
        instance_id=uuid7(),
        attempt=attempt,
        pid=4242,
        argv=["python3", "train.py", "seed", "1"],
        workdir=f"/tmp/work/{experiment['id']}-{attempt}",
        **fields,
    )


def finished(experiment: dict[str, Any], attempt: int = 1, **fields: Any) -> ExperimentFinished:
    values: dict[str, Any] = {"status": "succeeded", "exit_code": 0, "log_lines": 3, **fields}
    return ExperimentFinished(
        experiment_id=experiment["id"], agent_id=AGENT, attempt=attempt, **values
    )


async def status_is(
    client: httpx.AsyncClient, experiment_id: str, status: str, attempt: int | None = None
) -> dict[str, Any] | None:
    experiment = await get(client, experiment_id)
    if experiment["status"] != status:
        return None
    if attempt is not None and experiment["attempt"] != attempt:
        return None
    return experiment


async def applied(nc: NatsClient, *events: type[Event]) -> None:
    """Wait until the API's consumers of ``events`` acknowledged every message stored so far:
    each was applied (and committed) or found to be a duplicate."""
    js = nc.jetstream()
    deadline = time.monotonic() + 10
    for event in events:
        assert event.STREAM is not None
        durable = consumer_name("api", event)
        while True:
            info = await js.consumer_info(event.STREAM, durable)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
            assert time.monotonic() < deadline, f"{durable} still has {info}"
            await asyncio.sleep(0.02)


async def test_started_then_finished(
    client: httpx.AsyncClient,
    project: dict[str, Any],
    publisher: NatsBroker,
    wait_until: WaitUntil,
) -> None:
    experiment = await submit(client, project["name"])
    start = started(experiment)

    await publish_event(publisher, start)
    running = await wait_until(lambda: status_is(client, experiment["id"], "running"))

    assert running["agent_id"] == AGENT
    assert at(running["started_at"]) == start.occurred_at
    assert running["finished_at"] is None
    assert running["exit_code"] is None

    end = finished(experiment, log_lines=42, started_at=start.occurred_at)
    await publish_event(publisher, end)
    done = await wait_until(lambda: status_is(client, experiment["id"], "succeeded"))

    assert at(done["started_at"]) == start.occurred_at
    assert at(done["finished_at"]) == end.occurred_at
    assert done["exit_code"] == 0
    assert done["agent_id"] == AGENT
    assert done["log_lines"] == 42
    assert done["attempt"] == 1


async def test_failed_run_keeps_exit_code_and_reason(
    client: httpx.AsyncClient,
    project: dict[str, Any],
    publisher: NatsBroker,
    wait_until: WaitUntil,
) -> None:
    experiment = await submit(client, project["name"])
    await publish_event(publisher, started(experiment))
    await publish_event(
        publisher, finished(experiment, status="failed", exit_code=3, reason="exit code 3")
    )

    done = await wait_until(lambda: status_is(client, experiment["id"], "failed"))

    assert done["exit_code"] == 3
    assert done["status_reason"] == "exit code 3"


async def test_duplicate_events_change_nothing(
    client: httpx.AsyncClient,
    project: dict[str, Any],
    publisher: NatsBroker,
    nc: NatsClient,
    wait_until: WaitUntil,
) -> None:
    experiment = await submit(client, project["name"])
    start = started(experiment)
    end = finished(experiment)
    await publish_event(publisher, start)
    await wait_until(lambda: status_is(client, experiment["id"], "running"))
    await publish_event(publisher, end)
    before = await wait_until(lambda: status_is(client, experiment["id"], "succeeded"))

    # The same events again: with their Nats-Msg-Id (the stream drops them), and without it,
    # as a redelivery would bring them (the API's inbox must drop them).
    for event in (start, end):
        await publish_event(publisher, event)
        await publisher.publish(
            event.model_dump_json().encode(), event.subject(), stream=event.STREAM, timeout=5
        )
    await applied(nc, ExperimentStarted, ExperimentFinished)

    assert await get(client, experiment["id"]) == before


async def test_events_of_another_attempt_are_ignored(
    client: httpx.AsyncClient,
    project: dict[str, Any],
    publisher: NatsBroker,
    nc: NatsClient,
    wait_until: WaitUntil,
) -> None:
    experiment = await submit(client, project["name"])

    await publish_event(publisher, started(experiment, attempt=2))
    await publish_event(publisher, finished(experiment, attempt=2, status="failed", exit_code=1))
    await applied(nc, ExperimentStarted, ExperimentFinished)

    assert await get(client, experiment["id"]) == experiment

    await publish_event(publisher, finished(experiment, attempt=1))
    done = await wait_until(lambda: status_is(client, experiment["id"], "succeeded"))
    assert done["exit_code"] == 0


async def test_finished_before_started(
    client: httpx.AsyncClient,
    project: dict[str, Any],
    publisher: NatsBroker,
    nc: NatsClient,
    wait_until: WaitUntil,
) -> None:
    experiment = await submit(client, project["name"])
    began = datetime.now(UTC) - timedelta(seconds=30)
    end = finished(experiment, started_at=began)

    await publish_event(publisher, end)
    done = await wait_until(lambda: status_is(client, experiment["id"], "succeeded"))

    assert at(done["started_at"]) == began
    assert at(done["finished_at"]) == end.occurred_at
    assert done["agent_id"] == AGENT

    # The late start changes nothing: the run is over.
    await publish_event(publisher, started(experiment))
    await applied(nc, ExperimentStarted)
    assert await get(client, experiment["id"]) == done


async def test_lost_requeued_then_lost_for_good(
    client: httpx.AsyncClient,
    project: dict[str, Any],
    publisher: NatsBroker,
    wait_until: WaitUntil,
) -> None:
    experiment = await submit(client, project["name"])
    await publish_event(publisher, started(experiment))
    await wait_until(lambda: status_is(client, experiment["id"], "running"))

    await publish_event(
        publisher,
        ExperimentLost(
            experiment_id=experiment["id"],
            agent_id=AGENT,
            attempt=1,
            reason="heartbeat lease expired",
            requeued=True,
        ),
    )
    again = await wait_until(lambda: status_is(client, experiment["id"], "queued", attempt=2))

    assert again["agent_id"] is None
    assert again["started_at"] is None
    assert "heartbeat lease expired" in again["status_reason"]

    await publish_event(publisher, started(experiment, attempt=2))
    await wait_until(lambda: status_is(client, experiment["id"], "running", attempt=2))
    lost = ExperimentLost(
        experiment_id=experiment["id"],
        agent_id=AGENT,
        attempt=2,
        reason="agent agent-7 went silent",
        requeued=False,
    )
    await publish_event(publisher, lost)
    gone = await wait_until(lambda: status_is(client, experiment["id"], "lost"))

    assert gone["attempt"] == 2
    assert gone["status_reason"] == "agent agent-7 went silent"
    assert at(gone["finished_at"]) == lost.occurred_at


# -- logs -----------------------------------------------------------------------------------


async def test_logs_without_logstream_is_503(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    experiment = await submit(client, project["name"])

    began = time.monotonic()
    response = await client.get(f"/api/v1/experiments/{experiment['id']}/logs")

    assert response.status_code == 503
    assert "log service did not answer" in response.json()["error"]
    assert time.monotonic() - began < 5


async def test_logs_of_unknown_experiment_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/api/v1/experiments/{uuid.uuid4()}/logs")

    assert response.status_code == 404


async def test_logs_come_from_logstream_page_by_page(
    client: httpx.AsyncClient, project: dict[str, Any], nc: NatsClient
) -> None:
    experiment = await submit(client, project["name"])
    lines = [
        {"seq": n, "stream": "stdout", "ts": datetime.now(UTC).isoformat(), "line": f"line {n}"}
        for n in range(1, 6)
    ]
    queries: list[dict[str, Any]] = []

    async def answer(msg: Msg) -> None:
        query = json.loads(msg.data)
        queries.append(query)
        start = query["from_seq"] - 1
        page = lines[start : start + 2]
        more = start + 2 < len(lines)
        body = {"lines": page, "next_seq": start + 3 if more else None}
        await msg.respond(json.dumps(body).encode())

    sub = await nc.subscribe("rpc.logstream.lines", cb=answer)
    await nc.flush()
    try:
        response = await client.get(f"/api/v1/experiments/{experiment['id']}/logs")
    finally:
        await sub.unsubscribe()

    assert response.status_code == 200, response.text
    assert response.text == "".join(f"line {n}\n" for n in range(1, 6))
    assert response.headers["X-Log-Lines"] == "5"
    assert [q["from_seq"] for q in queries] == [1, 3, 5]
    assert {q["experiment_id"] for q in queries} == {experiment["id"]}
    assert {q["attempt"] for q in queries} == {1}


async def test_logs_when_logstream_hangs_is_503(
    client: httpx.AsyncClient, project: dict[str, Any], nc: NatsClient
) -> None:
    experiment = await submit(client, project["name"])

    async def ignore(_: Msg) -> None:
        return None

    sub = await nc.subscribe("rpc.logstream.lines", cb=ignore)
    await nc.flush()
    try:
        response = await client.get(f"/api/v1/experiments/{experiment['id']}/logs")
    finally:
        await sub.unsubscribe()

    assert response.status_code == 503
    assert "log service did not answer" in response.json()["error"]
