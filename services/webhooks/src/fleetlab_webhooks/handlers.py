"""The webhooks subscribers: public events in (durably), ``rpc.webhooks.<verb>`` answered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage

from fleetlab_common.broker import event_subscriber
from fleetlab_common.events import Event, Rpc
from fleetlab_common.log import get_logger
from fleetlab_webhooks.public import CONSUMED
from fleetlab_webhooks.service import CONSUMER, SubmissionNotSeenError, WebhookError, Webhooks
from fleetlab_webhooks.state import State

log = get_logger(__name__)

Verb = Callable[[Webhooks, Any], Awaitable[dict[str, Any]]]

VERBS: dict[str, Verb] = {
    "create": Webhooks.create,
    "list": Webhooks.list,
    "get": Webhooks.get,
    "update": Webhooks.update,
    "delete": Webhooks.delete,
    "deliveries": Webhooks.deliveries,
    "delivery": Webhooks.delivery,
    "resend": Webhooks.resend,
}


async def answer(webhooks: Webhooks, verb: str, body: Any) -> dict[str, Any]:
    """``{"ok": true, "data": ...}`` or ``{"ok": false, "status", "error", "fields"}``."""
    try:
        return {"ok": True, "data": await VERBS[verb](webhooks, body)}
    except WebhookError as exc:
        return {"ok": False, "status": exc.status, "error": exc.message, "fields": exc.fields}
    except Exception as exc:
        log.exception("webhooks.rpc.failed", verb=verb, error=repr(exc))
        return {"ok": False, "status": 500, "error": "internal error: the failure is logged"}


# An experiment's event read before its submission is put back this many times (a short,
# growing delay each) before it is taken with what is known.
WAIT_FOR_SUBMISSION_DELIVERIES = 6


def _register_event(broker: NatsBroker, state: State, event: type[Event]) -> None:
    async def handle_event(body: Event, msg: NatsMessage) -> None:
        delivered = msg.raw_message.metadata.num_delivered or 1
        with structlog.contextvars.bound_contextvars(event_id=str(body.id), event_type=body.type):
            try:
                await state.get().on_event(
                    body, wait_for_submission=delivered < WAIT_FOR_SUBMISSION_DELIVERIES
                )
            except SubmissionNotSeenError:
                log.info("webhooks.event.before_submission", delivered=delivered)
                await msg.nack(delay=min(0.1 * 2**delivered, 5.0))

    # FastStream decodes the message into the class its annotation names: the concrete one.
    handle_event.__annotations__["body"] = event
    event_subscriber(broker, event, CONSUMER, state.settings.nats, batch_size=50)(handle_event)


def _register_verb(broker: NatsBroker, state: State, verb: str) -> None:
    subject = Rpc.webhooks(verb)

    @broker.subscriber(subject, queue=CONSUMER, title=f"{subject}:reply")
    async def handle_request(body: Any = None) -> dict[str, Any]:
        return await answer(state.get(), verb, body)


def register(broker: NatsBroker, state: State) -> None:
    for event in CONSUMED:
        _register_event(broker, state, event)
    for verb in Rpc.WEBHOOKS_VERBS:
        _register_verb(broker, state, verb)
