"""Events published by the webhooks service (stream ``WEBHOOKS``)."""

from __future__ import annotations

import uuid
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field

from fleetlab_common.events.base import Event

# The delivered event's type travels as ``event_type`` (beside ``event_id``). In Python the field
# is ``delivered_type``: a field named ``event_type`` would shadow ``Event.event_type()``. The
# config is spelled out in each class because the pydantic mypy plugin reads it only there.


class DeliverySucceeded(Event):
    """An endpoint answered a delivery with a 2xx status."""

    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    STREAM: ClassVar[str | None] = "WEBHOOKS"
    type: Literal["webhooks.delivery.succeeded"] = "webhooks.delivery.succeeded"
    delivery_id: uuid.UUID
    endpoint_id: uuid.UUID
    event_id: uuid.UUID
    delivered_type: str = Field(alias="event_type")
    attempt: int
    status_code: int


class DeliveryFailed(Event):
    """A delivery attempt failed; ``final`` when no retry is left."""

    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    STREAM: ClassVar[str | None] = "WEBHOOKS"
    type: Literal["webhooks.delivery.failed"] = "webhooks.delivery.failed"
    delivery_id: uuid.UUID
    endpoint_id: uuid.UUID
    event_id: uuid.UUID
    delivered_type: str = Field(alias="event_type")
    attempt: int
    status_code: int | None = None
    error: str = ""
    final: bool = False


class EndpointPaused(Event):
    """An endpoint stopped receiving deliveries: it answered 410 Gone, it kept failing for
    longer than the webhooks service allows, or a user paused it. Pending deliveries wait
    until it is resumed."""

    STREAM: ClassVar[str | None] = "WEBHOOKS"
    type: Literal["webhooks.endpoint.paused"] = "webhooks.endpoint.paused"
    endpoint_id: uuid.UUID
    url: str
    # "gone" (410), "failing" (failing for too long) or "user".
    cause: Literal["gone", "failing", "user"]
    reason: str = ""
