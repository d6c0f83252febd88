"""``/api/v1/code``: upload a code snapshot, list them, read their files."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from fleetlab_api.code import service
from fleetlab_api.code.archive import read_member
from fleetlab_api.deps import ConnDep, StateDep
from fleetlab_api.errors import ApiError, NotFoundError, error_body

router = APIRouter(prefix="/api/v1/code", tags=["code"])

Digest = Annotated[
    str,
    Path(
        pattern=r"^(sha256:)?[0-9a-fA-F]{64}$",
        description="The snapshot's digest: sha256:<hex>, or the bare hex",
        examples=["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
    ),
]

GZIP_TYPES = {
    "application/gzip",
    "application/x-gzip",
    "application/x-tar+gzip",
    "application/x-compressed-tar",
    "application/octet-stream",
}
# What a multipart body may add to the archive: boundaries and part headers.
MULTIPART_SLACK = 64 * 1024

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No code snapshot has this digest"},
    422: {"description": "Not a digest"},
}
_UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {
        "description": "Over a limit: FLEETLAB_MAX_CODE_MB compressed (100 MiB), "
        "FLEETLAB_MAX_CODE_UNPACKED_MB unpacked (1 GiB), FLEETLAB_MAX_CODE_FILES members "
        "(50,000)"
    },
    415: {
        "description": "Neither a gzip body nor multipart/form-data",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    },
    422: {
        "description": "Refused: not a gzip tar, or a member that escapes the root, is a "
        "link, a device file or a FIFO (the message names the member)",
        "content": {
            "application/json": {
                "example": {
                    "error": "archive member '../evil.py': '..' escapes the archive's root",
                    "fields": {"code.../evil.py": "…"},
                }
            }
        },
    },
}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "A .tar.gz of the code, as the raw body or in the multipart field `code`",
        "content": {
            "application/gzip": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["code"],
                    "properties": {"code": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}


async def _limited(request: Request, limit: int, what: str) -> AsyncGenerator[bytes, None]:
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise ApiError(413, what, {"code": what})
        yield chunk


async def _read_upload(request: Request, max_bytes: int, max_mb: int) -> bytes:
    too_large = f"the archive is larger than the {max_mb} MiB limit"
    kind = request.headers.get("content-type", "application/gzip").split(";")[0].strip().lower()
    multipart = kind == "multipart/form-data"
    if not multipart and kind not in GZIP_TYPES:
        raise ApiError(
            415,
            f"a code snapshot is sent as application/gzip or multipart/form-data, not {kind}",
            {"content-type": "application/gzip, or multipart/form-data with the field 'code'"},
        )
    limit = max_bytes + (MULTIPART_SLACK if multipart else 0)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, too_large, {"code": too_large})
    if not multipart:
        data = b"".join([c async for c in _limited(request, limit, too_large)])
    else:
        parser = MultiPartParser(
            request.headers,
            _limited(request, limit, too_large),
            max_files=1,
            max_fields=10,
        )
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise ApiError(422, f"malformed multipart body: {exc.message}") from None
        try:
            upload = form.get("code")
            if not isinstance(upload, UploadFile):
                raise ApiError(
                    422,
                    "a multipart upload carries the archive in the file field 'code'",
                    {"code": "missing"},
                )
            data = await upload.read()
        finally:
            await form.close()
    if len(data) > max_bytes:
        raise ApiError(413, too_large, {"code": too_large})
    if not data:
        raise ApiError(422, "the archive is empty", {"code": "empty"})
    return data


@router.post(
    "",
    status_code=201,
    response_model=service.CodeSnapshot,
    responses=_UPLOAD_ERRORS,
    openapi_extra=_UPLOAD_BODY,
)
async def upload_code(request: Request, state: StateDep) -> service.CodeSnapshot:
    """Store a code snapshot (a .tar.gz) and answer its digest. The archive is checked member
    by member and kept in a canonical form (files and folders sorted, owners and times
    cleared), so the same files give the same digest, stored once however often uploaded.
    Name it in an experiment (``"code": "sha256:…"``) or as a project's default ``code``."""
    settings = state.settings
    data = await _read_upload(request, settings.max_code_mb * service.MIB, settings.max_code_mb)
    return await service.store(state, data)


@router.get("", response_model=list[service.CodeSummary])
async def list_code(
    conn: ConnDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many")] = 100,
) -> list[service.CodeSummary]:
    """Stored snapshots, newest first."""
    return await service.list_all(conn, limit)


@router.get("/{digest}", response_model=service.CodeSnapshot, responses=_ERRORS)
async def get_code(digest: Digest, conn: ConnDep) -> service.CodeSnapshot:
    """A snapshot's metadata and every file in it (path, size), sorted by path."""
    return await service.get(conn, digest)


@router.get(
    "/{digest}/archive",
    responses={**_ERRORS, 200: {"content": {"application/gzip": {}}}},
    response_class=Response,
)
async def download_archive(digest: Digest, conn: ConnDep, state: StateDep) -> Response:
    """The snapshot as a .tar.gz (its canonical form)."""
    snapshot = await service.get(conn, digest)
    data = await service.archive_bytes(state, snapshot)
    name = snapshot.digest.removeprefix("sha256:")[:12]
    return Response(
        data,
        media_type="application/gzip",
        headers={"content-disposition": f'attachment; filename="code-{name}.tar.gz"'},
    )


@router.get(
    "/{digest}/files/{path:path}",
    responses={
        **_ERRORS,
        200: {
            "description": "The file: text/plain when it is UTF-8 text, else bytes",
            "content": {"text/plain": {}, "application/octet-stream": {}},
        },
    },
    response_class=Response,
)
async def read_file(
    digest: Digest,
    path: Annotated[str, Path(description="The file's path inside the snapshot")],
    conn: ConnDep,
    state: StateDep,
) -> Response:
    """One file's content, exactly as the experiment ran it."""
    snapshot = await service.get(conn, digest)
    if not any(f.path == path for f in snapshot.files):
        raise NotFoundError(f"file in code snapshot {snapshot.digest}", path)
    data = read_member(await service.archive_bytes(state, snapshot), path)
    if data is None:
        return JSONResponse(error_body(f"{path!r} is not a file"), status_code=404)
    # Text as text (a browser shows it), anything else as bytes.
    media_type = "text/plain" if _looks_textual(data) else "application/octet-stream"
    return Response(data, media_type=media_type)


def _looks_textual(data: bytes) -> bool:
    try:
        data[:8192].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in data[:8192]
