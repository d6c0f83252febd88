"""The request/reply contracts of logstream's RPC subjects (``rpc.logstream.*``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from fleetlab_common.events import AgentLogLine, LogLine, MetricPoint


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
    """One page of lines; ``next_seq`` is where the next page starts (None at the end).

    ``last_seq`` is the highest sequence number stored for the attempt, so a viewer knows how
    long the log is without reading it (a late viewer's head and tail).
    """

    attempt: int | None
    lines: list[LogLine]
    stored: int
    next_seq: int | None = None
    last_seq: int = 0


class AgentLogQuery(BaseModel):
    """The newest ``limit`` lines of an agent's own log, before ``before_id`` when given."""

    agent_id: str
    limit: int = Field(default=1000, ge=1, le=5000)
    before_id: int | None = None


class AgentLogEntry(AgentLogLine):
    id: int


class AgentLogPage(BaseModel):
    """Lines oldest first; ``before_id`` of the next (older) page, None when none is left."""

    lines: list[AgentLogEntry]
    before_id: int | None = None


class MetricsIngest(BaseModel):
    """Points posted through the API (``POST /api/v1/experiments/{id}/metrics``)."""

    experiment_id: uuid.UUID
    attempt: int = 1
    points: list[MetricPoint]
    scores: dict[str, float] = Field(default_factory=dict)


class MetricsIngested(BaseModel):
    stored: int


class MetricsQuery(BaseModel):
    """Every series of an experiment (or only ``names``).

    ``points`` > 0: each series downsampled to at most that many points with
    largest-triangle-three-buckets, in one answer. ``points`` = 0: full data, a page of at
    most ``limit`` raw points from after ``after_id`` (follow ``next_after_id``).
    """

    experiment_id: uuid.UUID
    names: list[str] | None = None
    points: int = Field(default=500, ge=0, le=100_000)
    after_id: int = 0
    limit: int = Field(default=5000, ge=1, le=20_000)


class MetricSummary(BaseModel):
    name: str
    last: float
    last_step: int | None
    last_ts: datetime
    min: float
    max: float
    count: int


class SeriesPoint(BaseModel):
    step: int | None
    value: float
    ts: datetime


class Series(BaseModel):
    name: str
    points: list[SeriesPoint]
    # How many points the series holds in all (more than ``points`` when downsampled).
    total: int
    downsampled: bool = False


class RawPoint(BaseModel):
    id: int
    name: str
    step: int | None
    value: float
    ts: datetime
    cumulative: bool
    metadata: dict[str, Any] | None
    attempt: int


class MetricsPage(BaseModel):
    series: list[Series] = Field(default_factory=list)
    raw: list[RawPoint] | None = None
    next_after_id: int | None = None
    summary: list[MetricSummary] = Field(default_factory=list)
    scores: dict[str, float] = Field(default_factory=dict)
