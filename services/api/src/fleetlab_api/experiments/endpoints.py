"""``/api/v1/experiments``."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from fleetlab_api.deps import ConnDep, StateDep
from fleetlab_api.errors import InvalidError
from fleetlab_api.experiments import export, listing, service
from fleetlab_api.metrics import summary as metric_summary
from fleetlab_api.projects import service as projects
from fleetlab_common.api.experiments import (
    Experiment,
    ExperimentBatch,
    ExperimentBatchCreate,
    ExperimentCreate,
    ExperimentPage,
    ExperimentUpdate,
    Status,
)
from fleetlab_common.db import Conn

router = APIRouter(prefix="/api/v1/experiments", tags=["experiments"])


@router.post("", status_code=201, response_model=Experiment)
async def submit_experiment(body: ExperimentCreate, conn: ConnDep, state: StateDep) -> Experiment:
    """Queue an experiment: options are checked against the project's schema first."""
    return await service.submit(conn, state.outbox(), body)


# Before the ``/{ref}`` routes, so that "batch" is never read as an experiment's id.
@router.post("/batch", status_code=201, response_model=ExperimentBatch)
async def submit_experiment_batch(
    body: ExperimentBatchCreate, conn: ConnDep, state: StateDep
) -> ExperimentBatch:
    """Queue many experiments at once, all or none: every item is checked first as
    ``POST /api/v1/experiments`` checks one, and the first refusal is answered (422, its
    fields under the item's path, e.g. ``experiments.3.options.lr``) with nothing created.
    Then all are recorded in one transaction and answered in the order given."""
    made = await service.submit_batch(conn, state.outbox(), body.experiments)
    return ExperimentBatch(experiments=made)


Filter = Annotated[str | None, Query(description="A project's id or name")]
SortParam = Annotated[
    str | None,
    Query(
        description="A field (created_at, name, status, …), options.<name>, "
        "results._scores.<name> or metrics.<name>[.last|.min|.max] (experiments without the "
        "metric last); '-' in front for descending. Default: newest first.",
        examples=["-created_at", "options.lr", "-results._scores.accuracy", "metrics.loss.min"],
    ),
]
MetricParam = Annotated[
    list[str] | None,
    Query(
        description="Only experiments whose metric passes: <name>[.last|.min|.max]<op><number>, "
        "op one of < <= > >= = != (repeat for several, all must hold).",
        examples=["loss<0.3", "accuracy.max>=0.9"],
    ),
]


async def _filters(
    conn: Conn, project: str | None, sweep: str | None
) -> tuple[uuid.UUID | None, uuid.UUID | None]:
    project_id = (await projects.get(conn, project)).id if project else None
    sweep_id = None
    if sweep:
        try:
            sweep_id = uuid.UUID(sweep)
        except ValueError:
            raise InvalidError("invalid sweep id", {"sweep": "not a sweep id"}) from None
    return project_id, sweep_id


@router.get("", response_model=ExperimentPage)
async def list_experiments(
    conn: ConnDep,
    state: StateDep,
    project: Filter = None,
    status: Status | None = None,
    tag: str | None = None,
    sweep: str | None = None,
    sort: SortParam = None,
    metric: MetricParam = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ExperimentPage:
    """Experiments, filtered and sorted, ``limit`` at a time; pass ``next`` as ``cursor`` for
    the following page (keyset paging: rows inserted meanwhile never shift a page)."""
    order = listing.parse_sort(sort)
    by_metrics = listing.parse_filters(metric)
    project_id, sweep_id = await _filters(conn, project, sweep)
    after = listing.decode_cursor(order, cursor) if cursor else None
    rows = await metric_summary.page_sorted(
        conn,
        project_id=project_id,
        status=status,
        tag=tag,
        sweep_id=sweep_id,
        sort=order,
        filters=by_metrics,
        after=after,
        limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = listing.encode_cursor(order, *rows[-1]) if more else None
    items = [e for e, _ in rows]
    items = await service.explain_waiting(state.broker, items, state.settings.rpc_timeout_s)
    return ExperimentPage(items=items, next=next_cursor)


EXPORT_LIMIT = 100_000


@router.get(
    "/export",
    responses={
        200: {
            "description": "The experiments as CSV or JSON (an attachment)",
            "content": {"text/csv": {}, "application/json": {}},
        }
    },
)
async def export_experiments(
    conn: ConnDep,
    format: Literal["csv", "json"] = "csv",
    project: Filter = None,
    status: Status | None = None,
    tag: str | None = None,
    sweep: str | None = None,
    sort: SortParam = None,
    metric: MetricParam = None,
) -> Response:
    """Every matching experiment (FGLab's table export), with the list's filters and sort:
    CSV with a column per option and score, or a JSON array of records."""
    order = listing.parse_sort(sort)
    by_metrics = listing.parse_filters(metric)
    project_id, sweep_id = await _filters(conn, project, sweep)
    items: list[Experiment] = []
    after = None
    while len(items) < EXPORT_LIMIT:
        chunk = await metric_summary.page_sorted(
            conn,
            project_id=project_id,
            status=status,
            tag=tag,
            sweep_id=sweep_id,
            sort=order,
            filters=by_metrics,
            after=after,
            limit=1000,
        )
        items += [e for e, _ in chunk]
        if len(chunk) < 1000:
            break
        after = listing.decode_cursor(order, listing.encode_cursor(order, *chunk[-1]))
    name = f"experiments-{project}" if project else "experiments"
    if format == "json":
        body = json.dumps([e.model_dump(mode="json") for e in items])
        media = "application/json"
    else:
        body, media = export.to_csv(items), "text/csv; charset=utf-8"
    disposition = f'attachment; filename="{name}.{format}"'
    return Response(body, media_type=media, headers={"Content-Disposition": disposition})


class StopRequest(BaseModel):
    """``POST /api/v1/experiments/{id}/stop`` (the body is optional)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reason": "diverged"}]}
    )

    reason: str = Field(default="stopped by user", min_length=1, max_length=500)


@router.post("/{ref}/stop", status_code=202, response_model=Experiment)
async def stop_experiment(
    ref: str, conn: ConnDep, state: StateDep, body: StopRequest | None = None
) -> Experiment:
    """Stop an experiment: a queued one never runs; a running one gets SIGTERM, then SIGKILL
    after the agent's grace period, and ends ``stopped``. 409 when it has already ended."""
    reason = (body or StopRequest()).reason
    return await service.stop(conn, state.outbox(), ref, reason)


@router.post("/{ref}/restart", status_code=201, response_model=Experiment)
async def restart_experiment(ref: str, conn: ConnDep, state: StateDep) -> Experiment:
    """Run an experiment again: a new experiment with the same project and options."""
    return await service.restart(conn, state.outbox(), ref)


@router.get("/{ref}", response_model=Experiment)
async def get_experiment(ref: str, conn: ConnDep, state: StateDep) -> Experiment:
    """One experiment. A queued one says why it is waiting in ``status_reason``."""
    experiment = await service.get(conn, ref)
    timeout = state.settings.rpc_timeout_s
    return (await service.explain_waiting(state.broker, [experiment], timeout))[0]


@router.patch("/{ref}", response_model=Experiment)
async def update_experiment(ref: str, body: ExperimentUpdate, conn: ConnDep) -> Experiment:
    """Rename an experiment or save its notes."""
    return await service.update(conn, ref, body)


@router.delete("/{ref}", status_code=204)
async def delete_experiment(ref: str, conn: ConnDep, state: StateDep) -> Response:
    """Delete an experiment with its stored log, metrics and output files (409 while it is
    queued or running: stop it first)."""
    await service.delete(conn, state.outbox(), state.artifacts(), ref)
    return Response(status_code=204)
