"""End to end: multi-worker experiments across two agents and inputs taken from an earlier
experiment's artifacts, through `fleetlab up` as a subprocess (plus a second agent process),
driven over HTTP."""

from __future__ import annotations

import hashlib
import json
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetlab_common.embedded import free_port
from fleetlab_common.testing.stack import FLEETLAB, Stack, start_stack, stop_stack, wait_until

pytestmark = pytest.mark.e2e

TERMINAL = {"succeeded", "failed", "stopped", "lost"}

RENDEZVOUS = (Path(__file__).parents[1] / "programs" / "rendezvous.py").read_text()


SECOND_AGENT = ("--name", "second", "--slots", "2")


@dataclass
class Workers:
    """`fleetlab up` (its agent has 2 slots) and a second 2-slot agent on the same NATS."""

    stack: Stack
    second: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return self.stack.url


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    home = tmp_path_factory.mktemp("e2e-workers") / "home"
    up = start_stack(
        home, free_port(), FLEETLAB_AGENT__NAME="first", FLEETLAB_AGENT__STOP_GRACE_S="2"
    )
    second: subprocess.Popen[bytes] | None = None
    try:
        with (home.parent / "second.out").open("ab") as out:
            second = subprocess.Popen(
                [FLEETLAB, "agent", "--nats", up.info()["nats_url"], *SECOND_AGENT],
                env={
                    **up.env(),
                    "FLEETLAB_PORT": str(free_port()),  # its /healthz
                    "FLEETLAB_AGENT__HEARTBEAT_S": "0.5",
                    "FLEETLAB_AGENT__STOP_GRACE_S": "2",
                },
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        yield Workers(up, second)
    finally:
        if second is not None:
            second.terminate()
            second.wait(15)
        stop_stack(up)


@pytest.fixture(scope="module")
def client(stack: Workers) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=10) as c:
        wait_until(
            lambda: (
                {a["id"] for a in c.get("/api/v1/agents").json() if a["online"]}
                >= {"first", "second"}
            ),
            30,
            "both agents to be online",
        )
        yield c


@pytest.fixture(scope="module")
def rendezvous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("code") / "rendezvous.py"
    path.write_text(RENDEZVOUS)
    return path


def create_project(client: httpx.Client, name: str, **body: Any) -> None:
    r = client.post("/api/v1/projects", json={"name": name, **body})
    assert r.status_code == 201, r.text


def submit(client: httpx.Client, project: str, **options: Any) -> str:
    r = client.post("/api/v1/experiments", json={"project": project, "options": options})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def wait_terminal(client: httpx.Client, experiment_id: str, timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/api/v1/experiments/{experiment_id}").json()
        return body if body["status"] in TERMINAL else None

    return wait_until(done, timeout, f"experiment {experiment_id} to end")  # type: ignore[no-any-return]


def test_two_workers_on_two_agents_rendezvous_and_the_log_keeps_ranks(
    client: httpx.Client, rendezvous: Path
) -> None:
    # Two slots a worker: each agent holds one rank, so they meet over TCP between agents.
    create_project(
        client,
        "ddp",
        command=["python3", str(rendezvous)],
        schema={"fail": {"type": "int", "default": -1}},
        workers=2,
        resources={"cpus": 2},
    )
    eid = submit(client, "ddp")
    record = wait_terminal(client, eid)
    assert record["status"] == "succeeded", record
    assert record["log_lines"] == 6  # three lines a rank
    log = client.get(f"/api/v1/experiments/{eid}/logs").text.splitlines()
    assert "[rank 0] rank 0 got ranks [1]" in log
    assert "[rank 1] rank 1 got rank 0" in log
    assert {line.split()[0:2][1] for line in log} == {"0]", "1]"}
    # Each rank ran in a working directory of its own.
    assert "[rank 0] rank 0 of 2 on r0" in log and "[rank 1] rank 1 of 2 on r1" in log


def test_a_failing_rank_fails_the_experiment_and_the_other_is_stopped(
    client: httpx.Client,
) -> None:
    eid = submit(client, "ddp", fail=1)
    record = wait_terminal(client, eid)
    assert record["status"] == "failed", record
    assert record["status_reason"] == "rank 1 failed: exit code 3"
    assert record["exit_code"] == 3
    # Rank 0 would have slept two minutes: both agents are free again long before that.
    wait_until(
        lambda: all(a["busy"] == 0 for a in client.get("/api/v1/agents").json() if a["online"]),
        30,
        "both agents to be idle",
    )


def test_an_artifact_of_an_earlier_experiment_is_an_input(
    client: httpx.Client, tmp_path: Path
) -> None:
    writer = tmp_path / "writer.py"
    writer.write_text(
        textwrap.dedent(
            """
            import os
            with open(os.path.join(os.environ["FLEETLAB_OUTPUTS_DIR"], "model.bin"), "wb") as f:
                f.write(b"weights" * 5000)
            """
        )
    )
    create_project(client, "producer", command=["python3", str(writer)])
    producer = submit(client, "producer")
    assert wait_terminal(client, producer)["status"] == "succeeded"
    stored = {a["name"]: a for a in client.get(f"/api/v1/experiments/{producer}/artifacts").json()}
    digest = hashlib.sha256(b"weights" * 5000).hexdigest()
    assert stored["model.bin"]["sha256"] == digest

    reader = tmp_path / "reader.py"
    reader.write_text(
        textwrap.dedent(
            """
            import hashlib, os
            data = open(os.path.join(os.environ["FLEETLAB_INPUTS_DIR"], "init.bin"), "rb").read()
            print("got", len(data), hashlib.sha256(data).hexdigest())
            """
        )
    )
    create_project(
        client,
        "consumer",
        command=["python3", str(reader)],
        inputs=[{"name": "init.bin", "url": f"artifact://{producer}/model.bin"}],
    )
    consumer = submit(client, "consumer")
    record = wait_terminal(client, consumer)
    assert record["status"] == "succeeded", record
    assert client.get(f"/api/v1/experiments/{consumer}/logs").text == (
        f"got {len(b'weights' * 5000)} {digest}\n"
    )


def test_an_artifact_input_that_does_not_exist_is_refused_naming_it(
    client: httpx.Client,
) -> None:
    before = len(client.get("/api/v1/experiments", params={"limit": 1000}).json()["items"])
    producer = client.get("/api/v1/experiments", params={"project": "producer"}).json()["items"]
    cases = {
        "no-such-experiment": f"artifact://{uuid.uuid4()}/model.bin",
        "no-such-artifact": f"artifact://{producer[0]['id']}/missing.bin",
    }
    for name, url in cases.items():
        create_project(client, name, command=["true"], inputs=[{"name": "x", "url": url}])
        r = client.post("/api/v1/experiments", json={"project": name, "options": {}})
        assert r.status_code == 422, r.text
        body = r.json()
        assert set(body["fields"]) == {"inputs.0.url"}
        assert "input 'x'" in body["fields"]["inputs.0.url"]
    # A malformed artifact URL is refused when the project is made.
    r = client.post(
        "/api/v1/projects",
        json={
            "name": "malformed",
            "command": ["true"],
            "inputs": [{"name": "x", "url": "artifact://not-an-id/model.bin"}],
        },
    )
    assert r.status_code == 422 and "inputs" in json.dumps(r.json()["fields"])
    after = len(client.get("/api/v1/experiments", params={"limit": 1000}).json()["items"])
    assert after == before
