"""Metric ingestion benchmark, through `fleetlab up`: points/s through the file protocol
(a program calling ``fleetlab.log``; the agent tails the file) and through the REST batch
route (``POST /api/v1/experiments/{id}/metrics``).

    .venv/bin/python bench/metrics.py [--points 200000]

Writes bench/results/metrics.json and its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.aio.msg import Msg

sys.path.insert(0, str(Path(__file__).parent))
from _stack import record, stack

# Each line holds 4 metrics: points = lines * 4.
PROGRAM = """
import fleetlab
for step in range({lines}):
    fleetlab.log(step=step, loss=1.0 / (step + 1), accuracy=step / {lines}, lr=0.1, grad=0.5)
"""


class Stored:
    """How many points logstream holds per experiment, from its ``logstream.metrics.summarized``
    events (each says, per metric, how many points are stored): waiting costs no polling, so
    the wait does not take CPU from what it measures."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {}
        self.changed = asyncio.Event()

    async def on_event(self, msg: Msg) -> None:
        body = json.loads(msg.data)
        per_name = self.counts.setdefault(body["experiment_id"], {})
        for m in body["metrics"]:
            per_name[m["name"]] = max(per_name.get(m["name"], 0), m["count"])
        self.changed.set()

    async def until(self, eid: str, n: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while sum(self.counts.get(eid, {}).values()) < n:
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                got = sum(self.counts.get(eid, {}).values())
                raise RuntimeError(f"only {got} of {n} points arrived")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        return time.monotonic()


async def bench(points: int) -> dict[str, Any]:
    lines = points // 4
    code = Path(tempfile.mkdtemp()) / "metrics.py"
    code.write_text(PROGRAM.format(lines=lines))
    stored_points = Stored()
    with stack() as (url, info):
        nc = await nats.connect(info["nats_url"])
        await nc.subscribe("logstream.metrics.summarized.*", cb=stored_points.on_event)
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            r = await http.post(
                "/api/v1/projects",
                json={"name": "m", "command": [sys.executable, str(code)], "schema": {}},
            )
            r.raise_for_status()

            # The file protocol: from submission to the last point stored.
            began = time.monotonic()
            eid = (await http.post("/api/v1/experiments", json={"project": "m"})).json()["id"]
            file_done = await stored_points.until(eid, lines * 4, 600)
            file_s = file_done - began

            # REST: the points come from outside, to experiments of a project whose process
            # only waits (running the metrics program again would measure it twice at once).
            r = await http.post(
                "/api/v1/projects",
                json={
                    "name": "rest",
                    "command": [sys.executable, "-c", "import time; time.sleep(600)"],
                    "schema": {},
                },
            )
            r.raise_for_status()
            # One batch of `points` points (sent on in ordered chunks).
            rest_eid = (await http.post("/api/v1/experiments", json={"project": "rest"})).json()[
                "id"
            ]
            batch = [{"name": f"m{i % 4}", "value": i * 0.5, "step": i // 4} for i in range(points)]
            body = json.dumps(batch).encode()
            began = time.monotonic()
            posted = await http.post(
                f"/api/v1/experiments/{rest_eid}/metrics",
                content=body,
                headers={"content-type": "application/json"},
            )
            rest_s = time.monotonic() - began
            posted.raise_for_status()
            stored = posted.json()["stored"]

            # REST: batches of 1,000 (MLflow's cap), one after another.
            small_eid = (await http.post("/api/v1/experiments", json={"project": "rest"})).json()[
                "id"
            ]
            began = time.monotonic()
            for start in range(0, 50_000, 1000):
                chunk = batch[start : start + 1000]
                resp = await http.post(f"/api/v1/experiments/{small_eid}/metrics", json=chunk)
                resp.raise_for_status()
            small_s = time.monotonic() - began
        await nc.close()
    return {
        # The machine is shared: its load while measuring (1, 5, 15 minutes) says how much.
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "points": points,
        "file_points_per_s": round(lines * 4 / file_s),
        "file_seconds_from_submit": round(file_s, 2),
        "rest_batch_points_per_s": round(stored / rest_s),
        "rest_batch_seconds": round(rest_s, 2),
        "rest_1000_per_request_points_per_s": round(50_000 / small_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=200_000)
    args = parser.parse_args()
    r = asyncio.run(bench(args.points))
    print(json.dumps(r, indent=2))
    n = r["points"]
    table = "\n".join(
        [
            "## Metrics",
            "",
            f"`bench/metrics.py --points {n}` through `fleetlab up` on this machine.",
            "",
            "| benchmark | result | goal |",
            "| --- | --- | --- |",
            f"| file protocol (`fleetlab.log`, 4 metrics a line), submit to stored | "
            f"{r['file_points_per_s']:,} points/s ({n:,} in {r['file_seconds_from_submit']} s, "
            "start-up included) | ≥ 100,000 points/s |",
            f"| REST, one batch of {n:,} | {r['rest_batch_points_per_s']:,} points/s | "
            "≥ 100,000 points/s |",
            f"| REST, 1,000 points a request (MLflow's cap; MLflow 3,721/s) | "
            f"{r['rest_1000_per_request_points_per_s']:,} points/s | — |",
            "",
            "The file protocol runs from the submission (start-up included) to logstream",
            "having stored the last point; the REST figures post to runs of a project whose",
            "process only waits. Points travel as plain JSON (orjson, no model per point) and",
            "logstream stores a batch as one row per metric, its points as arrays (COPY); the",
            "API keeps a per-batch summary. The benchmark waits on logstream's summary events",
            "rather than polling. Load average just after: "
            f"{' / '.join(str(x) for x in r['load_average_after'])}.",
        ]
    )
    record("metrics", r, table)


if __name__ == "__main__":
    main()
