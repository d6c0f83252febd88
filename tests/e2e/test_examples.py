"""The examples, each run end to end with one command — ``fleetlab run DIR -f`` through the
real entry point — on a stack started by ``fleetlab up``: the README's walkthrough."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetlab_common.embedded import free_port
from fleetlab_common.testing.stack import Stack, start_stack, stop_stack, wait_until

pytestmark = pytest.mark.e2e

FLEETLAB = str(Path(sys.executable).parent / "fleetlab")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
IRIS = "sepal_length,sepal_width,petal_length,petal_width,species\n" + "".join(
    f"5.1,3.5,1.4,0.2,{kind}\n" for kind in ("setosa", "versicolor", "virginica") * 4
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("examples") / "home", free_port())
    yield stack
    if stack.proc.poll() is None:
        stop_stack(stack)


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        yield client


def fleetlab(
    stack: Stack, *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The real entry point; the API URL comes from $FLEETLAB_HOME/stack.json."""
    env = {**os.environ, "FLEETLAB_HOME": str(stack.home), "COLUMNS": "200"}
    env.pop("FLEETLAB_API_URL", None)
    return subprocess.run(
        [FLEETLAB, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_json(stack: Stack, *args: str) -> dict[str, Any]:
    """``fleetlab run … --json``: the experiment record (the final one with -f)."""
    result = fleetlab(stack, "run", *args, "--json")
    assert result.stdout, result.stderr
    record: dict[str, Any] = json.loads(result.stdout)
    record["_exit"] = result.returncode
    record["_stderr"] = result.stderr
    return record


def test_toy_train_runs_with_one_command(stack: Stack, api: httpx.Client) -> None:
    result = fleetlab(stack, "run", str(EXAMPLES / "toy-train"), "-f")
    assert result.returncode == 0, result.stderr
    assert "epoch 4 loss" in result.stdout
    assert result.stdout.rstrip().endswith("done")
    assert "succeeded" in result.stderr
    experiment = api.get("/api/v1/experiments", params={"project": "toy-train"}).json()["items"][0]
    assert experiment["status"] == "succeeded"
    assert experiment["options"]["lr"] == 0.3  # fleetlab.yaml's options
    digest = experiment["code"]
    assert digest.startswith("sha256:")
    # The code it ran is readable, file by file, exactly as it is in the folder.
    snapshot = api.get(f"/api/v1/code/{digest}").json()
    paths = [f["path"] for f in snapshot["files"]]
    assert paths == [".gitignore", "fleetlab.yaml", "train.py"]
    ran = api.get(f"/api/v1/code/{digest}/files/train.py")
    assert ran.content == (EXAMPLES / "toy-train" / "train.py").read_bytes()
    # The project takes the snapshot as its default code.
    assert api.get("/api/v1/projects/toy-train").json()["code"] == digest
    artifacts = api.get(f"/api/v1/experiments/{experiment['id']}/artifacts").json()
    kinds = {(a["kind"], a["name"]) for a in artifacts}
    assert {("code", "code.tar.gz"), ("output", "model.json")} <= kinds
    model = api.get(f"/api/v1/experiments/{experiment['id']}/artifacts/model.json")
    assert model.status_code == 307
    assert json.loads(httpx.get(model.headers["location"]).content)["epochs"] == 5

    def metrics() -> dict[str, Any] | None:
        found: dict[str, Any] = api.get(f"/api/v1/experiments/{experiment['id']}/metrics").json()
        names = {s["name"]: s for s in found["series"]}
        return found if "loss" in names and names["loss"]["total"] == 5 else None

    found = wait_until(metrics, 20, "the toy's per-step metrics")
    assert set(found["scores"]) == {"loss", "accuracy"}

    def scored() -> dict[str, Any] | None:
        record = api.get(f"/api/v1/experiments/{experiment['id']}").json()
        scores: dict[str, Any] | None = record["results"].get("_scores")
        return scores

    assert set(wait_until(scored, 20, "the toy's scores in its results")) >= {"loss"}


def test_options_on_the_command_line_and_the_same_code_stored_once(
    stack: Stack, api: httpx.Client
) -> None:
    first = run_json(stack, str(EXAMPLES / "toy-train"), "lr=0.9", "epochs=2", "--name", "quick")
    assert first["_exit"] == 0, first["_stderr"]
    assert first["options"] == {"lr": 0.9, "epochs": 2, "seed": 0, "delay": 0.0}
    assert first["name"] == "quick"
    second = run_json(stack, str(EXAMPLES / "toy-train"), "-f", "epochs=1")
    assert second["_exit"] == 0 and second["status"] == "succeeded", second["_stderr"]
    assert second["code"] == first["code"]
    listed = [s["digest"] for s in api.get("/api/v1/code", params={"limit": 1000}).json()]
    assert listed.count(first["code"]) == 1


def test_a_failed_or_stopped_run_exits_with_its_code(
    stack: Stack, api: httpx.Client, tmp_path: Path
) -> None:
    failing = tmp_path / "failing"
    failing.mkdir()
    (failing / "fleetlab.yaml").write_text("command: python3 fail.py\n")
    (failing / "fail.py").write_text("import sys\nprint('about to fail')\nsys.exit(3)\n")
    result = fleetlab(stack, "run", str(failing), "-f")
    assert result.returncode == 3, result.stderr
    assert "about to fail" in result.stdout and "failed" in result.stderr

    sleepy = tmp_path / "sleepy"
    sleepy.mkdir()
    (sleepy / "fleetlab.yaml").write_text("name: sleepy-run\ncommand: python3 sleep.py\n")
    (sleepy / "sleep.py").write_text("import time\nprint('sleeping', flush=True)\ntime.sleep(60)\n")
    env = {**os.environ, "FLEETLAB_HOME": str(stack.home)}
    env.pop("FLEETLAB_API_URL", None)
    follower = subprocess.Popen(
        [FLEETLAB, "run", str(sleepy), "-f"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def running() -> str | None:
            page = api.get("/api/v1/experiments", params={"project": "sleepy-run"}).json()
            # Until `fleetlab run` has made the project, the filter names an unknown one.
            running = [e for e in page.get("items", []) if e["status"] == "running"]
            return running[0]["id"] if running else None

        experiment_id = wait_until(running, 30, "the sleepy run to start")
        wait_until(
            lambda: "sleeping" in api.get(f"/api/v1/experiments/{experiment_id}/logs").text,
            30,
            "the sleepy run's first line",
        )
        assert api.post(f"/api/v1/experiments/{experiment_id}/stop").status_code == 202
        out, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 130, err
    assert "sleeping" in out and "stopped" in err


def test_the_fglab_schema_example(stack: Stack, api: httpx.Client) -> None:
    record = run_json(stack, str(EXAMPLES / "fglab-schema"), "-f", "lr=0.5", "epochs=2")
    assert record["_exit"] == 0 and record["status"] == "succeeded", record["_stderr"]
    assert record["options"] == {"lr": 0.5, "epochs": 2}
    assert "epoch 1 loss" in record["_stderr"]  # with --json the output goes to stderr
    project = api.get("/api/v1/projects/fglab-schema").json()
    assert list(project["schema"]) == ["lr", "epochs"]
    assert project["results"] == "results"
    # FGMachine's results file, merged into the experiment's results.
    assert record["results"]["_scores"]["loss"] < 1 and record["results"]["lr"] == 0.5
    refused = fleetlab(stack, "run", str(EXAMPLES / "fglab-schema"), "lr=fast")
    assert refused.returncode == 1 and "lr" in refused.stderr


class Iris(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = IRIS.encode()
        self.send_response(200 if self.path == "/iris.csv" else 404)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def iris_url() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Iris)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/iris.csv"
    httpd.shutdown()
    httpd.server_close()


def test_the_ml_yaml_example_with_an_input_and_parameters(
    stack: Stack, api: httpx.Client, tmp_path: Path, iris_url: str
) -> None:
    # The example's input lives on the internet; this machine serves a copy instead.
    lab = tmp_path / "ml-yaml"
    shutil.copytree(EXAMPLES / "ml-yaml", lab)
    text = (lab / "ml.yaml").read_text()
    url = next(line.split("url:")[1].strip() for line in text.splitlines() if "url:" in line)
    (lab / "ml.yaml").write_text(text.replace(url, iris_url))
    record = run_json(stack, str(lab), "-f")
    assert record["_exit"] == 0 and record["status"] == "succeeded", record["_stderr"]
    assert "read 12 rows from inputs/iris.csv" in record["_stderr"]
    assert "epoch 3/3: 3 classes" in record["_stderr"]  # the parameters were passed
    project = api.get("/api/v1/projects/ml-yaml").json()
    assert project["command"] == ["python3", "main.py"]
    assert [p["pass-as"] for p in project["parameters"]] == ["--epochs=3", "--target=species"]
    artifacts = api.get(f"/api/v1/experiments/{record['id']}/artifacts").json()
    assert {"classes.json", "code.tar.gz"} <= {a["name"] for a in artifacts}
    # Run again after a change to the file: the project is updated, not refused.
    (lab / "ml.yaml").write_text((lab / "ml.yaml").read_text().replace("--epochs=3", "--epochs=1"))
    again = run_json(stack, str(lab), "-f")
    assert again["_exit"] == 0, again["_stderr"]
    assert "epoch 1/1" in again["_stderr"]
