"""The scheduler's subscribers: thin, they decode and hand over to :class:`Scheduler`."""

from __future__ import annotations

from typing import Any

import structlog
from faststream.nats import NatsBroker

from fleetlab_common.broker import event_subscriber
from fleetlab_common.events import (
    AgentHeartbeat,
    ExperimentFinished,
    ExperimentStarted,
    ExperimentStopRequested,
    ExperimentSubmitted,
    Rpc,
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

    # Heartbeats are ephemeral (core NATS): a missed one only matters through the lease.
    @broker.subscriber(AgentHeartbeat.event_type(), queue=CONSUMER, title="agent.heartbeat:sub")
    async def handle_agent_heartbeat(event: AgentHeartbeat) -> None:
        await get().on_heartbeat(event)

    @broker.subscriber(Rpc.AGENTS, queue=CONSUMER, title=f"{Rpc.AGENTS}:reply")
    async def handle_agents_request() -> dict[str, Any]:
        agents = await get().agents()
        return {"agents": agents, "online": sum(1 for a in agents if a["online"])}
