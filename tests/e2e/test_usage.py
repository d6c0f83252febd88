"""End to end through `fleetlab up`: a run's resource use and its results folder, as a user
sees them over HTTP while it runs and after it ended."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fleetlab_common.embedded import free_port
from fleetlab_common.testing.stack import FLEETLAB, Stack, start_stack, stop_stack, wait_until

pytestmark = pytest.mark.e2e

AGENT = "e2e-usage-agent"

# Spins a core, holds 80 MB, writes FGMachine results, then waits for the test's "go".
PROGRAM = textwrap.dedent(
    """
    import json, os, time
    block = b"x" * (80 * 1024 * 1024)
    results = os.environ["FLEETLAB_RESULTS_DIR"]
    with open(os.path.join(results, "scores.json"), "w") as f:
        json.dump({"_scores": {"accuracy": 0.91}, "_notes": "warming up"}, f)
    go = os.path.join(os.environ["FLEETLAB_WORK_DIR"], "go")
    x = 0
    while not os.path.exists(go):
        x += 1
    with open(os.path.join(results, "final.json"), "w") as f:
        json.dump({"_notes": "done"}, f)
    """
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(
        tmp_path_factory.mktemp("e2e-usage") / "home",
        free_port(),
        FLEETLAB_AGENT__NAME=AGENT,
        FLEETLAB_AGENT__USAGE_INTERVAL_S="0.3",
        FLEETLAB_AGENT__RESULTS_INTERVAL_S="0.2",
    )
    yield stack
    stop_stack(stack)


def test_usage_and_results_show_while_a_run_goes_and_stay_after(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        project = client.post(
            "/api/v1/projects",
            json={
                "name": "e2e-usage",
                "command": [sys.executable, "-c", PROGRAM],
                "results": "results",
            },
        )
        assert project.status_code == 201, project.text
        submitted = client.post("/api/v1/experiments", json={"project": "e2e-usage"})
        assert submitted.status_code == 201, submitted.text
        eid = submitted.json()["id"]

        def record() -> dict[str, Any]:
            body: dict[str, Any] = client.get(f"/api/v1/experiments/{eid}").json()
            return body

        # The results folder's scores reach the record while the run goes.
        running = wait_until(
            lambda: (r := record())["results"].get("_scores") and r, 60, "the run's scores"
        )
        assert running["status"] == "running"
        assert running["results"]["_scores"] == {"accuracy": 0.91}

        # Its process tree's CPU and memory, sampled every 0.3 s.
        def busy_samples() -> list[dict[str, Any]] | None:
            samples: list[dict[str, Any]] = client.get(f"/api/v1/experiments/{eid}/usage").json()[
                "samples"
            ]
            hot = [s for s in samples if s["cpu_percent"] > 10 and s["rss_mb"] > 80]
            return samples if hot else None

        samples = wait_until(busy_samples, 60, "usage samples of a busy run")
        assert all(s["agent_id"] == AGENT for s in samples)

        # The machine's latest sample in the agents list.
        def listed() -> dict[str, Any] | None:
            agents = {a["id"]: a for a in client.get("/api/v1/agents").json()}
            agent = agents.get(AGENT)
            return agent if agent and agent["usage"] else None

        agent = wait_until(listed, 30, "the agent's latest usage")
        assert 0 < agent["usage"]["memory_used_mb"] <= agent["usage"]["memory_total_mb"]
        machine = client.get(f"/api/v1/agents/{AGENT}/usage", params={"points": 5}).json()
        assert 0 < len(machine["samples"]) <= 5
        # MLBench's worker list, in the terminal: each agent's CPU and memory now.
        table = subprocess.run(
            [FLEETLAB, "agents"], env=stack.env(), capture_output=True, text=True, check=True
        ).stdout
        (row,) = [line for line in table.splitlines() if AGENT in line]
        assert "%" in row and "GiB" in row

        (stack.home / "agent" / AGENT / "work" / f"{eid}-1" / "go").write_text("")
        done = wait_until(
            lambda: (r := record())["status"] in {"succeeded", "failed"} and r, 60, "the end"
        )
        assert done["status"] == "succeeded", done
        assert done["results"]["_notes"] == "done"
        assert done["results"]["_scores"] == {"accuracy": 0.91}

        artifacts = {a["name"] for a in client.get(f"/api/v1/experiments/{eid}/artifacts").json()}
        assert {"results/scores.json", "results/final.json"} <= artifacts
        download = client.get(
            f"/api/v1/experiments/{eid}/artifacts/results/scores.json", follow_redirects=True
        )
        assert json.loads(download.content)["_scores"] == {"accuracy": 0.91}

        measurements = client.get(f"/api/v1/experiments/{eid}/measurements.json").json()
        assert len(measurements["resources"]) >= len(samples)
        assert any(r["cpu_percent"] > 10 for r in measurements["resources"])


# Rank r holds 60 + 100 * r MB until the test's "go" in its working directory.
RANKED = textwrap.dedent(
    """
    import os, time
    rank = int(os.environ["RANK"])
    block = b"x" * ((60 + 100 * rank) * 1024 * 1024)
    go = os.path.join(os.environ["FLEETLAB_WORK_DIR"], "go")
    while not os.path.exists(go):
        time.sleep(0.05)
    """
)


def test_each_rank_of_a_multi_worker_run_has_usage_of_its_own(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        # Two ranks of one CPU slot each: both on the stack's one agent.
        project = client.post(
            "/api/v1/projects",
            json={
                "name": "e2e-usage-ranks",
                "command": [sys.executable, "-c", RANKED],
                "workers": 2,
                "resources": {"cpus": 1},
            },
        )
        assert project.status_code == 201, project.text
        submitted = client.post("/api/v1/experiments", json={"project": "e2e-usage-ranks"})
        assert submitted.status_code == 201, submitted.text
        eid = submitted.json()["id"]

        def both_ranks_hold_their_memory() -> list[dict[str, Any]] | None:
            samples: list[dict[str, Any]] = client.get(
                f"/api/v1/experiments/{eid}/usage", params={"points": 0}
            ).json()["samples"]
            full = {s["rank"] for s in samples if s["rss_mb"] > 60 + 100 * (s["rank"] or 0)}
            return samples if full == {0, 1} else None

        samples = wait_until(both_ranks_hold_their_memory, 60, "usage of both ranks")
        assert {s["rank"] for s in samples} == {0, 1}
        assert all(s["agent_id"] == AGENT and s["processes"] == 1 for s in samples)
        # Rank 0's samples are its own tree alone, never the two ranks added together.
        assert max(s["rss_mb"] for s in samples if s["rank"] == 0) < 160
        measurements = client.get(f"/api/v1/experiments/{eid}/measurements.json").json()
        assert {r["rank"] for r in measurements["resources"]} == {0, 1}

        work = stack.home / "agent" / AGENT / "work"
        for rank in (0, 1):
            (work / f"{eid}-1-r{rank}" / "go").write_text("")
        done = wait_until(
            lambda: (
                (r := client.get(f"/api/v1/experiments/{eid}").json())["status"]
                in {"succeeded", "failed"}
                and r
            ),
            60,
            "the end",
        )
        assert done["status"] == "succeeded", done
