"""Events published by the scheduler (stream ``SCHEDULER``)."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar, Literal

from pydantic import Field

from fleetlab_common.events.base import Event
from fleetlab_common.runspec import RunSpec


class ExperimentAssigned(Event):
    """The scheduler placed an experiment on one agent.

    Published on ``scheduler.experiment.assigned.<agent_id>`` so each agent consumes only its own.
    """

    STREAM: ClassVar[str | None] = "SCHEDULER"
    ROUTE_FIELD: ClassVar[str | None] = "agent_id"
    type: Literal["scheduler.experiment.assigned"] = "scheduler.experiment.assigned"
    experiment_id: uuid.UUID
    agent_id: str
    attempt: int = 1
    project: str
    options: dict[str, Any] = Field(default_factory=dict)
    run: RunSpec
    # The GPU indices on the agent given to this experiment (CUDA_VISIBLE_DEVICES).
    gpus: list[int] = Field(default_factory=list)
    # A multi-worker experiment sends one assignment per rank (RANK, WORLD_SIZE, LOCAL_RANK:
    # the rank among those on the same agent). Rank 0 goes first; its agent picks the
    # rendezvous port, and ranks > 0 are sent with MASTER_ADDR and MASTER_PORT once it started.
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None


class ExperimentLost(Event):
    """An experiment's agent stopped answering; its lease expired."""

    STREAM: ClassVar[str | None] = "SCHEDULER"
    type: Literal["scheduler.experiment.lost"] = "scheduler.experiment.lost"
    experiment_id: uuid.UUID
    agent_id: str
    attempt: int
    reason: str
    # True when the retry policy queued the experiment again (as attempt + 1).
    requeued: bool = False


class ExperimentStopOrdered(Event):
    """The scheduler tells the agent running an experiment to stop it.

    Published on ``scheduler.experiment.stop_ordered.<agent_id>``.
    """

    STREAM: ClassVar[str | None] = "SCHEDULER"
    ROUTE_FIELD: ClassVar[str | None] = "agent_id"
    type: Literal["scheduler.experiment.stop_ordered"] = "scheduler.experiment.stop_ordered"
    experiment_id: uuid.UUID
    agent_id: str
    attempt: int
    reason: str = "stopped by user"


class ExperimentCancelled(Event):
    """An experiment was stopped before any agent started it: it will never run."""

    STREAM: ClassVar[str | None] = "SCHEDULER"
    type: Literal["scheduler.experiment.cancelled"] = "scheduler.experiment.cancelled"
    experiment_id: uuid.UUID
    attempt: int
    reason: str = "stopped by user"


class AgentOnline(Event):
    """An agent was heard from for the first time, or again after being offline."""

    STREAM: ClassVar[str | None] = "SCHEDULER"
    type: Literal["scheduler.agent.online"] = "scheduler.agent.online"
    agent_id: str
    hostname: str = ""


class AgentOffline(Event):
    """An agent missed its heartbeats for longer than its lease."""

    STREAM: ClassVar[str | None] = "SCHEDULER"
    type: Literal["scheduler.agent.offline"] = "scheduler.agent.offline"
    agent_id: str
    reason: str = "heartbeat lease expired"
