"""Request bodies over the documented limit get 413 and change nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI

MIB = 1024 * 1024


@pytest.fixture
def small_limit(api: FastAPI) -> Iterator[None]:
    """The API's general body limit lowered to 1 MiB for one test."""
    state = api.state.fleetlab
    before = state.settings
    state.settings = before.model_copy(update={"max_body_mb": 1, "max_metrics_body_mb": 2})
    try:
        yield
    finally:
        state.settings = before


def _big_project(name: str, size: int) -> bytes:
    return json.dumps(
        {"name": name, "command": ["python3", "train.py"], "env": {"PAD": "x" * size}}
    ).encode()


async def test_declared_length_over_the_limit_is_413_and_creates_nothing(
    client: httpx.AsyncClient, small_limit: None
) -> None:
    name = f"big-{uuid.uuid4().hex[:8]}"
    response = await client.post(
        "/api/v1/projects",
        content=_big_project(name, 2 * MIB),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413, response.text
    assert "1 MiB" in response.json()["error"]
    assert (await client.get(f"/api/v1/projects/{name}")).status_code == 404


async def test_streamed_body_over_the_limit_is_413_and_creates_nothing(
    client: httpx.AsyncClient, small_limit: None
) -> None:
    name = f"chunked-{uuid.uuid4().hex[:8]}"
    body = _big_project(name, 2 * MIB)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    response = await client.post(
        "/api/v1/projects", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert "too large" in response.json()["error"]
    assert (await client.get(f"/api/v1/projects/{name}")).status_code == 404


async def test_a_body_under_the_limit_still_works(
    client: httpx.AsyncClient, small_limit: None
) -> None:
    name = f"fits-{uuid.uuid4().hex[:8]}"
    response = await client.post(
        "/api/v1/projects",
        content=_big_project(name, MIB // 2),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 201, response.text


async def test_metric_batches_have_their_own_larger_limit(
    client: httpx.AsyncClient, small_limit: None
) -> None:
    points = [{"name": "loss", "value": 0.5, "step": i} for i in range(40_000)]
    body = json.dumps(points).encode()
    assert MIB < len(body) < 2 * MIB
    missing = uuid.uuid4()
    response = await client.post(
        f"/api/v1/experiments/{missing}/metrics",
        content=body,
        headers={"content-type": "application/json"},
    )
    # Over the general limit, under the metrics one: the route itself answers.
    assert response.status_code == 404, response.text
    too_big = json.dumps(points * 2).encode()
    response = await client.post(
        f"/api/v1/experiments/{missing}/metrics",
        content=too_big,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413, response.text
