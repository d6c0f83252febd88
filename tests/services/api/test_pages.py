"""``GET /`` (the page listing experiments) and ``GET /api/v1/asyncapi.json``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

MakeProject = Callable[..., Awaitable[dict[str, Any]]]


async def test_index_lists_submitted_experiments(
    client: httpx.AsyncClient, make_project: MakeProject
) -> None:
    project = await make_project({})
    named = await client.post(
        "/api/v1/experiments", json={"project": project["name"], "name": "<b>baseline</b>"}
    )
    unnamed = await client.post("/api/v1/experiments", json={"project": project["name"]})
    assert named.status_code == unnamed.status_code == 201

    response = await client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert project["name"] in page
    assert f"/api/v1/experiments/{named.json()['id']}" in page
    # A name is shown escaped, never as markup.
    assert "&lt;b&gt;baseline&lt;/b&gt;" in page
    assert "<b>baseline</b>" not in page
    # An experiment without a name shows its id, with a link to its log.
    unnamed_id = unnamed.json()["id"]
    assert f">{unnamed_id}</a>" in page
    assert f"/api/v1/experiments/{unnamed_id}/logs" in page
    # Newest first.
    assert page.index(unnamed_id) < page.index(named.json()["id"])


async def test_asyncapi_document(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/asyncapi.json")

    assert response.status_code == 200
    document = response.json()
    assert document["asyncapi"].startswith("3.")
    channels = document["channels"]
    assert "api.experiment.submitted" in channels
    assert "agent.experiment.finished" in channels
