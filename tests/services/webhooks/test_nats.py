"""The webhooks service on a real NATS: events from JetStream, requests over
``rpc.webhooks.<verb>``, and a process killed in the middle of a backoff."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from standardwebhooks.webhooks import Webhook

from fleetlab_common.broker import ensure_streams, make_broker, publish_event
from fleetlab_common.embedded import free_port
from fleetlab_common.events import ExperimentFinished, ExperimentSubmitted, Rpc
from fleetlab_common.ids import uuid7
from fleetlab_common.runspec import RunSpec
from fleetlab_common.settings import NatsSettings
from fleetlab_webhooks.app import build_service

from .conftest import FAST, Receiver, eventually, settings_for


@pytest.fixture
async def nc(wh_nats_url: str) -> AsyncIterator[NatsClient]:
    conn = await nats.connect(wh_nats_url)
    try:
        yield conn
    finally:
        await conn.drain()


@pytest.fixture
async def publisher(wh_nats_url: str) -> AsyncIterator[NatsBroker]:
    settings = NatsSettings(url=wh_nats_url)
    broker = make_broker(settings, "test-publisher")
    await broker.start()
    await ensure_streams(broker.connection.jetstream(), settings)
    try:
        yield broker
    finally:
        await broker.stop()


async def ask(nc: NatsClient, verb: str, body: dict[str, Any], timeout: float = 2) -> Any:
    reply = await nc.request(Rpc.webhooks(verb), json.dumps(body).encode(), timeout=timeout)
    answer = json.loads(reply.data)
    assert answer["ok"], answer
    return answer["data"]


def experiment() -> tuple[ExperimentSubmitted, ExperimentFinished]:
    sub = ExperimentSubmitted(
        experiment_id=uuid7(),
        project_id=uuid7(),
        project="mnist",
        run=RunSpec(command=["python", "train.py"]),
    )
    return sub, ExperimentFinished(
        experiment_id=sub.experiment_id, agent_id="gpu-1", status="succeeded", exit_code=0
    )


async def test_events_from_jetstream_are_delivered_signed_and_retried(
    fresh_dsn: str,
    wh_nats_url: str,
    nc: NatsClient,
    publisher: NatsBroker,
    receiver: Receiver,
) -> None:
    service, _ = build_service(settings_for(fresh_dsn, wh_nats_url))
    await service.start_db()
    await service.broker.start()
    await service.started()
    outcomes = await nc.subscribe("webhooks.delivery.*")
    try:
        receiver.script = [500, 500]
        endpoint = await ask(
            nc,
            "create",
            {"url": receiver.url, "events": ["experiment.finished"], "project": "mnist"},
        )
        sub, done = experiment()
        await publish_event(publisher, sub)
        await publish_event(publisher, done)

        await eventually(lambda: len(receiver.requests) == 3, what="three attempts")
        assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
        last = receiver.requests[-1]
        body = Webhook(endpoint["secret"]).verify(last.body, last.headers)
        assert body["type"] == "experiment.finished" and body["id"] == str(done.id)
        assert body["data"]["experiment"]["project"] == "mnist"

        # Each outcome is published as an event (through the outbox).
        seen = [json.loads((await outcomes.next_msg(timeout=5)).data) for _ in range(3)]
        assert [(e["type"], e["attempt"]) for e in seen] == [
            ("webhooks.delivery.failed", 1),
            ("webhooks.delivery.failed", 2),
            ("webhooks.delivery.succeeded", 3),
        ]
        page = await ask(nc, "deliveries", {"endpoint_id": endpoint["id"]})
        assert [(d["state"], d["attempts"]) for d in page["items"]] == [("succeeded", 3)]
    finally:
        await outcomes.unsubscribe()
        await service.stopping()
        await service.broker.stop()
        await service.closed()


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "fleetlab_webhooks"], env=env, stdout=out, stderr=out
        )


async def _ready(nc: NatsClient, proc: subprocess.Popen[bytes], log: Path) -> bool:
    assert proc.poll() is None, log.read_text()[-3000:]
    # Every verb, since the subscriptions come up one by one; an empty body changes nothing
    # (each verb that writes refuses it).
    try:
        for verb in Rpc.WEBHOOKS_VERBS:
            await nc.request(Rpc.webhooks(verb), b"{}", timeout=0.5)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return False
    return True


async def test_killed_mid_backoff_and_restarted_it_still_delivers_once(
    fresh_dsn: str,
    wh_nats_url: str,
    nc: NatsClient,
    publisher: NatsBroker,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "FLEETLAB_NATS__URL": wh_nats_url,
        "FLEETLAB_POSTGRES__DSN": fresh_dsn,
        "FLEETLAB_PORT": str(free_port()),
        "FLEETLAB_LOG_JSON": "true",
        **{f"FLEETLAB_WEBHOOKS__{k.upper()}": str(v) for k, v in FAST.items()},
        # A backoff long enough to kill the process inside it.
        "FLEETLAB_WEBHOOKS__RETRY_BASE_S": "1.5",
    }
    log = tmp_path / "webhooks.log"
    db = await asyncpg.connect(fresh_dsn)
    first = _start(env, log)
    second: subprocess.Popen[bytes] | None = None
    try:
        await eventually(lambda: _ready(nc, first, log), timeout=20, what="the first process")
        receiver.script = [500]
        endpoint = await ask(nc, "create", {"url": receiver.url, "events": ["experiment.finished"]})
        _, done = experiment()
        await publish_event(publisher, done)

        async def backing_off() -> Any:
            return await db.fetchrow(
                "SELECT id, next_attempt_at FROM webhooks.deliveries"
                " WHERE attempt = 1 AND state = 'pending' AND locked_until IS NULL"
            )

        waiting = await eventually(backing_off, what="the first attempt recorded")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert len(receiver.requests) == 1
        assert await db.fetchval("SELECT now() < $1::timestamptz", waiting["next_attempt_at"])

        second = _start(env, log)

        async def delivered() -> bool:
            state = await db.fetchval(
                "SELECT state FROM webhooks.deliveries WHERE id = $1", waiting["id"]
            )
            return state == "succeeded"

        await eventually(delivered, timeout=20, what="the delivery after the restart")
        assert len(receiver.requests) == 2
        assert {r.headers["webhook-id"] for r in receiver.requests} == {str(waiting["id"])}
        last = receiver.requests[-1]
        assert Webhook(endpoint["secret"]).verify(last.body, last.headers)["id"] == str(done.id)
        attempts = await db.fetch(
            "SELECT attempt, status_code FROM webhooks.attempts WHERE delivery_id = $1"
            " ORDER BY attempt",
            waiting["id"],
        )
        assert [tuple(a) for a in attempts] == [(1, 500), (2, 200)]
        # The event was consumed once: the restarted process made no second delivery.
        assert await db.fetchval("SELECT count(*) FROM webhooks.deliveries") == 1
        assert uuid.UUID(endpoint["id"])
    finally:
        await db.close()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        await asyncio.sleep(0)
