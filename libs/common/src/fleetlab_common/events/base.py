"""The event envelope shared by every Fleetlab event.

Every event has a uuid7 ``id`` (also sent as the ``Nats-Msg-Id`` header, so JetStream drops a
republished duplicate), an ``occurred_at`` timestamp and a literal ``type`` naming it
``<owner>.<entity>.<past-verb>``. Events are read with unknown fields ignored, so a newer
publisher never breaks an older consumer: the catalog grows additively.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, Field

from fleetlab_common.ids import uuid7


def utcnow() -> datetime:
    """Now, timezone-aware in UTC."""
    return datetime.now(UTC)


class Event(BaseModel):
    """Base of every event. Subclasses fix ``type`` with a ``Literal`` and set ``STREAM``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    # The JetStream stream that stores the event; None for core-NATS (ephemeral) events.
    STREAM: ClassVar[str | None] = None
    # Events routed by an id name the field whose value is the subject's last token, as in
    # ``scheduler.experiment.assigned.<agent_id>``: a consumer then filters on it.
    ROUTE_FIELD: ClassVar[str | None] = None

    id: uuid.UUID = Field(default_factory=uuid7)
    occurred_at: datetime = Field(default_factory=utcnow)
    type: str

    @classmethod
    def event_type(cls) -> str:
        """The literal ``type`` of this class."""
        return str(cls.model_fields["type"].default)

    @classmethod
    def subscribe_subject(cls) -> str:
        """The subject (with ``*`` for the routing token) to subscribe to every such event."""
        return f"{cls.event_type()}.*" if cls.ROUTE_FIELD else cls.event_type()

    def subject(self) -> str:
        """The NATS subject this event is published on."""
        if self.ROUTE_FIELD is None:
            return self.type
        return f"{self.type}.{getattr(self, self.ROUTE_FIELD)}"

    def headers(self) -> dict[str, str]:
        """Headers for a JetStream publish: the event id as ``Nats-Msg-Id``."""
        return {"Nats-Msg-Id": str(self.id), "Fleetlab-Event-Type": self.type}

    @classmethod
    def encode_with_items(
        cls, field: str, items: list[dict[str, Any]], **fields: Any
    ) -> EncodedEvent:
        """The event in its wire form, its list ``field`` written from ``items`` already
        shaped as that list's JSON (no model per item); the rest is made by the model."""
        head = cls(**fields, **{field: []})
        raw = head.model_dump_json().encode()
        empty = b'"%s":[]' % field.encode()
        # Inside a JSON string every quote is escaped: the field's own key is the one match.
        at = raw.index(empty)
        payload = raw[: at + len(empty) - 2] + orjson.dumps(items) + raw[at + len(empty) :]
        return EncodedEvent(cls, head.subject(), head.headers(), payload)


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """An event already in its wire form: what a hot path publishes when a model per item
    would cost more than the work itself (an agent's batch of output lines). ``decode`` reads
    it back into its model, which is also how a test checks the form."""

    model: type[Event]
    subject: str
    headers: dict[str, str]
    payload: bytes

    @property
    def stream(self) -> str | None:
        return self.model.STREAM

    def decode(self) -> Event:
        return self.model.model_validate_json(self.payload)
