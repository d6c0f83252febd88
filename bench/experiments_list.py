"""Experiments list benchmark, through `fleetlab up`: a page of 50 out of 100,000 experiments,
sorted by a metric (last, min, max), by a score, filtered by a metric, first and deep pages.

    .venv/bin/python bench/experiments_list.py [--experiments 100000] [--requests 200]

The experiments and their metric summaries are written straight into the API's tables (COPY)
so that the set-up takes seconds; what is measured is the read: HTTP request to JSON answer.
Writes bench/results/experiments_list.json and its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _stack import percentile, record, stack

from fleetlab_common.ids import uuid7

# (label, query parameters); "deep" pages start from a cursor taken 20 pages in.
CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("sort=metrics.loss (last), first page", {"sort": "metrics.loss"}, False),
    ("sort=-metrics.loss.min, first page", {"sort": "-metrics.loss.min"}, False),
    ("sort=metrics.accuracy.max, page 21", {"sort": "metrics.accuracy.max"}, True),
    (
        "sort=-metrics.accuracy, metric=loss<0.2",
        {"sort": "-metrics.accuracy", "metric": "loss<0.2"},
        False,
    ),
    ("sort=-results._scores.acc, first page", {"sort": "-results._scores.acc"}, False),
    ("sort=results._scores.acc, page 21", {"sort": "results._scores.acc"}, True),
    ("newest first (no sort), for comparison", {}, False),
]


async def seed(dsn: str, project_id: Any, n: int) -> None:
    rng = random.Random(7)
    now = datetime.now(UTC)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "api"})
    try:
        experiments = []
        summaries = []
        for i in range(n):
            eid = uuid7()
            loss = [rng.uniform(0.01, 2.0) for _ in range(3)]
            acc = rng.random()
            results = json.dumps({"_scores": {"acc": round(acc, 6)}})
            experiments.append(
                (eid, project_id, f"run-{i}", "{}", "succeeded", results, now, now, now)
            )
            summaries.append((eid, "loss", loss[-1], 99, now, min(loss), max(loss), 100))
            summaries.append((eid, "accuracy", acc, 99, now, acc / 2, acc, 100))
        await conn.copy_records_to_table(
            "experiments",
            records=experiments,
            columns=[
                "id",
                "project_id",
                "name",
                "options",
                "status",
                "results",
                "created_at",
                "started_at",
                "finished_at",
            ],
        )
        await conn.copy_records_to_table(
            "metric_summary",
            records=summaries,
            columns=[
                "experiment_id",
                "name",
                "last",
                "last_step",
                "last_ts",
                "min",
                "max",
                "count",
            ],
        )
        await conn.execute("ANALYZE experiments; ANALYZE metric_summary")
    finally:
        await conn.close()


async def timed(http: httpx.AsyncClient, params: dict[str, Any], requests: int) -> list[float]:
    took = []
    for _ in range(requests):
        began = time.perf_counter()
        r = await http.get("/api/v1/experiments", params=params)
        took.append((time.perf_counter() - began) * 1000)
        r.raise_for_status()
        if len(r.json()["items"]) != params["limit"]:
            raise RuntimeError(f"short page for {params}: {len(r.json()['items'])}")
    return took


async def bench(n: int, requests: int) -> dict[str, Any]:
    with stack() as (url, info):
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            r = await http.post(
                "/api/v1/projects", json={"name": "big", "command": ["true"], "schema": {}}
            )
            r.raise_for_status()
            began = time.monotonic()
            await seed(info["postgres_dsn"], r.json()["id"], n)
            seeded_s = time.monotonic() - began
            cases = []
            for label, params, deep in CASES:
                query = {**params, "project": "big", "limit": 50}
                if deep:
                    for _ in range(20):
                        page = (await http.get("/api/v1/experiments", params=query)).json()
                        query["cursor"] = page["next"]
                await timed(http, query, 5)  # warm
                took = await timed(http, query, requests)
                cases.append(
                    {
                        "case": label,
                        "p50_ms": round(percentile(took, 50), 2),
                        "p95_ms": round(percentile(took, 95), 2),
                        "p99_ms": round(percentile(took, 99), 2),
                    }
                )
                print(cases[-1], flush=True)
    return {
        "experiments": n,
        "requests_per_case": requests,
        "page": 50,
        "seed_seconds": round(seeded_s, 1),
        "cases": cases,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    r = asyncio.run(bench(args.experiments, args.requests))
    print(json.dumps(r, indent=2))
    rows = [
        f"| {c['case']} | {c['p50_ms']} ms | {c['p95_ms']} ms | "
        f"{'≤ 50 ms' if 'comparison' not in c['case'] else '—'} |"
        for c in r["cases"]
    ]
    table = "\n".join(
        [
            "## Experiments list",
            "",
            f"`bench/experiments_list.py --experiments {r['experiments']}`: "
            f"{r['experiments']:,} experiments of one project, each with two metrics (`loss`, "
            "`accuracy`: last, min, max) and a score, written into the API's tables through "
            "`fleetlab up`; a page of 50 over HTTP, "
            f"{r['requests_per_case']} requests a case, one after another.",
            "",
            "| page of 50 | p50 | p95 | goal (p95) |",
            "| --- | --- | --- | --- |",
            *rows,
        ]
    )
    record("experiments_list", r, table)


if __name__ == "__main__":
    main()
