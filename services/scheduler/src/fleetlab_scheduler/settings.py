"""Scheduler settings."""

from __future__ import annotations

from pydantic import Field

from fleetlab_common.settings import CommonSettings


class SchedulerSettings(CommonSettings):
    """Settings of ``python -m fleetlab_scheduler``."""

    port: int = 5081
    # An agent whose last heartbeat is older than this is offline; what it ran is lost.
    lease_s: float = Field(default=15.0, gt=0)
    # How often expired leases are looked for.
    reap_interval_s: float = Field(default=0.5, gt=0)
    # How many queued experiments one placement round looks at.
    placement_batch: int = Field(default=2000, ge=1)
