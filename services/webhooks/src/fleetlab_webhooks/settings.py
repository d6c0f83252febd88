"""Webhooks settings: ``FLEETLAB_WEBHOOKS__<NAME>`` for the delivery policy."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import NoDecode

from fleetlab_common.settings import CommonSettings


class DeliverySettings(BaseModel):
    """How webhooks are delivered (``FLEETLAB_WEBHOOKS__...``)."""

    # Server-side request forgery: addresses that are not public are refused unless allowed.
    # Loopback (127.0.0.0/8, ::1): `fleetlab up` turns this on (local tools are the usual
    # receivers on one machine).
    allow_loopback: bool = False
    # Addresses or networks allowed even though they are not public, comma-separated
    # ("10.0.0.0/8,192.168.1.20"). Link-local and metadata addresses (169.254.0.0/16,
    # fe80::/10) pass only when an entry inside that range names them: 0.0.0.0/0 does not.
    allow_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # One attempt's deadline: connect, send and read the response.
    timeout_s: float = Field(default=10.0, gt=0)
    # Retries after the first attempt, each after min(base * factor^(n-1), max) seconds,
    # times a random factor in [1 - jitter, 1 + jitter]. The defaults span about 27.8 hours
    # (25 hours at the least): 10 s, 40 s, 2m40s, 10m40s, 42m40s, 2h50m40s, then 8 h three times.
    retries: int = Field(default=9, ge=0)
    retry_base_s: float = Field(default=10.0, gt=0)
    retry_factor: float = Field(default=4.0, ge=1)
    retry_max_s: float = Field(default=8 * 3600.0, gt=0)
    retry_jitter: float = Field(default=0.1, ge=0, lt=1)
    # An endpoint whose deliveries have failed without a single success for this long is
    # paused (event webhooks.endpoint.paused).
    pause_failing_after_s: float = Field(default=5 * 86400.0, gt=0)
    # Deliveries in flight at once to one endpoint (a slow receiver holds up only itself).
    max_in_flight_per_endpoint: int = Field(default=4, ge=1)
    # Deliveries in flight at once from this process.
    max_in_flight: int = Field(default=64, ge=1)
    # A payload larger than this is sent without the experiment record (``truncated``).
    max_payload_bytes: int = Field(default=256 * 1024, ge=1024)
    # How much of each response body is kept with the attempt.
    max_response_bytes: int = Field(default=4 * 1024, ge=0)
    # How often the dispatcher looks for due retries when nothing woke it.
    poll_s: float = Field(default=1.0, gt=0)

    @field_validator("allow_hosts", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value


class WebhooksSettings(CommonSettings):
    """Settings of ``python -m fleetlab_webhooks``."""

    port: int = 5083
    webhooks: DeliverySettings = Field(default_factory=DeliverySettings)
