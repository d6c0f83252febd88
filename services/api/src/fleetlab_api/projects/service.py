"""Project logic."""

from __future__ import annotations

import contextlib
from typing import Any

from pydantic import ValidationError

from fleetlab_api.code import service as code
from fleetlab_api.errors import ConflictError, InvalidError, NotFoundError
from fleetlab_api.experiments import service as experiments
from fleetlab_api.projects import repository as repo
from fleetlab_common.api.projects import Project, ProjectCreate, ProjectUpdate
from fleetlab_common.artifacts import ArtifactStore
from fleetlab_common.db import Conn
from fleetlab_common.db.outbox import OutboxRelay, enqueue
from fleetlab_common.events import ExperimentDeleted
from fleetlab_common.log import get_logger

log = get_logger(__name__)


async def create(conn: Conn, body: ProjectCreate) -> Project:
    if body.code is not None:  # the default code snapshot must be stored
        body = body.model_copy(update={"code": (await code.resolve(conn, body.code)).digest})
    project = await repo.insert(conn, body)
    if project is None:
        raise ConflictError(f"a project named {body.name!r} exists", {"name": "already taken"})
    return project


async def create_many(
    conn: Conn, bodies: list[ProjectCreate], *, replace: bool = False
) -> list[Project]:
    """Several projects at once (one imported file): all of them or none. With ``replace``,
    a project that exists by name takes the file's schema and run spec instead."""
    async with conn.transaction():
        made: list[Project] = []
        for body in bodies:
            existing = await repo.get(conn, body.name) if replace else None
            if existing is None:
                made.append(await create(conn, body))
                continue
            updated = await repo.update(conn, existing.id, body)
            assert updated is not None  # same name, same row
            made.append(updated)
        return made


async def get(conn: Conn, ref: str) -> Project:
    project = await repo.get(conn, ref)
    if project is None:
        raise NotFoundError("project", ref)
    return project


def _invalid(exc: ValidationError) -> InvalidError:
    fields: dict[str, str] = {}
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "body"
        fields.setdefault(path, str(err.get("ctx", {}).get("error", err["msg"])))
    message = "invalid project: " + "; ".join(f"{k}: {v}" for k, v in fields.items())
    return InvalidError(message, fields)


async def update(conn: Conn, ref: str, body: ProjectUpdate) -> Project:
    """Apply the fields given, then check the project as a whole, as on creation."""
    project = await get(conn, ref)
    merged: dict[str, Any] = project.model_dump(
        by_alias=True, exclude={"id", "created_at", "updated_at"}
    )
    merged.update(body.model_dump(by_alias=True, exclude_unset=True))
    try:
        checked = ProjectCreate.model_validate(merged)
    except ValidationError as exc:
        raise _invalid(exc) from None
    if checked.code is not None:  # the default code snapshot must be stored
        checked = checked.model_copy(
            update={"code": (await code.resolve(conn, checked.code)).digest}
        )
    updated = await repo.update(conn, project.id, checked)
    if updated is None:
        raise ConflictError(f"a project named {checked.name!r} exists", {"name": "already taken"})
    log.info("project.updated", project_id=str(project.id), fields=sorted(body.model_fields_set))
    return updated


async def delete(
    conn: Conn, relay: OutboxRelay, store: ArtifactStore, ref: str, *, force: bool
) -> int:
    """Delete a project and its experiments, with their logs, metrics and files (as for one
    experiment: ``api.experiment.deleted`` each). Refused while experiments are queued or
    running, unless forced: then each is stopped first (the usual stop path) and its record
    goes with the project. Returns how many experiments were deleted."""
    project = await get(conn, ref)
    active = await repo.active_experiments(conn, project.id)
    if active and not force:
        raise ConflictError(
            f"project {project.name!r} has {len(active)} queued or running experiment(s): "
            "stop them first, or delete with force=true to stop them",
            {"force": "needed while experiments are queued or running"},
        )
    for experiment_id in active:
        with contextlib.suppress(ConflictError):  # it ended meanwhile
            await experiments.stop(conn, relay, str(experiment_id), "project deleted")
    async with conn.transaction():
        deleted = await repo.delete(conn, project.id)
        for experiment_id in deleted:
            await enqueue(conn, ExperimentDeleted(experiment_id=experiment_id))
    relay.kick()
    await experiments.delete_files(store, deleted)
    log.info(
        "project.deleted",
        project_id=str(project.id),
        experiments=len(deleted),
        stopped=len(active),
    )
    return len(deleted)
