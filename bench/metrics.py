"""Metric ingestion benchmark, through `fleetlab up`: points/s through the file protocol
(a program calling ``fleetlab.log``; the agent tails the file) and through the REST batch
route (``POST /api/v1/experiments/{id}/metrics``).

    .venv/bin/python bench/metrics.py [--points 200000]

Writes bench/results/metrics.json and its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _stack import record, stack

# Each line holds 4 metrics: points = lines * 4.
PROGRAM = """
import fleetlab
for step in range({lines}):
    fleetlab.log(step=step, loss=1.0 / (step + 1), accuracy=step / {lines}, lr=0.1, grad=0.5)
"""


async def count(http: httpx.AsyncClient, eid: str) -> int:
    body = (await http.get(f"/api/v1/experiments/{eid}/metrics", params={"points": 1})).json()
    return sum(s["count"] for s in body.get("summary", []))


async def until_count(http: httpx.AsyncClient, eid: str, n: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await count(http, eid) >= n:
            return time.monotonic()
        await asyncio.sleep(0.05)
    raise RuntimeError(f"only {await count(http, eid)} of {n} points arrived")


async def bench(points: int) -> dict[str, Any]:
    lines = points // 4
    code = Path(tempfile.mkdtemp()) / "metrics.py"
    code.write_text(PROGRAM.format(lines=lines))
    with stack() as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            r = await http.post(
                "/api/v1/projects",
                json={"name": "m", "command": [sys.executable, str(code)], "schema": {}},
            )
            r.raise_for_status()

            # The file protocol: from submission to the last point stored.
            began = time.monotonic()
            eid = (await http.post("/api/v1/experiments", json={"project": "m"})).json()["id"]
            file_done = await until_count(http, eid, lines * 4, 600)
            file_s = file_done - began

            # REST: one batch of `points` points (sent on in ordered chunks).
            rest_eid = (await http.post("/api/v1/experiments", json={"project": "m"})).json()["id"]
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
            small_eid = (await http.post("/api/v1/experiments", json={"project": "m"})).json()["id"]
            began = time.monotonic()
            for start in range(0, 50_000, 1000):
                chunk = batch[start : start + 1000]
                resp = await http.post(f"/api/v1/experiments/{small_eid}/metrics", json=chunk)
                resp.raise_for_status()
            small_s = time.monotonic() - began
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
            "Logstream reads each batch as plain JSON and writes it with COPY (no model per",
            "point); the API keeps only a per-batch summary. The machine's 2 cores were shared",
            "with other work while measuring (load average "
            f"{' / '.join(str(x) for x in r['load_average_after'])} just after): the figures",
            "are pessimistic.",
        ]
    )
    record("metrics", r, table)


if __name__ == "__main__":
    main()
