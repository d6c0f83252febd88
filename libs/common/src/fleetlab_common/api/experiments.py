"""Experiment schemas."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleetlab_common.api.projects import Text

Status = Literal["queued", "running", "succeeded", "failed", "stopped", "lost"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "stopped", "lost"})


class ExperimentCreate(BaseModel):
    """``POST /api/v1/experiments``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "project": "mnist",
                    "options": {"lr": 0.01, "epochs": 5, "optimiser": "adam"},
                    "name": "adam, small lr",
                    "priority": 0,
                    "tags": ["baseline"],
                }
            ]
        },
    )

    project: Text = Field(min_length=1, description="The project's id or name.")
    options: dict[str, Any] = Field(default_factory=dict)
    name: Text | None = Field(default=None, max_length=200)
    priority: int = Field(default=0, ge=-1000, le=1000)
    tags: list[Text] = Field(default_factory=list, max_length=50)
    code: Text | None = Field(
        default=None,
        description="The code snapshot to run (a digest from POST /api/v1/code); "
        "default: the project's",
        examples=["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
    )


# The most experiments one ``POST /api/v1/experiments/batch`` queues.
MAX_BATCH = 1000


class ExperimentBatchCreate(BaseModel):
    """``POST /api/v1/experiments/batch``: experiments queued together, all or none."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "experiments": [
                        {"project": "mnist", "options": {"lr": 0.01}, "tags": ["lr-scan"]},
                        {"project": "mnist", "options": {"lr": 0.1}, "tags": ["lr-scan"]},
                        {"project": "cifar", "options": {"epochs": 20}, "priority": 5},
                    ]
                }
            ]
        },
    )

    experiments: list[ExperimentCreate] = Field(
        min_length=1,
        max_length=MAX_BATCH,
        description=f"1 to {MAX_BATCH} experiments, each as POST /api/v1/experiments takes "
        "one; answered in the same order",
    )


class Experiment(BaseModel):
    """An experiment record."""

    id: uuid.UUID
    project: str
    project_id: uuid.UUID
    options: dict[str, Any]
    name: str | None
    notes: str
    status: Status
    status_reason: str | None
    agent_id: str | None
    attempt: int
    exit_code: int | None
    signal: int | None = None
    log_lines: int | None
    priority: int
    tags: list[str]
    results: dict[str, Any]
    code: str | None = None
    sweep_id: uuid.UUID | None = None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ExperimentPage(BaseModel):
    """A page of experiments; pass ``next`` as ``cursor`` for the following page."""

    items: list[Experiment]
    next: str | None


class ExperimentUpdate(BaseModel):
    """``PATCH /api/v1/experiments/{id}``: rename, or save notes (the dashboard autosaves)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "lr 0.01", "notes": "diverged after epoch 3"}]},
    )

    name: Text | None = Field(default=None, max_length=200)
    notes: Text | None = Field(default=None, max_length=100_000)


class ExperimentBatch(BaseModel):
    """The experiments a batch queued, in the order they were given."""

    experiments: list[Experiment]
