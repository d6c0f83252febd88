"""FGMachine's results folder: JSON files a running program writes become the experiment's
results (visible in the record while it runs), a malformed file is skipped and counted, and
every file of the folder is uploaded when the run ends. Through the real API and agent."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import uvicorn

from fleetlab_agent import handlers
from fleetlab_agent.results import ResultsWatcher, merge
from fleetlab_agent.service import Agent
from fleetlab_agent.settings import AgentSettings
from fleetlab_api.app import create_app
from fleetlab_api.settings import ApiSettings
from fleetlab_common.broker import ensure_streams, make_broker, publish_event
from fleetlab_common.embedded import free_port
from fleetlab_common.events import ExperimentAssigned
from fleetlab_common.runspec import RunSpec
from fleetlab_common.testing.plugin import RestartableNats

# shared/ stands beside the checkout (CI) or at /work/shared (the developers' machines).
SHARED = next(
    p
    for p in (Path(__file__).resolve().parents[3].parent / "shared", Path("/work/shared"))
    if (p / "fixtures").is_dir()
)
FGMACHINE = SHARED / "fixtures" / "fgmachine" / "results-example"

# Writes FGMachine's example results, a malformed file and an image, then waits for the test
# to say "go" (after it saw the results in the record), then adds a score and ends.
PROGRAM = textwrap.dedent(
    """
    import os, shutil, sys, time
    results = os.environ["FLEETLAB_RESULTS_DIR"]
    example = sys.argv[1]
    for name in ("scores.json", "notes.json", "mnist.png"):
        shutil.copy(os.path.join(example, name), os.path.join(results, name))
    with open(os.path.join(results, "broken.json"), "w") as f:
        f.write('{"_scores": {"Test Score": ')
    go = os.path.join(os.environ["FLEETLAB_WORK_DIR"], "go")
    while not os.path.exists(go):
        time.sleep(0.05)
    os.makedirs(os.path.join(results, "later"), exist_ok=True)
    with open(os.path.join(results, "later", "final.json"), "w") as f:
        f.write('{"_scores": {"Final Score": 0.5}, "_notes": "done"}')
    """
)


async def _wait(probe: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = probe()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


@dataclass
class Stack:
    http: httpx.AsyncClient
    agent: Agent
    broker: Any
    reports: list[dict[str, Any]]


@pytest.fixture
async def stack(
    own_nats: RestartableNats, fresh_dsn: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    """The API served over HTTP (agents upload to its signed URLs) and an agent, on a NATS of
    this test's own; returns a starter taking the agent's extra settings."""
    started: list[Any] = []

    async def start(**agent_options: Any) -> Stack:
        port = free_port()
        settings = ApiSettings(
            postgres={"dsn": fresh_dsn},
            nats={"url": own_nats.url},
            secret_key="test-secret",
            home=tmp_path / "api",
            host="127.0.0.1",
            port=port,
        )
        app = create_app(settings)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        started.append(lifespan)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_config=None)
        )
        serving = asyncio.create_task(server.serve())
        await _wait(lambda: server.started, "the API to listen")
        started.append((server, serving))

        name = f"agent-{uuid.uuid4().hex[:8]}"
        agent_settings = AgentSettings(
            nats={"url": own_nats.url},
            home=tmp_path / "agent",
            agent={"name": name, "results_interval_s": 0.1, **agent_options},
        )
        broker = make_broker(agent_settings.nats, name)
        agent = Agent(agent_settings, broker)
        handlers.register(broker, agent)
        await broker.start()
        await ensure_streams(broker.connection.jetstream(), agent_settings.nats)
        agent.spool.start()
        started.append((agent, broker))

        nc = await nats.connect(own_nats.url)
        reports: list[dict[str, Any]] = []

        async def on_report(msg: Any) -> None:
            reports.append(json.loads(msg.data))

        await nc.subscribe("agent.results.reported.*", cb=on_report)
        started.append(nc)
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)
        started.append(http)
        return Stack(http, agent, broker, reports)

    yield start
    for item in reversed(started):
        if isinstance(item, httpx.AsyncClient):
            await item.aclose()
        elif isinstance(item, tuple) and isinstance(item[0], Agent):
            await item[0].shutdown()
            await item[1].stop()
        elif isinstance(item, tuple):
            item[0].should_exit = True
            await item[1]
        elif hasattr(item, "__aexit__"):
            await item.__aexit__(None, None, None)
        else:
            await item.close()


async def submit(http: httpx.AsyncClient, project: dict[str, Any]) -> dict[str, Any]:
    name = f"results-{uuid.uuid4().hex[:8]}"
    created = await http.post("/api/v1/projects", json={"name": name, **project})
    assert created.status_code == 201, created.text
    response = await http.post("/api/v1/experiments", json={"project": name})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def record(http: httpx.AsyncClient, eid: str) -> dict[str, Any]:
    response = await http.get(f"/api/v1/experiments/{eid}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_results_show_while_the_run_goes_and_every_file_is_uploaded_at_the_end(
    stack: Callable[..., Any],
) -> None:
    s: Stack = await stack()
    command = [sys.executable, "-c", PROGRAM, str(FGMACHINE)]
    experiment = await submit(
        s.http, {"command": command, "results": "results", "option_style": "plain"}
    )
    eid = experiment["id"]
    spec = RunSpec(command=command, results="results", option_style="plain")
    # The scheduler's part: assign it to the agent.
    await publish_event(
        s.broker,
        ExperimentAssigned(
            experiment_id=uuid.UUID(eid), agent_id=s.agent.name, project="p", run=spec
        ),
    )

    async def scores_shown() -> dict[str, Any] | None:
        body = await record(s.http, eid)
        return body if "Test Score" in body["results"].get("_scores", {}) else None

    running = await _wait(scores_shown, "FGMachine's scores in the record")
    assert running["status"] == "running"  # seen before the run ended
    expected = json.loads((FGMACHINE / "scores.json").read_text())["_scores"]
    assert running["results"]["_scores"] == expected
    notes = json.loads((FGMACHINE / "notes.json").read_text())
    assert running["results"]["Notes"] == notes["Notes"]
    assert running["results"]["Time Taken"] == notes["Time Taken"]

    # The half-written file never completed: skipped, counted once, never fatal.
    await _wait(lambda: sum(r["skipped"] for r in s.reports) == 1, "broken.json to be counted")

    workdir = s.agent.settings.work_root() / f"{eid}-1"
    (workdir / "go").write_text("")

    async def succeeded() -> dict[str, Any] | None:
        body = await record(s.http, eid)
        return body if body["status"] == "succeeded" else None

    done = await _wait(succeeded, "the run to end")
    # The later file merged in: a new score beside the others, newest wins for the rest.
    assert done["results"]["_scores"] == {**expected, "Final Score": 0.5}
    assert done["results"]["_notes"] == "done"
    assert done["results"]["Notes"] == notes["Notes"]
    assert sum(r["skipped"] for r in s.reports) == 1
    assert all(r["attempt"] == 1 for r in s.reports)

    artifacts = (await s.http.get(f"/api/v1/experiments/{eid}/artifacts")).json()
    names = {a["name"]: a for a in artifacts}
    for name in ("scores.json", "notes.json", "mnist.png", "broken.json", "later/final.json"):
        assert f"results/{name}" in names, names
    png = names["results/mnist.png"]
    assert png["size"] == (FGMACHINE / "mnist.png").stat().st_size
    download = await s.http.get(
        f"/api/v1/experiments/{eid}/artifacts/results/mnist.png", follow_redirects=True
    )
    assert download.content == (FGMACHINE / "mnist.png").read_bytes()


async def test_an_fgmachine_projects_json_results_folder_feeds_the_record(
    stack: Callable[..., Any], tmp_path: Path
) -> None:
    machine = tmp_path / "fgmachine"
    (machine / "test").mkdir(parents=True)
    # FGMachine's layout: the program writes <results>/<experiment id>/ (the id is passed as
    # the option _id); results is relative to projects.json's folder, not to cwd.
    (machine / "test" / "rand.py").write_text(
        textwrap.dedent(
            """
            import json, os, sys
            args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
            folder = os.path.join("experiments", args["_id"])
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "scores.json"), "w") as f:
                json.dump({"_scores": {"Val Score": 0.74}}, f)
            """
        )
    )
    projects = machine / "projects.json"
    projects.write_text(
        json.dumps(
            {
                "rand": {
                    "cwd": "./test",
                    "command": sys.executable,
                    "args": ["rand.py"],
                    "options": "plain",
                    "results": "./test/experiments",
                }
            }
        )
    )
    s: Stack = await stack(projects=str(projects))
    experiment = await submit(s.http, {"command": []})
    eid = experiment["id"]
    await publish_event(
        s.broker,
        ExperimentAssigned(
            experiment_id=uuid.UUID(eid), agent_id=s.agent.name, project="rand", run=RunSpec()
        ),
    )

    async def finished_with_scores() -> dict[str, Any] | None:
        body = await record(s.http, eid)
        done = body["status"] == "succeeded" and body["results"].get("_scores")
        return body if done else None

    done = await _wait(finished_with_scores, "the FGMachine project's scores")
    assert done["results"]["_scores"] == {"Val Score": 0.74}
    artifacts = (await s.http.get(f"/api/v1/experiments/{eid}/artifacts")).json()
    assert "results/scores.json" in {a["name"] for a in artifacts}


# -- the watcher alone ------------------------------------------------------------------------


async def test_a_file_caught_half_written_is_read_again_and_not_counted(tmp_path: Path) -> None:
    reports: list[tuple[dict[str, Any], list[str], int]] = []

    async def publish(results: dict[str, Any], files: list[str], skipped: int) -> None:
        reports.append((results, files, skipped))

    watcher = ResultsWatcher(tmp_path, publish)
    (tmp_path / "scores.json").write_text('{"_scores": {"a": 1')
    await watcher._drain(final=False)  # seen malformed once: perhaps still being written
    assert reports == [] and watcher.skipped == 0
    (tmp_path / "scores.json").write_text('{"_scores": {"a": 1}}')
    await watcher._drain(final=False)
    assert reports == [({"_scores": {"a": 1}}, ["scores.json"], 0)]
    await watcher._drain(final=False)  # nothing changed: nothing sent
    assert len(reports) == 1
    (tmp_path / "list.json").write_text("[1, 2]")  # JSON, but not an object
    await watcher._drain(final=False)
    await watcher._drain(final=False)  # the same version twice: counted now
    assert watcher.skipped == 1 and reports[-1] == ({}, [], 1)
    assert await watcher.close() == 1  # not counted again at the end


def test_merge_keeps_the_newest_value_and_merges_scores_by_name() -> None:
    merged = merge({"_scores": {"a": 1.0, "b": 2.0}, "_notes": "old", "x": 1}, {"_notes": "new"})
    merged = merge(merged, {"_scores": {"b": 3.0, "c": 4.0}})
    assert merged == {"_scores": {"a": 1.0, "b": 3.0, "c": 4.0}, "_notes": "new", "x": 1}
