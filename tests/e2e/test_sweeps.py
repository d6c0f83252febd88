"""Sweeps end to end: `fleetlab up` as a subprocess with a real agent, driven through the
``fleetlab`` command's real entry point and over HTTP. Parallelism is checked on the trials'
own start and end times; a sweep survives its services being killed (SIGKILL) mid-run with
every trial created once and run once; ``sweep.finished`` reaches a webhook."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import signal
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from fleetlab_common.embedded import free_port
from fleetlab_common.testing.stack import (
    FLEETLAB,
    TERMINAL,
    Stack,
    start_stack,
    stop_stack,
    wait_until,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # More slots than any sweep's parallelism: the sweep's limit is what binds.
    stack = start_stack(
        tmp_path_factory.mktemp("sweeps") / "home",
        free_port(),
        FLEETLAB_AGENT__SLOTS="6",
        FLEETLAB_AGENT__NAME="sweep-agent",
        FLEETLAB_LEASE_S="5",
    )
    yield stack
    stop_stack(stack)


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def train_py(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("code") / "train.py"
    path.write_text(
        textwrap.dedent(
            """
            import os, sys, time
            print("argv", sys.argv[1:], flush=True)
            time.sleep(float(os.environ.get("SLEEP", "1")))
            """
        )
    )
    return path


def fleetlab(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """The real entry point; the API URL comes from $FLEETLAB_HOME/stack.json."""
    return subprocess.run(
        [FLEETLAB, *args], env=stack.env(), capture_output=True, text=True, timeout=60, check=False
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def create_project(client: httpx.Client, name: str, train_py: Path, sleep: float) -> None:
    body = {
        "name": name,
        "command": ["python3", str(train_py)],
        "schema": {
            "x": {"type": "int", "default": 0},
            "y": {"type": "float", "default": 0.0},
        },
        "env": {"SLEEP": str(sleep)},
    }
    r = client.post("/api/v1/projects", json=body)
    assert r.status_code == 201, r.text


def sweep_trials(client: httpx.Client, sweep_id: str) -> list[dict[str, Any]]:
    r = client.get("/api/v1/experiments", params={"sweep": sweep_id, "limit": 1000})
    assert r.status_code == 200, r.text
    return r.json()["items"]  # type: ignore[no-any-return]


def max_overlap(trials: list[dict[str, Any]]) -> int:
    """The most trials whose [started_at, finished_at] intervals overlap at one moment."""
    edges: list[tuple[datetime, int]] = []
    for t in trials:
        edges.append((datetime.fromisoformat(t["started_at"]), 1))
        edges.append((datetime.fromisoformat(t["finished_at"]), -1))
    edges.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


class Receiver:
    """A local webhook endpoint recording every delivery's JSON body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_cli_grid_sweep_runs_within_its_parallelism_and_its_end_reaches_a_webhook(
    stack: Stack, client: httpx.Client, train_py: Path, receiver: Receiver
) -> None:
    create_project(client, "grid", train_py, sleep=1.0)
    hook = client.post(
        "/api/v1/webhooks",
        json={"url": receiver.url, "events": ["sweep.finished"], "project": "grid"},
    )
    assert hook.status_code == 201, hook.text

    sweep = as_json(
        fleetlab(
            stack,
            "sweep",
            "grid",
            "--grid",
            "x=1,2,3",
            "--range",
            "y=0.5:1:2",
            "--parallelism",
            "2",
            "--name",
            "g",
            "--json",
        )
    )
    assert (sweep["count"], sweep["parallelism"], sweep["status"]) == (6, 2, "running")

    def finished() -> dict[str, Any] | None:
        shown = as_json(fleetlab(stack, "sweep", "show", sweep["id"], "--json"))
        return shown if shown["status"] == "finished" else None

    done = wait_until(finished, 90, "the sweep to finish")
    assert done["counts"] == {"succeeded": 6}
    trials = as_json(fleetlab(stack, "ls", "--sweep", sweep["id"], "--json"))
    assert sorted((t["options"]["x"], t["options"]["y"]) for t in trials) == [
        (x, y) for x in (1, 2, 3) for y in (0.5, 1.0)
    ]
    # Never more than two at once, and two at once indeed (six 1 s trials, six free slots).
    assert max_overlap(trials) == 2

    human = fleetlab(stack, "sweep", "show", sweep["id"])
    assert human.returncode == 0 and "finished: 6/6 trials done" in human.stdout
    listed = fleetlab(stack, "sweep", "list", "--project", "grid")
    assert sweep["id"] in listed.stdout

    delivered = wait_until(
        lambda: [b for b in receiver.bodies if b["type"] == "sweep.finished"],
        30,
        "the sweep.finished webhook",
    )
    assert len(delivered) == 1
    assert delivered[0]["data"]["sweep"]["sweep_id"] == sweep["id"]
    assert delivered[0]["data"]["sweep"]["counts"] == {"succeeded": 6}


def test_cli_random_sweep_stopped_mid_run(
    stack: Stack, client: httpx.Client, train_py: Path
) -> None:
    create_project(client, "slow", train_py, sleep=120)
    sweep = as_json(
        fleetlab(
            stack,
            "sweep",
            "slow",
            "--random",
            "5",
            "--seed",
            "3",
            "--range",
            "y=0:1",
            "--parallelism",
            "2",
            "--json",
        )
    )
    assert (sweep["method"], sweep["count"], sweep["seed"]) == ("random", 5, 3)
    wait_until(
        lambda: sum(t["status"] == "running" for t in sweep_trials(client, sweep["id"])) == 2,
        30,
        "two trials running",
    )

    stopped = fleetlab(stack, "sweep", "stop", sweep["id"])

    assert stopped.returncode == 0, stopped.stderr
    wait_until(
        lambda: all(t["status"] in TERMINAL for t in sweep_trials(client, sweep["id"])),
        30,
        "every trial to end",
    )
    final = as_json(fleetlab(stack, "sweep", "show", sweep["id"], "--json"))
    assert final["status"] == "stopped"
    assert final["counts"] == {"stopped": 5}
    # The three queued trials never started.
    assert sum(t["started_at"] is not None for t in sweep_trials(client, sweep["id"])) == 2


def test_cli_refuses_a_bad_spec_naming_the_parameter(stack: Stack, client: httpx.Client) -> None:
    client.post("/api/v1/projects", json={"name": "strict", "command": ["true"], "schema": {}})

    refused = fleetlab(stack, "sweep", "strict", "--grid", "nope=1,2")
    usage = fleetlab(stack, "sweep", "strict", "--range", "x=1")

    assert refused.returncode == 1
    assert "parameters.nope" in refused.stderr and "unknown option" in refused.stderr
    assert usage.returncode == 2
    assert client.get("/api/v1/sweeps", params={"project": "strict"}).json()["items"] == []


def test_a_sweep_survives_its_services_killed_and_runs_each_trial_once(
    stack: Stack, client: httpx.Client, train_py: Path
) -> None:
    create_project(client, "sturdy", train_py, sleep=0.3)
    starts: dict[str, int] = {}
    trials_n, parallelism = 24, 3

    async def run() -> str:
        nc = await nats.connect(stack.info()["nats_url"])

        async def on_start(msg: Any) -> None:
            eid = json.loads(msg.data)["experiment_id"]
            starts[eid] = starts.get(eid, 0) + 1

        await nc.subscribe("agent.experiment.started", cb=on_start)
        await nc.flush()
        body = {
            "project": "sturdy",
            "method": "grid",
            "parameters": {"x": list(range(trials_n))},
            "parallelism": parallelism,
        }
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as ac:
            r = await ac.post("/api/v1/sweeps", json=body)
            assert r.status_code == 201, r.text
            sweep_id: str = r.json()["id"]
            # The API dies at once (its outbox may still hold submissions), then the
            # scheduler while trials are queued and running.
            os.kill(stack.info()["pids"]["api"], signal.SIGKILL)
            deadline = time.monotonic() + 60
            while not starts and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert starts, "no trial started after the API restarted"
            os.kill(stack.info()["pids"]["scheduler"], signal.SIGKILL)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    shown = (await ac.get(f"/api/v1/sweeps/{sweep_id}")).json()
                    if shown.get("status") == "finished":
                        break
                except httpx.HTTPError:
                    pass  # the API is restarting
                await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # a duplicate start, were there one, would be here by now
        await nc.flush()
        await nc.close()
        return sweep_id

    sweep_id = asyncio.run(run())
    wait_until(stack.healthy, 60, "the stack to be healthy again")
    shown = client.get(f"/api/v1/sweeps/{sweep_id}").json()
    assert shown["status"] == "finished", shown
    assert shown["counts"] == {"succeeded": trials_n}
    trials = sweep_trials(client, sweep_id)
    assert len(trials) == trials_n
    assert sorted(t["options"]["x"] for t in trials) == list(range(trials_n))
    assert all(starts.get(t["id"]) == 1 for t in trials), starts
    assert all(t["attempt"] == 1 for t in trials)
    assert max_overlap(trials) <= parallelism
