"""Webhook schemas, and FGLab's registration contract."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

PublicEvent = Literal[
    "experiment.submitted",
    "experiment.started",
    "experiment.finished",
    "experiment.stopped",
    "experiment.lost",
    "sweep.finished",
    "agent.online",
    "agent.offline",
]

# FGLab's two events as public names: "finished" is any end of the process.
FGLAB_EVENTS: dict[str, list[str]] = {
    "started": ["experiment.started"],
    "finished": ["experiment.finished", "experiment.stopped"],
}


def _valid_url(url: Any) -> bool:
    if not isinstance(url, str) or not url.strip():
        return False
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def fglab_problem(body: Any) -> str | None:
    """FGLab's own 400 message for a registration it refuses, checked in FGLab's order."""
    if not isinstance(body, dict) or not _valid_url(body.get("url")):
        return "Invalid or empty URL"
    if body.get("objects") != "experiments":
        return "Object is not 'experiments'"
    if body.get("event") not in FGLAB_EVENTS:
        return "Event is not 'started' or 'finished'"
    object_id = body.get("object_id")
    if object_id is None or object_id == "" or isinstance(object_id, dict | list):
        return "No object ID provided"
    return None


class WebhookCreate(BaseModel):
    """``POST /api/v1/webhooks`` with an ``events`` list (FGLab's form is the other one)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048)
    events: list[PublicEvent] = Field(min_length=1, max_length=32)
    secret: str | None = Field(
        default=None,
        description="A Standard Webhooks secret (`whsec_` + base64); made and returned once "
        "when absent.",
    )
    project: str | None = Field(default=None, min_length=1, max_length=200)
    experiment: str | None = Field(default=None, min_length=1, max_length=200)
    description: str = Field(default="", max_length=1000)


class WebhookUpdate(BaseModel):
    """``PATCH /api/v1/webhooks/{id}``: only the fields given change."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"events": ["experiment.finished"], "description": "CI notifier"}]
        },
    )

    url: str | None = Field(default=None, min_length=1, max_length=2048)
    events: list[PublicEvent] | None = Field(default=None, min_length=1, max_length=32)
    secret: str | None = None
    rotate_secret: bool = Field(default=False, description="Make a new secret (returned once).")
    project: str | None = Field(default=None, max_length=200)
    experiment: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=1000)
    paused: bool | None = None


class Webhook(BaseModel):
    """A registered endpoint (its secret is never shown after registration)."""

    model_config = ConfigDict(extra="allow")

    id: str
    url: str
    kind: Literal["standard", "fglab"]
    events: list[str]
    project: str | None
    experiment: str | None
    description: str
    paused: bool
    paused_at: str | None
    paused_reason: str | None
    failing_since: str | None
    created_at: str
    updated_at: str
    secret: str | None = Field(default=None, description="Only in the answer that made it.")
    options: dict[str, Any] | None = Field(default=None, description="FGLab's registered JSON.")


class WebhookList(BaseModel):
    items: list[Webhook]


DeliveryState = Literal["pending", "succeeded", "failed"]


class Attempt(BaseModel):
    attempt: int
    at: str
    manual: bool
    status_code: int | None
    latency_ms: float
    response_body: str | None
    error: str | None


class Delivery(BaseModel):
    """One event sent to one endpoint: its state and latest attempt."""

    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    source: str
    state: DeliveryState
    attempts: int
    next_attempt_at: str | None
    last_attempt_at: str | None
    status_code: int | None
    latency_ms: float | None
    error: str | None
    response_body: str | None
    created_at: str


class DeliveryDetail(Delivery):
    payload: str
    attempt_history: list[Attempt]


class DeliveryPage(BaseModel):
    items: list[Delivery]
    next: str | None
