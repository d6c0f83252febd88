"""Events published by the webhooks service (stream ``WEBHOOKS``)."""

from __future__ import annotations

import uuid
from typing import ClassVar, Literal

from fleetlab_common.events.base import Event


class DeliverySucceeded(Event):
    """An endpoint answered a delivery with a 2xx status."""

    STREAM: ClassVar[str | None] = "WEBHOOKS"
    type: Literal["webhooks.delivery.succeeded"] = "webhooks.delivery.succeeded"
    delivery_id: uuid.UUID
    endpoint_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    attempt: int
    status_code: int


class DeliveryFailed(Event):
    """A delivery attempt failed; ``final`` when no retry is left."""

    STREAM: ClassVar[str | None] = "WEBHOOKS"
    type: Literal["webhooks.delivery.failed"] = "webhooks.delivery.failed"
    delivery_id: uuid.UUID
    endpoint_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    attempt: int
    status_code: int | None = None
    error: str = ""
    final: bool = False
