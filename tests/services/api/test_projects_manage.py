"""Projects: PATCH, DELETE (forced or not), and imports from FGLab, MachineLabs and FGMachine
files — every fixture of the earlier systems either imports or is refused by file, line and
field."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from fleetlab_api.projects.imports import MACHINELABS_IMAGES

FIXTURES = Path("/work/shared/fixtures")
ML_YAMLS = sorted((FIXTURES / "machinelabs/ml-yaml").glob("*.ml.yaml"))
FGMACHINE = sorted((FIXTURES / "fgmachine/projects").glob("*.json"))
FGLAB = sorted((FIXTURES / "fglab/schemas").glob("*.json"))

# file -> (line, field, words of the reason) for the fixtures that are refused
REFUSED: dict[str, tuple[int, str, str]] = {
    "recurrent-attention-model.json": (2, "cuda", "the default 'false' is not a valid bool"),
    "docs-configuring-labs-3.ml.yaml": (1, "dockerImageId", "unknown image 'docker_image_name'"),
    "blog-announcing-gpu-support-and-revisiting-the-neural-style-transfer-1.ml.yaml": (
        1,
        "mounts",
        "mounts of MachineLabs' shared datasets are not available",
    ),
    "recurrent-attention-model.project.json": (11, "<Project ID>", "the key is repeated"),
}


async def _import(
    client: httpx.AsyncClient, path: Path, name: str, fmt: str | None = None
) -> httpx.Response:
    data = {"name": name} if fmt is None else {"name": name, "format": fmt}
    files = {"file": (path.name, path.read_bytes())}
    return await client.post("/api/v1/projects/import", data=data, files=files)


def test_machinelabs_images_match_the_fixture() -> None:
    catalog = json.loads((FIXTURES / "machinelabs/firebase-data/docker_images.json").read_text())
    assert set(MACHINELABS_IMAGES) == set(catalog["common"])


@pytest.mark.parametrize("path", [*FGLAB, *ML_YAMLS, *FGMACHINE], ids=lambda p: p.name)
async def test_every_fixture_imports_or_is_refused_by_file_line_and_field(
    client: httpx.AsyncClient, unique_name: Callable[[str], str], path: Path
) -> None:
    name = unique_name("imp")
    response = await _import(client, path, name)

    if path.name in REFUSED:
        line, field, why = REFUSED[path.name]
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["error"].startswith(f"{path.name}, line {line}: {field}: "), body
        assert why in body["error"]
        assert field in body["fields"]
        assert (await client.get(f"/api/v1/projects/{name}")).status_code == 404
        return
    assert response.status_code == 201, response.text
    projects = response.json()
    assert projects
    for project in projects:
        fetched = await client.get(f"/api/v1/projects/{project['name']}")
        assert fetched.status_code == 200
        assert fetched.json()["name"].startswith(name)


async def test_ml_yaml_maps_to_the_run_spec(
    client: httpx.AsyncClient, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    path = tmp_path / "lab.ml.yaml"
    path.write_text(
        "dockerImageId: keras_v2-0-x_python_3-1\nhardwareType: gpu\n"
        "inputs:\n  - name: mnist.npz\n    url: https://example.com/mnist.npz\n"
        "parameters:\n  - pass-as: --epochs=2\n  - pass-as: 5\n"
    )
    response = await _import(client, path, unique_name("lab"))

    assert response.status_code == 201, response.text
    (project,) = response.json()
    assert project["command"] == ["python3", "main.py"]
    assert project["image"] == "keras_v2-0-x_python_3-1"
    assert project["labels"] == ["gpu"]
    assert project["inputs"] == [{"name": "mnist.npz", "url": "https://example.com/mnist.npz"}]
    assert project["parameters"] == [{"pass-as": "--epochs=2"}, {"pass-as": "5"}]


async def test_bad_input_in_ml_yaml_names_line_and_field(
    client: httpx.AsyncClient, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    path = tmp_path / "lab.ml.yaml"
    path.write_text(
        "inputs:\n  - name: ok.npz\n    url: https://x/y\n  - name: ../up\n    url: ftp://x\n"
    )
    response = await _import(client, path, unique_name("lab"))

    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith("lab.ml.yaml, line 4: inputs.1.name: ")


async def test_fgmachine_entry_keeps_style_capacity_and_results(
    client: httpx.AsyncClient, unique_name: Callable[[str], str]
) -> None:
    path = FIXTURES / "fgmachine/projects/calinski-harabasz.project.json"
    response = await _import(client, path, unique_name("ch"))

    assert response.status_code == 201, response.text
    (project,) = response.json()
    assert project["command"] == ["matlab", "-nodisplay", "-r", "clustering"]
    assert project["option_style"] == "function"
    assert project["capacity"] == 0.1  # written as the string "0.1" in FGMachine's file
    assert project["results"] == "./examples/Calinski-Harabasz"
    assert project["cwd"] == "./examples/Calinski-Harabasz"


async def test_fglab_schema_route_names_the_project_after_the_file(
    client: httpx.AsyncClient, api_dsn: str
) -> None:
    path = FIXTURES / "fglab/schemas/bayesian-optimisation.json"
    # The route takes the name from the file: clear a project a previous run left behind.
    conn = await asyncpg.connect(api_dsn, server_settings={"search_path": "api"})
    try:
        await conn.execute("DELETE FROM projects WHERE name = 'bayesian-optimisation'")
    finally:
        await conn.close()

    response = await client.post(
        "/api/v1/projects/schema", files={"schema": (path.name, path.read_bytes())}
    )

    assert response.status_code == 201, response.text
    assert response.json()["name"] == "bayesian-optimisation"
    assert response.json()["schema"] == json.loads(path.read_text())
    again = await client.post(
        "/api/v1/projects/schema", files={"schema": (path.name, path.read_bytes())}
    )
    assert again.status_code == 409


async def test_fglab_schema_route_refuses_the_string_bool_default(
    client: httpx.AsyncClient,
) -> None:
    path = FIXTURES / "fglab/schemas/recurrent-attention-model.json"
    response = await client.post(
        "/api/v1/projects/schema", files={"schema": (path.name, path.read_bytes())}
    )

    assert response.status_code == 422
    assert response.json()["error"].startswith("recurrent-attention-model.json, line 2: cuda: ")


async def test_malformed_json_names_the_line(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/projects/schema", files={"schema": ("x.json", b'{\n  "a": {\n  "type": }\n}')}
    )

    assert response.status_code == 422
    assert response.json()["error"].startswith("x.json, line 3: malformed JSON")


async def test_patch_changes_the_fields_given(
    client: httpx.AsyncClient, make_project: Any, unique_name: Callable[[str], str]
) -> None:
    project = await make_project({"lr": {"type": "float", "default": 0.1}})
    new_name = unique_name("renamed")

    response = await client.patch(
        f"/api/v1/projects/{project['id']}",
        json={"name": new_name, "command": ["python3", "b.py"], "max_retries": 2},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == new_name
    assert body["command"] == ["python3", "b.py"]
    assert body["max_retries"] == 2
    assert body["schema"] == project["schema"]
    assert body["updated_at"] > project["updated_at"]
    assert (await client.get(f"/api/v1/projects/{new_name}")).json()["id"] == project["id"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"schema": {"x": {"type": "bool", "default": "false"}}}, "schema.x"),
        ({"option_style": "posix"}, "option_style"),
        ({"colour": "red"}, "colour"),
        ({"name": None}, "name"),
    ],
)
async def test_patch_refuses_what_creation_refuses(
    client: httpx.AsyncClient, make_project: Any, change: dict[str, Any], field: str
) -> None:
    project = await make_project()

    response = await client.patch(f"/api/v1/projects/{project['name']}", json=change)

    assert response.status_code == 422, response.text
    assert field in response.json()["fields"]
    assert (await client.get(f"/api/v1/projects/{project['id']}")).json() == project


async def test_patch_to_a_taken_name_is_409(client: httpx.AsyncClient, make_project: Any) -> None:
    first, second = await make_project(), await make_project()

    response = await client.patch(f"/api/v1/projects/{second['id']}", json={"name": first["name"]})

    assert response.status_code == 409


async def test_delete_refused_while_experiments_are_queued_unless_forced(
    client: httpx.AsyncClient, make_project: Any
) -> None:
    project = await make_project()
    submitted = await client.post("/api/v1/experiments", json={"project": project["name"]})
    assert submitted.status_code == 201

    refused = await client.delete(f"/api/v1/projects/{project['name']}")
    assert refused.status_code == 409
    assert "force" in refused.json()["fields"]
    assert (await client.get(f"/api/v1/projects/{project['name']}")).status_code == 200

    forced = await client.delete(f"/api/v1/projects/{project['name']}", params={"force": "true"})
    assert forced.status_code == 204
    assert (await client.get(f"/api/v1/projects/{project['name']}")).status_code == 404
    gone = await client.get(f"/api/v1/experiments/{submitted.json()['id']}")
    assert gone.status_code == 404


async def test_delete_unknown_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.delete("/api/v1/projects/no-such-project")).status_code == 404
