"""The asyncpg pool of one service, confined to its own schema."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from fleetlab_common.db import Conn


async def _init_connection(conn: Conn) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def _keep_session(conn: Conn) -> None:
    """What a connection goes through on its way back to the pool, beyond what asyncpg always
    does (roll back an open transaction, drop its listeners): nothing. By default asyncpg also
    sends "unlock advisory locks; close cursors; unlisten; reset settings", one more round trip
    per acquire, and Fleetlab leaves none of those behind: its locks are per transaction (the
    migration runner's session lock is released by the runner), it holds no cursor past a
    transaction, listens to nothing in PostgreSQL and changes no setting of a session."""


async def create_pool(
    dsn: str, schema: str, *, min_size: int = 1, max_size: int = 10
) -> asyncpg.Pool:
    """A pool whose connections see only ``schema`` by default (``search_path``).

    JSON and JSONB columns map to Python objects both ways.
    """
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        server_settings={"search_path": schema, "application_name": f"fleetlab-{schema}"},
    )
    return pool


async def ping(pool: asyncpg.Pool, timeout: float = 2.0) -> bool:
    """True when the database answers a trivial query within ``timeout`` seconds."""
    try:
        async with pool.acquire(timeout=timeout) as conn:
            value: Any = await conn.fetchval("SELECT 1", timeout=timeout)
            return bool(value == 1)
    except (OSError, asyncpg.PostgresError, TimeoutError, asyncpg.InterfaceError):
        return False
