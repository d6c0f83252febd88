"""Schemathesis over the whole OpenAPI document of a running stack: generated requests, valid
and invalid, against every route. No 5xx, every status documented, every body as documented."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fleetlab_common.embedded import free_port
from fleetlab_common.testing.stack import TERMINAL, Stack, start_stack, stop_stack, wait_until

pytestmark = pytest.mark.e2e

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
CONFIG = Path(__file__).with_name("schemathesis.toml")
# Live streams never end by themselves: they are tested on their own.
STREAMS = r"/stream$|/ws$|/events$"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("openapi") / "home", free_port())
    yield stack
    stop_stack(stack)


def _config_with_real_things(stack: Stack, path: Path) -> Path:
    """The base configuration, plus path parameters that name things which exist, so that the
    generated requests reach the routes' logic and not only their 404s."""
    with httpx.Client(base_url=stack.url, timeout=10) as http:
        project = http.post(
            "/api/v1/projects",
            json={
                "name": "fuzzed",
                "command": ["true"],
                "schema": {"n": {"type": "int", "default": 1}},
            },
        )
        assert project.status_code == 201, project.text
        experiment = http.post("/api/v1/experiments", json={"project": "fuzzed"})
        assert experiment.status_code == 201, experiment.text
        experiment_id = experiment.json()["id"]
        wait_until(
            lambda: http.get(f"/api/v1/experiments/{experiment_id}").json()["status"] in TERMINAL,
            30,
            "the experiment to end",
        )
    pinned = {
        r"^/api/v1/experiments/\\{ref\\}": experiment_id,
        r"^/api/v1/projects/\\{ref\\}": "fuzzed",
        r"^/api/v1/projects/\\{projectId\\}": project.json()["id"],
    }
    extra = "".join(
        f'\n[[operations]]\ninclude-path-regex = "{regex}"\nparameters = {{ "ref" = "{value}", '
        f'"projectId" = "{value}" }}\n'
        for regex, value in pinned.items()
    )
    path.write_text(CONFIG.read_text() + extra)
    return path


@pytest.mark.timeout(600)
def test_generated_requests_find_no_server_error_and_no_undocumented_answer(
    stack: Stack, tmp_path: Path
) -> None:
    config = _config_with_real_things(stack, tmp_path / "schemathesis.toml")
    run = subprocess.run(
        [
            SCHEMATHESIS,
            "--config-file",
            str(config),
            "run",
            f"{stack.url}/openapi.json",
            "--max-examples",
            "25",
            "--exclude-path-regex",
            STREAMS,
            "--no-color",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-3000:]
