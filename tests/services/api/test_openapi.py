"""The OpenAPI document: complete enough to write a client from it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

METHODS = ("get", "put", "post", "patch", "delete")


@pytest.fixture
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    for option in [schema, *schema.get("anyOf", [])]:
        ref = option.get("$ref")
        if ref:
            return document["components"]["schemas"][ref.rsplit("/", 1)[-1]]  # type: ignore[no-any-return]
    return schema


async def test_every_route_documents_its_errors_in_the_one_error_shape(
    document: dict[str, Any],
) -> None:
    assert document["components"]["schemas"]["Error"]["required"] == ["error"]
    for method, path, op in _operations(document):
        responses = op["responses"]
        assert "422" in responses, (method, path)
        error = responses["422"]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/Error"}, (method, path)
        if "{" in path:
            assert "404" in responses, (method, path)
        if "requestBody" in op:
            assert {"400", "413"} <= set(responses), (method, path)
        if path not in ("/healthz", "/api/v1/health"):
            assert "401" in responses, (method, path)


async def test_every_json_body_has_an_example(document: dict[str, Any]) -> None:
    missing = []
    for method, path, op in _operations(document):
        content = op.get("requestBody", {}).get("content", {})
        media = content.get("application/json")
        if media is None:
            continue
        schema = _resolve(document, media.get("schema", {}))
        if not (media.get("example") or media.get("examples") or schema.get("examples")):
            missing.append(f"{method.upper()} {path}")
    assert not missing, missing


async def test_every_route_says_what_it_does(document: dict[str, Any]) -> None:
    undocumented = [
        f"{method.upper()} {path}"
        for method, path, op in _operations(document)
        if not (op.get("description") or "").strip()
    ]
    assert not undocumented, undocumented
