"""Code snapshots: stored once by content, named by experiments, handed to agents.

The canonical archive (see :mod:`fleetlab_api.code.archive`) lies in the artifact store under
``code/sha256/<hex>.tar.gz``; its metadata and file list are in the ``code_snapshots`` table.
An experiment that runs a snapshot records its digest, and the snapshot shows among its
artifacts with kind ``code``. Agents hold no storage credential: they ask over NATS
(``rpc.api.code.presign``) for a short-lived URL to download the archive.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
from faststream.nats import NatsBroker
from pydantic import BaseModel, Field

from fleetlab_api.code.archive import ArchiveError, Entry, Limits, canonicalize
from fleetlab_api.errors import ApiError, InvalidError, NotFoundError
from fleetlab_api.settings import ApiSettings
from fleetlab_api.state import State
from fleetlab_common.db import Conn
from fleetlab_common.events import Rpc
from fleetlab_common.log import get_logger

log = get_logger(__name__)

DIGEST = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$")
# An agent's download URL lives this long: enough for a large archive on a slow link.
DOWNLOAD_URL_S = 900
# The name a snapshot has among an experiment's artifacts.
ARTIFACT_NAME = "code.tar.gz"
MIB = 1 << 20


class CodeFile(BaseModel):
    """One file of a snapshot."""

    path: str
    size: int
    executable: bool = False


class CodeSummary(BaseModel):
    """A stored code snapshot."""

    digest: str = Field(description="sha256:<hex> of the canonical archive")
    size: int = Field(description="bytes of the stored (canonical) archive")
    unpacked_size: int = Field(description="bytes of its files")
    file_count: int
    created_at: datetime


class CodeSnapshot(CodeSummary):
    """A stored code snapshot with its file list."""

    files: list[CodeFile]


def limits(settings: ApiSettings) -> Limits:
    return Limits(
        max_bytes=settings.max_code_mb * MIB,
        max_unpacked_bytes=settings.max_code_unpacked_mb * MIB,
        max_files=settings.max_code_files,
    )


def storage_key(digest: str) -> str:
    return f"code/sha256/{digest.removeprefix('sha256:')}.tar.gz"


def parse_digest(text: str, field: str = "digest") -> str:
    """``sha256:<hex>`` from ``sha256:<hex>`` or a bare hex digest; 422 naming ``field``."""
    match = DIGEST.match(text.strip().lower())
    if match is None:
        raise InvalidError(
            f"{field}: {text!r} is not a code snapshot digest",
            {field: "expected sha256:<64 hex digits>, as POST /api/v1/code answers"},
        )
    return f"sha256:{match.group(1)}"


def _snapshot(row: asyncpg.Record) -> CodeSnapshot:
    return CodeSnapshot.model_validate(dict(row))


async def find(conn: Conn, digest: str) -> CodeSnapshot | None:
    row = await conn.fetchrow("SELECT * FROM code_snapshots WHERE digest = $1", digest)
    return _snapshot(row) if row else None


async def get(conn: Conn, ref: str) -> CodeSnapshot:
    digest = parse_digest(ref)
    found = await find(conn, digest)
    if found is None:
        raise NotFoundError("code snapshot", digest)
    return found


async def list_all(conn: Conn, limit: int) -> list[CodeSummary]:
    rows = await conn.fetch(
        """SELECT digest, size, unpacked_size, file_count, created_at FROM code_snapshots
           ORDER BY created_at DESC, digest LIMIT $1""",
        limit,
    )
    return [CodeSummary.model_validate(dict(r)) for r in rows]


async def resolve(conn: Conn, ref: str, field: str = "code") -> CodeSnapshot:
    """The snapshot an experiment or project names; 422 naming ``field`` when unknown."""
    digest = parse_digest(ref, field)
    found = await find(conn, digest)
    if found is None:
        raise InvalidError(
            f"{field}: no code snapshot {digest} is stored",
            {field: "unknown digest: upload the code first (POST /api/v1/code)"},
        )
    return found


async def store(state: State, data: bytes) -> CodeSnapshot:
    """Check and store an uploaded archive; the same content is stored once."""
    with tempfile.TemporaryDirectory(prefix="fleetlab-upload-") as tmp:
        source = Path(tmp) / "upload.tar.gz"
        source.write_bytes(data)
        canonical = Path(tmp) / "canonical.tar.gz"

        def work() -> tuple[str, list[Entry]]:
            with source.open("rb") as f:
                return canonicalize(f, limits(state.settings), canonical)

        try:
            digest, entries = await asyncio.to_thread(work)
        except ArchiveError as exc:
            field = f"code.{exc.member}" if exc.member else "code"
            raise ApiError(exc.status, str(exc), {field: str(exc)}) from None
        async with state.db().acquire() as conn:
            existing = await find(conn, digest)
            if existing is not None:
                return existing
            key = storage_key(digest)
            await state.artifacts().put_file(key, canonical, "application/gzip")
            size = canonical.stat().st_size
            files = [{"path": e.path, "size": e.size, "executable": e.executable} for e in entries]
            await conn.execute(
                """INSERT INTO code_snapshots
                       (digest, size, unpacked_size, file_count, files, key)
                   VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (digest) DO NOTHING""",
                digest,
                size,
                sum(e.size for e in entries),
                len(entries),
                files,
                key,
            )
            found = await find(conn, digest)
    assert found is not None
    log.info("code.stored", digest=digest, size=found.size, files=found.file_count)
    return found


async def archive_bytes(state: State, snapshot: CodeSnapshot) -> bytes:
    return await state.artifacts().get_bytes(storage_key(snapshot.digest))


async def attach(conn: Conn, experiment_id: uuid.UUID, snapshot: CodeSnapshot) -> None:
    """Record that an experiment runs ``snapshot``: its ``code`` and an artifact of kind
    ``code``."""
    await conn.execute(
        "UPDATE experiments SET code = $2 WHERE id = $1", experiment_id, snapshot.digest
    )
    await conn.execute(
        """INSERT INTO artifacts (experiment_id, kind, name, attempt, size, sha256, key)
           VALUES ($1, 'code', $2, 1, $3, $4, $5)
           ON CONFLICT (experiment_id, kind, name) DO NOTHING""",
        experiment_id,
        ARTIFACT_NAME,
        snapshot.size,
        snapshot.digest.removeprefix("sha256:"),
        storage_key(snapshot.digest),
    )


class PresignCode(BaseModel):
    digest: str


async def presign(state: State, request: PresignCode) -> dict[str, Any]:
    """A short-lived download URL for a stored snapshot, or why there is none."""
    try:
        digest = parse_digest(request.digest)
    except ApiError as exc:
        return {"error": exc.message}
    async with state.db().acquire() as conn:
        found = await find(conn, digest)
    if found is None:
        return {"error": f"no code snapshot {digest} is stored"}
    url = await state.artifacts().presigned_get_url(storage_key(digest), DOWNLOAD_URL_S)
    return {"digest": digest, "url": url, "size": found.size}


def register_rpc(broker: NatsBroker, state: State) -> None:
    """Answer the agents' requests for download URLs of code snapshots."""

    @broker.subscriber(Rpc.PRESIGN_CODE, queue="api", title=f"{Rpc.PRESIGN_CODE}:reply")
    async def handle_presign_code(body: PresignCode) -> dict[str, Any]:
        return await presign(state, body)
