"""``/api/v1/projects``: creating, reading and refusing projects, FGLab's schemas included."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

FGLAB_SCHEMAS = sorted(Path("/work/shared/fixtures/fglab/schemas").glob("*.json"))
# FGLab's own fixture gives this bool option the *string* "false" as its default.
BAD_DEFAULT_FIXTURE = "recurrent-attention-model.json"

SCHEMA: dict[str, Any] = {
    "lr": {"type": "float", "default": 0.1},
    "epochs": {"type": "int", "default": 10},
    "optimiser": {"type": "enum", "default": "sgd", "values": ["sgd", "adam"]},
    "cuda": {"type": "bool", "default": False},
    "tag": {"type": "string"},
}


def _body(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "command": ["python3", "train.py"], "schema": SCHEMA, **fields}


def _assert_error(response: httpx.Response, status: int, field: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert isinstance(body["error"], str)
    assert body["error"]
    assert field in body["fields"], body
    assert isinstance(body["fields"][field], str)
    return body


async def test_create_returns_the_project_with_its_run_spec(
    client: httpx.AsyncClient, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("mnist")
    response = await client.post(
        "/api/v1/projects",
        json=_body(
            name,
            option_style="single-dash",
            boolean="optional",
            parameters=[{"pass-as": "--verbose"}],
            env={"CUDA_VISIBLE_DEVICES": "0"},
            timeout_s=3600,
            max_retries=2,
        ),
    )

    assert response.status_code == 201, response.text
    project = response.json()
    uuid.UUID(project["id"])
    assert project["name"] == name
    # FGLab's format exactly: an option without a default or values has no such keys (no nulls).
    assert project["schema"] == SCHEMA
    assert project["command"] == ["python3", "train.py"]
    assert project["option_style"] == "single-dash"
    assert project["boolean"] == "optional"
    assert project["parameters"] == [{"pass-as": "--verbose"}]
    assert project["env"] == {"CUDA_VISIBLE_DEVICES": "0"}
    assert project["timeout_s"] == 3600
    assert project["max_retries"] == 2


async def test_run_spec_defaults(
    client: httpx.AsyncClient, unique_name: Callable[[str], str]
) -> None:
    response = await client.post(
        "/api/v1/projects", json={"name": unique_name("bare"), "command": ["./run"]}
    )

    assert response.status_code == 201, response.text
    project = response.json()
    assert project["schema"] == {}
    assert project["option_style"] == "double-dash"
    assert project["boolean"] == "mandatory"
    assert project["parameters"] == []
    assert project["env"] == {}
    assert project["timeout_s"] is None
    assert project["max_retries"] == 0


async def test_get_by_id_and_by_name_and_list(
    client: httpx.AsyncClient, unique_name: Callable[[str], str]
) -> None:
    created = (await client.post("/api/v1/projects", json=_body(unique_name("get")))).json()

    by_id = await client.get(f"/api/v1/projects/{created['id']}")
    by_name = await client.get(f"/api/v1/projects/{created['name']}")
    listed = await client.get("/api/v1/projects")

    assert by_id.status_code == 200
    assert by_id.json() == created
    assert by_name.status_code == 200
    assert by_name.json() == created
    assert listed.status_code == 200
    projects = listed.json()
    assert created in projects
    names = [p["name"] for p in projects]
    assert names == sorted(names)


async def test_a_name_that_looks_like_an_id_still_works_as_a_name(
    client: httpx.AsyncClient,
) -> None:
    # 32 hex digits is a valid name (a hash, say) and also parses as a uuid.
    name = uuid.uuid4().hex
    created = await client.post("/api/v1/projects", json=_body(name))
    assert created.status_code == 201, created.text

    response = await client.get(f"/api/v1/projects/{name}")

    assert response.status_code == 200, response.text
    assert response.json()["id"] == created.json()["id"]


async def test_unknown_project_is_404(client: httpx.AsyncClient) -> None:
    for ref in ("no-such-project", str(uuid.uuid4())):
        response = await client.get(f"/api/v1/projects/{ref}")
        assert response.status_code == 404
        assert ref in response.json()["error"]


async def test_duplicate_name_is_409_and_keeps_the_first(
    client: httpx.AsyncClient, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("dup")
    first = (await client.post("/api/v1/projects", json=_body(name))).json()

    response = await client.post("/api/v1/projects", json=_body(name, command=["other"]))

    body = _assert_error(response, 409, "name")
    assert name in body["error"]
    assert (await client.get(f"/api/v1/projects/{name}")).json() == first


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"command": ["python3", ""]}, "command", id="empty-command-word"),
        pytest.param({"name": "has space"}, "name", id="name-with-space"),
        pytest.param({"name": ""}, "name", id="empty-name"),
        pytest.param({"name": "-leading-dash"}, "name", id="name-leading-dash"),
        pytest.param(
            {"schema": {"lr": {"type": "double", "default": 0.1}}},
            "schema.lr.type",
            id="unknown-option-type",
        ),
        pytest.param({"schema": {"opt": {"type": "enum"}}}, "schema.opt", id="enum-no-values"),
        pytest.param(
            {"schema": {"opt": {"type": "enum", "values": []}}},
            "schema.opt",
            id="enum-empty-values",
        ),
        pytest.param(
            {"schema": {"lr": {"type": "float", "values": [0.1, 0.2]}}},
            "schema.lr",
            id="values-on-non-enum",
        ),
        pytest.param(
            {"schema": {"epochs": {"type": "int", "default": 2.5}}},
            "schema.epochs",
            id="default-of-wrong-type",
        ),
        pytest.param(
            {"schema": {"opt": {"type": "enum", "values": ["a"], "default": "b"}}},
            "schema.opt",
            id="default-not-in-values",
        ),
        pytest.param(
            {"schema": {"lr": {"type": "float", "min": 0}}},
            "schema.lr.min",
            id="unknown-option-key",
        ),
        # An option may be named like a request part ("path", "query", "body"): the path
        # must still lead to it.
        pytest.param(
            {"schema": {"path": {"type": "file"}}}, "schema.path.type", id="option-named-path"
        ),
        # NUL: no argv word and no PostgreSQL text can hold one (it was a 500).
        pytest.param({"command": ["python3", "a\x00b"]}, "command", id="nul-in-command"),
        pytest.param({"env": {"A": "x\x00"}}, "env.A", id="nul-in-env"),
        pytest.param({"parameters": [{"pass-as": "--x\x00"}]}, "parameters", id="nul-in-parameter"),
        pytest.param(
            {"schema": {"s": {"type": "string", "default": "a\x00"}}},
            "schema.s",
            id="nul-in-default",
        ),
        pytest.param(
            {"schema": {"e": {"type": "enum", "values": ["a\x00"]}}},
            "schema.e",
            id="nul-in-enum-value",
        ),
        pytest.param({"colour": "red"}, "colour", id="unknown-top-level-key"),
        pytest.param({"option_style": "posix"}, "option_style", id="bad-option-style"),
        pytest.param({"boolean": "sometimes"}, "boolean", id="bad-boolean-style"),
        pytest.param({"max_retries": -1}, "max_retries", id="negative-retries"),
        pytest.param({"timeout_s": 0}, "timeout_s", id="zero-timeout"),
    ],
)
async def test_invalid_body_is_422_naming_the_field(
    client: httpx.AsyncClient,
    unique_name: Callable[[str], str],
    change: dict[str, Any],
    field: str,
) -> None:
    name = unique_name("bad")
    body = {**_body(name), **change}

    response = await client.post("/api/v1/projects", json=body)

    _assert_error(response, 422, field)
    if "name" not in change:
        assert (await client.get(f"/api/v1/projects/{name}")).status_code == 404


@pytest.mark.parametrize(
    ("schema", "field"),
    [
        pytest.param(b'{"e": {"type": "enum", "values": [NaN, 1]}}', "schema.e", id="enum-nan"),
        pytest.param(b'{"e": {"type": "enum", "values": [Infinity]}}', "schema.e", id="enum-inf"),
        pytest.param(b'{"f": {"type": "float", "default": NaN}}', "schema.f", id="default-nan"),
    ],
)
async def test_non_finite_numbers_are_422(
    client: httpx.AsyncClient, unique_name: Callable[[str], str], schema: bytes, field: str
) -> None:
    # Python's JSON reader takes NaN and Infinity; PostgreSQL's json does not (it was a 500).
    name = unique_name("nan")
    body = b'{"name": "%s", "command": ["x"], "schema": %s}' % (name.encode(), schema)

    response = await client.post(
        "/api/v1/projects", content=body, headers={"content-type": "application/json"}
    )

    _assert_error(response, 422, field)


async def test_ref_with_nul_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/projects/a%00b")

    assert response.status_code == 404
    assert response.json()["error"]


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/projects", content=b'{"name": "x", ', headers={"content-type": "application/json"}
    )

    body = _assert_error(response, 422, "body")
    assert "JSON" in body["error"]


@pytest.mark.parametrize("path", FGLAB_SCHEMAS, ids=lambda p: p.stem)
async def test_fglab_fixture_schemas(
    client: httpx.AsyncClient, unique_name: Callable[[str], str], path: Path
) -> None:
    schema = json.loads(path.read_text())
    name = unique_name(path.stem)

    response = await client.post(
        "/api/v1/projects", json={"name": name, "command": ["python3", "run.py"], "schema": schema}
    )

    if path.name == BAD_DEFAULT_FIXTURE:
        body = _assert_error(response, 422, "schema.cuda")
        message = body["error"]
        assert "cuda" in message
        assert "the default 'false' is not a valid bool" in message
        assert "true or false" in message
        assert body["fields"]["schema.cuda"].startswith("the default 'false' is not a valid bool")
        assert (await client.get(f"/api/v1/projects/{name}")).status_code == 404
    else:
        assert response.status_code == 201, response.text
        assert response.json()["schema"] == schema
        fetched = (await client.get(f"/api/v1/projects/{name}")).json()
        assert fetched["schema"] == schema
        # In the order given: FGLab lists the options, and FGMachine passes them, that way.
        assert list(fetched["schema"]) == list(schema)


def test_every_fglab_fixture_is_covered() -> None:
    assert len(FGLAB_SCHEMAS) >= 4
    assert BAD_DEFAULT_FIXTURE in {p.name for p in FGLAB_SCHEMAS}
