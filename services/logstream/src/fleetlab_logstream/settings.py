"""Logstream settings."""

from __future__ import annotations

from pydantic import BaseModel, Field

from fleetlab_common.settings import CommonSettings


class RetentionPolicy(BaseModel):
    """How long a finished run's log is kept, and how much log a project keeps.

    A run's log goes (its lines and its archive) once it finished more than ``max_age_days``
    ago, or once the project's newer finished runs already hold ``max_bytes`` of log. ``None``
    turns a bound off. The default: 30 days, 10 GiB per project.
    """

    max_age_days: float | None = Field(default=30.0, gt=0)
    max_bytes: int | None = Field(default=10 * 1024**3, gt=0)


class LogstreamSettings(CommonSettings):
    """Settings of ``python -m fleetlab_logstream``."""

    port: int = 5082
    # A query answer stays under NATS's default 1 MiB payload limit.
    max_reply_bytes: int = 512 * 1024
    # FLEETLAB_RETENTION__MAX_AGE_DAYS, FLEETLAB_RETENTION__MAX_BYTES: every project's default.
    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)
    # Per project (by name), as JSON: FLEETLAB_RETENTION_PROJECTS='{"big": {"max_bytes": 1e12}}'.
    retention_projects: dict[str, RetentionPolicy] = Field(default_factory=dict)
    retention_interval_s: float = Field(default=600.0, gt=0)
    # After a run ends, how long to wait for its last lines before archiving what is there.
    archive_wait_s: float = Field(default=60.0, ge=0)
    # The newest lines of each agent's own log that are kept.
    agent_log_lines: int = Field(default=20_000, ge=1)
    # Resource-use samples (agents' and experiments') older than this are deleted.
    usage_max_age_days: float = Field(default=30.0, gt=0)

    def policy(self, project: str | None) -> RetentionPolicy:
        """The retention policy of ``project`` (the default when it has none of its own)."""
        if project is not None and project in self.retention_projects:
            return self.retention_projects[project]
        return self.retention
