"""FGMachine's results: what a run writes to its results folder, merged into the experiment's
``results`` (``agent.results.reported``).

Newest wins: each reported field replaces the stored one, except ``_scores``, merged name by
name, so a run may write one score file per score. Only the current attempt's reports count.
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from faststream.nats import NatsBroker

from fleetlab_api.state import State
from fleetlab_common.broker import event_subscriber
from fleetlab_common.db import Conn
from fleetlab_common.db.inbox import first_delivery
from fleetlab_common.events import ResultsReported
from fleetlab_common.log import get_logger

log = get_logger(__name__)

CONSUMER = "api"


async def merge_results(
    conn: Conn, experiment_id: uuid.UUID, attempt: int, results: dict[str, Any]
) -> bool:
    """Merge ``results`` into the experiment's; False when the experiment (or that attempt)
    is not there."""
    done: str = await conn.execute(
        """UPDATE experiments
           SET results = results || $2::jsonb
               || CASE WHEN jsonb_typeof(results -> '_scores') = 'object'
                         AND jsonb_typeof($2::jsonb -> '_scores') = 'object'
                       THEN jsonb_build_object(
                           '_scores', (results -> '_scores') || ($2::jsonb -> '_scores'))
                       ELSE '{}'::jsonb END
           WHERE id = $1 AND attempt = $3""",
        experiment_id,
        results,
        attempt,
    )
    return done.endswith(" 1")


def register(broker: NatsBroker, state: State) -> None:
    """Keep the read model's ``results`` in step with the agents' reports."""

    @event_subscriber(broker, ResultsReported, CONSUMER, state.settings.nats)
    async def handle_results_reported(event: ResultsReported) -> None:
        if event.skipped:
            log.warning(
                "results.malformed_files",
                experiment_id=str(event.experiment_id),
                skipped=event.skipped,
            )
        if not event.results:
            return
        with structlog.contextvars.bound_contextvars(experiment_id=str(event.experiment_id)):
            async with state.db().acquire() as conn, conn.transaction():
                if await first_delivery(conn, CONSUMER, event):
                    await merge_results(conn, event.experiment_id, event.attempt, event.results)
