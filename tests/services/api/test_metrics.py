"""Metrics through the API: posted points (one, a batch, MLBench's fields, the wide form),
series downsampled with LTTB or whole, summaries, scores, measurements.json, compare; and the
agent's file protocol end to end on a real NATS."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from faststream.nats import NatsBroker

from fleetlab_agent import handlers as agent_handlers
from fleetlab_agent.metrics import parse_printed
from fleetlab_agent.service import Agent
from fleetlab_agent.settings import AgentSettings
from fleetlab_common.broker import make_broker, publish_event
from fleetlab_common.events import ExperimentAssigned, ExperimentStarted
from fleetlab_common.ids import uuid7
from fleetlab_common.runspec import RunSpec

from .test_logs_support import Logstream, running_logstream

MakeProject = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture(scope="module")
async def logstream(
    nats_url: str, postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Logstream]:
    async with running_logstream(
        nats_url, postgres_dsn, tmp_path_factory.mktemp("logstream-home"), "metrics"
    ) as ls:
        yield ls


@pytest.fixture
async def http(api: FastAPI, logstream: Logstream) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
        yield c


async def experiment(http: httpx.AsyncClient, make_project: MakeProject) -> dict[str, Any]:
    project = await make_project()
    response = await http.post("/api/v1/experiments", json={"project": project["name"]})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_post_one_point_a_batch_and_the_wide_form(
    http: httpx.AsyncClient, make_project: MakeProject
) -> None:
    eid = (await experiment(http, make_project))["id"]
    url = f"/api/v1/experiments/{eid}/metrics"

    one = await http.post(url, json={"name": "loss", "value": 1.0, "step": 0})
    assert (one.status_code, one.json()) == (201, {"stored": 1, "scores": 0})
    # MLBench's fields: date, metadata, cumulative.
    mlbench = [
        {
            "name": "time",
            "value": 1.5 * i,
            "date": f"2025-01-01T00:00:0{i}Z",
            "metadata": {"rank": 0},
            "cumulative": True,
        }
        for i in range(3)
    ]
    assert (await http.post(url, json=mlbench)).json()["stored"] == 3
    wide = {"points": [{"step": s, "loss": 1.0 / (s + 1), "acc": s / 10} for s in range(1, 4)]}
    assert (await http.post(url, json=wide)).json()["stored"] == 6
    assert (await http.post(url, json={"_scores": {"acc": 0.93}})).json()["scores"] == 1

    body = (await http.get(url)).json()
    series = {s["name"]: s for s in body["series"]}
    assert [p["value"] for p in series["loss"]["points"]] == [1.0, 0.5, 1 / 3, 0.25]
    assert [p["step"] for p in series["loss"]["points"]] == [0, 1, 2, 3]
    summary = {s["name"]: s for s in body["summary"]}
    assert (summary["loss"]["last"], summary["loss"]["min"], summary["loss"]["max"]) == (
        0.25,
        0.25,
        1.0,
    )
    assert summary["loss"]["count"] == 4 and summary["loss"]["last_step"] == 3
    assert body["scores"] == {"acc": 0.93}

    only = (await http.get(url, params={"names": "acc"})).json()
    assert [s["name"] for s in only["series"]] == ["acc"]

    measurements = await http.get(f"/api/v1/experiments/{eid}/measurements.json")
    assert measurements.status_code == 200
    assert "attachment" in measurements.headers["content-disposition"]
    doc = measurements.json()
    assert doc["experiment"]["id"] == eid
    times = [m for m in doc["measurements"] if m["name"] == "time"]
    assert [m["value"] for m in times] == [0.0, 1.5, 3.0]
    assert times[0]["cumulative"] is True and times[0]["metadata"] == {"rank": 0}
    assert times[1]["date"].startswith("2025-01-01T00:00:01")
    assert doc["scores"] == {"acc": 0.93}


async def test_bad_points_are_422_and_store_nothing(
    http: httpx.AsyncClient, make_project: MakeProject
) -> None:
    eid = (await experiment(http, make_project))["id"]
    url = f"/api/v1/experiments/{eid}/metrics"
    cases: list[tuple[Any, str]] = [
        ([{"name": "loss", "value": "high"}], "points.0.value"),
        ([{"name": "loss", "value": 1}, {"name": "", "value": 1}], "points.1.name"),
        ({"step": "three", "loss": 1}, "points.0.step"),
        ({"name": "loss", "value": 1, "date": "yesterday"}, "points.0.date"),
        ([3], "points.0"),
        ({}, "body"),
    ]
    for body, field in cases:
        response = await http.post(url, json=body)
        assert response.status_code == 422, body
        assert field in response.json()["fields"], response.json()
    malformed = await http.post(url, content=b"{nope", headers={"content-type": "application/json"})
    assert malformed.status_code == 422
    assert (await http.get(url)).json()["series"] == []
    unknown = await http.post(f"/api/v1/experiments/{uuid7()}/metrics", json={"a": 1})
    assert unknown.status_code == 404


async def test_a_big_batch_is_downsampled_with_lttb_or_returned_whole(
    http: httpx.AsyncClient, make_project: MakeProject
) -> None:
    eid = (await experiment(http, make_project))["id"]
    url = f"/api/v1/experiments/{eid}/metrics"
    n = 20_000
    points = [{"name": "wave", "value": math.sin(i / 300), "step": i} for i in range(n)]
    points[12_345]["value"] = 50.0  # a spike LTTB must keep
    posted = await http.post(url, json=points)
    assert posted.json() == {"stored": n, "scores": 0}

    small = (await http.get(url)).json()["series"][0]
    assert small["total"] == n and small["downsampled"] is True
    assert len(small["points"]) == 500
    steps = [p["step"] for p in small["points"]]
    assert steps[0] == 0 and steps[-1] == n - 1 and steps == sorted(steps)
    assert 12_345 in steps

    whole = (await http.get(url, params={"points": 0})).json()["series"][0]
    assert [p["step"] for p in whole["points"]] == list(range(n))
    assert whole["downsampled"] is False

    other = (await experiment(http, make_project))["id"]
    await http.post(f"/api/v1/experiments/{other}/metrics", json={"wave": 1.0, "step": 0})
    compare = await http.get(
        "/api/v1/metrics/compare", params={"experiments": f"{eid},{other}", "points": 10}
    )
    assert compare.status_code == 200
    assert [len(e["series"][0]["points"]) for e in compare.json()] == [10, 1]


# -- the file protocol, from a real run through the agent -------------------------------------


@pytest.fixture
async def agent(nats_url: str, tmp_path: Path, logstream: Logstream) -> AsyncIterator[Agent]:
    name = f"agent-{uuid7().hex[-8:]}"
    settings = AgentSettings(nats={"url": nats_url}, home=tmp_path, agent={"name": name})
    broker = make_broker(settings.nats, name)
    agent = Agent(settings, broker)
    agent_handlers.register(broker, agent)
    await broker.start()
    agent.spool.start()
    try:
        yield agent
    finally:
        await agent.shutdown()
        await broker.stop()


async def test_a_runs_metrics_file_with_a_malformed_line_reaches_the_api(
    http: httpx.AsyncClient,
    make_project: MakeProject,
    agent: Agent,
    publisher: NatsBroker,
    tmp_path: Path,
) -> None:
    record = await experiment(http, make_project)
    eid = record["id"]
    program = tmp_path / "train.py"
    program.write_text(
        textwrap.dedent(
            """
            import os
            import fleetlab
            for step in range(5):
                fleetlab.log(step=step, loss=1.0 / (step + 1))
            with open(os.environ["FLEETLAB_METRICS_FILE"], "a") as f:
                f.write("this is not json\\n")
                f.write('{"step": 5, "loss": "NaN-ish"}\\n')
                f.write('{"step": 6, "loss": 0.1}\\n')
            fleetlab.result(accuracy=0.9)
            print("done")
            """
        )
    )
    await publish_event(
        publisher,
        ExperimentAssigned(
            experiment_id=eid,
            agent_id=agent.name,
            project="p",
            run=RunSpec(command=[sys.executable, str(program)]),
        ),
    )
    url = f"/api/v1/experiments/{eid}/metrics"
    async with asyncio.timeout(20):
        while True:
            body = (await http.get(url)).json()
            if body["scores"] and body["series"]:
                break
            await asyncio.sleep(0.05)
    loss = body["series"][0]
    assert [(p["step"], p["value"]) for p in loss["points"]] == [
        (0, 1.0),
        (1, 0.5),
        (2, 1 / 3),
        (3, 0.25),
        (4, 0.2),
        (6, 0.1),
    ]
    assert body["scores"] == {"accuracy": 0.9}
    _ = ExperimentStarted  # the run's start is the agent's business here
    logged = json.dumps(body)
    assert "NaN" not in logged


async def test_printed_metric_lines_become_points_when_the_project_asks(
    http: httpx.AsyncClient,
    make_project: MakeProject,
    agent: Agent,
    publisher: NatsBroker,
    tmp_path: Path,
) -> None:
    eid = (await experiment(http, make_project))["id"]
    program = tmp_path / "printing.py"
    program.write_text(
        textwrap.dedent(
            """
            import sys
            print("#loss 0 1.5")
            print("#loss 1 0.75", flush=True)
            print("#acc 1 0.5")
            print("# a comment, not a metric")
            print("#loss x 3")
            print("#loss 2 nan")
            print("#loss 3 0.1 extra")
            print("#loss 2 9", file=sys.stderr)
            print("epoch done")
            """
        )
    )
    await publish_event(
        publisher,
        ExperimentAssigned(
            experiment_id=eid,
            agent_id=agent.name,
            project="p",
            run=RunSpec(command=[sys.executable, str(program)], printed_metrics=True),
        ),
    )
    async with asyncio.timeout(20):
        while True:
            record = (await http.get(f"/api/v1/experiments/{eid}")).json()
            body = (await http.get(f"/api/v1/experiments/{eid}/metrics")).json()
            if record["status"] == "succeeded" and len(body["series"]) == 2:
                break
            await asyncio.sleep(0.05)
    series = {s["name"]: [(p["step"], p["value"]) for p in s["points"]] for s in body["series"]}
    assert series == {"loss": [(0, 1.5), (1, 0.75)], "acc": [(1, 0.5)]}
    log = (await http.get(f"/api/v1/experiments/{eid}/logs")).text
    assert "#loss 0 1.5\n" in log
    assert "#acc 1 0.5\n" in log
    assert "epoch done" in log


def test_printed_lines_are_parsed_only_in_their_exact_shape() -> None:
    now = datetime.now(UTC).isoformat()
    point = parse_printed("#val.loss -2 1e-3", now)
    assert point is not None
    assert (point["name"], point["step"], point["value"]) == ("val.loss", -2, 0.001)
    for text in ["#loss", "#loss 1", "# loss 1 2", "#loss 1.5 2", "#loss 1 inf", "loss 1 2"]:
        assert parse_printed(text, now) is None, text


async def test_a_project_turns_printed_metrics_on_and_off(
    http: httpx.AsyncClient, make_project: MakeProject
) -> None:
    project = await make_project(printed_metrics=True)
    assert project["printed_metrics"] is True
    url = f"/api/v1/projects/{project['id']}"
    changed = await http.patch(url, json={"printed_metrics": False})
    assert changed.status_code == 200, changed.text
    assert changed.json()["printed_metrics"] is False
    bad = await http.patch(url, json={"printed_metrics": "sometimes"})
    assert bad.status_code == 422
    assert "printed_metrics" in bad.text
    assert (await http.get(url)).json()["printed_metrics"] is False
