"""``/api/v1/sweeps``: grid and random trials, parameter specs and their refusals, progress,
best trial, stop, and ``api.sweep.finished`` once the last trial ends.

Trial ends are driven as the agents and the scheduler drive them: their events are published
to JetStream and the API's consumers apply them.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from fleetlab_common.broker import publish_event
from fleetlab_common.events import ExperimentCancelled, ExperimentFinished, ExperimentStarted
from fleetlab_common.ids import uuid7

MakeProject = Callable[..., Awaitable[dict[str, Any]]]
WaitUntil = Callable[..., Awaitable[Any]]

SCHEMA: dict[str, Any] = {
    "lr": {"type": "float", "default": 0.1},
    "epochs": {"type": "int", "default": 10},
    "optimiser": {"type": "enum", "default": "sgd", "values": ["sgd", "adam", "rmsprop"]},
    "model": {"type": "string", "default": "cnn"},
    "cuda": {"type": "bool", "default": False},
}


@pytest.fixture
async def project(make_project: MakeProject) -> str:
    name: str = (await make_project(SCHEMA))["name"]
    return name


@pytest.fixture
async def db(api_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """The API's tables, to set what other services report (scores)."""
    conn = await asyncpg.connect(api_dsn, server_settings={"search_path": "api"})
    try:
        yield conn
    finally:
        await conn.close()


async def create(client: httpx.AsyncClient, project: str, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/sweeps", json={"project": project, **body})
    assert response.status_code == 201, response.text
    sweep: dict[str, Any] = response.json()
    return sweep


async def trials(client: httpx.AsyncClient, sweep_id: str) -> list[dict[str, Any]]:
    """Every trial of a sweep, oldest first, through the experiments list's sweep filter."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"sweep": sweep_id, "sort": "created_at", "limit": 1000}
        response = await client.get(
            "/api/v1/experiments", params={**params, **({"cursor": cursor} if cursor else {})}
        )
        assert response.status_code == 200, response.text
        items += response.json()["items"]
        cursor = response.json()["next"]
        if cursor is None:
            return sorted(items, key=lambda e: e["id"])


async def get(client: httpx.AsyncClient, sweep_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/sweeps/{sweep_id}")
    assert response.status_code == 200, response.text
    sweep: dict[str, Any] = response.json()
    return sweep


class Collected:
    """Messages of one subject seen on core NATS from now on."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def cb(self, msg: Msg) -> None:
        self.messages.append(json.loads(msg.data))


@pytest.fixture
async def watch(nc: NatsClient) -> AsyncIterator[Callable[[str], Awaitable[Collected]]]:
    subs = []

    async def make(subject: str) -> Collected:
        collected = Collected()
        subs.append(await nc.subscribe(subject, cb=collected.cb))
        await nc.flush()
        return collected

    yield make
    for sub in subs:
        await sub.unsubscribe()


# --- grid ---------------------------------------------------------------------------------


async def test_grid_creates_every_combination_once_with_defaults_kept(
    client: httpx.AsyncClient,
    project: str,
    watch: Callable[[str], Awaitable[Collected]],
    wait_until: WaitUntil,
) -> None:
    submitted = await watch("api.experiment.submitted")
    sweep = await create(
        client,
        project,
        method="grid",
        parameters={
            "lr": [0.1, 0.01],
            "optimiser": {"values": "sgd,adam"},  # FGLab's comma-separated form
            "epochs": {"min": 1, "max": 5, "steps": 3},
        },
        parallelism=2,
        name="grid-a",
    )

    assert sweep["count"] == 12
    assert sweep["status"] == "running"
    assert sweep["counts"] == {"queued": 12}
    found = await trials(client, sweep["id"])
    combos = sorted(
        (e["options"]["lr"], e["options"]["optimiser"], e["options"]["epochs"]) for e in found
    )
    assert combos == sorted(
        (lr, opt, ep) for lr in (0.1, 0.01) for opt in ("sgd", "adam") for ep in (1, 3, 5)
    )
    for e in found:
        assert e["sweep_id"] == sweep["id"]
        assert type(e["options"]["epochs"]) is int  # a range over an int option gives ints
        assert (e["options"]["model"], e["options"]["cuda"]) == ("cnn", False)  # defaults
        assert list(e["options"]) == list(SCHEMA)  # in the schema's order, as a submission
    assert sorted(e["name"] for e in found) == sorted(f"grid-a #{i}" for i in range(1, 13))

    # Each trial goes to the scheduler with the sweep and its parallelism.
    ids = {e["id"] for e in found}

    def mine() -> list[dict[str, Any]]:
        return [m for m in submitted.messages if m["experiment_id"] in ids]

    await wait_until(lambda: _ready(len(mine()) == 12), what="12 submissions published")
    assert {(m["sweep_id"], m["sweep_parallelism"]) for m in mine()} == {(sweep["id"], 2)}


async def _ready(value: bool) -> bool:
    return value


async def test_log_range_and_float_values_are_as_typed(
    client: httpx.AsyncClient, project: str
) -> None:
    sweep = await create(
        client,
        project,
        parameters={"lr": {"min": 0.001, "max": 0.1, "steps": 3, "scale": "log"}},
    )

    lrs = sorted(e["options"]["lr"] for e in await trials(client, sweep["id"]))
    assert lrs == [0.001, 0.01, 0.1]
    ints = await create(
        client, project, parameters={"epochs": {"min": 1, "max": 100, "steps": 3, "scale": "log"}}
    )
    assert sorted(e["options"]["epochs"] for e in await trials(client, ints["id"])) == [1, 10, 100]


# --- random -------------------------------------------------------------------------------


async def test_random_is_reproducible_from_its_seed_and_honours_count(
    client: httpx.AsyncClient, project: str
) -> None:
    spec = {
        "lr": {"min": 0.0001, "max": 1, "scale": "log"},
        "epochs": {"min": 1, "max": 50},
        "optimiser": ["sgd", "adam", "rmsprop"],
    }
    one = await create(client, project, method="random", parameters=spec, count=25, seed=42)
    two = await create(client, project, method="random", parameters=spec, count=25, seed=42)
    other = await create(client, project, method="random", parameters=spec, count=25, seed=43)

    def points(found: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        # Trials are created in draw order; their ids are time-ordered.
        return [
            (e["options"]["lr"], e["options"]["epochs"], e["options"]["optimiser"]) for e in found
        ]

    first = points(await trials(client, one["id"]))
    assert len(first) == one["count"] == 25
    assert first == points(await trials(client, two["id"]))
    assert first != points(await trials(client, other["id"]))
    for lr, epochs, optimiser in first:
        assert 0.0001 <= lr <= 1 and isinstance(lr, float)
        assert 1 <= epochs <= 50 and isinstance(epochs, int)
        assert optimiser in ("sgd", "adam", "rmsprop")
    assert len({p[0] for p in first}) > 20  # continuous draws, not a handful of values
    # Log-uniform: about as many draws below 0.01 as above it.
    assert 5 <= sum(lr < 0.01 for lr, _, _ in first) <= 20

    unseeded = await create(client, project, method="random", parameters=spec, count=3)
    assert isinstance(unseeded["seed"], int)  # recorded, so the sweep can be run again


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"parameters": {"nope": [1, 2]}}, "parameters.nope", "unknown option"),
        ({"parameters": {"optimiser": ["sgd", "lbfgs"]}}, "parameters.optimiser", "one of"),
        ({"parameters": {"epochs": [1, 2.5]}}, "parameters.epochs", "integer"),
        ({"parameters": {"lr": {"min": 0.1, "max": 1, "steps": 0}}}, "parameters.lr.steps", ">= 1"),
        ({"parameters": {"lr": {"min": 1, "max": 0.1, "steps": 3}}}, "parameters.lr", "greater"),
        (
            {"parameters": {"lr": {"min": 0, "max": 1, "steps": 3, "scale": "log"}}},
            "parameters.lr.min",
            "min > 0",
        ),
        ({"parameters": {"lr": {"min": 0.1, "max": 1}}}, "parameters.lr.steps", "grid"),
        (
            {"parameters": {"model": {"min": 1, "max": 2, "steps": 2}}},
            "parameters.model",
            "int or float",
        ),
        (
            {"parameters": {"lr": {"min": 0.1, "max": 1, "steps": 2, "scale": "exp"}}},
            "parameters.lr.scale",
            "log",
        ),
        ({"parameters": {"lr": []}}, "parameters.lr", "at least one"),
        (
            {
                "parameters": {
                    "lr": {"min": 0.1, "max": 1, "steps": 100},
                    "epochs": {"min": 1, "max": 100, "steps": 100},
                    "model": [f"m{i}" for i in range(20)],
                }
            },
            "parameters",
            "200,000 trials (100 × 100 × 20)",
        ),
        ({"method": "random", "parameters": {"lr": [0.1]}}, "count", "count"),
        ({"parameters": {"lr": [0.1, 0.2]}, "count": 5}, "count", "leave count out"),
        ({"metric": "results.bad\x01key"}, "metric", "results"),
        ({"parallelism": 0}, "parallelism", "greater than or equal to 1"),
        ({"method": "bayes"}, "method", "grid"),
    ],
)
async def test_bad_specs_are_422_naming_the_field_and_create_nothing(
    client: httpx.AsyncClient, project: str, body: dict[str, Any], field: str, words: str
) -> None:
    response = await client.post("/api/v1/sweeps", json={"project": project, **body})

    assert response.status_code == 422, response.text
    error = response.json()
    assert field in error["fields"], error
    assert words in error["fields"][field] or words in error["error"], error
    listed = await client.get("/api/v1/sweeps", params={"project": project})
    assert listed.json()["items"] == []
    experiments = await client.get("/api/v1/experiments", params={"project": project})
    assert experiments.json()["items"] == []


async def test_a_grid_over_the_limit_is_refused_at_once(
    client: httpx.AsyncClient, project: str
) -> None:
    huge = {name: {"min": 1, "max": 1000, "steps": 1000} for name in ("lr", "epochs")}
    response = await client.post("/api/v1/sweeps", json={"project": project, "parameters": huge})

    assert response.status_code == 422
    assert "1,000,000 trials" in response.json()["fields"]["parameters"]
    assert "100,000" in response.json()["fields"]["parameters"]


async def test_a_required_option_must_be_swept(
    client: httpx.AsyncClient, make_project: MakeProject
) -> None:
    project = (
        await make_project({"seed": {"type": "int"}, "lr": {"type": "float", "default": 1}})
    )["name"]
    missing = await client.post("/api/v1/sweeps", json={"project": project, "parameters": {}})
    given = await client.post(
        "/api/v1/sweeps", json={"project": project, "parameters": {"seed": [1, 2]}}
    )

    assert missing.status_code == 422
    assert "required" in missing.json()["fields"]["parameters.seed"]
    assert given.status_code == 201


async def test_unknown_project_and_sweep(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/sweeps", json={"project": "no-such-project"})
    assert response.status_code == 422
    assert "project" in response.json()["fields"]
    for path in (f"/api/v1/sweeps/{uuid7()}", "/api/v1/sweeps/not-an-id"):
        assert (await client.get(path)).status_code == 404
    assert (await client.post(f"/api/v1/sweeps/{uuid7()}/stop")).status_code == 404


# --- progress, best trial, finish, stop ---------------------------------------------------

AGENT = "sweep-agent"


async def run_to_end(
    publisher: NatsBroker, trial: dict[str, Any], status: str = "succeeded"
) -> None:
    experiment_id = uuid.UUID(trial["id"])
    await publish_event(
        publisher,
        ExperimentStarted(
            experiment_id=experiment_id,
            agent_id=AGENT,
            instance_id=uuid7(),
            pid=1,
            argv=["python3"],
            workdir="/w",
        ),
    )
    await publish_event(
        publisher,
        ExperimentFinished(
            experiment_id=experiment_id,
            agent_id=AGENT,
            status=status,  # type: ignore[arg-type]
            exit_code=0 if status == "succeeded" else 1,
        ),
    )


async def set_score(db: asyncpg.Connection, trial: dict[str, Any], accuracy: float) -> None:
    await db.execute(
        "UPDATE experiments SET results = $2::jsonb WHERE id = $1",
        uuid.UUID(trial["id"]),
        json.dumps({"_scores": {"accuracy": accuracy}}),
    )


async def test_progress_best_trial_and_one_sweep_finished_event(
    client: httpx.AsyncClient,
    project: str,
    publisher: NatsBroker,
    db: asyncpg.Connection,
    watch: Callable[[str], Awaitable[Collected]],
    wait_until: WaitUntil,
) -> None:
    finished_events = await watch("api.sweep.finished")
    best_max = await create(
        client, project, parameters={"lr": [0.1, 0.2, 0.3, 0.4]}, metric="accuracy"
    )
    best_min = await create(
        client,
        project,
        parameters={"lr": [0.1, 0.2, 0.3]},
        metric="results._scores.accuracy",
        goal="minimize",
    )
    assert best_max["metric"] == "results._scores.accuracy"  # a bare name is a score
    found = await trials(client, best_max["id"])
    low = await trials(client, best_min["id"])
    for trial, accuracy in zip(found[:3], (0.5, 0.9, 0.7), strict=True):
        await set_score(db, trial, accuracy)
    for trial, accuracy in zip(low[1:], (0.4, 0.2), strict=True):  # low[0] has no score
        await set_score(db, trial, accuracy)

    sweep = await get(client, best_max["id"])
    assert (sweep["best"]["id"], sweep["best_value"]) == (found[1]["id"], 0.9)
    minimum = await get(client, best_min["id"])
    assert (minimum["best"]["id"], minimum["best_value"]) == (low[2]["id"], 0.2)

    # Trials end: progress counts them, and the last one's end finishes the sweep, once,
    # even when the last trials end at the same moment.
    await run_to_end(publisher, found[0])
    await wait_until(
        lambda: _has(client, best_max["id"], {"queued": 3, "succeeded": 1}), what="progress"
    )
    assert (await get(client, best_max["id"]))["done"] == 1
    await asyncio.gather(
        run_to_end(publisher, found[1]),
        run_to_end(publisher, found[2], "failed"),
        run_to_end(publisher, found[3]),
    )
    done = await wait_until(
        lambda: _status(client, best_max["id"], "finished"), what="the sweep to finish"
    )
    assert done["counts"] == {"succeeded": 3, "failed": 1}
    assert done["finished_at"] is not None

    await wait_until(
        lambda: _ready(any(e["sweep_id"] == best_max["id"] for e in finished_events.messages)),
        what="api.sweep.finished",
    )
    await asyncio.sleep(0.3)  # a second event, if there were one, would be on its way now
    mine = [e for e in finished_events.messages if e["sweep_id"] == best_max["id"]]
    assert len(mine) == 1
    assert mine[0]["status"] == "finished"
    assert mine[0]["trials"] == 4
    assert mine[0]["counts"] == {"succeeded": 3, "failed": 1}
    assert mine[0]["best_experiment_id"] == found[1]["id"]
    assert mine[0]["best_value"] == 0.9
    assert mine[0]["project"] == project
    # The other sweep is untouched.
    assert (await get(client, best_min["id"]))["status"] == "running"


async def _has(client: httpx.AsyncClient, sweep_id: str, counts: dict[str, int]) -> bool:
    return (await get(client, sweep_id))["counts"] == counts


async def _status(client: httpx.AsyncClient, sweep_id: str, status: str) -> dict[str, Any] | None:
    sweep = await get(client, sweep_id)
    return sweep if sweep["status"] == status else None


async def test_stop_asks_every_active_trial_to_stop_then_the_sweep_ends_stopped(
    client: httpx.AsyncClient,
    project: str,
    publisher: NatsBroker,
    watch: Callable[[str], Awaitable[Collected]],
    wait_until: WaitUntil,
) -> None:
    stops = await watch("api.experiment.stop_requested")
    finished_events = await watch("api.sweep.finished")
    sweep = await create(client, project, parameters={"lr": [0.1, 0.2, 0.3]})
    found = await trials(client, sweep["id"])
    await run_to_end(publisher, found[0])
    await wait_until(lambda: _has(client, sweep["id"], {"queued": 2, "succeeded": 1}))

    response = await client.post(f"/api/v1/sweeps/{sweep['id']}/stop")

    assert response.status_code == 202, response.text
    assert response.json()["status"] == "stopped"
    active = {found[1]["id"], found[2]["id"]}
    await wait_until(
        lambda: _ready({m["experiment_id"] for m in stops.messages} >= active),
        what="a stop request per active trial",
    )
    assert found[0]["id"] not in {m["experiment_id"] for m in stops.messages}
    again = await client.post(f"/api/v1/sweeps/{sweep['id']}/stop")
    assert again.status_code == 202  # stopping a stopping sweep changes nothing

    # The scheduler cancels the queued trials (it is not running here: we say it for it).
    for trial in found[1:]:
        await publish_event(
            publisher, ExperimentCancelled(experiment_id=uuid.UUID(trial["id"]), attempt=1)
        )
    ended = await wait_until(
        lambda: _has(client, sweep["id"], {"stopped": 2, "succeeded": 1}), what="trials stopped"
    )
    assert ended
    await wait_until(
        lambda: _ready(any(e["sweep_id"] == sweep["id"] for e in finished_events.messages)),
        what="api.sweep.finished",
    )
    [event] = [e for e in finished_events.messages if e["sweep_id"] == sweep["id"]]
    assert event["status"] == "stopped"
    final = await get(client, sweep["id"])
    assert final["status"] == "stopped"
    late = await client.post(f"/api/v1/sweeps/{sweep['id']}/stop")
    assert late.status_code == 202  # still stopped, nothing more to do


async def test_stopping_a_finished_sweep_is_409(
    client: httpx.AsyncClient, project: str, publisher: NatsBroker, wait_until: WaitUntil
) -> None:
    sweep = await create(client, project, parameters={"lr": [0.5]})
    [trial] = await trials(client, sweep["id"])
    await run_to_end(publisher, trial)
    await wait_until(lambda: _status(client, sweep["id"], "finished"))

    response = await client.post(f"/api/v1/sweeps/{sweep['id']}/stop")

    assert response.status_code == 409
    assert "finished" in response.json()["error"]


async def test_list_sweeps_newest_first_by_project_with_paging(
    client: httpx.AsyncClient, project: str
) -> None:
    made = [await create(client, project, parameters={"lr": [0.1 * (i + 1)]}) for i in range(3)]

    first = await client.get("/api/v1/sweeps", params={"project": project, "limit": 2})
    assert first.status_code == 200
    page = first.json()
    second = await client.get(
        "/api/v1/sweeps", params={"project": project, "limit": 2, "cursor": page["next"]}
    )

    ids = [s["id"] for s in page["items"]] + [s["id"] for s in second.json()["items"]]
    assert ids == [s["id"] for s in reversed(made)]
    assert second.json()["next"] is None
    assert all(s["project"] == project and s["counts"] == {"queued": 1} for s in page["items"])


async def test_best_trial_by_a_metric_and_by_an_option(
    client: httpx.AsyncClient, project: str, db: asyncpg.Connection
) -> None:
    by_loss = await create(
        client,
        project,
        parameters={"lr": [0.1, 0.2, 0.3]},
        metric="metrics.loss.min",
        goal="minimize",
    )
    found = await trials(client, by_loss["id"])
    for trial, low in zip(found[:2], (0.31, 0.12), strict=True):  # found[2] reports no loss
        await db.execute(
            """INSERT INTO metric_summary (experiment_id, name, last, last_ts, min, max, count)
               VALUES ($1, 'loss', $2::float8, now(), $2::float8, $2::float8 + 1, 3)""",
            uuid.UUID(trial["id"]),
            low,
        )
    sweep = await get(client, by_loss["id"])
    assert (sweep["best"]["id"], sweep["best_value"]) == (found[1]["id"], 0.12)

    # Any sort key of the list works, an option too: the smallest lr.
    by_lr = await create(
        client, project, parameters={"lr": [0.3, 0.05, 0.2]}, metric="options.lr", goal="minimize"
    )
    assert (await get(client, by_lr["id"]))["best_value"] == 0.05
    unranked = await create(client, project, parameters={"lr": [0.3]})
    assert (await get(client, unranked["id"]))["best"] is None
