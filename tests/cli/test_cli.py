"""The CLI through its real entry point (``.venv/bin/fleetlab``) against a running stack
(``fleetlab up`` on a temporary home and port): the README's walkthrough with the examples."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetlab_common.embedded import free_port

pytestmark = pytest.mark.e2e

FLEETLAB = str(Path(sys.executable).parent / "fleetlab")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("cli") / "home"
    port = free_port()
    env = {
        **os.environ,
        "FLEETLAB_HOME": str(home),
        "FLEETLAB_PORT": str(port),
        "FLEETLAB_AGENT__NAME": "cli-agent",
        "FLEETLAB_AGENT__SLOTS": "2",
    }
    for key in ("FLEETLAB_NATS__URL", "FLEETLAB_POSTGRES__DSN"):
        env.pop(key, None)
    output = home.parent / "up.out"
    with output.open("ab") as out:
        proc = subprocess.Popen([FLEETLAB, "up"], env=env, stdout=out, stderr=subprocess.STDOUT)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"fleetlab up exited: {output.read_text()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 90, "the stack to be healthy")
        yield home
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def fleetlab(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real entry point; the API URL comes from $FLEETLAB_HOME/stack.json."""
    environ = {**os.environ, "FLEETLAB_HOME": str(home), "COLUMNS": "200", **env}
    environ.pop("FLEETLAB_API_URL", None)
    return subprocess.run(
        [FLEETLAB, *args], env=environ, capture_output=True, text=True, timeout=60, check=False
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_walkthrough_submit_follow_and_list(home: Path) -> None:
    train = EXAMPLES / "toy-train" / "train.py"
    project = as_json(
        fleetlab(home, "project", "create", "toy", "--command", f"python3 {train}", "--json")
    )
    assert project["name"] == "toy"
    assert "toy" in fleetlab(home, "project", "list").stdout

    experiment = as_json(fleetlab(home, "submit", "toy", "--name", "first", "--json"))
    followed = fleetlab(home, "logs", "-f", experiment["id"])

    assert followed.returncode == 0, followed.stderr
    assert "epoch 4 loss" in followed.stdout
    assert followed.stdout.rstrip().endswith("done")
    shown = as_json(fleetlab(home, "show", experiment["id"], "--json"))
    assert shown["status"] == "succeeded"
    listed = as_json(fleetlab(home, "ls", "--project", "toy", "--json"))
    assert [e["id"] for e in listed] == [experiment["id"]]
    table = fleetlab(home, "ls", "--project", "toy")
    assert table.returncode == 0 and "first" in table.stdout and "succeeded" in table.stdout


def test_fglab_schema_example_typed_options_and_refusals(home: Path) -> None:
    schema = EXAMPLES / "fglab-schema" / "schema.json"
    train = EXAMPLES / "fglab-schema" / "train.py"
    made = as_json(
        fleetlab(
            home,
            "project",
            "create",
            "--from",
            str(schema),
            "--command",
            f"python3 {train}",
            "--json",
        )
    )
    assert made["name"] == "schema"
    assert list(made["schema"]) == ["lr", "epochs"]

    experiment = as_json(fleetlab(home, "submit", "schema", "lr=0.5", "epochs=2", "--json"))
    assert experiment["options"] == {"lr": 0.5, "epochs": 2}
    followed = fleetlab(home, "logs", "-f", experiment["id"])
    assert followed.returncode == 0
    assert "epoch 1 loss" in followed.stdout

    refused = fleetlab(home, "submit", "schema", "lr=fast")
    assert refused.returncode == 1
    assert "lr" in refused.stderr
    usage = fleetlab(home, "submit", "schema", "lr")
    assert usage.returncode == 2
    missing = fleetlab(home, "show", "01a20000-0000-7000-8000-000000000000")
    assert missing.returncode == 4
    unreachable = fleetlab(home, "ls", "--api", f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 3


def test_stop_restart_rm_agents_tokens(home: Path) -> None:
    as_json(
        fleetlab(
            home,
            "project",
            "create",
            "sleepy",
            "--command",
            "python3 -c 'import time; time.sleep(60)'",
            "--json",
        )
    )
    experiment = as_json(fleetlab(home, "submit", "sleepy", "--json"))

    assert fleetlab(home, "rm", experiment["id"]).returncode == 1  # still queued or running
    assert fleetlab(home, "stop", experiment["id"]).returncode == 0

    def stopped() -> bool:
        return bool(
            as_json(fleetlab(home, "show", experiment["id"], "--json"))["status"] == "stopped"
        )

    wait_until(stopped, 30, "the experiment to stop")
    again = as_json(fleetlab(home, "restart", experiment["id"], "--json"))
    assert again["id"] != experiment["id"]
    assert fleetlab(home, "stop", again["id"]).returncode == 0
    assert fleetlab(home, "rm", experiment["id"]).returncode == 0
    assert fleetlab(home, "show", experiment["id"]).returncode == 4

    agents = as_json(fleetlab(home, "agents", "--json"))
    assert [a["id"] for a in agents if a["online"]]

    created = fleetlab(home, "token", "create", "ci")
    assert created.returncode == 0
    secret = created.stdout.strip()
    assert secret.startswith("flt_")
    assert "ci" in fleetlab(home, "token", "list").stdout
    assert fleetlab(home, "token", "revoke", "ci").returncode == 0
    assert as_json(fleetlab(home, "token", "list", "--json")) == []
