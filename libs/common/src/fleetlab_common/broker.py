"""The NATS side of every service: a FastStream broker, the streams, and event subscribers.

Rules (DESIGN.md): every JetStream publish carries ``Nats-Msg-Id`` (the event id) and every
stream a ``duplicate_window``, so a republished event is stored once; every durable consumer is
named ``<consumer>-<event-type-with-dashes>`` and bounded by ``max_deliver``.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Any

import nats.js.errors
from faststream.middlewares import AckPolicy
from faststream.nats import (
    ConsumerConfig,
    DeliverPolicy,
    JStream,
    NatsBroker,
    PullSub,
    StreamConfig,
)
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from nats.js import JetStreamContext

from fleetlab_common.events import STREAMS, Event
from fleetlab_common.log import get_logger
from fleetlab_common.settings import NatsSettings

log = get_logger(__name__)


# The durable consumers each broker's event subscribers read, by name: what
# :func:`restore_jetstream` declares again on a server that lost them.
_CONSUMERS: weakref.WeakKeyDictionary[NatsBroker, dict[str, tuple[str, ConsumerConfig]]] = (
    weakref.WeakKeyDictionary()
)
# Restores under way (a task must be referenced until it ends).
_RESTORES: set[asyncio.Task[int]] = set()


def make_broker(settings: NatsSettings, service: str) -> NatsBroker:
    """A FastStream NATS broker with OpenTelemetry spans, reconnecting for ever; after each
    reconnect it declares Fleetlab's streams and its consumers again where they are missing."""

    async def reconnected() -> None:
        task = asyncio.create_task(restore_jetstream(broker, settings), name="nats-restore")
        _RESTORES.add(task)
        task.add_done_callback(_RESTORES.discard)

    broker = NatsBroker(
        settings.url,
        name=f"fleetlab-{service}",
        middlewares=[NatsTelemetryMiddleware()],
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        allow_reconnect=True,
        reconnected_cb=reconnected,
        # FastStream's per-message lines go through our structlog handler, at debug level.
        logger=logging.getLogger("faststream"),
        log_level=logging.DEBUG,
    )
    return broker


async def restore_jetstream(broker: NatsBroker, settings: NatsSettings) -> int:
    """Declare the streams, and this broker's durable consumers that the server does not have.

    A NATS server that came back without its JetStream store (restarted without a volume,
    replaced) knows no stream and no consumer: every publish to a stream fails and every pull
    fails at once, retried in a loop. Declared again, events flow again (the consumers read
    the new streams from their start). Returns how many consumers were declared again.
    """
    restored = 0
    try:
        js = broker.connection.jetstream()
        await ensure_streams(js, settings)
        for durable, (stream, config) in list(_CONSUMERS.get(broker, {}).items()):
            try:
                await js.consumer_info(stream, durable)
            except nats.js.errors.NotFoundError:
                await js.add_consumer(stream, config=config)
                restored += 1
    except Exception as exc:  # the connection dropped again: the next reconnect retries
        log.warning("nats.restore_failed", error=repr(exc))
        return restored
    if restored:
        log.warning("nats.consumers_restored", consumers=restored)
    return restored


def jstream(name: str, settings: NatsSettings) -> JStream:
    """The FastStream declaration of one of Fleetlab's streams."""
    return JStream(
        name,
        subjects=STREAMS[name],
        duplicate_window=settings.duplicate_window_s,
    )


async def ensure_streams(js: JetStreamContext, settings: NatsSettings) -> None:
    """Create or update every Fleetlab stream (idempotent; safe from every service at once)."""
    for name, subjects in STREAMS.items():
        config = StreamConfig(
            name=name, subjects=subjects, duplicate_window=settings.duplicate_window_s
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.update_stream(config)


def consumer_name(consumer: str, event: type[Event]) -> str:
    """``<consumer>-<event-type-with-dashes>``, e.g. ``api-agent-experiment-started``."""
    return f"{consumer}-{event.event_type().replace('.', '-').replace('_', '-')}"


def event_subscriber(
    broker: NatsBroker,
    event: type[Event],
    consumer: str,
    settings: NatsSettings,
    *,
    subject: str | None = None,
    ack_wait_s: float = 30.0,
    batch_size: int = 50,
) -> Callable[[Callable[..., Any]], Any]:
    """Subscribe ``consumer`` durably to every ``event``: a pull consumer, so every replica of
    a service shares the one durable consumer, and a waiting fetch hands over a new message at
    once (push in effect, no polling interval).

    ``subject`` narrows a routed event to one token (an agent takes only its own assignments).

    Handlers must be idempotent: delivery is at least once. An exception nacks the message
    and JetStream redelivers it, at most ``max_deliver`` times.
    """
    if event.STREAM is None:
        raise ValueError(f"{event.event_type()} is not stored in a stream")
    durable = consumer_name(consumer, event)
    filter_subject = subject or event.subscribe_subject()
    # The consumer as it is created: by the subscription when the server lacks it, and again
    # by restore_jetstream when a server lost it.
    config = ConsumerConfig(
        durable_name=durable,
        filter_subject=filter_subject,
        deliver_policy=DeliverPolicy.ALL,
        max_deliver=settings.max_deliver,
        ack_wait=ack_wait_s,
    )
    _CONSUMERS.setdefault(broker, {})[durable] = (event.STREAM, config)
    return broker.subscriber(
        filter_subject,
        durable=durable,
        pull_sub=PullSub(batch_size=batch_size, timeout=5.0),
        stream=jstream(event.STREAM, settings),
        deliver_policy=DeliverPolicy.ALL,
        config=config,
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title=f"{durable}:subscribe",
    )


async def publish_event(broker: NatsBroker, event: Event, *, timeout: float = 5.0) -> None:
    """Publish one event: to JetStream with ``Nats-Msg-Id`` when it is stored, else core NATS.

    Use this only where there is no database to hold an outbox (the agent); services that own
    state publish through :mod:`fleetlab_common.db.outbox` after their transaction commits.
    """
    body = event.model_dump_json().encode()
    if event.STREAM is None:
        await broker.publish(body, event.subject(), headers=event.headers())
        return
    await broker.publish(
        body, event.subject(), headers=event.headers(), stream=event.STREAM, timeout=timeout
    )


async def publish_event_reliably(
    broker: NatsBroker, event: Event, *, max_backoff_s: float = 5.0
) -> None:
    """Publish ``event``, retrying with backoff until the broker acknowledges it.

    For a process without an outbox (the agent): the event id stays the same across retries,
    so a retry after a lost acknowledgement is dropped by the stream as a duplicate.
    """
    backoff = 0.05
    while True:
        try:
            await publish_event(broker, event)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "event.publish_retry", event_type=event.type, error=repr(exc), retry_in_s=backoff
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)
