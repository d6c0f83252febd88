"""End to end: `fleetlab up` as a subprocess on a temporary home and port, driven over HTTP,
with the events checked on NATS. This is the README's quick start, run by a test."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pytest

from fleetlab_common.embedded import free_port
from fleetlab_common.testing.stack import TERMINAL, Stack, start_stack, stop_stack, wait_until

pytestmark = pytest.mark.e2e

FLEETLAB = str(Path(sys.executable).parent / "fleetlab")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e") / "home"


@pytest.fixture(scope="module")
def stack(home: Path) -> Iterator[Stack]:
    stack = start_stack(home, free_port())
    yield stack
    if stack.proc.poll() is None:
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
            import json, os, sys, time
            print("argv " + json.dumps(sys.argv[1:]))
            print("cwd " + os.getcwd())
            print("dirs " + json.dumps(sorted(os.listdir("."))))
            print("env " + json.dumps({k: v for k, v in os.environ.items()
                                       if k.startswith("FLEETLAB_")}))
            for epoch in range(5):
                print(f"epoch {epoch} loss {1 / (epoch + 1):.3f}")
            print("a warning on stderr", file=sys.stderr)
            mode = os.environ.get("MODE", "")
            if mode == "outputs":
                out = os.environ["FLEETLAB_OUTPUTS_DIR"]
                os.makedirs(os.path.join(out, "sub"))
                open(os.path.join(out, "model.txt"), "w").write("weights " * 1000)
                open(os.path.join(out, "sub", "scores.json"), "w").write('{"acc": 0.9}')
                os.symlink("/etc/passwd", os.path.join(out, "leak"))
            if mode == "count":
                for i in range(300):
                    print(f"line {i}", flush=True)
                    time.sleep(0.01)
            if mode == "fail":
                sys.exit(3)
            if mode == "sleep" or (mode == "sleep-first" and os.environ["FLEETLAB_ATTEMPT"] == "1"):
                print(f"pid {os.getpid()}", flush=True)
                time.sleep(120)
            """
        )
    )
    return path


def wait_terminal(client: httpx.Client, experiment_id: str, timeout: float = 30) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/api/v1/experiments/{experiment_id}").json()
        return body if body["status"] in TERMINAL else None

    return wait_until(done, timeout, f"experiment {experiment_id} to end")  # type: ignore[no-any-return]


def create_project(
    client: httpx.Client, name: str, command: list[str], **extra: Any
) -> dict[str, Any]:
    r = client.post("/api/v1/projects", json={"name": name, "command": command, **extra})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def submit(
    client: httpx.Client, project: str, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    r = client.post("/api/v1/experiments", json={"project": project, "options": options or {}})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_readme_flow_runs_an_experiment_end_to_end(
    stack: Stack, client: httpx.Client, train_py: Path
) -> None:
    project = create_project(
        client,
        "hello",
        ["python3", str(train_py)],
        schema={"lr": {"type": "float", "default": 0.1}},
        option_style="double-dash",
    )
    assert project["name"] == "hello"
    assert client.get(f"/api/v1/projects/{project['id']}").json()["name"] == "hello"
    assert client.get("/api/v1/projects/hello").json()["id"] == project["id"]

    seen: list[dict[str, Any]] = []

    async def watch_and_submit() -> dict[str, Any]:
        nc = await nats.connect(stack.info()["nats_url"])
        try:
            sub = await nc.subscribe("agent.experiment.>")
            experiment = await asyncio.to_thread(submit, client, "hello", {"lr": 0.5})
            assert experiment["status"] == "queued"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                msg = await sub.next_msg(timeout=deadline - time.monotonic())
                event = json.loads(msg.data)
                if event["experiment_id"] == experiment["id"]:
                    seen.append({"subject": msg.subject, **event, "headers": msg.headers})
                if any(e["type"] == "agent.experiment.finished" for e in seen):
                    return experiment
            raise AssertionError(f"no finished event; saw {seen}")
        finally:
            await nc.close()

    experiment = asyncio.run(watch_and_submit())
    experiment_id = experiment["id"]
    assert [e["type"] for e in seen] == ["agent.experiment.started", "agent.experiment.finished"]
    assert all(e["headers"]["Nats-Msg-Id"] == e["id"] for e in seen)

    record = wait_terminal(client, experiment_id)
    assert record["status"] == "succeeded", record
    assert record["exit_code"] == 0
    assert record["agent_id"] == "e2e-agent"
    assert record["created_at"] <= record["started_at"] <= record["finished_at"]

    r = client.get(f"/api/v1/experiments/{experiment_id}/logs")
    assert r.status_code == 200
    lines = r.text.splitlines()
    assert lines[0] == "argv " + json.dumps(["--lr=0.5", f"--_id={experiment_id}"])
    cwd = lines[1].removeprefix("cwd ")
    assert experiment_id in cwd and cwd.startswith(str(stack.home))
    assert json.loads(lines[2].removeprefix("dirs ")) == ["inputs", "outputs"]
    env = json.loads(lines[3].removeprefix("env "))
    assert env["FLEETLAB_EXPERIMENT_ID"] == experiment_id
    assert "FLEETLAB_NATS__URL" not in env  # the agent's credential stays with the agent
    assert [ln for ln in lines if ln.startswith("epoch")] == [
        f"epoch {i} loss {1 / (i + 1):.3f}" for i in range(5)
    ]
    assert lines[-1] == "a warning on stderr"
    stderr = client.get(f"/api/v1/experiments/{experiment_id}/logs", params={"stream": "stderr"})
    assert stderr.text == "a warning on stderr\n"

    page = client.get("/", headers={"accept": "text/html"})
    assert page.status_code == 200 and experiment_id in page.text and "succeeded" in page.text


def test_failures_are_recorded_and_the_agent_keeps_working(
    client: httpx.Client, train_py: Path
) -> None:
    create_project(client, "failing", ["python3", str(train_py)], env={"MODE": "fail"})
    create_project(client, "missing", ["/no/such/program", "--flag"])
    failing = submit(client, "failing")
    missing = submit(client, "missing")

    record = wait_terminal(client, failing["id"])
    assert record["status"] == "failed" and record["exit_code"] == 3
    assert record["status_reason"] == "exit code 3"

    record = wait_terminal(client, missing["id"])
    assert record["status"] == "failed"
    assert record["status_reason"] == "command not found: /no/such/program"

    after = wait_terminal(client, submit(client, "hello")["id"])
    assert after["status"] == "succeeded"


def test_bad_input_is_refused_and_changes_nothing(client: httpx.Client) -> None:
    before = client.get("/api/v1/experiments", params={"limit": 1000}).json()["items"]

    r = client.post("/api/v1/experiments", json={"project": "no-such-project"})
    assert r.status_code == 422
    assert r.json()["fields"] == {"project": "no project has this id or name"}

    r = client.post("/api/v1/experiments", json={"project": "hello", "options": {"lr": "fast"}})
    assert r.status_code == 422
    assert "options.lr" in r.json()["fields"]

    r = client.post("/api/v1/experiments", json={"project": "hello", "options": {"lx": 1}})
    assert r.status_code == 422
    assert r.json()["fields"]["options.lx"].startswith("unknown option")

    r = client.post(
        "/api/v1/experiments", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert r.json()["error"].startswith("the request body is not valid")

    r = client.post("/api/v1/projects", json={"name": "hello", "command": ["x"]})
    assert r.status_code == 409

    after = client.get("/api/v1/experiments", params={"limit": 1000}).json()["items"]
    assert after == before


def test_a_second_up_on_the_same_home_stops_with_a_clear_message(stack: Stack) -> None:
    env = {**os.environ, "FLEETLAB_HOME": str(stack.home), "FLEETLAB_PORT": str(free_port())}
    result = subprocess.run([FLEETLAB, "up"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "already running" in result.stderr
    assert stack.proc.poll() is None


def test_a_crashed_service_is_restarted_and_the_crash_logged(
    stack: Stack, client: httpx.Client
) -> None:
    old = stack.info()["pids"]["scheduler"]
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: stack.info()["pids"]["scheduler"] != old, 15, "a new scheduler pid")
    wait_until(lambda: client.get("/api/v1/health").status_code == 200, 30, "health back to 200")
    assert "up.service.crashed" in stack.output.read_text()


def test_a_lost_agent_turns_its_experiment_lost_and_its_process_dies(
    stack: Stack, client: httpx.Client, train_py: Path
) -> None:
    create_project(client, "sleeper", ["python3", str(train_py)], env={"MODE": "sleep"})
    experiment = submit(client, "sleeper")

    def child_pid() -> int | None:
        text = client.get(f"/api/v1/experiments/{experiment['id']}/logs").text
        pids = [int(ln.split()[1]) for ln in text.splitlines() if ln.startswith("pid ")]
        return pids[0] if pids else None

    pid = wait_until(child_pid, 30, "the experiment to print its pid")
    os.kill(stack.info()["pids"]["agent"], signal.SIGKILL)

    record = wait_terminal(client, experiment["id"], timeout=30)
    assert record["status"] == "lost"
    assert record["status_reason"]
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10, "the experiment's process to die")


def wait_status(
    client: httpx.Client, experiment_id: str, status: str, timeout: float = 30
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/api/v1/experiments/{experiment_id}").json()
        return body if body["status"] == status else None

    return wait_until(reached, timeout, f"experiment {experiment_id} to be {status}")  # type: ignore[no-any-return]


def test_stop_a_running_and_a_queued_experiment(client: httpx.Client, train_py: Path) -> None:
    create_project(client, "stoppable", ["python3", str(train_py)], env={"MODE": "sleep"})
    running = submit(client, "stoppable")
    wait_status(client, running["id"], "running")
    r = client.post(f"/api/v1/experiments/{running['id']}/stop", json={"reason": "enough"})
    assert r.status_code == 202
    record = wait_terminal(client, running["id"])
    assert (record["status"], record["status_reason"]) == ("stopped", "enough")
    assert client.post(f"/api/v1/experiments/{running['id']}/stop").status_code == 409

    create_project(client, "too-big", ["true"], resources={"cpus": 64})
    queued = submit(client, "too-big")
    record = wait_until(
        lambda: (
            (r := client.get(f"/api/v1/experiments/{queued['id']}").json())["status_reason"] and r
        ),
        15,
        "the scheduler to say why it waits",
    )
    assert record["status"] == "queued"
    assert record["status_reason"] == "no online agent is big enough for 64 CPU slots"
    assert client.post(f"/api/v1/experiments/{queued['id']}/stop").status_code == 202
    record = wait_terminal(client, queued["id"])
    assert record["status"] == "stopped" and record["started_at"] is None

    again = client.post(f"/api/v1/experiments/{running['id']}/restart")
    assert again.status_code == 201
    assert again.json()["id"] != running["id"] and again.json()["options"] == running["options"]
    client.post(f"/api/v1/experiments/{again.json()['id']}/stop")
    wait_terminal(client, again.json()["id"])


def test_agents_are_listed_and_a_drained_agent_takes_no_work(client: httpx.Client) -> None:
    agents = client.get("/api/v1/agents").json()
    mine = next(a for a in agents if a["id"] == "e2e-agent")
    assert mine["status"] == "online" and mine["slots"] == 2
    assert mine["hardware"]["cpu_count"] >= 1
    assert client.get("/api/v1/agents/no-such-agent").status_code == 404

    assert client.post("/api/v1/agents/e2e-agent/drain").json()["draining"] is True
    try:
        waiting = submit(client, "hello")
        record = wait_until(
            lambda: (
                (r := client.get(f"/api/v1/experiments/{waiting['id']}").json())["status_reason"]
                and r
            ),
            15,
            "the scheduler to say why it waits",
        )
        assert record["status"] == "queued"
        assert "draining" in record["status_reason"]
        assert client.delete("/api/v1/agents/e2e-agent").status_code == 409
    finally:
        client.post("/api/v1/agents/e2e-agent/drain", json={"draining": False})
    assert wait_terminal(client, waiting["id"])["status"] == "succeeded"


def test_a_killed_agent_s_experiment_runs_again_elsewhere(
    stack: Stack, client: httpx.Client, train_py: Path
) -> None:
    env = {**os.environ, "FLEETLAB_HOME": str(stack.home), "FLEETLAB_AGENT__HEARTBEAT_S": "0.5"}
    second = subprocess.Popen(
        [
            FLEETLAB,
            "agent",
            "--nats",
            stack.info()["nats_url"],
            "--name",
            "e2e-second",
            "--slots",
            "2",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: any(
                a["id"] == "e2e-second" and a["online"] for a in client.get("/api/v1/agents").json()
            ),
            30,
            "the second agent to be online",
        )
        create_project(
            client,
            "retried",
            ["python3", str(train_py)],
            env={"MODE": "sleep-first"},
            max_retries=1,
        )
        experiment = submit(client, "retried")
        first = wait_status(client, experiment["id"], "running")
        holder = first["agent_id"]
        pid = second.pid if holder == "e2e-second" else stack.info()["pids"]["agent"]
        os.kill(pid, signal.SIGKILL)
        record = wait_terminal(client, experiment["id"], timeout=60)
        assert record["status"] == "succeeded", record
        assert record["attempt"] == 2
    finally:
        second.terminate()
        second.wait(15)


def test_nats_restarted_mid_run_the_run_ends_and_its_log_is_complete(
    stack: Stack, client: httpx.Client, train_py: Path
) -> None:
    create_project(client, "chatty", ["python3", str(train_py)], env={"MODE": "count"})
    experiment = submit(client, "chatty")
    wait_status(client, experiment["id"], "running")
    old = stack.info()["pids"]["nats"]
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: stack.info()["pids"]["nats"] != old, 15, "nats-server to be restarted")
    record = wait_terminal(client, experiment["id"], timeout=60)
    assert record["status"] == "succeeded", record

    def counted() -> list[str]:
        text = client.get(f"/api/v1/experiments/{experiment['id']}/logs").text
        return [ln for ln in text.splitlines() if ln.startswith("line ")]

    # Consumers resume on their own after the restart; nothing may be missing once they have.
    wait_until(lambda: len(counted()) >= 300, 30, "the whole log to be stored")
    assert counted() == [f"line {i}" for i in range(300)]


def test_a_restarted_scheduler_loses_nothing_and_runs_nothing_twice(
    stack: Stack, client: httpx.Client
) -> None:
    create_project(client, "many", ["true"])
    starts: dict[str, int] = {}

    async def run() -> list[str]:
        nc = await nats.connect(stack.info()["nats_url"])

        async def on_start(msg: Any) -> None:
            eid = json.loads(msg.data)["experiment_id"]
            starts[eid] = starts.get(eid, 0) + 1

        await nc.subscribe("agent.experiment.started", cb=on_start)
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as ac:
            ids = []
            for i in range(200):
                r = await ac.post("/api/v1/experiments", json={"project": "many"})
                ids.append(r.json()["id"])
                if i == 60:
                    os.kill(stack.info()["pids"]["scheduler"], signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            page = client.get("/api/v1/experiments", params={"project": "many", "limit": 1000})
            items = page.json()["items"]
            if all(e["status"] in TERMINAL for e in items):
                break
            await asyncio.sleep(0.2)
        await nc.flush()
        await nc.close()
        return ids

    ids = asyncio.run(run())
    records = client.get("/api/v1/experiments", params={"project": "many", "limit": 1000}).json()
    assert sorted(e["id"] for e in records["items"]) == sorted(ids)
    assert {e["status"] for e in records["items"]} == {"succeeded"}
    assert all(starts.get(eid) == 1 for eid in ids), {k: v for k, v in starts.items() if v != 1}


def test_outputs_are_uploaded_listed_and_downloaded(client: httpx.Client, train_py: Path) -> None:
    create_project(client, "writer", ["python3", str(train_py)], env={"MODE": "outputs"})
    experiment = submit(client, "writer")
    assert wait_terminal(client, experiment["id"])["status"] == "succeeded"
    listed = client.get(f"/api/v1/experiments/{experiment['id']}/artifacts").json()
    by_name = {a["name"]: a for a in listed}
    assert set(by_name) == {"model.txt", "sub/scores.json"}  # the symlink is not followed
    assert by_name["model.txt"]["size"] == len("weights " * 1000)
    assert by_name["model.txt"]["kind"] == "output"
    r = client.get(
        f"/api/v1/experiments/{experiment['id']}/artifacts/sub/scores.json", follow_redirects=True
    )
    assert r.status_code == 200 and r.content == b'{"acc": 0.9}'
    import hashlib

    assert by_name["sub/scores.json"]["sha256"] == hashlib.sha256(r.content).hexdigest()
    missing = client.get(f"/api/v1/experiments/{experiment['id']}/artifacts/nope.bin")
    assert missing.status_code == 404


def test_deleting_an_experiment_deletes_its_log_metrics_and_files(
    stack: Stack, client: httpx.Client, train_py: Path
) -> None:
    create_project(client, "deleted", ["python3", str(train_py)], env={"MODE": "outputs"})
    experiment = submit(client, "deleted")
    experiment_id = experiment["id"]
    assert wait_terminal(client, experiment_id)["status"] == "succeeded"
    posted = client.post(
        f"/api/v1/experiments/{experiment_id}/metrics", json={"name": "loss", "value": 0.5}
    )
    assert posted.status_code == 201, posted.text
    files = stack.home / "artifacts" / "objects" / "experiments" / experiment_id
    assert any(p.is_file() for p in files.rglob("*"))
    assert "epoch 4" in client.get(f"/api/v1/experiments/{experiment_id}/logs").text
    archives = stack.home / "artifacts" / "objects" / "logs" / experiment_id
    wait_until(lambda: archives.is_dir() and any(archives.iterdir()), 15, "the log archive")

    assert client.delete(f"/api/v1/experiments/{experiment_id}").status_code == 204

    assert client.get(f"/api/v1/experiments/{experiment_id}").status_code == 404
    assert not any(p.is_file() for p in files.rglob("*"))
    dsn = stack.info()["postgres_dsn"]

    async def stored() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            total = 0
            for table in ("chunks", "runs", "metric_chunks", "metric_summary"):
                total += await conn.fetchval(
                    f"SELECT count(*) FROM logstream.{table} WHERE experiment_id = $1",
                    uuid.UUID(experiment_id),
                )
            return int(total)
        finally:
            await conn.close()

    wait_until(lambda: asyncio.run(stored()) == 0, 15, "logstream to drop the experiment")
    assert not any(p.is_file() for p in archives.rglob("*"))


def test_the_python_sdk_returns_the_api_s_own_models(stack: Stack, train_py: Path) -> None:
    from fleetlab_cli import ApiError, AsyncClient, Client, plain
    from fleetlab_common.api.experiments import Experiment, ExperimentPage
    from fleetlab_common.api.projects import Project

    with Client(stack.url) as fl:
        project = fl.create_project(
            name="sdk",
            command=["python3", str(train_py)],
            schema={"lr": {"type": "float", "default": 0.1}},
        )
        assert isinstance(project, Project)
        assert project.schema_["lr"].default == 0.1
        made = fl.submit("sdk", {"lr": 0.5}, tags=["sdk"])
        assert isinstance(made, Experiment) and made.status == "queued"
        assert made.options == {"lr": 0.5}
        done = wait_until(
            lambda: (e := fl.experiment(str(made.id))).status in TERMINAL and e, 30, "the run"
        )
        assert done.status == "succeeded" and done.exit_code == 0
        assert [e.id for e in fl.iter_experiments(project="sdk", limit=1)] == [made.id]
        page = fl.experiments(project="sdk", tag="sdk")
        assert isinstance(page, ExperimentPage) and page.next is None
        assert plain(done)["status"] == "succeeded"
        try:
            fl.submit("sdk", {"lr": "fast"})
        except ApiError as exc:
            assert exc.status == 422 and "options.lr" in exc.fields
        else:
            raise AssertionError("a bad option was accepted")

    async def from_async() -> list[Experiment]:
        async with AsyncClient(stack.url) as afl:
            again = await afl.restart(str(made.id))
            assert isinstance(again, Experiment) and again.id != made.id
            return [e async for e in afl.iter_experiments(project="sdk")]

    listed = asyncio.run(from_async())
    assert len(listed) == 2 and all(isinstance(e, Experiment) for e in listed)


def test_sigterm_stops_everything_and_data_survives_a_restart(
    stack: Stack, client: httpx.Client
) -> None:
    experiments = client.get("/api/v1/experiments", params={"limit": 1000}).json()["items"]
    pids = [p for p in stack.info()["pids"].values() if p]
    took = stop_stack(stack)
    assert stack.proc.returncode == 0
    assert took < 10
    assert not (stack.home / "stack.json").exists()
    leftovers = [p for p in pids if Path(f"/proc/{p}").exists()]
    assert leftovers == []

    again = start_stack(stack.home, free_port())
    try:
        with httpx.Client(base_url=again.url, timeout=10) as c2:
            after = c2.get("/api/v1/experiments", params={"limit": 1000}).json()["items"]
            assert [e["id"] for e in after] == [e["id"] for e in experiments]
            assert wait_terminal(c2, submit(c2, "hello")["id"])["status"] == "succeeded"
    finally:
        stop_stack(again)
