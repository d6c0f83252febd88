"""``/api/v1/sweeps``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from fleetlab_api.deps import ConnDep, StateDep
from fleetlab_api.sweeps import service
from fleetlab_common.api.sweeps import Sweep, SweepCreate, SweepPage, SweepStop

router = APIRouter(prefix="/api/v1/sweeps", tags=["sweeps"])

_ERRORS = {
    404: {"description": "No such sweep"},
    422: {"description": "Invalid input: `fields` names each field at fault and why"},
}


@router.post(
    "",
    status_code=201,
    response_model=Sweep,
    responses={422: _ERRORS[422]},
)
async def create_sweep(body: SweepCreate, conn: ConnDep, state: StateDep) -> Sweep:
    """Create a sweep and queue all its trials at once (one transaction: all or nothing).

    Every option set is validated against the project's schema as a single submission is; a
    bad parameter spec is refused with 422 naming it (`parameters.<option>`), and nothing is
    created. A grid may have at most 100,000 trials; so may a random sweep. The trials are
    listed by `GET /api/v1/experiments?sweep=<id>`."""
    return await service.create(conn, state.outbox(), body)


@router.get("", response_model=SweepPage)
async def list_sweeps(
    conn: ConnDep,
    project: Annotated[str | None, Query(description="A project's id or name")] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> SweepPage:
    """Sweeps, newest first, with their progress and best trial."""
    items, next_cursor = await service.page(conn, project, cursor, limit)
    return SweepPage(items=items, next=next_cursor)


@router.get("/{ref}", response_model=Sweep, responses={404: _ERRORS[404]})
async def get_sweep(ref: str, conn: ConnDep) -> Sweep:
    """One sweep: status, trials by status, and the best trial by its metric and goal."""
    return await service.get(conn, ref)


@router.post(
    "/{ref}/stop",
    status_code=202,
    response_model=Sweep,
    responses={404: _ERRORS[404], 409: {"description": "The sweep has already finished"}},
)
async def stop_sweep(
    ref: str, conn: ConnDep, state: StateDep, body: SweepStop | None = None
) -> Sweep:
    """Stop a sweep: its queued trials never run, its running ones are stopped (as single
    experiments are). Stopping it again changes nothing."""
    reason = (body or SweepStop()).reason
    return await service.stop(conn, state.outbox(), ref, reason)
