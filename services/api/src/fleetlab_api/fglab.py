"""FGLab's documented routes, verbatim: paths, status codes and error strings as FGLab's
README and ``api.raml`` give them, so an FGLab user's scripts keep working.

- ``POST /api/v1/projects/{projectId}/experiment`` (body: the options) runs one experiment
  now or not at all: 501 when no online agent has room for it at this moment.
- ``POST /api/v1/projects/{projectId}/batch?retry=<s>`` (body: a list of option sets) checks
  every set first and creates nothing when one is wrong; then queues them all.

Errors here are ``{"error": "..."}`` alone, FGLab's shape, not the API's usual one.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from fleetlab_api.deps import ConnDep, StateDep
from fleetlab_api.errors import ApiError
from fleetlab_api.experiments import service as experiments
from fleetlab_api.projects import repository as projects
from fleetlab_api.state import State
from fleetlab_common.api.experiments import ExperimentCreate
from fleetlab_common.api.projects import Project, validate_options
from fleetlab_common.events import Rpc
from fleetlab_common.log import get_logger

log = get_logger(__name__)

router = APIRouter(prefix="/api/v1/projects", tags=["fglab"])

NO_CAPACITY = "No machine capacity available"
FAILED = "Experiment failed to run"
MAX_BATCH = 10_000


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _not_found(project_id: str) -> JSONResponse:
    return _error(400, f"Project ID {project_id} does not exist")


def _validation_message(project: Project, options: Any) -> str | None:
    if not isinstance(options, dict):
        return "options must be a JSON object of option names and values"
    errors = validate_options(project.schema_, options)[1]
    if not errors:
        return None
    return "; ".join(f"{k.removeprefix('options.')}: {v}" for k, v in errors.items())


async def _body(request: Request) -> tuple[Any, JSONResponse | None]:
    raw = await request.body()
    if not raw.strip():
        return {}, None
    try:
        return json.loads(raw), None
    except (ValueError, UnicodeDecodeError) as exc:
        return None, _error(400, f"the request body is not valid JSON: {exc}")


async def has_capacity(state: State, project: Project) -> bool | None:
    """Whether an online agent can take the project's experiment now; None when the
    scheduler does not answer."""
    try:
        reply = await state.broker.request({}, Rpc.AGENTS, timeout=state.settings.rpc_timeout_s)
        answer = await reply.decode()
    except Exception:  # a timeout or no responder: the scheduler is away
        return None
    if not isinstance(answer, dict):
        return None
    need = project.resources.cpus or 1.0
    labels = set(project.labels)
    for agent in answer.get("agents", []):
        if not isinstance(agent, dict) or not agent.get("online") or agent.get("draining"):
            continue
        free = float(agent.get("slots", 0)) - float(agent.get("busy", 0))
        if free >= need and labels <= set(agent.get("labels", [])):
            return True
    return False


_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "Unknown project, or options that do not fit its schema",
        "content": {
            "application/json": {
                "example": {"error": "Project ID 562237f33774694c5a4814bb does not exist"}
            }
        },
    },
}
_BODY = {
    "requestBody": {
        "content": {
            "application/json": {
                "schema": {"type": "object", "additionalProperties": True},
                "example": {"x": 2, "y": 7},
            }
        }
    }
}


@router.post(
    "/{projectId}/experiment",
    status_code=201,
    openapi_extra=_BODY,
    responses={
        201: {"content": {"application/json": {"example": {"_id": "0190f0e2-…"}}}},
        **_RESPONSES,
        500: {"content": {"application/json": {"example": {"error": FAILED}}}},
        501: {"content": {"application/json": {"example": {"error": NO_CAPACITY}}}},
    },
)
async def submit_one(
    projectId: str,  # FGLab's name for it
    request: Request,
    conn: ConnDep,
    state: StateDep,
) -> Any:
    """FGLab: run one experiment now, with the options in the body (defaults filled).
    Unlike ``POST /api/v1/experiments`` it does not wait for capacity: 501 when no online
    agent has room for it at this moment."""
    options, bad = await _body(request)
    if bad is not None:
        return bad
    project = await projects.get(conn, projectId)
    if project is None:
        return _not_found(projectId)
    message = _validation_message(project, options)
    if message:
        return _error(400, message)
    capacity = await has_capacity(state, project)
    if capacity is None:
        return _error(500, FAILED)
    if not capacity:
        return _error(501, NO_CAPACITY)
    body = ExperimentCreate(project=str(project.id), options=options)
    try:
        experiment = await experiments.submit(conn, state.outbox(), body)
    except ApiError as exc:
        log.warning("fglab.submit_failed", error=exc.message)
        return _error(500, FAILED)
    return JSONResponse({"_id": str(experiment.id)}, status_code=201)


@router.post(
    "/{projectId}/batch",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {
                    "schema": {"type": "array", "items": {"type": "object"}},
                    "example": [{"x": 2, "y": 7}, {"x": 3, "y": 5}],
                }
            }
        }
    },
    responses={
        201: {"content": {"application/json": {"example": {"status": "Started"}}}},
        **_RESPONSES,
    },
)
async def submit_batch(
    projectId: str,  # FGLab's name for it
    request: Request,
    conn: ConnDep,
    state: StateDep,
    retry: int = Query(
        default=3600,
        description="FGLab: seconds between tries of a job that could not be placed. "
        "Fleetlab queues every job until an agent has room, so it is checked and kept.",
    ),
) -> Any:
    """FGLab: queue a list of option sets. Every set is checked first; the first error is
    answered (400) and nothing is created. Then all are queued, in one transaction."""
    if retry < 1:
        return _error(400, "retry must be an integer of at least 1 (seconds)")
    batch, bad = await _body(request)
    if bad is not None:
        return bad
    project = await projects.get(conn, projectId)
    if project is None:
        return _not_found(projectId)
    if not isinstance(batch, list):
        return _error(400, "the body must be a JSON array of option sets")
    if len(batch) > MAX_BATCH:
        return _error(400, f"a batch holds at most {MAX_BATCH} option sets")
    for options in batch:
        message = _validation_message(project, options)
        if message:
            return _error(400, message)
    bodies = [ExperimentCreate(project=str(project.id), options=options) for options in batch]
    await experiments.submit_batch(conn, state.outbox(), bodies)
    log.info("fglab.batch_queued", project=project.name, count=len(batch), retry=retry)
    return JSONResponse({"status": "Started"}, status_code=201)
