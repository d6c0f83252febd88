"""Events published by the api service (stream ``API``)."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar, Literal

from pydantic import Field

from fleetlab_common.events.base import Event
from fleetlab_common.runspec import RunSpec


class ExperimentSubmitted(Event):
    """An experiment was recorded and waits for a place to run."""

    STREAM: ClassVar[str | None] = "API"
    type: Literal["api.experiment.submitted"] = "api.experiment.submitted"
    experiment_id: uuid.UUID
    project_id: uuid.UUID
    project: str
    options: dict[str, Any] = Field(default_factory=dict)
    run: RunSpec
    priority: int = 0
    # A sweep's trial: the sweep it belongs to and how many of its trials may run at once
    # (None: no limit). The scheduler enforces the limit when it places trials.
    sweep_id: uuid.UUID | None = None
    sweep_parallelism: int | None = None


class ExperimentStopRequested(Event):
    """A user asked to stop an experiment."""

    STREAM: ClassVar[str | None] = "API"
    type: Literal["api.experiment.stop_requested"] = "api.experiment.stop_requested"
    experiment_id: uuid.UUID
    reason: str = "stopped by user"


class ExperimentDeleted(Event):
    """A finished experiment's record was deleted: its stored log, metrics and files go too."""

    STREAM: ClassVar[str | None] = "API"
    type: Literal["api.experiment.deleted"] = "api.experiment.deleted"
    experiment_id: uuid.UUID


class SweepFinished(Event):
    """Every trial of a sweep has ended (or the sweep was stopped and its last trial ended)."""

    STREAM: ClassVar[str | None] = "API"
    type: Literal["api.sweep.finished"] = "api.sweep.finished"
    sweep_id: uuid.UUID
    project_id: uuid.UUID
    project: str
    # finished (every trial ran to its end) or stopped (a user stopped the sweep).
    status: Literal["finished", "stopped"] = "finished"
    trials: int = 0
    # Trials by their final status: succeeded, failed, stopped, lost.
    counts: dict[str, int] = Field(default_factory=dict)
    best_experiment_id: uuid.UUID | None = None
    metric: str | None = None
    best_value: Any = None
