"""The API's own summary of every experiment's metrics: last, min and max per name.

Metric points live in logstream (one schema per service: the API never reads its tables).
After each batch it stores, logstream publishes ``logstream.metrics.summarized`` through its
outbox: the touched metrics' summaries as they now stand, and the scores the batch set. Points
from the metrics file and from ``POST /api/v1/experiments/{id}/metrics`` both take that way.
So the API's work is one small upsert per stored batch (a batch holds up to 4,000 points from
an agent, ~10,000 from the REST route), not per point: 100,000 points/s cost it some 25
upserts/s. The values are absolute: an upsert keeps the entry with the larger ``count``, so a
redelivered or late event changes nothing and no inbox row is needed.

The experiments list sorts by ``metrics.<name>[.last|.min|.max]`` through one index per value
(``(name, value, experiment_id)``), and filters with ``metric=<name>[.last|.min|.max]<op><number>``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import structlog
from faststream.nats import NatsBroker

from fleetlab_api.experiments import repository as repo
from fleetlab_api.experiments.listing import MetricFilter, Sort, filter_sql
from fleetlab_api.experiments.repository import _SELECT, _to_experiment
from fleetlab_api.state import State
from fleetlab_common.api.experiments import Experiment
from fleetlab_common.broker import event_subscriber
from fleetlab_common.db import Conn
from fleetlab_common.events import MetricsSummarized

CONSUMER = "api"


def register(broker: NatsBroker, state: State) -> None:
    @event_subscriber(broker, MetricsSummarized, CONSUMER, state.settings.nats, batch_size=50)
    async def handle_metrics_summarized(event: MetricsSummarized) -> None:
        with structlog.contextvars.bound_contextvars(experiment_id=str(event.experiment_id)):
            async with state.db().acquire() as conn, conn.transaction():
                await apply(conn, event)


async def apply(conn: Conn, event: MetricsSummarized) -> None:
    """Fold one summary event in: per metric, the entry with the larger count wins; the
    scores join the experiment's ``results._scores`` (newest wins). An experiment the API
    does not know (deleted meanwhile) is left alone."""
    if event.metrics:
        m = event.metrics
        await conn.execute(
            """INSERT INTO metric_summary AS s
                   (experiment_id, name, last, last_step, last_ts, min, max, count)
               SELECT $1, u.name, u.last, u.last_step, u.last_ts, u.min, u.max, u.count
               FROM unnest($2::text[], $3::float8[], $4::bigint[], $5::timestamptz[],
                           $6::float8[], $7::float8[], $8::bigint[])
                    AS u(name, last, last_step, last_ts, min, max, count)
               WHERE EXISTS (SELECT 1 FROM experiments WHERE id = $1)
               ON CONFLICT (experiment_id, name) DO UPDATE
               SET last = EXCLUDED.last, last_step = EXCLUDED.last_step,
                   last_ts = EXCLUDED.last_ts, min = EXCLUDED.min, max = EXCLUDED.max,
                   count = EXCLUDED.count
               WHERE EXCLUDED.count > s.count""",
            event.experiment_id,
            [e.name for e in m],
            [e.last for e in m],
            [e.last_step for e in m],
            [e.last_ts for e in m],
            [e.min for e in m],
            [e.max for e in m],
            [e.count for e in m],
        )
    if event.scores:
        await conn.execute(
            """UPDATE experiments
               SET results = jsonb_set(results, '{_scores}',
                   CASE WHEN jsonb_typeof(results -> '_scores') = 'object'
                        THEN results -> '_scores' ELSE '{}'::jsonb END || $2::jsonb)
               WHERE id = $1""",
            event.experiment_id,
            event.scores,
        )


async def of_experiment(conn: Conn, experiment_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    """One experiment's summaries by name."""
    rows = await conn.fetch(
        """SELECT name, last, last_step, last_ts, min, max, count FROM metric_summary
           WHERE experiment_id = $1 ORDER BY name""",
        experiment_id,
    )
    return {r["name"]: {k: v for k, v in dict(r).items() if k != "name"} for r in rows}


# -- sorting by a metric -----------------------------------------------------------------------


async def page(
    conn: Conn,
    *,
    project_id: uuid.UUID | None,
    status: str | None,
    tag: str | None,
    sweep_id: uuid.UUID | None,
    sort: Sort,
    filters: Sequence[MetricFilter],
    after: tuple[str, uuid.UUID] | None,
    limit: int,
) -> list[tuple[Experiment, Any]]:
    """Experiments sorted by a metric's summary value (or a score) then id, after ``after``
    (the cursor's JSON value and id): first those with the value, walking its index, then
    those without it by id. Each with its value (None without it)."""
    if sort.metric is not None:
        name, table, column, cast = sort.metric, "metric_summary", sort.expr, "float8"
    else:
        assert sort.score is not None
        name, table, column, cast = sort.score, "result_scores", "value", "jsonb"
    direction = "DESC" if sort.descending else "ASC"
    cmp = "<" if sort.descending else ">"
    after_value = json.loads(after[0]) if after is not None else None
    found: list[tuple[Experiment, Any]] = []

    def base(args: list[Any]) -> str:
        args += [project_id, status, tag, sweep_id]
        n = len(args)
        return (
            f"(${n - 3}::uuid IS NULL OR e.project_id = ${n - 3})"
            f" AND (${n - 2}::text IS NULL OR e.status = ${n - 2})"
            f" AND (${n - 1}::text IS NULL OR ${n - 1} = ANY(e.tags))"
            f" AND (${n}::uuid IS NULL OR e.sweep_id = ${n})"
            f" AND {filter_sql(filters, args)}"
        )

    if after is None or after_value is not None:
        args: list[Any] = [name, limit]
        where = base(args)
        if after is not None:
            args += [after[0], after[1]]
            n = len(args)
            where += (
                f" AND (s.{column}, s.experiment_id) {cmp} (${n - 1}::text::{cast}, ${n}::uuid)"
            )
        rows = await conn.fetch(
            f"""SELECT e.*, p.name AS project, s.{column} AS sort_value
                FROM {table} s
                JOIN experiments e ON e.id = s.experiment_id
                JOIN projects p ON p.id = e.project_id
                WHERE s.name = $1 AND {where}
                ORDER BY s.{column} {direction}, s.experiment_id {direction} LIMIT $2""",
            *args,
        )
        found += [(_to_experiment(r), r["sort_value"]) for r in rows]
    if len(found) < limit:
        args = [name, limit - len(found)]
        where = base(args)
        if after is not None and after_value is None:
            args.append(after[1])
            where += f" AND e.id {cmp} ${len(args)}"
        rows = await conn.fetch(
            f"""{_SELECT}
                WHERE NOT EXISTS (SELECT 1 FROM {table} s
                                  WHERE s.experiment_id = e.id AND s.name = $1)
                  AND {where}
                ORDER BY e.id {direction} LIMIT $2""",
            *args,
        )
        found += [(_to_experiment(r), None) for r in rows]
    return found


async def page_sorted(
    conn: Conn,
    *,
    project_id: uuid.UUID | None,
    status: str | None,
    tag: str | None,
    sweep_id: uuid.UUID | None,
    sort: Sort,
    filters: Sequence[MetricFilter],
    after: tuple[str, uuid.UUID] | None,
    limit: int,
) -> list[tuple[Experiment, Any]]:
    """One page for any sort, each experiment with the value its cursor needs (for a metric
    sort; None otherwise): :func:`page`, or the experiments repository's sorted page."""
    if sort.metric is not None or sort.score is not None:
        return list(
            await page(
                conn,
                project_id=project_id,
                status=status,
                tag=tag,
                sweep_id=sweep_id,
                sort=sort,
                filters=filters,
                after=after,
                limit=limit,
            )
        )
    items = await repo.page_sorted(
        conn,
        project_id=project_id,
        status=status,
        tag=tag,
        sweep_id=sweep_id,
        sort=sort,
        after=after,
        limit=limit,
        metric_filters=list(filters),
    )
    return [(e, None) for e in items]
