"""``/api/v1/projects``."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Response, UploadFile

from fleetlab_api.deps import ConnDep, StateDep
from fleetlab_api.errors import ApiError
from fleetlab_api.projects import imports, service
from fleetlab_api.projects import repository as repo
from fleetlab_common.api.projects import Project, ProjectCreate, ProjectUpdate

router = APIRouter(prefix="/api/v1/projects", tags=["projects"])

_ERRORS: dict[int | str, dict[str, str]] = {
    404: {"description": "No project has this id or name"},
    409: {"description": "The name is taken"},
    413: {"description": "The file is over 1 MiB"},
    422: {"description": "Invalid: the message names the file, line and field at fault"},
}


async def _read(upload: UploadFile) -> bytes:
    data = await upload.read(imports.MAX_FILE_BYTES + 1)
    if len(data) > imports.MAX_FILE_BYTES:
        raise ApiError(413, f"{upload.filename}: the file is over {imports.MAX_FILE_BYTES} bytes")
    return data


@router.post("", status_code=201, response_model=Project, response_model_by_alias=True)
async def create_project(body: ProjectCreate, conn: ConnDep) -> Project:
    """Create a project from its JSON spec."""
    return await service.create(conn, body)


@router.get("", response_model=list[Project], response_model_by_alias=True)
async def list_projects(conn: ConnDep) -> list[Project]:
    """Every project, by name."""
    return await repo.list_all(conn)


@router.post(
    "/schema",
    status_code=201,
    response_model=Project,
    response_model_by_alias=True,
    responses=_ERRORS,
)
async def create_from_schema(
    conn: ConnDep,
    schema_file: Annotated[
        UploadFile, File(alias="schema", description="An FGLab schema file (JSON)")
    ],
) -> Project:
    """FGLab's route: a project from a schema file, named after the file (``mnist.json`` →
    ``mnist``). The project has no command: set one with PATCH, or let agents serving it
    bring theirs (FGMachine's projects.json)."""
    filename = schema_file.filename or "schema.json"
    data = await _read(schema_file)
    body = imports.from_fglab_schema(filename, imports.decode(filename, data))
    return await service.create(conn, body)


@router.post(
    "/import",
    status_code=201,
    response_model=list[Project],
    response_model_by_alias=True,
    responses=_ERRORS,
)
async def import_projects(
    conn: ConnDep,
    file: Annotated[UploadFile, File(description="ml.yaml, projects.json or an FGLab schema")],
    format: Annotated[
        Literal["fglab", "ml.yaml", "fgmachine"] | None,
        Form(description="Guessed from the file name when not given"),
    ] = None,
    name: Annotated[str | None, Form(description="Project name (default: the file's)")] = None,
    replace: Annotated[
        bool,
        Form(description="A project that exists by name takes the file's schema and run spec"),
    ] = False,
) -> list[Project]:
    """Projects from a file of an earlier system: a MachineLabs ``ml.yaml`` (image, hardware
    type, inputs, parameters; the command is ``python3 main.py``), an FGMachine
    ``projects.json`` (one project per entry: command and args, options style, boolean,
    capacity, results) or an FGLab schema. All or nothing."""
    filename = file.filename or "upload"
    bodies = imports.parse(filename, await _read(file), format, name)
    return await service.create_many(conn, bodies, replace=replace)


@router.get("/{ref}", response_model=Project, response_model_by_alias=True)
async def get_project(ref: str, conn: ConnDep) -> Project:
    """One project, by id or name."""
    return await service.get(conn, ref)


@router.patch("/{ref}", response_model=Project, response_model_by_alias=True, responses=_ERRORS)
async def update_project(ref: str, body: ProjectUpdate, conn: ConnDep) -> Project:
    """Change a project's name, schema or run spec (the fields given). Experiments submitted
    before keep what they were submitted with."""
    return await service.update(conn, ref, body)


@router.delete("/{ref}", status_code=204, responses=_ERRORS)
async def delete_project(
    ref: str,
    conn: ConnDep,
    state: StateDep,
    force: Annotated[bool, Query(description="Stop queued and running experiments")] = False,
) -> Response:
    """Delete a project and its experiments' records. 409 while experiments are queued or
    running, unless ``force=true``, which stops them first."""
    await service.delete(conn, state.outbox(), state.artifacts(), ref, force=force)
    return Response(status_code=204)
