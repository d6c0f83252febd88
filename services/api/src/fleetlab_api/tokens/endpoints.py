"""``/api/v1/tokens``: API tokens, sent as ``Authorization: Bearer <token>``."""

from __future__ import annotations

from fastapi import APIRouter, Response

from fleetlab_api.deps import ConnDep
from fleetlab_api.errors import ConflictError, NotFoundError
from fleetlab_api.tokens import repository as repo
from fleetlab_api.tokens.first import new_secret
from fleetlab_api.tokens.schemas import Token, TokenCreate, TokenCreated

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])


@router.post("", status_code=201, response_model=TokenCreated)
async def create_token(body: TokenCreate, conn: ConnDep) -> TokenCreated:
    """A new token. Its secret is in this answer only: only a hash of it is kept."""
    secret = new_secret()
    token = await repo.insert(conn, body.name, secret)
    if token is None:
        raise ConflictError(f"a token named {body.name!r} exists", {"name": "already taken"})
    return TokenCreated(**token.model_dump(), token=secret)


@router.get("", response_model=list[Token])
async def list_tokens(conn: ConnDep) -> list[Token]:
    """Every token, without secrets."""
    return await repo.list_all(conn)


@router.delete("/{ref}", status_code=204)
async def revoke_token(ref: str, conn: ConnDep) -> Response:
    """Revoke a token (by id or name): it stops working at once."""
    if not await repo.delete(conn, ref):
        raise NotFoundError("token", ref)
    return Response(status_code=204)
