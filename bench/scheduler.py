"""Scheduler and agent benchmarks (issue: scheduler and agent).

    .venv/bin/python bench/scheduler.py [latency|throughput|placement|idle|all]

- latency: submit → process started, one warm agent (p50, p99).
- throughput: 1,000 trivial experiments (`true`) across 4 agents of 4 slots, end to end,
  submitted in batches of 100 (``POST /api/v1/experiments/batch``).
- placement: 1,000 simulated agents and 10,000 queued experiments, the real scheduler on a
  real PostgreSQL (placements/s, events written to the outbox included).
- idle: an idle agent's RSS and CPU.

Writes bench/results/scheduler.json and its table in docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import nats
import psutil
from _stack import FLEETLAB, percentile, record, stack

from fleetlab_common.embedded import EmbeddedPostgres, free_port, stop_process
from fleetlab_common.events import AgentHardware, AgentHeartbeat, ExperimentSubmitted
from fleetlab_common.runspec import RunSpec


async def _latency_series(
    c: httpx.AsyncClient,
    started: dict[str, float],
    finished: dict[str, asyncio.Event],
    n: int,
    pause_s: float,
) -> list[float]:
    samples: list[float] = []
    for i in range(n + 10):
        t0 = time.perf_counter()
        r = await c.post("/api/v1/experiments", json={"project": "bench-latency"})
        eid = r.json()["id"]
        finished[eid] = asyncio.Event()
        await asyncio.wait_for(finished[eid].wait(), 30)
        if i >= 10:  # the first ones warm the path up
            samples.append((started[eid] - t0) * 1000)
        if pause_s:
            await asyncio.sleep(pause_s)
    return samples


async def _latency(url: str, nats_url: str, n: int = 200) -> dict[str, Any]:
    """Each submission on its own: the next one 200 ms after the previous run ended, once
    every service is done with it (its end recorded, its log archived, its webhooks
    considered); and, for comparison, back to back, each the moment the previous ended."""
    nc = await nats.connect(nats_url)
    started: dict[str, float] = {}
    finished: dict[str, asyncio.Event] = {}

    async def on_msg(msg: Any) -> None:
        body = json.loads(msg.data)
        eid = body["experiment_id"]
        if body["type"] == "agent.experiment.started":
            started[eid] = time.perf_counter()
        elif eid in finished:
            finished[eid].set()

    await nc.subscribe("agent.experiment.>", cb=on_msg)
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        await c.post("/api/v1/projects", json={"name": "bench-latency", "command": ["true"]})
        apart = await _latency_series(c, started, finished, n, 0.2)
        back_to_back = await _latency_series(c, started, finished, n, 0)
    await nc.close()
    return {
        "experiments": n,
        "p50_ms": round(percentile(apart, 50), 2),
        "p99_ms": round(percentile(apart, 99), 2),
        "max_ms": round(max(apart), 2),
        "back_to_back_p50_ms": round(percentile(back_to_back, 50), 2),
        "back_to_back_p99_ms": round(percentile(back_to_back, 99), 2),
    }


def _cpu_seconds(procs: dict[str, list[psutil.Process]]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each named group of processes and their
    children (PostgreSQL's backends are children of its postmaster)."""
    out: dict[str, float] = {}
    for name, group in procs.items():
        total = 0.0
        for proc in group:
            try:
                tree = [proc, *proc.children(recursive=True)]
            except psutil.Error:
                continue
            for q in tree:
                try:
                    t = q.cpu_times()
                    total += t.user + t.system + t.children_user + t.children_system
                except psutil.Error:
                    pass
        out[name] = total
    return out


SUBMIT_BATCH = 100


async def _throughput(
    url: str, nats_url: str, procs: dict[str, list[psutil.Process]], n: int = 1000
) -> dict[str, Any]:
    nc = await nats.connect(nats_url)
    done = asyncio.Event()
    finished: set[str] = set()
    ids: set[str] = set()
    failed = 0

    async def on_msg(msg: Any) -> None:
        nonlocal failed
        body = json.loads(msg.data)
        finished.add(body["experiment_id"])
        failed += body["status"] != "succeeded"
        if len(ids) == n and ids <= finished:
            done.set()

    await nc.subscribe("agent.experiment.finished", cb=on_msg)
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        await c.post("/api/v1/projects", json={"name": "bench-throughput", "command": ["true"]})
        item = {"project": "bench-throughput"}
        me = psutil.Process()
        cpu_before = _cpu_seconds(procs)
        mine_before = sum(me.cpu_times()[:2])
        t0 = time.perf_counter()
        # Submitted as a user queuing many would: batches of 100, one request after another
        # (the first experiments start while later batches are still being sent).
        for _ in range(n // SUBMIT_BATCH):
            r = await c.post(
                "/api/v1/experiments/batch", json={"experiments": [item] * SUBMIT_BATCH}
            )
            r.raise_for_status()
            ids.update(e["id"] for e in r.json()["experiments"])
        submitted = time.perf_counter() - t0
        if not ids <= finished:
            await asyncio.wait_for(done.wait(), 600)
        total = time.perf_counter() - t0
        cpu_after = _cpu_seconds(procs)
        mine = sum(me.cpu_times()[:2]) - mine_before
    await nc.close()
    # Where the machine's CPU went, per experiment (the runs' own `true` processes are
    # counted with the agents that started them; the benchmark's own client apart).
    cpu_ms = {k: round((cpu_after[k] - cpu_before[k]) * 1000 / n, 2) for k in procs}
    cpu_ms["benchmark client"] = round(mine * 1000 / n, 2)
    return {
        "cpu_ms_per_experiment": cpu_ms,
        "experiments": n,
        "agents": 4,
        "slots_per_agent": 4,
        "submit_batch": SUBMIT_BATCH,
        "seconds": round(total, 2),
        "experiments_per_s": round(n / total, 1),
        "submit_phase_s": round(submitted, 2),
        "failed": failed,
    }


def run_with_stack(kind: str) -> dict[str, Any]:
    env = {"FLEETLAB_AGENT__SLOTS": "4", "FLEETLAB_LOG_LEVEL": "WARNING"}
    with stack(env) as (url, info):
        nats_url = info["nats_url"]
        if kind == "latency":
            return asyncio.run(_latency(url, nats_url))
        if kind == "idle":
            proc = psutil.Process(info["pids"]["agent"])
            proc.cpu_percent(None)
            time.sleep(10)
            return {
                "rss_mb": round(proc.memory_info().rss / 1024 / 1024, 1),
                "cpu_percent": round(proc.cpu_percent(None), 2),
                "over_s": 10,
            }
        extra = [
            subprocess.Popen(
                [FLEETLAB, "agent", "--nats", nats_url, "--name", f"bench-{i}", "--slots", "4"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={
                    "FLEETLAB_HOME": str(Path(tempfile.mkdtemp())),
                    "PATH": "/usr/bin:/bin",
                    "FLEETLAB_LOG_LEVEL": "WARNING",
                    # Each agent serves its /healthz on a port of its own.
                    "FLEETLAB_PORT": str(free_port()),
                },
            )
            for i in range(3)
        ]
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                agents = httpx.get(f"{url}/api/v1/agents", timeout=5).json()
                if sum(a["online"] for a in agents) >= 4:
                    break
                time.sleep(0.2)
            pids = info["pids"]
            procs = {
                name: [psutil.Process(pids[name])]
                for name in ("api", "scheduler", "logstream", "webhooks", "postgres", "nats")
                if name in pids
            }
            procs["agents"] = [
                psutil.Process(pids["agent"]),
                *(psutil.Process(p.pid) for p in extra),
            ]
            return asyncio.run(_throughput(url, nats_url, procs))
        finally:
            for p in extra:
                p.send_signal(signal.SIGTERM)
            for p in extra:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:  # never leave an agent behind
                    p.kill()
                    p.wait()


async def _placement(dsn: str, agents: int = 1000, queued: int = 10_000) -> dict[str, Any]:
    from fleetlab_common.db.pool import create_pool
    from fleetlab_scheduler import repository as repo
    from fleetlab_scheduler.app import migrate
    from fleetlab_scheduler.service import Scheduler
    from fleetlab_scheduler.settings import SchedulerSettings

    settings = SchedulerSettings(postgres={"dsn": dsn}, placement_batch=2000)
    await migrate(settings)
    pool = await create_pool(dsn, "scheduler", max_size=4)

    class Relay:
        def kick(self) -> None:
            """The benchmark leaves the outbox rows where they are."""

    scheduler = Scheduler(settings, pool, Relay())  # type: ignore[arg-type]
    async with pool.acquire() as conn:
        for i in range(agents):
            await repo.upsert_agent(
                conn,
                AgentHeartbeat(
                    agent_id=f"sim-{i:04d}",
                    instance_id=uuid.uuid4(),
                    slots=10,
                    hardware=AgentHardware(memory_mb=64_000),
                ),
            )
        run = RunSpec(command=["true"])
        for _ in range(queued):
            await repo.insert_experiment(
                conn,
                ExperimentSubmitted(
                    experiment_id=uuid.uuid4(), project_id=uuid.uuid4(), project="p", run=run
                ),
            )
    t0 = time.perf_counter()
    placed = 0
    while placed < queued:
        n = await scheduler.place_once()
        if n == 0:
            break
        placed += n
    seconds = time.perf_counter() - t0
    await pool.close()
    return {
        "agents": agents,
        "queued": queued,
        "placed": placed,
        "seconds": round(seconds, 2),
        "placements_per_s": round(placed / seconds, 1),
    }


def run_placement() -> dict[str, Any]:
    from fleetlab_common.log import configure_logging

    configure_logging("bench", "WARNING")
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="fleetlab-bench-pg-")) / "data")
    proc = pg.start()
    try:
        return asyncio.run(_placement(pg.dsn()))
    finally:
        stop_process(proc, sig=signal.SIGINT)


GOALS = {
    "latency": "p50 ≤ 25 ms, p99 ≤ 100 ms",
    "throughput": "≥ 100 experiments/s",
    "placement": "≥ 2,000 placements/s",
    "idle": "—",
}


def table(results: dict[str, Any]) -> str:
    rows = ["## Scheduler and agent", "", "| benchmark | result | goal |", "| --- | --- | --- |"]
    if "latency" in results:
        r = results["latency"]
        rows.append(
            f"| submit → process started, one warm agent ({r['experiments']} runs, each 200 ms "
            f"after the previous ended) | p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms | "
            f"{GOALS['latency']} |"
        )
        if "back_to_back_p50_ms" in r:
            rows.append(
                f"| the same, back to back (each submitted the moment the previous ended) | "
                f"p50 {r['back_to_back_p50_ms']} ms, p99 {r['back_to_back_p99_ms']} ms | — |"
            )
    if "throughput" in results:
        r = results["throughput"]
        rows.append(
            f"| {r['experiments']} × `true` on {r['agents']} agents × {r['slots_per_agent']} "
            f"slots, end to end (submitted in batches of {r.get('submit_batch', 1)}) | "
            f"{r['experiments_per_s']} experiments/s ({r['seconds']} s, {r['failed']} failed) | "
            f"{GOALS['throughput']} |"
        )
        if "cpu_ms_per_experiment" in r:
            cpu = r["cpu_ms_per_experiment"]
            parts = ", ".join(f"{k} {v}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
            rows.append(
                f"| CPU per experiment in that run, ms (2 cores give 2,000 ms a second) | "
                f"{round(sum(cpu.values()), 1)} in all: {parts} | — |"
            )
    if "placement" in results:
        r = results["placement"]
        rows.append(
            f"| placement, {r['agents']} simulated agents, {r['queued']} queued | "
            f"{r['placements_per_s']} placements/s ({r['placed']} in {r['seconds']} s) | "
            f"{GOALS['placement']} |"
        )
    if "idle" in results:
        r = results["idle"]
        rows.append(
            f"| idle agent | {r['rss_mb']} MB RSS, {r['cpu_percent']} % CPU over "
            f"{r['over_s']} s | {GOALS['idle']} |"
        )
    return "\n".join(rows)


def main() -> None:
    which = sys.argv[1:] or ["all"]
    kinds = ["latency", "throughput", "placement", "idle"] if which == ["all"] else which
    results: dict[str, Any] = {}
    previous = Path(__file__).parent / "results" / "scheduler.json"
    if previous.exists():
        old = json.loads(previous.read_text())
        results.update({k: v for k, v in old.items() if k in GOALS})
    for kind in kinds:
        print(f"running {kind}…", flush=True)
        results[kind] = run_placement() if kind == "placement" else run_with_stack(kind)
        print(json.dumps(results[kind]), flush=True)
    record("scheduler", results, table(results))


if __name__ == "__main__":
    main()
