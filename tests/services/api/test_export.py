"""Experiments: sorting, filters (tag, sweep), keyset paging for every sort, CSV/JSON export,
PATCH of name and notes, DELETE."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from fleetlab_common.ids import uuid7


@pytest.fixture
async def db(api_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """The API's own tables, to set what only events or other services would (scores,
    sweeps, ended states)."""
    conn = await asyncpg.connect(api_dsn, server_settings={"search_path": "api"})
    try:
        yield conn
    finally:
        await conn.close()


SCHEMA = {
    "lr": {"type": "float", "default": 0.1},
    "layers": {"type": "int", "default": 2},
}


async def _submit(client: httpx.AsyncClient, project: str, **fields: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/experiments", json={"project": project, **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _all_pages(
    client: httpx.AsyncClient, params: dict[str, Any], limit: int
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/api/v1/experiments", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        cursor = page["next"]
        if cursor is None:
            return items


@pytest.fixture
async def seeded(
    client: httpx.AsyncClient, make_project: Any, db: asyncpg.Connection
) -> tuple[str, list[dict[str, Any]]]:
    """Six experiments with repeated option values, some with scores, one without."""
    project = (await make_project(SCHEMA))["name"]
    lrs = [0.5, 0.1, 0.5, 0.01, 0.1, 0.5]
    made = []
    for i, lr in enumerate(lrs):
        made.append(
            await _submit(client, project, options={"lr": lr}, name=f"run-{5 - i}", tags=["a"])
        )
    for i, e in enumerate(made[:5]):
        scores = {"_scores": {"acc": [0.7, 0.9, 0.7, 0.8, 0.6][i]}, "note": f"n{i}"}
        await db.execute(
            "UPDATE experiments SET results = $2, status = 'succeeded' WHERE id = $1",
            uuid.UUID(e["id"]),
            json.dumps(scores),
        )
    return project, made


@pytest.mark.parametrize(
    "sort",
    [
        "options.lr",
        "-options.lr",
        "results._scores.acc",
        "-results._scores.acc",
        "name",
        "-name",
        "created_at",
        "-created_at",
        "status",
        "-id",
        "-priority",
        "exit_code",
        "-started_at",
    ],
)
async def test_every_sort_pages_completely_and_in_order(
    client: httpx.AsyncClient, seeded: tuple[str, list[dict[str, Any]]], sort: str
) -> None:
    project, made = seeded
    one_page = (
        await client.get("/api/v1/experiments", params={"project": project, "sort": sort})
    ).json()["items"]

    paged = await _all_pages(client, {"project": project, "sort": sort}, limit=2)

    assert [e["id"] for e in paged] == [e["id"] for e in one_page]
    assert sorted(e["id"] for e in paged) == sorted(e["id"] for e in made)


async def test_sort_by_option_and_score_values(
    client: httpx.AsyncClient, seeded: tuple[str, list[dict[str, Any]]]
) -> None:
    project, _ = seeded

    by_lr = await _all_pages(client, {"project": project, "sort": "-options.lr"}, limit=4)
    by_acc = await _all_pages(client, {"project": project, "sort": "-results._scores.acc"}, 4)

    assert [e["options"]["lr"] for e in by_lr] == [0.5, 0.5, 0.5, 0.1, 0.1, 0.01]
    scores = [e["results"].get("_scores", {}).get("acc") for e in by_acc]
    assert scores == [0.9, 0.8, 0.7, 0.7, 0.6, None]  # missing sorts lowest


async def test_paging_is_stable_under_inserts(
    client: httpx.AsyncClient, seeded: tuple[str, list[dict[str, Any]]]
) -> None:
    project, made = seeded
    params = {"project": project, "sort": "options.lr", "limit": 3}
    first = (await client.get("/api/v1/experiments", params=params)).json()
    # Inserted before the cursor's position: must not shift the next page.
    await _submit(client, project, options={"lr": 0.001})

    second = (
        await client.get("/api/v1/experiments", params={**params, "cursor": first["next"]})
    ).json()

    seen = [e["id"] for e in first["items"] + second["items"]]
    assert len(seen) == len(set(seen))
    assert sorted(seen) == sorted(e["id"] for e in made)


async def test_cursor_of_another_sort_is_422(
    client: httpx.AsyncClient, seeded: tuple[str, list[dict[str, Any]]]
) -> None:
    project, _ = seeded
    first = (
        await client.get(
            "/api/v1/experiments", params={"project": project, "sort": "name", "limit": 1}
        )
    ).json()

    response = await client.get(
        "/api/v1/experiments",
        params={"project": project, "sort": "-name", "cursor": first["next"]},
    )

    assert response.status_code == 422
    assert "cursor" in response.json()["fields"]


@pytest.mark.parametrize(
    "sort", ["colour", "options.", "metrics.", "results.a\x01b", "results.a..b"]
)
async def test_unknown_sort_is_422(client: httpx.AsyncClient, sort: str) -> None:
    response = await client.get("/api/v1/experiments", params={"sort": sort})

    assert response.status_code == 422
    assert "sort" in response.json()["fields"]


async def test_filters_by_tag_and_sweep(
    client: httpx.AsyncClient, make_project: Any, db: asyncpg.Connection
) -> None:
    project = (await make_project(SCHEMA))["name"]
    tagged = await _submit(client, project, tags=["best", "x"])
    other = await _submit(client, project, tags=["x"])
    sweep = uuid7()
    await db.execute(
        "UPDATE experiments SET sweep_id = $2 WHERE id = $1", uuid.UUID(other["id"]), sweep
    )

    by_tag = await _all_pages(client, {"project": project, "tag": "best"}, limit=10)
    by_sweep = await _all_pages(client, {"sweep": str(sweep)}, limit=10)

    assert [e["id"] for e in by_tag] == [tagged["id"]]
    assert [e["id"] for e in by_sweep] == [other["id"]]
    assert by_sweep[0]["sweep_id"] == str(sweep)
    bad = await client.get("/api/v1/experiments", params={"sweep": "nope"})
    assert bad.status_code == 422


async def test_export_csv_has_a_column_per_option_and_score(
    client: httpx.AsyncClient, seeded: tuple[str, list[dict[str, Any]]]
) -> None:
    project, made = seeded

    response = await client.get(
        "/api/v1/experiments/export",
        params={"project": project, "format": "csv", "sort": "-results._scores.acc"},
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == len(made)
    assert rows[0]["results._scores.acc"] == "0.9"
    assert rows[-1]["results._scores.acc"] == ""
    assert {"options.lr", "options.layers", "results.note", "status"} <= set(rows[0])
    assert rows[0]["options.layers"] == "2"


async def test_export_json_with_filters(
    client: httpx.AsyncClient, seeded: tuple[str, list[dict[str, Any]]]
) -> None:
    project, _ = seeded

    response = await client.get(
        "/api/v1/experiments/export",
        params={"project": project, "format": "json", "status": "queued"},
    )

    assert response.status_code == 200
    records = response.json()
    assert [r["status"] for r in records] == ["queued"]
    assert (
        await client.get("/api/v1/experiments/export", params={"format": "xml"})
    ).status_code == 422


async def test_patch_name_and_notes(client: httpx.AsyncClient, make_project: Any) -> None:
    project = (await make_project(SCHEMA))["name"]
    experiment = await _submit(client, project, name="first")

    notes = await client.patch(
        f"/api/v1/experiments/{experiment['id']}", json={"notes": "lr too high"}
    )
    renamed = await client.patch(f"/api/v1/experiments/{experiment['id']}", json={"name": None})

    assert notes.status_code == 200, notes.text
    assert notes.json()["notes"] == "lr too high"
    assert notes.json()["name"] == "first"
    assert renamed.json()["name"] is None
    assert renamed.json()["notes"] == "lr too high"
    bad = await client.patch(f"/api/v1/experiments/{experiment['id']}", json={"status": "x"})
    assert bad.status_code == 422
    assert "status" in bad.json()["fields"]


async def test_delete_only_once_ended(
    client: httpx.AsyncClient, make_project: Any, db: asyncpg.Connection
) -> None:
    project = (await make_project(SCHEMA))["name"]
    experiment = await _submit(client, project)
    url = f"/api/v1/experiments/{experiment['id']}"

    refused = await client.delete(url)
    assert refused.status_code == 409
    await db.execute(
        "UPDATE experiments SET status = 'failed' WHERE id = $1", uuid.UUID(experiment["id"])
    )
    assert (await client.delete(url)).status_code == 204
    assert (await client.get(url)).status_code == 404
    assert (await client.delete(url)).status_code == 404
