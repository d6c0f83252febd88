"""API settings."""

from __future__ import annotations

from pydantic import Field

from fleetlab_common.settings import CommonSettings


class ApiSettings(CommonSettings):
    """Settings of ``python -m fleetlab_api`` (``FLEETLAB_PORT`` defaults to 5080)."""

    port: int = 5080
    # How long the API waits for another service's answer over NATS request/reply.
    rpc_timeout_s: float = Field(default=3.0, gt=0)
    # Public base URL (for links and presigned local artifact URLs); derived when empty.
    public_url: str = ""
