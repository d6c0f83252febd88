"""The NATS side: consumer names, core and JetStream publishing, durable event subscribers."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest

from fleetlab_common.broker import (
    consumer_name,
    ensure_streams,
    event_subscriber,
    make_broker,
    publish_event,
    publish_event_reliably,
)
from fleetlab_common.embedded import free_port
from fleetlab_common.events import (
    EVENTS,
    AgentHeartbeat,
    ExperimentAssigned,
    ExperimentStarted,
    ExperimentStopRequested,
    ExperimentSubmitted,
)
from fleetlab_common.runspec import RunSpec
from fleetlab_common.settings import NatsSettings
from fleetlab_common.testing.plugin import RestartableNats as NatsServer


def submitted() -> ExperimentSubmitted:
    return ExperimentSubmitted(
        experiment_id=uuid.uuid4(),
        project_id=uuid.uuid4(),
        project="mnist",
        run=RunSpec(command=["true"]),
    )


# --- names --------------------------------------------------------------------------------------


def test_consumer_name_is_consumer_then_event_type_with_dashes() -> None:
    assert consumer_name("api", ExperimentStarted) == "api-agent-experiment-started"
    assert (
        consumer_name("scheduler", ExperimentStopRequested)
        == "scheduler-api-experiment-stop-requested"
    )
    assert consumer_name("agent", ExperimentAssigned) == "agent-scheduler-experiment-assigned"


@pytest.mark.parametrize("event", [e for e in EVENTS if e.STREAM is not None])
def test_every_durable_name_is_a_valid_nats_consumer_name(event: type[Any]) -> None:
    name = consumer_name("webhooks", event)
    # No dots, wildcards or spaces: NATS refuses those in a durable name.
    assert re.fullmatch(r"[a-z0-9-]+", name), name


def test_every_stored_event_has_a_distinct_durable_name() -> None:
    names = [consumer_name("svc", e) for e in EVENTS if e.STREAM is not None]
    assert len(names) == len(set(names))


def test_a_core_event_cannot_get_a_durable_subscriber() -> None:
    broker = make_broker(NatsSettings(), "test")
    with pytest.raises(ValueError, match=r"agent\.heartbeat"):
        event_subscriber(broker, AgentHeartbeat, "scheduler", NatsSettings())


# --- core NATS ----------------------------------------------------------------------------------


async def test_a_core_event_reaches_a_core_subscriber_and_is_not_stored(nats_url: str) -> None:
    settings = NatsSettings(url=nats_url)
    broker = make_broker(settings, "test")
    await broker.start()
    try:
        nc = broker.connection
        js = nc.jetstream()
        await ensure_streams(js, settings)
        sub = await nc.subscribe("agent.heartbeat")
        heartbeat = AgentHeartbeat(
            agent_id=f"a-{uuid.uuid4().hex[:8]}", instance_id=uuid.uuid4(), slots=2
        )

        await publish_event(broker, heartbeat)

        while True:  # other tests' heartbeats may share the session's server
            msg = await sub.next_msg(timeout=5)
            if AgentHeartbeat.model_validate_json(msg.data).id == heartbeat.id:
                break
        assert AgentHeartbeat.model_validate_json(msg.data) == heartbeat
        assert msg.headers is not None
        assert msg.headers["Nats-Msg-Id"] == str(heartbeat.id)
        await sub.unsubscribe()
        # Heartbeats stay out of every stream: stale ones are worthless.
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.find_stream_name_by_subject(heartbeat.subject())
    finally:
        await broker.stop()


# --- JetStream ----------------------------------------------------------------------------------


async def test_a_stored_event_without_its_stream_fails_loudly(own_nats: NatsServer) -> None:
    broker = make_broker(NatsSettings(url=own_nats.url), "test")
    await broker.start()
    try:
        # No ensure_streams: publishing must not pretend it was stored.
        with pytest.raises(nats.js.errors.NoStreamResponseError):
            await publish_event(broker, submitted(), timeout=2)
    finally:
        await broker.stop()


async def test_publish_event_reliably_succeeds_once_nats_comes_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fleetlab_common.broker as broker_module

    server = NatsServer(tmp_path / "late-nats", free_port())
    settings = NatsSettings(url=server.url)
    broker = make_broker(settings, "agent")
    # Nothing listens on the port yet: the broker keeps trying to connect meanwhile.
    connecting = asyncio.create_task(broker.start())
    failures: list[BaseException] = []
    failed_twice = asyncio.Event()
    real_publish_event = broker_module.publish_event

    async def spy(*args: Any, **kwargs: Any) -> None:
        try:
            await real_publish_event(*args, **kwargs)
        except Exception as exc:
            failures.append(exc)
            if len(failures) >= 2:
                failed_twice.set()
            raise

    monkeypatch.setattr(broker_module, "publish_event", spy)
    event = submitted()
    publishing = asyncio.create_task(publish_event_reliably(broker, event, max_backoff_s=0.5))
    try:
        await asyncio.wait_for(failed_twice.wait(), 10)
        assert not publishing.done()

        await server.start()
        await asyncio.wait_for(connecting, 10)
        js = broker.connection.jetstream()
        await ensure_streams(js, settings)
        await asyncio.wait_for(publishing, 10)

        info = await js.stream_info("API")
        assert info.state.messages == 1
        msg = await js.get_msg("API", info.state.last_seq)
        assert ExperimentSubmitted.model_validate_json(msg.data or b"") == event
    finally:
        for task in (publishing, connecting):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await broker.stop()
        await server.stop()


async def test_an_event_subscriber_gets_each_event_once_despite_a_republish(
    own_nats: NatsServer,
) -> None:
    settings = NatsSettings(url=own_nats.url)
    broker = make_broker(settings, "scheduler")
    received: list[ExperimentSubmitted] = []
    last = submitted()
    got_last = asyncio.Event()

    @event_subscriber(broker, ExperimentSubmitted, "scheduler", settings)
    async def handle_experiment_submitted(event: ExperimentSubmitted) -> None:
        received.append(event)
        if event.id == last.id:
            got_last.set()

    await broker.start()
    try:
        js = broker.connection.jetstream()
        await ensure_streams(js, settings)
        event = submitted()
        await publish_event(broker, event)
        # The agent lost the ack and published again: same id, so the stream drops it.
        await publish_event(broker, event)
        # Delivery is in stream order: once ``last`` arrived, a stored duplicate would have too.
        await publish_event(broker, last)
        await asyncio.wait_for(got_last.wait(), 10)

        assert [e.id for e in received] == [event.id, last.id]
        assert received[0] == event
        info = await js.consumer_info("API", "scheduler-api-experiment-submitted")
        assert info.config.durable_name == "scheduler-api-experiment-submitted"
        assert info.config.max_deliver == settings.max_deliver
    finally:
        await broker.stop()


async def test_a_failing_handler_gets_the_event_again(own_nats: NatsServer) -> None:
    settings = NatsSettings(url=own_nats.url)
    broker = make_broker(settings, "webhooks")
    attempts: list[uuid.UUID] = []
    handled = asyncio.Event()

    @event_subscriber(broker, ExperimentSubmitted, "webhooks", settings)
    async def handle_experiment_submitted(event: ExperimentSubmitted) -> None:
        attempts.append(event.id)
        if len(attempts) == 1:
            raise RuntimeError("the receiver is down")
        handled.set()

    await broker.start()
    try:
        await ensure_streams(broker.connection.jetstream(), settings)
        event = submitted()
        await publish_event(broker, event)
        await asyncio.wait_for(handled.wait(), 10)
        assert attempts == [event.id, event.id]
    finally:
        await broker.stop()
