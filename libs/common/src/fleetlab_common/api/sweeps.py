"""Sweep schemas."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleetlab_common.api.experiments import Experiment
from fleetlab_common.api.projects import Text

# The most trials one sweep may have (a grid's size is checked before anything is made).
MAX_TRIALS = 100_000

Method = Literal["grid", "random"]
Goal = Literal["minimize", "maximize"]
SweepStatus = Literal["running", "finished", "stopped"]


class SweepCreate(BaseModel):
    """``POST /api/v1/sweeps``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "project": "mnist",
                    "method": "grid",
                    "parameters": {
                        "lr": {"min": 0.001, "max": 0.1, "steps": 3, "scale": "log"},
                        "optimiser": ["sgd", "adam"],
                    },
                    "parallelism": 2,
                    "metric": "results._scores.accuracy",
                    "goal": "maximize",
                },
                {
                    "project": "mnist",
                    "method": "random",
                    "parameters": {"lr": {"min": 0.0001, "max": 0.1, "scale": "log"}},
                    "count": 20,
                    "seed": 7,
                },
            ]
        },
    )

    project: Text = Field(min_length=1, description="The project's id or name.")
    method: Method = Field(
        default="grid",
        description="grid: every combination; random: `count` draws from `seed`.",
    )
    parameters: dict[Text, Any] = Field(
        default_factory=dict,
        description="Per option: a list of values, {'values': [...]} (or a comma-separated "
        "string), or a range {'min', 'max', 'steps', 'scale': 'linear' | 'log'}. Options not "
        "named keep their defaults.",
    )
    count: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TRIALS,
        description="Trials of a random sweep (required there). A grid runs every "
        "combination: leave it out, or give exactly that number.",
    )
    parallelism: int | None = Field(
        default=None, ge=1, le=100_000, description="At most this many trials run at once."
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**63 - 1,
        description="Random sweeps draw from it (recorded; one is chosen when left out).",
    )
    metric: Text | None = Field(
        default=None,
        max_length=300,
        description="What ranks the trials: a sort key of the experiments list "
        "(results._scores.accuracy, metrics.loss); a bare name means results._scores.<name>.",
    )
    goal: Goal = "maximize"
    name: Text | None = Field(default=None, max_length=200)
    priority: int = Field(default=0, ge=-1000, le=1000)
    tags: list[Text] = Field(default_factory=list, max_length=50)


class Sweep(BaseModel):
    """A sweep with its progress: trials by status, and the best trial so far."""

    id: uuid.UUID
    project: str
    project_id: uuid.UUID
    name: str | None
    method: Method
    parameters: dict[str, Any]
    count: int = Field(description="How many trials the sweep created.")
    parallelism: int | None
    seed: int | None
    metric: str | None
    goal: Goal
    status: SweepStatus = Field(
        description="running while a trial is queued or running; finished when every trial "
        "ended; stopped once a user stopped it."
    )
    counts: dict[str, int] = Field(description="Trials by status (queued, running, …).")
    done: int = Field(description="Trials that ended.")
    best: Experiment | None = Field(
        default=None, description="The trial with the best value of `metric` for `goal`."
    )
    best_value: Any = None
    created_at: datetime
    stopped_at: datetime | None
    finished_at: datetime | None


class SweepPage(BaseModel):
    """Sweeps, newest first; pass ``next`` as ``cursor`` for the following page."""

    items: list[Sweep]
    next: str | None


class SweepStop(BaseModel):
    """``POST /api/v1/sweeps/{id}/stop`` (the body is optional)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reason": "enough trials"}]}
    )

    reason: Text = Field(default="sweep stopped by user", min_length=1, max_length=500)
