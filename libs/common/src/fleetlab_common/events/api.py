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


class ExperimentStopRequested(Event):
    """A user asked to stop an experiment."""

    STREAM: ClassVar[str | None] = "API"
    type: Literal["api.experiment.stop_requested"] = "api.experiment.stop_requested"
    experiment_id: uuid.UUID
    reason: str = "stopped by user"
