"""Events published by logstream (stream ``LOGSTREAM``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import ClassVar, Literal

from pydantic import BaseModel, Field

from fleetlab_common.events.base import Event


class MetricSummaryEntry(BaseModel):
    """One metric of one experiment over every point stored so far."""

    name: str
    last: float
    last_step: int | None = None
    last_ts: datetime
    min: float
    max: float
    # Points stored: it only grows, so of two entries for a metric the larger count is newer.
    count: int


class MetricsSummarized(Event):
    """Logstream stored a batch of an experiment's metric points (from its metrics file or
    the REST route): each metric the batch touched, summarised over everything stored, and
    the scores the batch set, on ``logstream.metrics.summarized.<experiment_id>``. The values
    are absolute, not increments: keep, per metric, the entry with the larger ``count``."""

    STREAM: ClassVar[str | None] = "LOGSTREAM"
    ROUTE_FIELD: ClassVar[str | None] = "experiment_id"
    type: Literal["logstream.metrics.summarized"] = "logstream.metrics.summarized"
    experiment_id: uuid.UUID
    attempt: int = 1
    metrics: list[MetricSummaryEntry] = Field(default_factory=list)
    scores: dict[str, float] = Field(default_factory=dict)
