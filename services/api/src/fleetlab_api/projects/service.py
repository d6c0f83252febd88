"""Project logic."""

from __future__ import annotations

from fleetlab_api.errors import ConflictError, NotFoundError
from fleetlab_api.projects import repository as repo
from fleetlab_api.projects.schemas import Project, ProjectCreate
from fleetlab_common.db import Conn


async def create(conn: Conn, body: ProjectCreate) -> Project:
    project = await repo.insert(conn, body)
    if project is None:
        raise ConflictError(f"a project named {body.name!r} exists", {"name": "already taken"})
    return project


async def get(conn: Conn, ref: str) -> Project:
    project = await repo.get(conn, ref)
    if project is None:
        raise NotFoundError("project", ref)
    return project
