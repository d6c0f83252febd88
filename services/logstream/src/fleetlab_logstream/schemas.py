"""The request/reply contract of ``rpc.logstream.lines``."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field

from fleetlab_common.events import LogLine


class LinesQuery(BaseModel):
    """Which lines to return. ``attempt`` None means the latest attempt."""

    experiment_id: uuid.UUID
    attempt: int | None = None
    stream: str | None = None
    from_seq: int = Field(default=1, ge=1)
    to_seq: int | None = None
    limit: int = Field(default=5000, ge=1, le=50_000)
    # Wait (up to wait_s) until this many lines are stored: a run's end is announced with its
    # line count, and the last batch may still be on its way.
    min_count: int | None = None
    wait_s: float = Field(default=2.0, ge=0, le=10)


class LinesPage(BaseModel):
    """One page of lines; ``next_seq`` is where the next page starts (None at the end)."""

    attempt: int | None
    lines: list[LogLine]
    stored: int
    next_seq: int | None = None
