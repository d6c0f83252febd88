"""``/api/v1/artifacts/signed/{key}``: where the local artifact store's presigned URLs lead.

Agents hold no storage credential: they are handed short-lived signed URLs. With S3/MinIO the
URLs go to S3 itself; with the embedded local store they come here, and this route checks the
signature, the operation and the expiry before reading or writing the file.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from fleetlab_api.deps import StateDep
from fleetlab_api.errors import ApiError, NotFoundError
from fleetlab_common.artifacts import (
    ArtifactKeyError,
    ArtifactNotFoundError,
    ArtifactSignatureError,
    verify_signature,
)

router = APIRouter(prefix="/api/v1/artifacts", tags=["artifacts"])

Op = Literal["get", "put"]


def _check(state: StateDep, op: Op, key: str, expected: Op, expires: int, sig: str) -> None:
    try:
        verify_signature(state.secret, op, key, expires, sig)
        if op != expected:
            raise ArtifactSignatureError(f"this URL is for {op}, not {expected}")
    except ArtifactSignatureError as exc:
        raise ApiError(403, str(exc)) from None


@router.get("/signed/{key:path}")
async def download_signed(
    key: str,
    state: StateDep,
    expires: int,
    sig: str,
    op: Annotated[Op, Query()] = "get",
) -> Response:
    """Download an artifact through a presigned URL."""
    _check(state, op, key, "get", expires, sig)
    try:
        data = await state.artifacts().get_bytes(key)
    except (ArtifactNotFoundError, ArtifactKeyError):
        raise NotFoundError("artifact", key) from None
    return Response(data, media_type="application/octet-stream")


@router.put("/signed/{key:path}", status_code=204)
async def upload_signed(
    key: str,
    request: Request,
    state: StateDep,
    expires: int,
    sig: str,
    op: Annotated[Op, Query()] = "put",
) -> Response:
    """Upload an artifact through a presigned URL."""
    _check(state, op, key, "put", expires, sig)
    try:
        await state.artifacts().put_bytes(key, await request.body())
    except ArtifactKeyError as exc:
        raise ApiError(422, str(exc), {"key": exc.reason}) from None
    return Response(status_code=204)
