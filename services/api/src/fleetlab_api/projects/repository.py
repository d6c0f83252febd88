"""All SQL on projects."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from fleetlab_common.api.projects import Project, ProjectCreate
from fleetlab_common.db import Conn
from fleetlab_common.ids import uuid7


def _to_project(row: asyncpg.Record) -> Project:
    run = row["run"]
    return Project.model_validate(
        {
            "id": row["id"],
            "name": row["name"],
            "schema": row["schema"],
            **run,
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        }
    )


async def get(conn: Conn, ref: str) -> Project | None:
    """A project by id or by name: the id first, for a name may look like one (a hex hash)."""
    if "\x00" in ref:  # no name holds one, and PostgreSQL would refuse the query
        return None
    try:
        project_id: uuid.UUID | None = uuid.UUID(ref)
    except ValueError:
        project_id = None
    row = await conn.fetchrow(
        """SELECT * FROM projects WHERE id = $1 OR name = $2
           ORDER BY id = $1 DESC NULLS LAST LIMIT 1""",
        project_id,
        ref,
    )
    return _to_project(row) if row else None


async def get_by_id(conn: Conn, project_id: uuid.UUID) -> Project | None:
    row = await conn.fetchrow("SELECT * FROM projects WHERE id = $1", project_id)
    return _to_project(row) if row else None


def _columns(body: ProjectCreate) -> tuple[dict[str, Any], dict[str, Any]]:
    # The whole run spec is kept (what the agent needs and what is only recorded, such as
    # FGLab's capacity or MachineLabs' image); the agent's part is cut out at submission.
    run = json.loads(body.model_dump_json(by_alias=True, exclude={"name", "schema_"}))
    schema = {k: v.model_dump(exclude_none=True) for k, v in body.schema_.items()}
    return run, schema


async def insert(conn: Conn, body: ProjectCreate) -> Project | None:
    """Insert a project; None when the name is taken."""
    run, schema = _columns(body)
    row = await conn.fetchrow(
        """INSERT INTO projects (id, name, schema, run) VALUES ($1, $2, $3, $4)
           ON CONFLICT (name) DO NOTHING RETURNING *""",
        uuid7(),
        body.name,
        schema,
        run,
    )
    return _to_project(row) if row else None


async def list_all(conn: Conn) -> list[Project]:
    rows = await conn.fetch("SELECT * FROM projects ORDER BY name")
    return [_to_project(r) for r in rows]


async def update(conn: Conn, project_id: uuid.UUID, body: ProjectCreate) -> Project | None:
    """Replace a project's name, schema and run spec; None when the new name is taken."""
    run, schema = _columns(body)
    try:
        row = await conn.fetchrow(
            """UPDATE projects SET name = $2, schema = $3, run = $4, updated_at = now()
               WHERE id = $1 RETURNING *""",
            project_id,
            body.name,
            schema,
            run,
        )
    except asyncpg.UniqueViolationError:
        return None
    return _to_project(row) if row else None


async def active_experiments(conn: Conn, project_id: uuid.UUID) -> list[uuid.UUID]:
    """The project's experiments that are still queued or running."""
    rows = await conn.fetch(
        """SELECT id FROM experiments
           WHERE project_id = $1 AND status IN ('queued', 'running') ORDER BY id""",
        project_id,
    )
    return [r["id"] for r in rows]


async def delete(conn: Conn, project_id: uuid.UUID) -> list[uuid.UUID]:
    """Delete a project and its experiments' records (in the caller's transaction, if any);
    the ids of the experiments deleted."""
    async with conn.transaction():
        rows = await conn.fetch(
            "DELETE FROM experiments WHERE project_id = $1 RETURNING id", project_id
        )
        await conn.execute("DELETE FROM projects WHERE id = $1", project_id)
    return [r["id"] for r in rows]
