"""The scheduler's subscribers: thin, they decode and hand over to :class:`Scheduler`."""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from faststream.nats import NatsBroker
from pydantic import BaseModel, Field

from fleetlab_common.broker import event_subscriber
from fleetlab_common.events import (
    AgentHeartbeat,
    ExperimentFinished,
    ExperimentStarted,
    ExperimentStopRequested,
    ExperimentSubmitted,
    Rpc,
    WorkerFinished,
    WorkerStarted,
)
from fleetlab_scheduler.service import CONSUMER
from fleetlab_scheduler.state import State


def register(broker: NatsBroker, state: State) -> None:
    """Register the subscribers; they reach the running scheduler through ``state``."""
    nats = state.settings.nats
    get = state.get

    @event_subscriber(broker, ExperimentSubmitted, CONSUMER, nats)
    async def handle_experiment_submitted(event: ExperimentSubmitted) -> None:
        with structlog.contextvars.bound_contextvars(experiment_id=str(event.experiment_id)):
            await get().on_submitted(event)

    @event_subscriber(broker, ExperimentStopRequested, CONSUMER, nats)
    async def handle_experiment_stop_requested(event: ExperimentStopRequested) -> None:
        with structlog.contextvars.bound_contextvars(experiment_id=str(event.experiment_id)):
            await get().on_stop_requested(event)

    @event_subscriber(broker, ExperimentStarted, CONSUMER, nats)
    async def handle_experiment_started(event: ExperimentStarted) -> None:
        with structlog.contextvars.bound_contextvars(experiment_id=str(event.experiment_id)):
            await get().on_started(event)

    @event_subscriber(broker, ExperimentFinished, CONSUMER, nats)
    async def handle_experiment_finished(event: ExperimentFinished) -> None:
        with structlog.contextvars.bound_contextvars(experiment_id=str(event.experiment_id)):
            await get().on_finished(event)

    @event_subscriber(broker, WorkerStarted, CONSUMER, nats)
    async def handle_worker_started(event: WorkerStarted) -> None:
        with structlog.contextvars.bound_contextvars(experiment_id=str(event.experiment_id)):
            await get().on_worker_started(event)

    @event_subscriber(broker, WorkerFinished, CONSUMER, nats)
    async def handle_worker_finished(event: WorkerFinished) -> None:
        with structlog.contextvars.bound_contextvars(experiment_id=str(event.experiment_id)):
            await get().on_worker_finished(event)

    # Heartbeats are ephemeral (core NATS): a missed one only matters through the lease.
    @broker.subscriber(AgentHeartbeat.event_type(), queue=CONSUMER, title="agent.heartbeat:sub")
    async def handle_agent_heartbeat(event: AgentHeartbeat) -> None:
        await get().on_heartbeat(event)

    @broker.subscriber(Rpc.AGENTS, queue=CONSUMER, title=f"{Rpc.AGENTS}:reply")
    async def handle_agents_request() -> dict[str, Any]:
        agents = await get().agents()
        return {"agents": agents, "online": sum(1 for a in agents if a["online"])}

    @broker.subscriber(Rpc.WHY_WAITING, queue=CONSUMER, title=f"{Rpc.WHY_WAITING}:reply")
    async def handle_why_request(body: WhyRequest) -> dict[str, Any]:
        return {"reasons": await get().why(body.experiment_ids)}

    @broker.subscriber(Rpc.AGENT_DRAIN, queue=CONSUMER, title=f"{Rpc.AGENT_DRAIN}:reply")
    async def handle_drain_request(body: DrainRequest) -> dict[str, Any]:
        return {"found": await get().drain(body.agent_id, body.draining)}

    @broker.subscriber(Rpc.AGENT_REMOVE, queue=CONSUMER, title=f"{Rpc.AGENT_REMOVE}:reply")
    async def handle_remove_request(body: RemoveRequest) -> dict[str, Any]:
        return {"result": await get().remove(body.agent_id)}


class WhyRequest(BaseModel):
    experiment_ids: list[uuid.UUID] = Field(max_length=1000)


class DrainRequest(BaseModel):
    agent_id: str
    draining: bool = True


class RemoveRequest(BaseModel):
    agent_id: str
