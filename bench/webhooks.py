"""Webhook delivery benchmark: deliveries/s to a local receiver, event-to-delivery latency.

Runs everything on this machine: nats-server and PostgreSQL embedded, the webhooks service in
this process, a uvicorn receiver in a thread answering 204. Events are published to JetStream
as the agents publish them; a delivery's latency runs from just before the publish to the
moment the receiver has read the request.

    .venv/bin/python bench/webhooks.py [--quick]

Writes bench/results/webhooks-<UTC time>.json and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn

from fleetlab_common.broker import ensure_streams, make_broker, publish_event
from fleetlab_common.embedded import EmbeddedPostgres, free_port, start_nats, stop_process
from fleetlab_common.events import ExperimentFinished, ExperimentSubmitted
from fleetlab_common.ids import uuid7
from fleetlab_common.log import configure_logging
from fleetlab_common.runspec import RunSpec
from fleetlab_common.settings import NatsSettings
from fleetlab_webhooks.app import build_service
from fleetlab_webhooks.settings import WebhooksSettings

RESULTS = Path(__file__).parent / "results"


class Receiver:
    """An ASGI app that notes when each event id arrived."""

    def __init__(self) -> None:
        self.arrived: dict[tuple[str, str], float] = {}
        self.count = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        event_id = json.loads(body)["id"]
        self.arrived[(scope["path"], event_id)] = time.perf_counter()
        self.count += 1
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def start_receiver(app: Receiver) -> tuple[str, uvicorn.Server]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{port}", server


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run_scenario(
    name: str,
    *,
    nats_url: str,
    dsn: str,
    receiver: Receiver,
    base_url: str,
    endpoints: int,
    events: int,
    interval_s: float,
) -> dict[str, Any]:
    """A fresh database and streams' worth of consumers; ``events`` events published
    ``interval_s`` apart, each delivered to ``endpoints`` endpoints."""
    settings = WebhooksSettings(
        postgres={"dsn": dsn}, nats={"url": nats_url}, webhooks={"allow_loopback": True}
    )
    service, state = build_service(settings)
    await service.start_db()
    await service.broker.start()
    await service.started()
    publisher = make_broker(NatsSettings(url=nats_url), "bench")
    await publisher.start()
    try:
        paths = [f"/{name}/{i}" for i in range(endpoints)]
        for path in paths:
            await state.get().create(
                {"url": base_url + path, "events": ["experiment.finished", "experiment.stopped"]}
            )
        # Each experiment's submission first, as the API publishes it when one is queued (the
        # webhooks service waits for an experiment's submission before delivering its end).
        ids = [uuid7() for _ in range(events)]
        project = uuid7()
        for experiment_id in ids:
            await publish_event(
                publisher,
                ExperimentSubmitted(
                    experiment_id=experiment_id,
                    project_id=project,
                    project="bench",
                    options={},
                    run=RunSpec(command=["true"]),
                ),
            )
        # Measured once the service knows them all (a run ends long after it was queued).
        while True:
            async with state.get().pool.acquire() as conn:
                known = await conn.fetchval(
                    "SELECT count(*) FROM experiments WHERE id = ANY($1::uuid[])", ids
                )
            if known == len(ids):
                break
            await asyncio.sleep(0.01)
        sent: dict[str, float] = {}
        start = time.perf_counter()
        for experiment_id in ids:
            event = ExperimentFinished(
                experiment_id=experiment_id, agent_id="bench", status="succeeded"
            )
            sent[str(event.id)] = time.perf_counter()
            await publish_event(publisher, event)
            if interval_s:
                await asyncio.sleep(interval_s)
        published = time.perf_counter()
        expected = events * endpoints
        deadline = time.monotonic() + 600
        # A copy of the keys: the receiver's thread adds to the dict meanwhile.
        while sum(1 for k in list(receiver.arrived) if k[0].startswith(f"/{name}/")) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: not every delivery arrived")
            await asyncio.sleep(0.005)
        latencies = [
            (at - sent[eid]) * 1000
            for (path, eid), at in receiver.arrived.items()
            if path.startswith(f"/{name}/")
        ]
        last = max(at for (path, _), at in receiver.arrived.items() if path.startswith(f"/{name}/"))
        elapsed = last - start
        # Every attempt recorded before we stop (the last rows commit just after the POST).
        async with state.get().pool.acquire() as conn:
            query = "SELECT count(*) FROM deliveries WHERE state = 'succeeded'"
            for _ in range(60_000):
                if await conn.fetchval(query) >= expected:
                    break
                await asyncio.sleep(0.01)
        return {
            "scenario": name,
            "endpoints": endpoints,
            "events": events,
            "deliveries": expected,
            "publish_interval_ms": interval_s * 1000,
            "publish_s": round(published - start, 3),
            "elapsed_s": round(elapsed, 3),
            "deliveries_per_s": round(expected / elapsed, 1),
            "latency_ms": {
                "p50": round(statistics.median(latencies), 2),
                "p90": round(pct(latencies, 90), 2),
                "p99": round(pct(latencies, 99), 2),
                "max": round(max(latencies), 2),
            },
        }
    finally:
        await publisher.stop()
        await service.stopping()
        await service.broker.stop()
        await service.closed()


async def new_database(admin_dsn: str) -> str:
    name = f"bench_{uuid7().hex[-10:]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    head, sep, query = admin_dsn.partition("?")
    return f"{head.rsplit('/', 1)[0]}/{name}{sep}{query}"


def machine() -> dict[str, Any]:
    mem_kb = 0
    with Path("/proc/meminfo").open() as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    cpu = ""
    with Path("/proc/cpuinfo").open() as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def main(quick: bool) -> dict[str, Any]:
    configure_logging("bench", "WARNING", True)
    scale = 5 if quick else 1
    with tempfile.TemporaryDirectory() as tmp:
        nats_proc, nats_url = start_nats(Path(tmp) / "nats")
        pg = EmbeddedPostgres(Path(tmp) / "pg" / "data")
        pg_proc = pg.start(log_path=Path(tmp) / "pg.log")
        receiver = Receiver()
        base_url, server = start_receiver(receiver)
        try:
            settings = NatsSettings(url=nats_url)
            broker = make_broker(settings, "bench-setup")
            await broker.start()
            await ensure_streams(broker.connection.jetstream(), settings)
            await broker.stop()
            scenarios = [
                # One event at a time: latency without queueing.
                {"name": "latency", "endpoints": 1, "events": 200 // scale, "interval_s": 0.02},
                # A burst to one endpoint (4 in flight at most, the default).
                {
                    "name": "burst-1-endpoint",
                    "endpoints": 1,
                    "events": 2000 // scale,
                    "interval_s": 0,
                },
                # A burst fanned out to 8 endpoints.
                {
                    "name": "burst-8-endpoints",
                    "endpoints": 8,
                    "events": 500 // scale,
                    "interval_s": 0,
                },
            ]
            results = []
            for scenario in scenarios:
                dsn = await new_database(pg.dsn())
                results.append(
                    await run_scenario(
                        str(scenario["name"]),
                        nats_url=nats_url,
                        dsn=dsn,
                        receiver=receiver,
                        base_url=base_url,
                        endpoints=int(scenario["endpoints"]),
                        events=int(scenario["events"]),
                        interval_s=float(scenario["interval_s"]),
                    )
                )
        finally:
            server.should_exit = True
            stop_process(nats_proc)
            stop_process(pg_proc, sig=signal.SIGINT)
    return {
        "benchmark": "webhooks",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "quick": quick,
        "results": results,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a fifth of the events")
    args = parser.parse_args()
    report = asyncio.run(main(args.quick))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"webhooks-{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"written to {out}")
