"""Logstream's subscribers: line batches in, line queries answered."""

from __future__ import annotations

from typing import Any

from faststream.nats import NatsBroker

from fleetlab_common.broker import event_subscriber
from fleetlab_common.events import LogLinesAppended, Rpc
from fleetlab_logstream.schemas import LinesQuery
from fleetlab_logstream.state import State

CONSUMER = "logstream"


def register(broker: NatsBroker, state: State) -> None:
    @event_subscriber(broker, LogLinesAppended, CONSUMER, state.settings.nats, batch_size=50)
    async def handle_log_lines_appended(event: LogLinesAppended) -> None:
        await state.get().on_lines(event)

    @broker.subscriber(Rpc.LOG_LINES, queue=CONSUMER, title=f"{Rpc.LOG_LINES}:reply")
    async def handle_lines_query(query: LinesQuery) -> dict[str, Any]:
        page = await state.get().query(query)
        return page.model_dump(mode="json")
