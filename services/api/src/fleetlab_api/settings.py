"""API settings."""

from __future__ import annotations

from pydantic import Field

from fleetlab_api.auth import AuthSettings
from fleetlab_common.settings import CommonSettings


class ApiSettings(CommonSettings):
    """Settings of ``python -m fleetlab_api`` (``FLEETLAB_PORT`` defaults to 5080)."""

    port: int = 5080
    # How long the API waits for another service's answer over NATS request/reply.
    rpc_timeout_s: float = Field(default=3.0, gt=0)
    # Public base URL (for links and presigned local artifact URLs); derived when empty.
    public_url: str = ""
    # Outputs an agent may upload when a run ends: per file, and per run in all.
    max_output_mb: int = Field(default=5120, ge=1)
    max_outputs_mb: int = Field(default=20480, ge=1)
    # Request bodies (see fleetlab_api.limits): every route, and metric batches.
    max_body_mb: int = Field(default=16, ge=1)
    max_metrics_body_mb: int = Field(default=1024, ge=1)
    # Code snapshots (POST /api/v1/code): the archive as sent, its files once unpacked, and
    # how many members it may hold (see fleetlab_api.code).
    max_code_mb: int = Field(default=100, ge=1)
    max_code_unpacked_mb: int = Field(default=1024, ge=1)
    max_code_files: int = Field(default=50_000, ge=1)
    # FLEETLAB_AUTH__ENABLED, FLEETLAB_AUTH__PASSWORD: see fleetlab_api.auth.
    auth: AuthSettings = Field(default_factory=AuthSettings)
