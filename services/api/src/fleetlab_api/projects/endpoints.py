"""``/api/v1/projects``."""

from __future__ import annotations

from fastapi import APIRouter

from fleetlab_api.deps import ConnDep
from fleetlab_api.projects import repository as repo
from fleetlab_api.projects import service
from fleetlab_api.projects.schemas import Project, ProjectCreate

router = APIRouter(prefix="/api/v1/projects", tags=["projects"])


@router.post("", status_code=201, response_model=Project, response_model_by_alias=True)
async def create_project(body: ProjectCreate, conn: ConnDep) -> Project:
    """Create a project from its JSON spec."""
    return await service.create(conn, body)


@router.get("", response_model=list[Project], response_model_by_alias=True)
async def list_projects(conn: ConnDep) -> list[Project]:
    """Every project, by name."""
    return await repo.list_all(conn)


@router.get("/{ref}", response_model=Project, response_model_by_alias=True)
async def get_project(ref: str, conn: ConnDep) -> Project:
    """One project, by id or name."""
    return await service.get(conn, ref)
