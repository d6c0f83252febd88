"""Logstream's subscribers: line batches, run ends, agents' logs and metrics in; queries
answered over request/reply."""

from __future__ import annotations

from typing import Any

from faststream.nats import NatsBroker

from fleetlab_common.broker import event_subscriber
from fleetlab_common.events import (
    AgentLogAppended,
    ExperimentAssigned,
    ExperimentDeleted,
    ExperimentFinished,
    LogLinesAppended,
    MetricsReported,
    Rpc,
)
from fleetlab_logstream.schemas import (
    AgentLogQuery,
    LinesQuery,
    MetricsIngested,
    MetricsQuery,
)
from fleetlab_logstream.service import CONSUMER
from fleetlab_logstream.state import State

# Queries answered at once per process: one that waits for a run's last lines (min_count)
# must not hold up every other viewer behind it.
RPC_WORKERS = 32


def register(broker: NatsBroker, state: State) -> None:
    nats = state.settings.nats

    @event_subscriber(broker, LogLinesAppended, CONSUMER, nats, batch_size=50)
    async def handle_log_lines_appended(event: dict[str, Any]) -> None:
        # Decoded JSON, not the model: see Logstream.on_lines_json.
        await state.get().on_lines_json(event)

    @event_subscriber(broker, ExperimentFinished, CONSUMER, nats)
    async def handle_experiment_finished(event: ExperimentFinished) -> None:
        await state.get().on_finished(event)

    @event_subscriber(broker, ExperimentAssigned, CONSUMER, nats)
    async def handle_experiment_assigned(event: ExperimentAssigned) -> None:
        await state.get().on_assigned(event)

    @event_subscriber(broker, ExperimentDeleted, CONSUMER, nats)
    async def handle_experiment_deleted(event: ExperimentDeleted) -> None:
        await state.get().on_deleted(event)

    @event_subscriber(broker, AgentLogAppended, CONSUMER, nats, batch_size=50)
    async def handle_agent_log_appended(event: AgentLogAppended) -> None:
        await state.get().on_agent_log(event)

    @event_subscriber(broker, MetricsReported, CONSUMER, nats, batch_size=50)
    async def handle_metrics_reported(event: dict[str, Any]) -> None:
        # Decoded JSON, not the model: see Logstream.on_metrics_json.
        await state.get().on_metrics_json(event)

    @broker.subscriber(
        Rpc.LOG_LINES, queue=CONSUMER, max_workers=RPC_WORKERS, title=f"{Rpc.LOG_LINES}:reply"
    )
    async def handle_lines_query(query: LinesQuery) -> dict[str, Any]:
        return await state.get().query_json(query)

    @broker.subscriber(
        Rpc.AGENT_LOG, queue=CONSUMER, max_workers=RPC_WORKERS, title=f"{Rpc.AGENT_LOG}:reply"
    )
    async def handle_agent_log_query(query: AgentLogQuery) -> dict[str, Any]:
        page = await state.get().agent_log(query)
        return page.model_dump(mode="json")

    @broker.subscriber(
        Rpc.METRICS, queue=CONSUMER, max_workers=RPC_WORKERS, title=f"{Rpc.METRICS}:reply"
    )
    async def handle_metrics_query(query: MetricsQuery) -> dict[str, Any]:
        page = await state.get().metrics(query)
        return page.model_dump(mode="json")

    @broker.subscriber(
        Rpc.METRICS_INGEST,
        queue=CONSUMER,
        max_workers=RPC_WORKERS,
        title=f"{Rpc.METRICS_INGEST}:reply",
    )
    async def handle_metrics_ingest(request: dict[str, Any]) -> dict[str, Any]:
        stored = await state.get().ingest_json(request)
        return MetricsIngested(stored=stored).model_dump()
