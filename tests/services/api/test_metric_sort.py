"""The experiments list sorted and filtered by metrics: the API's own summary, kept from
logstream's ``logstream.metrics.summarized`` events (through a real logstream, and published
directly), keyset paging stable under inserts, filters, bad input."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from faststream.nats import NatsBroker

from fleetlab_common.broker import publish_event
from fleetlab_common.events import MetricsSummarized, MetricSummaryEntry

from .conftest import eventually
from .test_logs_support import Logstream, running_logstream

MakeProject = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture(scope="module")
async def logstream(
    nats_url: str, postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Logstream]:
    async with running_logstream(
        nats_url, postgres_dsn, tmp_path_factory.mktemp("logstream-home"), "metricsort"
    ) as ls:
        yield ls


@pytest.fixture
async def http(api: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
        yield c


async def submit(http: httpx.AsyncClient, project: str, name: str) -> str:
    response = await http.post("/api/v1/experiments", json={"project": project, "name": name})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def listing(http: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    """Every page of the list, ``limit`` at a time."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await http.get("/api/v1/experiments", params=query)
        assert response.status_code == 200, response.text
        items += response.json()["items"]
        cursor = response.json()["next"]
        if cursor is None:
            return items


def names(items: list[dict[str, Any]]) -> list[str]:
    return [e["name"] for e in items]


def summarized(eid: str, name: str, values: list[float], **more: Any) -> MetricsSummarized:
    """The event logstream sends after storing ``values`` (all of the metric so far)."""
    entry = MetricSummaryEntry(
        name=name,
        last=values[-1],
        last_step=len(values) - 1,
        last_ts=datetime.now(UTC),
        min=min(values),
        max=max(values),
        count=len(values),
    )
    return MetricsSummarized(experiment_id=uuid.UUID(eid), metrics=[entry], **more)


async def test_posted_points_sort_the_list_by_last_min_and_max(
    http: httpx.AsyncClient, make_project: MakeProject, logstream: Logstream
) -> None:
    project = (await make_project())["name"]
    series = {
        "a": [0.9, 0.2, 0.5],  # last 0.5, min 0.2, max 0.9
        "b": [0.4, 0.3],  # last 0.3, min 0.3, max 0.4
        "c": [1.5, 0.1, 0.7, 0.6],  # last 0.6, min 0.1, max 1.5
    }
    for name, values in series.items():
        eid = await submit(http, project, name)
        points = [{"name": "loss", "value": v, "step": i} for i, v in enumerate(values)]
        posted = await http.post(
            f"/api/v1/experiments/{eid}/metrics",
            json={"points": [*points, {"_scores": {"acc": values[0]}}]},
        )
        assert posted.status_code == 201, posted.text
    await submit(http, project, "none")  # no metric at all

    async def summarised() -> bool:
        items = await listing(http, project=project, metric="loss.max>0")
        return len(items) == 3

    await eventually(summarised, what="the summaries to reach the API")

    by = {
        key: names(await listing(http, project=project, sort=key, limit=2))
        for key in [
            "metrics.loss",
            "-metrics.loss",
            "metrics.loss.min",
            "-metrics.loss.max",
        ]
    }
    # Experiments without the metric come last whichever the direction.
    assert by["metrics.loss"] == ["b", "a", "c", "none"]
    assert by["-metrics.loss"] == ["c", "a", "b", "none"]
    assert by["metrics.loss.min"] == ["c", "a", "b", "none"]
    assert by["-metrics.loss.max"] == ["c", "a", "b", "none"]
    # fleetlab.result's scores, sent the same way, become the experiment's results._scores.
    by_score = await listing(http, project=project, sort="-results._scores.acc")
    assert [e["results"].get("_scores", {}).get("acc") for e in by_score] == [
        1.5,
        0.9,
        0.4,
        None,
    ]
    # Scores sort through their own index; without the score comes last here too.
    by_score = await listing(http, project=project, sort="results._scores.acc", limit=1)
    assert names(by_score) == ["b", "a", "c", "none"]


async def test_metric_sort_pages_are_stable_under_inserts(
    http: httpx.AsyncClient, make_project: MakeProject, publisher: NatsBroker
) -> None:
    project = (await make_project())["name"]
    values = [0.5, 0.1, 0.9, 0.3, 0.7, 0.3]
    ids = [await submit(http, project, f"r{i}") for i in range(len(values))]
    for eid, v in zip(ids, values, strict=True):
        await publish_event(publisher, summarized(eid, "loss", [v]))

    async def all_there() -> bool:
        return len(await listing(http, project=project, metric="loss>=0")) == len(ids)

    await eventually(all_there, what="the summaries")

    first = await http.get(
        "/api/v1/experiments", params={"project": project, "sort": "-metrics.loss", "limit": 3}
    )
    page1 = first.json()
    assert [e["name"] for e in page1["items"]] == ["r2", "r4", "r0"]
    # New experiments land before, inside and after the pages already read.
    for i, v in enumerate([0.95, 0.2, 0.01]):
        eid = await submit(http, project, f"new{i}")
        await publish_event(publisher, summarized(eid, "loss", [v]))

    async def new_there() -> bool:
        return len(await listing(http, project=project, metric="loss>=0")) == len(ids) + 3

    await eventually(new_there, what="the new summaries")
    rest = await listing(http, project=project, sort="-metrics.loss", limit=3, cursor=page1["next"])
    # Ties (0.3) go by id, descending too; nothing read twice, nothing skipped.
    assert names(rest) == ["r5", "r3", "new1", "r1", "new2"]


async def test_filters_and_a_stale_summary(
    http: httpx.AsyncClient, make_project: MakeProject, publisher: NatsBroker
) -> None:
    project = (await make_project())["name"]
    a, b, c = [await submit(http, project, n) for n in "abc"]
    await publish_event(publisher, summarized(a, "loss", [0.8, 0.25]))
    await publish_event(publisher, summarized(b, "loss", [0.35, 0.4]))
    await publish_event(publisher, summarized(c, "val.loss", [0.1]))

    async def ready() -> bool:
        got = await listing(http, project=project, metric="loss>=0")
        both = await listing(http, project=project, metric="val.loss>=0")
        return len(got) == 2 and len(both) == 1

    await eventually(ready, what="the summaries")

    assert names(await listing(http, project=project, metric="loss<0.3")) == ["a"]
    assert names(await listing(http, project=project, metric="loss.max > 0.5")) == ["a"]
    assert names(await listing(http, project=project, metric="loss.min>=0.35", sort="name")) == [
        "b"
    ]
    assert names(await listing(http, project=project, metric=["loss<1", "loss!=0.25"])) == ["b"]
    # A dotted metric name is a name; only .last/.min/.max at the end choose the value.
    assert names(await listing(http, project=project, metric="val.loss.last<0.2")) == ["c"]

    # An older summary (fewer points) arriving late changes nothing.
    await publish_event(publisher, summarized(a, "loss", [0.8]))
    marker = await submit(http, project, "marker")
    await publish_event(publisher, summarized(marker, "loss", [5.0]))

    async def marker_in() -> bool:
        return "marker" in names(await listing(http, project=project, metric="loss>1"))

    await eventually(marker_in, what="the marker's summary")
    assert names(await listing(http, project=project, metric="loss<0.3")) == ["a"]


@pytest.mark.parametrize("bad", ["loss", "loss<", "<0.3", "loss<abc", "loss<nan", "loss<<1"])
async def test_a_bad_metric_filter_is_a_422_naming_it(http: httpx.AsyncClient, bad: str) -> None:
    response = await http.get("/api/v1/experiments", params={"metric": bad})
    assert response.status_code == 422, response.text
    assert "metric" in response.text


async def test_a_cursor_of_another_sort_is_refused(
    http: httpx.AsyncClient, make_project: MakeProject, publisher: NatsBroker
) -> None:
    project = (await make_project())["name"]
    for n in "ab":
        await publish_event(publisher, summarized(await submit(http, project, n), "loss", [1.0]))

    async def ready() -> bool:
        return len(await listing(http, project=project, metric="loss>0")) == 2

    await eventually(ready, what="the summaries")
    first = await http.get(
        "/api/v1/experiments", params={"project": project, "sort": "metrics.loss", "limit": 1}
    )
    cursor = first.json()["next"]
    response = await http.get(
        "/api/v1/experiments",
        params={"project": project, "sort": "metrics.loss.min", "cursor": cursor},
    )
    assert response.status_code == 422
    assert "cursor" in response.text


async def test_score_names_with_spaces_sort(client: httpx.AsyncClient) -> None:
    # FGMachine's own results files name scores like "Test Score".
    response = await client.get(
        "/api/v1/experiments", params={"sort": "-results._scores.Test Score", "limit": 5}
    )
    assert response.status_code == 200, response.text
    bad = await client.get("/api/v1/experiments", params={"sort": "results._scores.a\x01b"})
    assert bad.status_code == 422
    assert "sort" in bad.json()["fields"]
