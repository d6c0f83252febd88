"""The API's subscribers: keep the experiments read model in step with the events."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import structlog
from faststream.nats import NatsBroker

from fleetlab_api.experiments import repository as repo
from fleetlab_api.outputs import record_outputs
from fleetlab_api.state import State
from fleetlab_api.sweeps.service import finish_if_done
from fleetlab_common.broker import event_subscriber
from fleetlab_common.db import Conn
from fleetlab_common.db.inbox import InboxBatch
from fleetlab_common.events import (
    Event,
    ExperimentAssigned,
    ExperimentCancelled,
    ExperimentFinished,
    ExperimentLost,
    ExperimentStarted,
)

CONSUMER = "api"


def register(broker: NatsBroker, state: State) -> None:
    nats = state.settings.nats
    # Events fetched together are applied in one transaction (see InboxBatch).
    inbox = InboxBatch(state.db, CONSUMER)

    async def apply(
        event: Event, experiment_id: uuid.UUID, change: Callable[[Conn], Awaitable[None]]
    ) -> None:
        async def change_and_sweep(conn: Conn) -> bool:
            await change(conn)
            # A trial's end may be its sweep's end: sweep.finished goes with it.
            return await finish_if_done(conn, experiment_id)

        with structlog.contextvars.bound_contextvars(experiment_id=str(experiment_id)):
            if await inbox.apply(event, change_and_sweep):
                state.outbox().kick()

    @event_subscriber(broker, ExperimentAssigned, CONSUMER, nats)
    async def handle_experiment_assigned(event: ExperimentAssigned) -> None:
        await apply(
            event,
            event.experiment_id,
            lambda conn: repo.record_assigned(
                conn, event.experiment_id, event.attempt, event.agent_id
            ),
        )

    @event_subscriber(broker, ExperimentStarted, CONSUMER, nats)
    async def handle_experiment_started(event: ExperimentStarted) -> None:
        await apply(
            event,
            event.experiment_id,
            lambda conn: repo.record_started(
                conn, event.experiment_id, event.attempt, event.agent_id, event.occurred_at
            ),
        )

    @event_subscriber(broker, ExperimentFinished, CONSUMER, nats)
    async def handle_experiment_finished(event: ExperimentFinished) -> None:
        async def change(conn: Conn) -> None:
            await repo.record_finished(
                conn,
                event.experiment_id,
                event.attempt,
                status=event.status,
                agent_id=event.agent_id,
                exit_code=event.exit_code,
                signal=event.signal,
                reason=event.reason,
                started_at=event.started_at,
                finished_at=event.occurred_at,
                log_lines=event.log_lines,
            )
            if event.outputs:
                await record_outputs(conn, event)

        await apply(event, event.experiment_id, change)

    @event_subscriber(broker, ExperimentCancelled, CONSUMER, nats)
    async def handle_experiment_cancelled(event: ExperimentCancelled) -> None:
        await apply(
            event,
            event.experiment_id,
            lambda conn: repo.record_cancelled(
                conn, event.experiment_id, event.attempt, event.reason, event.occurred_at
            ),
        )

    @event_subscriber(broker, ExperimentLost, CONSUMER, nats)
    async def handle_experiment_lost(event: ExperimentLost) -> None:
        await apply(
            event,
            event.experiment_id,
            lambda conn: repo.record_lost(
                conn,
                event.experiment_id,
                event.attempt,
                event.reason,
                event.requeued,
                event.occurred_at,
            ),
        )
