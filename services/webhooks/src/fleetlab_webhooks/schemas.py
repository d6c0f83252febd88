"""What ``rpc.webhooks.<verb>`` requests carry. The API validates user input first; these
check again at the service's own boundary (anyone on NATS may ask)."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DeliveryState = Literal["pending", "succeeded", "failed"]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EndpointCreate(Request):
    kind: Literal["standard", "fglab"] = "standard"
    url: str = Field(min_length=1, max_length=2048)
    events: list[str] = Field(min_length=1, max_length=32)
    secret: str | None = None
    project: str | None = Field(default=None, min_length=1, max_length=200)
    experiment: str | None = Field(default=None, min_length=1, max_length=200)
    description: str = Field(default="", max_length=1000)
    # FGLab's contract: this JSON, exactly as registered, is what gets POSTed.
    fglab_body: dict[str, Any] | None = None


class EndpointChanges(Request):
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    events: list[str] | None = Field(default=None, min_length=1, max_length=32)
    secret: str | None = None
    rotate_secret: bool = False
    project: str | None = Field(default=None, max_length=200)
    experiment: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=1000)
    paused: bool | None = None


class EndpointRef(Request):
    id: uuid.UUID


class EndpointUpdate(Request):
    id: uuid.UUID
    # Only the fields present change; "" or null clears the project/experiment filter.
    changes: dict[str, Any]


class DeliveriesQuery(Request):
    endpoint_id: uuid.UUID
    state: DeliveryState | None = None
    before: uuid.UUID | None = None
    limit: int = Field(default=50, ge=1, le=500)


class DeliveryRef(Request):
    endpoint_id: uuid.UUID
    delivery_id: uuid.UUID


class Empty(Request):
    pass
