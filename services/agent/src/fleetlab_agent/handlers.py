"""The agent's subscribers: its own assignments only."""

from __future__ import annotations

import structlog
from faststream.nats import NatsBroker

from fleetlab_agent.service import Agent
from fleetlab_common.broker import event_subscriber
from fleetlab_common.events import ExperimentAssigned, ExperimentStopOrdered


def register(broker: NatsBroker, agent: Agent) -> None:
    """Subscribe to this agent's own assignments and stop orders."""
    settings = agent.settings

    @event_subscriber(
        broker,
        ExperimentAssigned,
        f"agent-{agent.name}",
        settings.nats,
        subject=f"{ExperimentAssigned.event_type()}.{agent.name}",
    )
    async def handle_experiment_assigned(event: ExperimentAssigned) -> None:
        with structlog.contextvars.bound_contextvars(experiment_id=str(event.experiment_id)):
            await agent.handle_assigned(event)

    @event_subscriber(
        broker,
        ExperimentStopOrdered,
        f"agent-{agent.name}",
        settings.nats,
        subject=f"{ExperimentStopOrdered.event_type()}.{agent.name}",
    )
    async def handle_experiment_stop_ordered(event: ExperimentStopOrdered) -> None:
        with structlog.contextvars.bound_contextvars(experiment_id=str(event.experiment_id)):
            await agent.handle_stop_ordered(event)
