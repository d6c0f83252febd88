"""A NATS server that comes back without its JetStream store (restarted without a volume):
the broker declares the streams and its durable consumers again, and events flow again."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Callable

from fleetlab_common.broker import event_subscriber, make_broker, publish_event
from fleetlab_common.events import ExperimentSubmitted
from fleetlab_common.runspec import RunSpec
from fleetlab_common.settings import NatsSettings
from fleetlab_common.testing.plugin import RestartableNats


def submitted() -> ExperimentSubmitted:
    return ExperimentSubmitted(
        experiment_id=uuid.uuid4(),
        project_id=uuid.uuid4(),
        project="mnist",
        options={},
        run=RunSpec(command=["true"]),
    )


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.05)


async def test_events_flow_again_after_nats_lost_its_store(own_nats: RestartableNats) -> None:
    settings = NatsSettings(url=own_nats.url)
    broker = make_broker(settings, "restore-test")
    got: list[uuid.UUID] = []

    @event_subscriber(broker, ExperimentSubmitted, "restore", settings)
    async def handle(event: ExperimentSubmitted) -> None:
        got.append(event.experiment_id)

    await broker.start()
    try:
        before = submitted()
        await publish_event(broker, before)
        await until(lambda: got == [before.experiment_id])

        await own_nats.stop()
        shutil.rmtree(own_nats.store)  # the server comes back knowing no stream, no consumer
        await own_nats.start()

        after = submitted()

        async def publish_when_back() -> None:
            while True:
                try:
                    await publish_event(broker, after, timeout=1.0)
                    return
                except Exception:  # reconnecting, or the streams not declared yet
                    await asyncio.sleep(0.1)

        await asyncio.wait_for(publish_when_back(), 30)
        await until(lambda: after.experiment_id in got)
        assert got.count(after.experiment_id) == 1
    finally:
        await broker.stop()
