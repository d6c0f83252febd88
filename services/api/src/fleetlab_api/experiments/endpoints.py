"""``/api/v1/experiments``."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from fleetlab_api.deps import ConnDep, StateDep
from fleetlab_api.errors import InvalidError
from fleetlab_api.experiments import repository as repo
from fleetlab_api.experiments import service
from fleetlab_api.experiments.schemas import Experiment, ExperimentCreate, ExperimentPage, Status
from fleetlab_api.projects import service as projects

router = APIRouter(prefix="/api/v1/experiments", tags=["experiments"])


@router.post("", status_code=201, response_model=Experiment)
async def submit_experiment(body: ExperimentCreate, conn: ConnDep, state: StateDep) -> Experiment:
    """Queue an experiment: options are checked against the project's schema first."""
    return await service.submit(conn, state.outbox(), body)


@router.get("", response_model=ExperimentPage)
async def list_experiments(
    conn: ConnDep,
    state: StateDep,
    project: str | None = None,
    status: Status | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ExperimentPage:
    """Experiments, newest first, ``limit`` at a time."""
    project_id = (await projects.get(conn, project)).id if project else None
    before = None
    if cursor:
        try:
            before = uuid.UUID(cursor)
        except ValueError:
            raise InvalidError("invalid cursor", {"cursor": "not a cursor from `next`"}) from None
    items = await repo.page(
        conn, project_id=project_id, status=status, before=before, limit=limit + 1
    )
    more = len(items) > limit
    items = items[:limit]
    next_cursor = str(items[-1].id) if more else None
    items = await service.explain_waiting(state.broker, items, state.settings.rpc_timeout_s)
    return ExperimentPage(items=items, next=next_cursor)


class StopRequest(BaseModel):
    """``POST /api/v1/experiments/{id}/stop`` (the body is optional)."""

    model_config = ConfigDict(extra="forbid")

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


@router.get("/{ref}/logs", response_class=PlainTextResponse)
async def get_logs(
    ref: str,
    conn: ConnDep,
    state: StateDep,
    stream: Literal["stdout", "stderr"] | None = None,
    from_seq: Annotated[int, Query(ge=1)] = 1,
    to_seq: Annotated[int | None, Query(ge=1)] = None,
    download: bool = False,
) -> PlainTextResponse:
    """The output of the latest attempt as text, every line in order."""
    experiment = await service.get(conn, ref)
    lines = await service.read_lines(
        state.broker,
        experiment,
        stream=stream,
        from_seq=from_seq,
        to_seq=to_seq,
        timeout_s=state.settings.rpc_timeout_s,
    )
    text = "".join(f"{ln.line}\n" for ln in lines)
    headers = {"X-Log-Lines": str(len(lines))}
    if download:
        headers["Content-Disposition"] = f'attachment; filename="{experiment.id}.log"'
    return PlainTextResponse(text, headers=headers)
