"""Inputs fetched over HTTP into inputs/<name> before the run, once per URL per agent."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from fleetlab_agent.service import Agent
from fleetlab_agent.settings import AgentSettings
from fleetlab_common.broker import make_broker
from fleetlab_common.events import ExperimentAssigned, ExperimentFinished, ExperimentStarted
from fleetlab_common.runspec import Input, RunSpec

DATA = b"x,y\n1,2\n" * 1000


class Files(http.server.BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def do_GET(self) -> None:
        Files.hits[self.path] = Files.hits.get(self.path, 0) + 1
        if self.path == "/data.csv":
            self.send_response(200)
            self.send_header("content-length", str(len(DATA)))
            self.end_headers()
            self.wfile.write(DATA)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args: object) -> None:
        """Quiet."""


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_input_names_cannot_leave_inputs() -> None:
    for bad in ("../secret", "/etc/passwd", "a/../../b", ""):
        with pytest.raises(ValidationError):
            Input(name=bad, url="http://example.org/x")
    with pytest.raises(ValidationError, match="http"):
        Input(name="x", url="file:///etc/passwd")


async def run_all(agent: Agent, events: list[ExperimentAssigned]) -> list[object]:
    published: list[object] = []

    async def capture(event: object) -> None:
        published.append(event)

    agent.spool.put = capture  # type: ignore[method-assign]  # observe what it would send
    for event in events:
        await agent.handle_assigned(event)
    async with asyncio.timeout(20):
        while sum(isinstance(e, ExperimentFinished) for e in published) < len(events):
            await asyncio.sleep(0.01)
    return published


async def test_inputs_are_fetched_once_and_checked(tmp_path: Path, server: str) -> None:
    settings = AgentSettings(home=tmp_path, agent={"name": "inputs", "max_input_mb": 1})
    agent = Agent(settings, make_broker(settings.nats, "unused"))
    check = (
        "import hashlib; print(hashlib.sha256(open('inputs/d/data.csv', 'rb').read()).hexdigest())"
    )

    def assigned(inputs: list[Input]) -> ExperimentAssigned:
        return ExperimentAssigned(
            experiment_id=uuid.uuid4(),
            agent_id="inputs",
            project="p",
            run=RunSpec(command=[sys.executable, "-c", check], inputs=inputs),
        )

    good = Input(name="d/data.csv", url=f"{server}/data.csv")
    missing = Input(name="gone.bin", url=f"{server}/gone.bin")
    try:
        published = await run_all(agent, [assigned([good]), assigned([good]), assigned([missing])])
    finally:
        await agent.shutdown()

    started = [e for e in published if isinstance(e, ExperimentStarted)]
    assert len(started) == 2
    digest = hashlib.sha256(DATA).hexdigest()
    assert [s.inputs[0].sha256 for s in started] == [digest, digest]
    assert [s.inputs[0].cached for s in started] == [False, True]
    assert Files.hits["/data.csv"] == 1  # fetched once for both runs
    finished = [e for e in published if isinstance(e, ExperimentFinished)]
    assert sum(f.status == "succeeded" for f in finished) == 2
    refused = next(f for f in finished if not f.started)
    assert refused.status == "failed"
    assert refused.reason == (
        f"input 'gone.bin': could not fetch {server}/gone.bin: the server answered 404"
    )
