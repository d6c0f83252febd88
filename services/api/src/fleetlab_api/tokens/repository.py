"""All SQL on API tokens."""

from __future__ import annotations

import hashlib
import uuid

import asyncpg

from fleetlab_api.tokens.schemas import Token
from fleetlab_common.db import Conn
from fleetlab_common.ids import uuid7


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _to_token(row: asyncpg.Record) -> Token:
    return Token.model_validate(dict(row))


async def insert(conn: Conn, name: str, secret: str) -> Token | None:
    """None when the name is taken."""
    row = await conn.fetchrow(
        """INSERT INTO api_tokens (id, name, prefix, hash) VALUES ($1, $2, $3, $4)
           ON CONFLICT (name) DO NOTHING
           RETURNING id, name, prefix, created_at, last_used_at""",
        uuid7(),
        name,
        secret[:8],
        digest(secret),
    )
    return _to_token(row) if row else None


async def list_all(conn: Conn) -> list[Token]:
    rows = await conn.fetch(
        "SELECT id, name, prefix, created_at, last_used_at FROM api_tokens ORDER BY name"
    )
    return [_to_token(r) for r in rows]


async def delete(conn: Conn, ref: str) -> bool:
    """Revoke a token by id or name."""
    try:
        token_id: uuid.UUID | None = uuid.UUID(ref)
    except ValueError:
        token_id = None
    done = await conn.execute(
        "DELETE FROM api_tokens WHERE id = $1 OR name = $2", token_id, ref.replace("\x00", "")
    )
    return not done.endswith(" 0")


async def check(conn: Conn, secret: str) -> bool:
    """Whether the secret is a live token; marks it used (at most once a minute)."""
    row = await conn.fetchrow(
        """UPDATE api_tokens SET last_used_at = now()
           WHERE hash = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
           RETURNING id""",
        digest(secret),
    )
    if row is not None:
        return True
    found = await conn.fetchval("SELECT 1 FROM api_tokens WHERE hash = $1", digest(secret))
    return found is not None


async def insert_first(conn: Conn, name: str, secret: str) -> Token | None:
    """Insert a token only while there is none at all (serialised across API processes)."""
    async with conn.transaction():
        await conn.execute("LOCK TABLE api_tokens IN SHARE ROW EXCLUSIVE MODE")
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM api_tokens)"):
            return None
        return await insert(conn, name, secret)
