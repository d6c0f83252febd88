"""Resource use through the API: an experiment's and an agent's samples (whole, downsampled,
since a time), the agents list's latest sample, measurements.json's resources, the errors;
and FGMachine results reports merged into the experiments read model."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from fleetlab_common.broker import publish_event
from fleetlab_common.events import (
    ExperimentUsage,
    GpuUsage,
    MachineUsage,
    ResultsReported,
    Rpc,
    UsageSampled,
)
from fleetlab_common.ids import uuid7

from .test_logs_support import Logstream, running_logstream

MakeProject = Callable[..., Awaitable[dict[str, Any]]]
Wait = Callable[..., Awaitable[Any]]
T0 = datetime(2025, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
async def logstream(
    nats_url: str, postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Logstream]:
    async with running_logstream(
        nats_url, postgres_dsn, tmp_path_factory.mktemp("logstream-home"), "usage"
    ) as ls:
        yield ls


@pytest.fixture
async def http(api: FastAPI, logstream: Logstream) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
        yield c


class Scheduler:
    """Answers ``rpc.scheduler.agents`` with the agents set here (the registry's owner)."""

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


def agent(agent_id: str) -> dict[str, Any]:
    return {
        "id": agent_id,
        "hostname": f"{agent_id}.lab",
        "status": "online",
        "online": True,
        "draining": False,
        "slots": 4,
        "busy": 1,
        "labels": [],
        "hardware": {"cpu_count": 4, "memory_mb": 16000},
        "running": [],
        "first_seen": T0.isoformat(),
        "last_seen": T0.isoformat(),
    }


def sampled(agent_id: str, second: int, experiment_id: str | None = None) -> UsageSampled:
    ts = T0 + timedelta(seconds=5 * second)
    return UsageSampled(
        agent_id=agent_id,
        machine=MachineUsage(
            ts=ts,
            cpu_percent=10.0 + second,
            memory_used_mb=2000.0 + second,
            memory_total_mb=16000.0,
            gpus=[GpuUsage(index=0, utilization=50.0, memory_used_mb=10.0, memory_total_mb=80.0)],
        ),
        experiments=[]
        if experiment_id is None
        else [
            ExperimentUsage(
                experiment_id=uuid.UUID(experiment_id),
                ts=ts,
                cpu_percent=100.0 + second,
                rss_mb=500.0 + second,
                processes=3,
            )
        ],
    )


async def experiment(http: httpx.AsyncClient, make_project: MakeProject) -> dict[str, Any]:
    project = await make_project()
    response = await http.post("/api/v1/experiments", json={"project": project["name"]})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_an_experiments_usage_whole_downsampled_and_since(
    http: httpx.AsyncClient, make_project: MakeProject, publisher: NatsBroker, wait_until: Wait
) -> None:
    eid = (await experiment(http, make_project))["id"]
    agent_id = f"worker-{uuid7().hex[-8:]}"
    for second in range(30):
        await publish_event(publisher, sampled(agent_id, second, eid))
    url = f"/api/v1/experiments/{eid}/usage"

    async def all_stored() -> dict[str, Any] | None:
        body: dict[str, Any] = (await http.get(url)).json()
        return body if body["total"] == 30 else None

    body = await wait_until(all_stored, what="30 samples stored")
    assert body["experiment_id"] == eid and body["downsampled"] is False
    assert len(body["samples"]) == 30
    first = body["samples"][0]
    assert first["agent_id"] == agent_id and first["processes"] == 3
    assert (first["cpu_percent"], first["rss_mb"]) == (100.0, 500.0)
    assert datetime.fromisoformat(first["ts"]) == T0

    small = (await http.get(url, params={"points": 3})).json()
    assert small["downsampled"] is True and small["total"] == 30
    assert len(small["samples"]) == 3
    # Mean CPU, peak memory per bucket: the last bucket ends at the last sample.
    assert small["samples"][-1]["rss_mb"] == 529.0
    assert 100.0 < small["samples"][0]["cpu_percent"] < 110.0

    since = (T0 + timedelta(seconds=5 * 27)).isoformat()
    recent = (await http.get(url, params={"since": since})).json()
    assert [s["cpu_percent"] for s in recent["samples"]] == [127.0, 128.0, 129.0]

    measurements = (await http.get(f"/api/v1/experiments/{eid}/measurements.json")).json()
    assert len(measurements["resources"]) == 30
    assert measurements["resources"][-1]["cpu_percent"] == 129.0


async def test_an_experiment_with_no_sample_yet_has_an_empty_usage(
    http: httpx.AsyncClient, make_project: MakeProject
) -> None:
    eid = (await experiment(http, make_project))["id"]
    response = await http.get(f"/api/v1/experiments/{eid}/usage")
    assert response.status_code == 200
    assert response.json() == {
        "experiment_id": eid,
        "samples": [],
        "total": 0,
        "downsampled": False,
    }


async def test_an_agents_usage_and_its_latest_sample_in_the_agents_list(
    http: httpx.AsyncClient, publisher: NatsBroker, scheduler: Scheduler, wait_until: Wait
) -> None:
    agent_id = f"box-{uuid7().hex[-8:]}"
    idle = f"idle-{uuid7().hex[-8:]}"
    scheduler.agents = [agent(agent_id), agent(idle)]
    for second in range(6):
        await publish_event(publisher, sampled(agent_id, second))
    url = f"/api/v1/agents/{agent_id}/usage"

    async def all_stored() -> dict[str, Any] | None:
        body: dict[str, Any] = (await http.get(url)).json()
        return body if body["total"] == 6 else None

    body = await wait_until(all_stored, what="6 machine samples stored")
    assert body["agent_id"] == agent_id
    assert [s["cpu_percent"] for s in body["samples"]] == [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
    assert body["samples"][0]["gpus"] == [
        {"index": 0, "utilization": 50.0, "memory_used_mb": 10.0, "memory_total_mb": 80.0}
    ]
    two = (await http.get(url, params={"points": 2})).json()
    assert len(two["samples"]) == 2 and two["downsampled"] is True

    listed = {a["id"]: a for a in (await http.get("/api/v1/agents")).json()}
    assert listed[agent_id]["usage"]["cpu_percent"] == 15.0
    assert listed[agent_id]["usage"]["memory_used_mb"] == 2005.0
    assert listed[idle]["usage"] is None
    one = (await http.get(f"/api/v1/agents/{agent_id}")).json()
    assert one["usage"]["memory_total_mb"] == 16000.0


async def test_unknown_experiment_and_agent_are_404(
    http: httpx.AsyncClient, scheduler: Scheduler
) -> None:
    scheduler.agents = [agent("known")]
    missing = await http.get(f"/api/v1/experiments/{uuid7()}/usage")
    assert missing.status_code == 404 and "not found" in missing.json()["error"]
    gone = await http.get("/api/v1/agents/nobody/usage")
    assert gone.status_code == 404
    assert gone.json() == {"error": "agent 'nobody' not found"}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"points": "-1"}, "points"),
        ({"points": "2001"}, "points"),
        ({"points": "many"}, "points"),
        ({"since": "yesterday"}, "since"),
        ({"since": "0001-01-01T00:00:00+01:00"}, "since"),  # before year 1 in UTC
    ],
)
async def test_bad_parameters_are_422_naming_the_field(
    http: httpx.AsyncClient,
    make_project: MakeProject,
    scheduler: Scheduler,
    params: dict[str, str],
    field: str,
) -> None:
    scheduler.agents = [agent("known")]
    eid = (await experiment(http, make_project))["id"]
    for url in (f"/api/v1/experiments/{eid}/usage", "/api/v1/agents/known/usage"):
        response = await http.get(url, params=params)
        assert response.status_code == 422, response.text
        assert field in response.json()["fields"]


async def test_results_reports_merge_into_the_record_newest_wins(
    http: httpx.AsyncClient, make_project: MakeProject, publisher: NatsBroker, wait_until: Wait
) -> None:
    eid = (await experiment(http, make_project))["id"]

    def report(results: dict[str, Any], attempt: int = 1) -> ResultsReported:
        return ResultsReported(
            experiment_id=uuid.UUID(eid), agent_id="a1", attempt=attempt, results=results
        )

    await publish_event(publisher, report({"_scores": {"Test Score": 0.1}, "Notes": "first"}))
    await publish_event(
        publisher, report({"_scores": {"Val Score": 0.7, "accuracy": 0.9}, "Notes": "second"})
    )
    # Another attempt's report (this record is at attempt 1) changes nothing.
    await publish_event(publisher, report({"Notes": "from attempt 2"}, attempt=2))
    await publish_event(publisher, report({"_charts": [{"x": [1, 2], "y": [3, 4]}]}))

    async def merged() -> dict[str, Any] | None:
        body: dict[str, Any] = (await http.get(f"/api/v1/experiments/{eid}")).json()
        return body if "_charts" in body["results"] else None

    body = await wait_until(merged, what="the last report merged")
    assert body["results"] == {
        "_scores": {"Test Score": 0.1, "Val Score": 0.7, "accuracy": 0.9},
        "Notes": "second",
        "_charts": [{"x": [1, 2], "y": [3, 4]}],
    }
    # A reported score sorts the list like any other.
    second = await http.post("/api/v1/experiments", json={"project": body["project"]})
    other = second.json()["id"]
    await publish_event(
        publisher,
        ResultsReported(
            experiment_id=uuid.UUID(other), agent_id="a1", results={"_scores": {"accuracy": 0.5}}
        ),
    )

    async def both_scored() -> list[str] | None:
        ranked = await http.get(
            "/api/v1/experiments",
            params={"project": body["project"], "sort": "results._scores.accuracy"},
        )
        assert ranked.status_code == 200, ranked.text
        ids = [e["id"] for e in ranked.json()["items"]]
        return ids if ids[0] == other else None

    assert await wait_until(both_scored, what="the second score") == [other, eid]
