"""FGMachine's projects.json on an agent: parsing the real fixtures, and running a project with
the agent's own command."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path

import pytest

from fleetlab_agent.projects import ProjectsFileError, load_projects
from fleetlab_agent.service import Agent
from fleetlab_agent.settings import AgentSettings
from fleetlab_common.broker import make_broker
from fleetlab_common.events import (
    EncodedEvent,
    ExperimentAssigned,
    ExperimentFinished,
    LogLine,
)
from fleetlab_common.runspec import RunSpec

# shared/ stands beside the checkout (CI) or at /work/shared (the developers' machines).
SHARED = next(
    p
    for p in (Path(__file__).resolve().parents[3].parent / "shared", Path("/work/shared"))
    if (p / "fixtures").is_dir()
)
FIXTURES = SHARED / "fixtures" / "fgmachine" / "projects"


@pytest.mark.parametrize(
    "name",
    [
        "bayesian-optimisation.project.json",
        "calinski-harabasz.project.json",
        "example.projects.json",
    ],
)
def test_the_fgmachine_fixtures_load(name: str) -> None:
    projects = load_projects(FIXTURES / name)
    assert projects
    for project in projects.values():
        assert 0 < project.capacity <= 1  # "0.2" written as a string is read as a number
        assert project.argv_prefix()[0] == project.command


def test_a_repeated_project_is_refused_by_name() -> None:
    path = FIXTURES / "recurrent-attention-model.project.json"
    with pytest.raises(
        ProjectsFileError, match=r"recurrent-attention-model.*'<Project ID>' is defined twice"
    ):
        load_projects(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"line 1: not valid JSON"),
        ('{"p": {"command": "python", "options": "triple-dash"}}', r"project 'p', field 'options'"),
        ('{"p": {"args": []}}', r"project 'p', field 'command'"),
        ('{"p": {"command": "x", "capacity": "lots"}}', r"field 'capacity'"),
    ],
)
def test_bad_files_are_refused_with_the_project_and_field(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "projects.json"
    path.write_text(content)
    with pytest.raises(ProjectsFileError, match=message):
        load_projects(path)


async def test_an_agent_runs_a_project_with_its_own_command(tmp_path: Path, nats_url: str) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "main.py").write_text("import os, sys; print(os.getcwd()); print(sys.argv[1:])")
    projects = tmp_path / "projects.json"
    projects.write_text(
        json.dumps(
            {
                "local-demo": {
                    "cwd": "./code",
                    "command": sys.executable,
                    "args": ["main.py"],
                    "options": "single-dash",
                }
            }
        )
    )
    settings = AgentSettings(
        nats={"url": nats_url}, home=tmp_path, agent={"name": "local", "projects": projects}
    )
    published: list[object] = []
    agent = Agent(settings, make_broker(settings.nats, "unused"))
    assert agent.heartbeat().projects == ["local-demo"]

    async def capture(event: object) -> None:
        # Line batches come already encoded: read back as the consumers read them.
        published.append(event.decode() if isinstance(event, EncodedEvent) else event)

    agent.spool.put = capture  # type: ignore[method-assign]  # observe what it would send
    try:
        for project in ("local-demo", "elsewhere"):
            await agent.handle_assigned(
                ExperimentAssigned(
                    experiment_id=uuid.uuid4(),
                    agent_id="local",
                    project=project,
                    options={"seed": 3},
                    run=RunSpec(),
                )
            )
        async with asyncio.timeout(20):
            while sum(isinstance(e, ExperimentFinished) for e in published) < 2:
                await asyncio.sleep(0.01)
    finally:
        await agent.shutdown()

    finished = [e for e in published if isinstance(e, ExperimentFinished)]
    refused = next(e for e in finished if not e.started)
    assert refused.status == "failed"
    assert refused.reason == "this agent does not serve project 'elsewhere'"
    ran = next(e for e in finished if e.started)
    assert ran.status == "succeeded"
    lines = [ln.line for e in published if hasattr(e, "lines") for ln in e.lines]  # type: ignore[attr-defined]
    assert lines[0] == str((tmp_path / "code").resolve())
    assert lines[1] == f"['-seed', '3', '-_id', '{ran.experiment_id}']"
    assert all(isinstance(ln, LogLine) for e in published if hasattr(e, "lines") for ln in e.lines)  # type: ignore[attr-defined]
